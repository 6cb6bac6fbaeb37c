"""A job's life after submission, as its owner or an operator steers it: retry,
cancel, delete (with its audio), or delete the audio alone (retention)."""

from __future__ import annotations

import uuid
from functools import partial

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from asr import storage
from asr.events import transcription_event_record
from asr.models import Transcription
from asr.models import TranscriptionEvent
from asr.services import attempts
from asr.services import dispatch
from asr.services import fanout
from asr.services import intake
from kikipounamu.errors import ApplicationError

Status = Transcription.Status
Kind = TranscriptionEvent.Kind


def transcription_retry(*, transcription: Transcription) -> Transcription:
    """Run a failed or cancelled job again, from the start, as a fresh job."""
    if transcription.status not in (Status.FAILED, Status.CANCELLED):
        raise ApplicationError(
            f"This job is {transcription.status}; only failed or cancelled jobs can "
            "be retried.",
            code="not_retryable",
            status=409,
        )
    try:
        stored = storage.audio_exists(transcription.audio.name)
    except storage.StorageUnavailable as exc:
        raise intake.storage_error(exc) from exc
    if not stored:
        missing = attempts.audio_missing()
        raise ApplicationError(missing.message, code=missing.code, status=409)
    with transaction.atomic():
        updated = Transcription.objects.filter(
            pk=transcription.pk, status__in=[Status.FAILED, Status.CANCELLED]
        ).update(
            status=Status.QUEUED,
            attempts=0,
            task_id=str(uuid.uuid4()),
            batch_task_id="",
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
        fanout.transcription_chunks_discard(transcription_id=transcription.pk)
        transcription_event_record(
            transcription_id=transcription.pk,
            kind=Kind.RETRIED,
            data={"previous_error": transcription.error_code},
        )
        transcription.refresh_from_db()
        job = transcription
        transaction.on_commit(lambda: dispatch.transcription_enqueue(transcription=job))
    return transcription


def transcription_cancel(*, transcription: Transcription) -> Transcription:
    """Cancel a queued job and revoke its message; a running job cannot be stopped."""
    # The status and its event in one transaction: what listens for the event (a
    # webhook's delivery row) is written with the cancel or not at all.
    with transaction.atomic():
        updated = Transcription.objects.filter(
            pk=transcription.pk, status=Status.QUEUED
        ).update(status=Status.CANCELLED, finished_at=timezone.now())
        if updated:
            transcription_event_record(
                transcription_id=transcription.pk, kind=Kind.CANCELLED
            )
    if not updated:
        transcription.refresh_from_db()
        raise ApplicationError(
            f"This job is {transcription.status} and can no longer be cancelled.",
            code="not_cancellable",
            status=409,
        )
    dispatch.messages_revoke([transcription.task_id], what=f"job {transcription.pk}")
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
    transcriptions_delete(
        transcriptions=Transcription.objects.filter(pk=transcription.pk)
    )


def transcriptions_delete(*, transcriptions: QuerySet[Transcription]) -> int:
    """Delete job rows, in whatever state (the admin's delete), and their stored
    audio once the rows are gone: the upload, and any chunk audio a fan-out left.
    The count of jobs deleted."""
    jobs = list(transcriptions.values_list("pk", "audio"))
    with transaction.atomic():
        Transcription.objects.filter(pk__in=[pk for pk, _ in jobs]).delete()
        for pk, name in jobs:
            transaction.on_commit(partial(_stored_audio_delete, pk, name))
    return len(jobs)


def _stored_audio_delete(job_id: uuid.UUID, name: str) -> None:
    storage.audio_delete([name])
    fanout.chunk_audio_delete(transcription_id=job_id)


def transcription_delete_audio(*, transcription: Transcription) -> bool:
    """Remove a finished job's audio but keep its row and transcript (retention)."""
    if not transcription.is_finished or not transcription.audio.name:
        return False
    name = transcription.audio.name
    with transaction.atomic():
        Transcription.objects.filter(pk=transcription.pk).update(audio="")
        transaction.on_commit(lambda: storage.audio_delete([name]))
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
