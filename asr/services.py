"""Business logic of transcription jobs: every door and every task calls these."""

from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from datetime import timedelta
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.core.files.base import File
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from asr import audio as audio_lib
from asr.engines import EngineError
from asr.engines import TranscriptionResult
from asr.events import transcription_event_record
from asr.languages import normalise_language
from asr.models import Transcription
from asr.models import TranscriptionEvent
from kikipounamu.errors import ApplicationError

logger = logging.getLogger(__name__)

Status = Transcription.Status
Kind = TranscriptionEvent.Kind

# HTTP statuses for audio refused at upload.
_UPLOAD_ERROR_STATUS = {
    audio_lib.UNSUPPORTED_FORMAT: 415,
    audio_lib.NO_AUDIO_STREAM: 422,
    audio_lib.EMPTY_AUDIO: 400,
    audio_lib.TOO_LARGE: 413,
    audio_lib.TOO_LONG: 422,
}


def clean_filename(name: str | None) -> str:
    """The client's file name, for display only: last path part, printable, bounded."""
    name = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip()
    return name[:255] or "audio"


def transcription_create(
    *,
    owner: Any,
    audio: File,
    language: str | None = None,
    source: str = Transcription.Source.API,
) -> Transcription:
    """Validate and store the audio, create the job, and enqueue it on commit.

    Only container headers are read here (cheap); the real decoding, with its limits,
    is the worker's. Nothing is left behind when validation or the insert fails.
    API and web submissions are refused (503 ``busy``) while the queue is full; the
    Telegram door calls ``admission_check`` itself, before downloading anything.
    """
    if source in (Transcription.Source.API, Transcription.Source.WEB):
        admission_check()
    try:
        language_code = normalise_language(language)
    except ValueError:
        raise ApplicationError(
            f"'{language}' is not a language code we know. Use an ISO 639-1 code "
            "such as 'en' or 'de', or leave it empty to detect the language.",
            code="invalid_language",
        ) from None

    size = audio.size or 0
    if size == 0:
        raise ApplicationError(
            "The file is empty.", code=audio_lib.EMPTY_AUDIO, status=400
        )
    if size > settings.ASR_MAX_UPLOAD_BYTES:
        raise ApplicationError(
            f"The file is {size / 1e6:.1f} MB; the limit is "
            f"{settings.ASR_MAX_UPLOAD_BYTES / 1e6:.0f} MB.",
            code=audio_lib.TOO_LARGE,
            status=413,
        )

    digest = hashlib.sha256()
    for chunk in audio.chunks():
        digest.update(chunk)
    audio.seek(0)
    try:
        info = audio_lib.probe(_local_source(audio))
    except audio_lib.AudioError as exc:
        raise ApplicationError(
            exc.message, code=exc.code, status=_UPLOAD_ERROR_STATUS.get(exc.code, 400)
        ) from exc
    finally:
        audio.seek(0)
    if (
        info.duration_hint is not None
        and info.duration_hint > settings.ASR_MAX_DURATION_SECONDS
    ):
        raise ApplicationError(
            f"This audio lasts {info.duration_hint / 3600:.1f} h; the limit is "
            f"{settings.ASR_MAX_DURATION_SECONDS / 3600:.1f} h. Split it into "
            "shorter files.",
            code=audio_lib.TOO_LONG,
            status=422,
        )

    job = Transcription(
        id=uuid.uuid4(),
        owner=owner if owner is not None and owner.is_authenticated else None,
        source=source,
        original_filename=clean_filename(audio.name),
        audio_format=info.format_name,
        audio_codec=info.codec,
        audio_size=size,
        audio_sha256=digest.hexdigest(),
        duration_hint=info.duration_hint,
        language=language_code or "",
        task_id=str(uuid.uuid4()),
    )
    job.audio.save(f"{job.id}{info.extension}", File(audio), save=False)
    try:
        with transaction.atomic():
            job.save(force_insert=True)
            # Enqueue first: on_commit callbacks run in order, and the job should
            # not wait for the realtime push of its "accepted" event.
            transaction.on_commit(lambda: transcription_enqueue(transcription=job))
            transcription_event_record(
                transcription_id=job.id,
                kind=Kind.ACCEPTED,
                data={"source": source, "size": size, "format": info.format_name},
            )
    except Exception:
        # The row did not make it: the stored audio must not outlive it.
        job.audio.delete(save=False)
        raise
    logger.info(
        "job %s accepted: %s %s, %d bytes, source %s",
        job.id,
        info.format_name,
        info.codec,
        size,
        source,
    )
    return job


def admission_check() -> None:
    """Refuse new work while the `asr` queue holds ASR_MAX_QUEUE_DEPTH messages or more.

    Raises ApplicationError(code="busy", status=503) with ``retry_after`` (seconds,
    estimated from how fast recent jobs ran) in ``extra``; the API sends it as the
    Retry-After header, a bot can tell its user how long to wait.
    """
    from asr.ops import stats

    depth = stats.asr_queue_depth()
    if depth < settings.ASR_MAX_QUEUE_DEPTH:
        return
    retry_after = stats.busy_retry_after(depth=depth)
    logger.warning(
        "submission refused: asr queue %d deep (limit %d), retry after %d s",
        depth,
        settings.ASR_MAX_QUEUE_DEPTH,
        retry_after,
    )
    raise ApplicationError(
        f"The transcription queue is full ({depth} jobs waiting). Try again in "
        f"about {retry_after} seconds.",
        code="busy",
        status=503,
        extra={"retry_after": retry_after, "queue_depth": depth},
    )


def _local_source(audio: File) -> Any:
    path = getattr(audio, "temporary_file_path", None)
    return path() if path else audio.file


def transcription_time_limits(*, duration_hint: float | None) -> tuple[float, float]:
    """(soft, hard) time limits in seconds for one transcribe task.

    A header's duration is only a hint, so an unknown one gets the largest budget;
    a file that lies about being short runs into the soft limit and fails `timeout`.
    """
    duration = (
        duration_hint
        if duration_hint and duration_hint > 0
        else settings.ASR_MAX_DURATION_SECONDS
    )
    soft = min(
        settings.ASR_TIME_LIMIT_BASE + duration * settings.ASR_TIME_LIMIT_RTF,
        settings.ASR_TIME_LIMIT_MAX,
    )
    return soft, soft + settings.ASR_TIME_LIMIT_GRACE


def transcription_enqueue(*, transcription: Transcription) -> None:
    """Send the job's message; a broker outage leaves the job to the reconciler."""
    from asr.tasks import transcribe

    soft, hard = transcription_time_limits(duration_hint=transcription.duration_hint)
    try:
        transcribe.apply_async(
            args=(str(transcription.id),),
            task_id=transcription.task_id,
            soft_time_limit=round(soft),
            time_limit=round(hard),
        )
    except Exception:
        # The job row is committed; the reconciler re-sends its message later.
        logger.exception(
            "job %s: enqueue failed, left for the reconciler", transcription.id
        )


def transcription_claim(
    *, transcription_id: str, task_id: str, hostname: str
) -> Transcription | None:
    """Take the job for this worker, or ``None`` if there is nothing to do.

    A conditional UPDATE decides: a job already finished (a redelivered message) or
    one whose workers died too often is not run again. A job still marked running
    may be claimed: its message is only redelivered once the worker that held it is
    gone (the broker's visibility timeout is longer than any task's hard limit).
    """
    now = timezone.now()
    claimable = Transcription.objects.filter(
        pk=transcription_id, status__in=[Status.QUEUED, Status.RUNNING]
    )
    job = claimable.only("duration_hint").first()
    if job is None:
        logger.info(
            "job %s: nothing to do (finished, cancelled or gone)", transcription_id
        )
        return None
    _, hard = transcription_time_limits(duration_hint=job.duration_hint)
    updated = claimable.filter(attempts__lt=settings.ASR_MAX_ATTEMPTS).update(
        status=Status.RUNNING,
        attempts=F("attempts") + 1,
        started_at=now,
        deadline_at=now + timedelta(seconds=hard),
        task_id=task_id,
        worker_hostname=hostname[:255],
    )
    if updated == 0:
        lost = claimable.update(
            status=Status.FAILED,
            error_code="worker_lost",
            error_message=(
                f"The worker stopped while transcribing this audio "
                f"{settings.ASR_MAX_ATTEMPTS} times, so it was not tried again. The "
                "file may crash the decoder or the model; try converting it to WAV "
                "or FLAC."
            ),
            finished_at=now,
        )
        if lost:
            logger.warning(
                "job %s: failed worker_lost after max attempts", transcription_id
            )
            transcription_event_record(
                transcription_id=transcription_id,
                kind=Kind.FAILED,
                data={"code": "worker_lost"},
            )
        return None
    transcription_event_record(
        transcription_id=transcription_id,
        kind=Kind.STARTED,
        data={"worker": hostname, "task_id": task_id},
    )
    return Transcription.objects.get(pk=transcription_id)


def _finish(job: Transcription, event: dict[str, Any], **fields: Any) -> bool:
    """Write the outcome of this attempt, unless another attempt got there first."""
    now = timezone.now()
    fields.setdefault("finished_at", now)
    if job.started_at is not None:
        fields["processing_seconds"] = (now - job.started_at).total_seconds()
    with transaction.atomic():
        done = bool(
            Transcription.objects.filter(
                pk=job.pk, status=Status.RUNNING, attempts=job.attempts
            ).update(**fields)
        )
        if done:
            transcription_event_record(
                transcription_id=job.pk, kind=fields["status"], data=event
            )
    return done


def transcription_fail(
    *, transcription: Transcription, code: str, message: str
) -> None:
    """Mark a running job failed with an error a person can act on."""
    if _finish(
        transcription,
        {"code": code},
        status=Status.FAILED,
        error_code=code,
        error_message=message,
    ):
        logger.info("job %s failed: %s: %s", transcription.id, code, message)


def transcription_process(
    *, transcription_id: str, task_id: str, hostname: str, engine: Any
) -> None:
    """Worker side of one job: claim, decode, transcribe, store.

    Permanent problems (bad audio, unsupported language, timeout) fail the job at
    once. Transient ones (``EngineTransientError``) propagate so that the task retries.
    """
    from asr import fanout

    # Long audio already split into chunks (asr.fanout): never claimed or split again.
    if fanout.transcription_fan_out_resume(transcription_id=transcription_id):
        return
    job = transcription_claim(
        transcription_id=transcription_id, task_id=task_id, hostname=hostname
    )
    if job is None:
        return
    logger.info(
        "job %s: claimed by %s (attempt %d, task %s)",
        job.id,
        hostname,
        job.attempts,
        task_id,
    )
    if not job.audio.name or not default_storage.exists(job.audio.name):
        transcription_fail(
            transcription=job,
            code="audio_missing",
            message="The audio of this job is no longer stored; upload it again.",
        )
        return
    try:
        started = time.monotonic()
        samples = audio_lib.decode(
            job.audio.path,
            max_seconds=settings.ASR_MAX_DURATION_SECONDS,
            timeout=settings.ASR_DECODE_TIMEOUT_SECONDS,
        )
        decoded = time.monotonic()
        duration = samples.shape[0] / audio_lib.SAMPLE_RATE
        Transcription.objects.filter(pk=job.pk, attempts=job.attempts).update(
            duration=round(duration, 3)
        )
        if fanout.fan_out_wanted(duration=duration):
            # Long audio: chunks run as parallel tasks and the last one merges.
            fanout.transcription_fan_out(
                transcription=job, samples=samples, decode_seconds=decoded - started
            )
            return
        result: TranscriptionResult = engine.transcribe(
            samples,
            audio_lib.SAMPLE_RATE,
            job.language or None,
            on_segment=ProgressReporter(job),
        )
        finished = time.monotonic()
    except audio_lib.AudioError as exc:
        transcription_fail(transcription=job, code=exc.code, message=exc.message)
        return
    except EngineError as exc:
        transcription_fail(transcription=job, code=exc.code, message=exc.message)
        return
    except SoftTimeLimitExceeded:
        transcription_fail(
            transcription=job,
            code="timeout",
            message="Transcribing took longer than this audio's time limit. The file "
            "may declare a shorter duration than it holds; try re-encoding it.",
        )
        return

    engine_seconds = finished - decoded
    done = _finish(
        job,
        {"duration": round(duration, 3), "engine_seconds": round(engine_seconds, 4)},
        status=Status.SUCCEEDED,
        text=result.text,
        segments=result.segments_as_dicts(),
        # The pid tells which worker process (and model load) ran it.
        meta={**result.meta, "worker_pid": os.getpid()},
        detected_language=result.language or "",
        duration=round(duration, 3),
        engine=engine.name,
        model=engine.model_name,
        device=engine.device,
        decode_seconds=round(decoded - started, 4),
        engine_seconds=round(engine_seconds, 4),
        real_time_factor=round(engine_seconds / duration, 4) if duration else None,
        error_code="",
        error_message="",
    )
    if done:
        logger.info(
            "job %s succeeded: %.1f s of audio in %.2f s (engine %.2f s)",
            job.id,
            duration,
            finished - started,
            engine_seconds,
        )
    else:
        logger.warning("job %s: result dropped, another attempt finished it", job.id)


class ProgressReporter:
    """Given to the engine as ``on_segment``: publishes partial results, throttled.

    Progress is pushed to watchers but not kept in the history (a long file has
    thousands of segments); the partial transcript is kept on the row, so a client
    that reconnects mid-job gets it in its snapshot.
    """

    def __init__(self, job: Transcription) -> None:
        self.job = job
        self.segments: list[dict[str, Any]] = []
        self.last_sent = time.monotonic()

    def __call__(self, segment: Any) -> None:
        self.segments.append(
            {"start": segment.start, "end": segment.end, "text": segment.text}
        )
        now = time.monotonic()
        if now - self.last_sent >= settings.ASR_PROGRESS_INTERVAL:
            self.last_sent = now
            transcription_progress(
                transcription=self.job,
                processed_seconds=segment.end,
                segments=self.segments,
            )


def transcription_progress(
    *,
    transcription: Transcription,
    processed_seconds: float,
    segments: list[dict[str, Any]],
) -> None:
    """Store and announce how far a running attempt has got."""
    from asr.events import announce_progress
    from asr.events import next_event_seq

    with transaction.atomic():
        updated = Transcription.objects.filter(
            pk=transcription.pk,
            status=Status.RUNNING,
            attempts=transcription.attempts,
        ).update(
            processed_seconds=round(processed_seconds, 3),
            segments=segments,
            text=" ".join(s["text"] for s in segments if s["text"]).strip(),
        )
        if not updated:
            return
        seq = next_event_seq(transcription.pk)
        transaction.on_commit(
            lambda: announce_progress(
                transcription_id=transcription.pk,
                seq=seq,
                processed_seconds=processed_seconds,
            )
        )


def transcription_retry(*, transcription: Transcription) -> Transcription:
    """Run a failed or cancelled job again, from the start, as a fresh job."""
    if transcription.status not in (Status.FAILED, Status.CANCELLED):
        raise ApplicationError(
            f"This job is {transcription.status}; only failed or cancelled jobs can "
            "be retried.",
            code="not_retryable",
            status=409,
        )
    if not transcription.audio.name or not default_storage.exists(
        transcription.audio.name
    ):
        raise ApplicationError(
            "The audio of this job is no longer stored; upload it again.",
            code="audio_missing",
            status=409,
        )
    with transaction.atomic():
        updated = Transcription.objects.filter(
            pk=transcription.pk, status__in=[Status.FAILED, Status.CANCELLED]
        ).update(
            status=Status.QUEUED,
            attempts=0,
            task_id=str(uuid.uuid4()),
            error_code="",
            error_message="",
            text="",
            segments=[],
            processed_seconds=None,
            started_at=None,
            finished_at=None,
            deadline_at=None,
        )
        if not updated:
            raise ApplicationError(
                "This job changed meanwhile; reload it.", code="conflict", status=409
            )
        from asr.fanout import transcription_chunks_discard

        transcription_chunks_discard(transcription_id=transcription.pk)
        transcription_event_record(
            transcription_id=transcription.pk,
            kind=Kind.RETRIED,
            data={"previous_error": transcription.error_code},
        )
        transcription.refresh_from_db()
        job = transcription
        transaction.on_commit(lambda: transcription_enqueue(transcription=job))
    return transcription


def transcription_cancel(*, transcription: Transcription) -> Transcription:
    """Cancel a queued job and revoke its message; a running job cannot be stopped."""
    updated = Transcription.objects.filter(
        pk=transcription.pk, status=Status.QUEUED
    ).update(status=Status.CANCELLED, finished_at=timezone.now())
    if updated:
        transcription_event_record(
            transcription_id=transcription.pk, kind=Kind.CANCELLED
        )
    else:
        transcription.refresh_from_db()
        raise ApplicationError(
            f"This job is {transcription.status} and can no longer be cancelled.",
            code="not_cancellable",
            status=409,
        )
    from kikipounamu.celery import app

    # The claim would skip it anyway; revoking spares a worker the round trip.
    try:
        app.control.revoke(transcription.task_id)
    except Exception:
        logger.warning("job %s: revoke not sent", transcription.pk, exc_info=True)
    transcription.refresh_from_db()
    return transcription


def transcription_delete(*, transcription: Transcription) -> None:
    """Delete a finished job with its audio."""
    if not transcription.is_finished:
        raise ApplicationError(
            f"This job is {transcription.status}; cancel it first or wait until it "
            "finishes.",
            code="not_finished",
            status=409,
        )
    name = transcription.audio.name
    with transaction.atomic():
        transcription.delete()
        if name:
            transaction.on_commit(lambda: default_storage.delete(name))


def transcription_delete_audio(*, transcription: Transcription) -> bool:
    """Remove a finished job's audio but keep its row and transcript (retention)."""
    if not transcription.is_finished or not transcription.audio.name:
        return False
    name = transcription.audio.name
    with transaction.atomic():
        Transcription.objects.filter(pk=transcription.pk).update(audio="")
        transaction.on_commit(lambda: default_storage.delete(name))
    transcription.audio.name = ""
    return True


def transcription_delete_or_cancel(
    *, transcription: Transcription
) -> Transcription | None:
    """DELETE on a job: a queued one is cancelled, a finished one deleted."""
    if transcription.status == Status.QUEUED:
        return transcription_cancel(transcription=transcription)
    transcription_delete(transcription=transcription)
    return None


def transcription_reconcile(
    *, broker_task_ids: set[str], min_age: float = 30.0
) -> dict[str, int]:
    """Re-send jobs whose message the broker lost; fail running ones past deadline.

    ``broker_task_ids`` are the task ids held by the broker (waiting or unacked). A
    queued or running job whose task id is not among them has no message that would
    ever run it: Redis restarted without its data, or a hard time limit killed it.
    """
    now = timezone.now()
    cutoff = now - timedelta(seconds=min_age)
    counts = {"requeued": 0, "timed_out": 0}
    candidates = Transcription.objects.filter(
        status__in=[Status.QUEUED, Status.RUNNING],
        created_at__lt=cutoff,
        # Fanned-out jobs have chunk messages, not this one: asr.fanout reconciles them.
        chunks__isnull=True,
    ).exclude(task_id__in=broker_task_ids)
    for job in candidates.iterator():
        if job.status == Status.RUNNING and job.deadline_at and job.deadline_at < now:
            if Transcription.objects.filter(
                pk=job.pk, status=Status.RUNNING, attempts=job.attempts
            ).update(
                status=Status.FAILED,
                error_code="timeout",
                error_message="Transcribing took longer than this audio's time limit "
                "and was stopped.",
                finished_at=now,
            ):
                counts["timed_out"] += 1
                transcription_event_record(
                    transcription_id=job.pk, kind=Kind.FAILED, data={"code": "timeout"}
                )
            continue
        if job.status == Status.RUNNING and job.started_at and job.started_at > cutoff:
            continue
        logger.warning("job %s: no message in the broker, re-sending", job.id)
        transcription_event_record(
            transcription_id=job.pk, kind=Kind.REQUEUED, data={"reason": "message lost"}
        )
        transcription_enqueue(transcription=job)
        counts["requeued"] += 1
    return counts
