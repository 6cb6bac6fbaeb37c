from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone


def audio_upload_to(instance: Transcription, filename: str) -> str:
    # The stored name is ours alone: the client's file name never reaches a path.
    # `filename` here is already the generated "<uuid><ext>" from the service.
    return f"audio/{instance.created_at:%Y/%m/%d}/{filename}"


class Transcription(models.Model):
    """One speech-recognition job: the audio, its state, and its result."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"

    class Source(models.TextChoices):
        API = "api"
        WEB = "web"
        TELEGRAM = "telegram"
        CLI = "cli"
        # A live dictation session (asr.realtime.live): its audio streamed over a
        # WebSocket, its text the session's finals (LiveUtterance).
        LIVE = "live"
        # The OpenAI-compatible door (asr.openai_api): POST /v1/audio/transcriptions.
        OPENAI = "openai"

    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="transcriptions",
    )
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.API)
    status = models.CharField(
        max_length=16, choices=Status.choices, default=Status.QUEUED, db_index=True
    )

    audio = models.FileField(upload_to=audio_upload_to, max_length=255, blank=True)
    original_filename = models.CharField(max_length=255, blank=True)
    audio_format = models.CharField(max_length=64, blank=True)
    audio_codec = models.CharField(max_length=64, blank=True)
    audio_size = models.BigIntegerField(default=0)
    audio_sha256 = models.CharField(max_length=64, blank=True, db_index=True)
    # From the container's headers at upload: a hint for time limits only.
    duration_hint = models.FloatField(null=True, blank=True)
    # Counted while decoding: the real duration.
    duration = models.FloatField(null=True, blank=True)

    language = models.CharField(max_length=16, blank=True)
    detected_language = models.CharField(max_length=16, blank=True)
    engine = models.CharField(max_length=32, blank=True)
    model = models.CharField(max_length=128, blank=True)
    device = models.CharField(max_length=32, blank=True)

    text = models.TextField(blank=True)
    segments = models.JSONField(default=list, blank=True)
    meta = models.JSONField(default=dict, blank=True)

    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.TextField(blank=True)

    # Told when the job finishes (the webhooks app), signed with the owner's job
    # webhook secret; empty: only the owner's standing endpoints are.
    webhook_url = models.CharField(max_length=2048, blank=True)

    attempts = models.PositiveIntegerField(default=0)
    # Bumped by every event of this job: clients order pushed events by it.
    event_seq = models.PositiveIntegerField(default=0)
    # Seconds of audio transcribed so far (progress while running).
    processed_seconds = models.FloatField(null=True, blank=True)
    task_id = models.CharField(max_length=64, blank=True)
    # Run as part of another message's batch (micro-batching): that message's task
    # id. While the job runs, that message, not the job's own, holds it: its
    # redelivery (a dead worker) takes the job back; the job's own message skips it.
    batch_task_id = models.CharField(max_length=64, blank=True, db_index=True)
    # While running: whether the process holding the job is working on it right
    # now (decoding it, or in the engine call it is part of) rather than on another
    # job of its batch. If that process dies, only such jobs keep the attempt it
    # cost; the others get theirs back (asr.services.claim). True unless known
    # otherwise: a job run alone is always its process's work.
    in_progress = models.BooleanField(default=True)
    # Taken back from a batch whose process died (asr.services.claim): from then on
    # it neither leads nor joins a batch, so it cannot share another crash.
    alone = models.BooleanField(default=False)
    worker_hostname = models.CharField(max_length=255, blank=True)

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    # Set at claim: past it, a running job whose message is gone has timed out.
    deadline_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    decode_seconds = models.FloatField(null=True, blank=True)
    engine_seconds = models.FloatField(null=True, blank=True)
    processing_seconds = models.FloatField(null=True, blank=True)
    real_time_factor = models.FloatField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["owner", "-created_at"]),
            models.Index(fields=["status", "created_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.id} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED

    def error(self) -> dict[str, Any] | None:
        if not self.error_code:
            return None
        return {"code": self.error_code, "message": self.error_message}


class TranscriptionEvent(models.Model):
    """One step in a job's history: accepted, started, finished, retried, ..."""

    class Kind(models.TextChoices):
        ACCEPTED = "accepted"
        STARTED = "started"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"
        REQUEUED = "requeued"
        RETRIED = "retried"
        # Pushed to watchers only, never stored.
        PROGRESS = "progress"

    transcription = models.ForeignKey(
        Transcription, on_delete=models.CASCADE, related_name="events"
    )
    seq = models.PositiveIntegerField()
    kind = models.CharField(max_length=16, choices=Kind.choices)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["transcription", "seq"]
        constraints = [
            models.UniqueConstraint(
                fields=["transcription", "seq"], name="unique_event_seq"
            )
        ]

    def __str__(self) -> str:
        return f"{self.transcription_id} #{self.seq} {self.kind}"


class TranscriptionChunk(models.Model):
    """One piece of a long job, cut at a pause and transcribed by its own task.

    Made by ``asr.fanout`` for audio longer than ASR_FANOUT_SECONDS. Times are
    seconds in the job's audio; ``segments`` carry absolute times too. A chunk that
    succeeded is never run again: its attempts say how often it was started.
    """

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    transcription = models.ForeignKey(
        Transcription, on_delete=models.CASCADE, related_name="chunks"
    )
    index = models.PositiveIntegerField()
    start = models.FloatField()
    end = models.FloatField()
    # Storage name of the chunk's 16 kHz mono WAV; deleted when the job finishes.
    audio = models.CharField(max_length=255)
    status = models.CharField(
        max_length=16, choices=Status.choices, default=Status.QUEUED
    )
    attempts = models.PositiveIntegerField(default=0)
    task_id = models.CharField(max_length=64)

    text = models.TextField(blank=True)
    segments = models.JSONField(default=list, blank=True)
    language = models.CharField(max_length=16, blank=True)
    engine = models.CharField(max_length=32, blank=True)
    model = models.CharField(max_length=128, blank=True)
    device = models.CharField(max_length=32, blank=True)
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.TextField(blank=True)

    worker_hostname = models.CharField(max_length=255, blank=True)
    # The pool process: which model load ran it.
    worker_pid = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    # Set at claim: past it, a running chunk whose message is gone has timed out.
    deadline_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    engine_seconds = models.FloatField(null=True, blank=True)

    class Meta:
        ordering = ["transcription", "index"]
        constraints = [
            # A second fan-out of one job (a redelivered leader) cannot add chunks.
            models.UniqueConstraint(
                fields=["transcription", "index"], name="unique_chunk_index"
            )
        ]

    def __str__(self) -> str:
        return f"{self.transcription_id} chunk {self.index} ({self.status})"

    @property
    def duration(self) -> float:
        return self.end - self.start


class LiveUtterance(models.Model):
    """One final of a live session: an utterance cut at a voice-activity end point
    (or at LIVE_MAX_UTTERANCE_SECONDS), transcribed by a live worker.

    Stored before it is sent, so a client that reconnects gets every final it missed;
    ``index`` counts from 0 in the session, and the unique constraint makes a second
    run of the same utterance (a redelivered message) store nothing new. Times are
    seconds in the session's audio; ``segments`` carry session times too.
    """

    transcription = models.ForeignKey(
        Transcription, on_delete=models.CASCADE, related_name="utterances"
    )
    index = models.PositiveIntegerField()
    start = models.FloatField()
    end = models.FloatField()
    text = models.TextField(blank=True)
    segments = models.JSONField(default=list, blank=True)
    language = models.CharField(max_length=16, blank=True)
    # An utterance the engine could not transcribe (an engine that refused it, or
    # was unavailable past its retries): its final is sent with the error and no
    # text, and the session goes on.
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.TextField(blank=True)
    worker_hostname = models.CharField(max_length=255, blank=True)
    engine_seconds = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["transcription", "index"]
        constraints = [
            models.UniqueConstraint(
                fields=["transcription", "index"], name="unique_utterance_index"
            )
        ]

    def __str__(self) -> str:
        return f"{self.transcription_id} utterance {self.index}"

    def as_final(self) -> dict[str, Any]:
        """The final as every live protocol builds its message from."""
        return {
            "index": self.index,
            "start": round(self.start, 3),
            "end": round(self.end, 3),
            "text": self.text,
            "language": self.language,
            "segments": self.segments,
            **(
                {"error": {"code": self.error_code, "message": self.error_message}}
                if self.error_code
                else {}
            ),
        }
