"""The one state machine of an attempt at transcribing, for whole jobs, batch members
and fanned-out chunks alike.

A unit of work is a row, a job or a chunk of one, that goes queued -> running ->
succeeded | failed. Every move is a conditional UPDATE, so that of two attempts (a
redelivered message, a retry) only the latest may write:

- claim (``attempt_claim``): running, attempts + 1, a deadline from the hard time
  limit, the worker's name; only while attempts < ASR_MAX_ATTEMPTS. A unit whose
  workers died that often is not run again: it fails ``worker_lost``. (A job that a
  dead batch held but was not working on gets its attempt back: see
  ``asr.services.claim``.)
- what goes wrong in an attempt (``failure_of``, ``transient_failure``): bad audio
  and an engine's refusal fail at once with their own code; the soft time limit fails
  ``timeout``; a transient engine or storage error propagates for the task to
  retry, and at the attempt cap fails ``engine_unavailable`` or
  ``storage_unavailable``; audio not in the store fails ``audio_missing`` at once.
- finish (``attempts_finish``): the job's outcome and its event are written in one
  transaction, and only while this attempt still holds the job (running, the same
  attempt number); an older attempt's outcome is dropped.

The error codes and the messages a person reads are written here and nowhere else.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.db.models import QuerySet
from django.utils import timezone

from asr.audio import AudioError
from asr.engines import EngineError
from asr.engines import EngineTransientError
from asr.events import transcription_event_record
from asr.events import transcription_events_record_bulk
from asr.models import Transcription
from asr.models import TranscriptionEvent
from asr.storage import StorageUnavailable

logger = logging.getLogger(__name__)

Status = Transcription.Status
Kind = TranscriptionEvent.Kind

# Error codes a worker writes on a job (the audio's own are in asr.audio, the
# engines' in asr.engines).
TIMEOUT = "timeout"
WORKER_LOST = "worker_lost"
ENGINE_UNAVAILABLE = "engine_unavailable"
AUDIO_MISSING = "audio_missing"
STORAGE_UNAVAILABLE = "storage_unavailable"
INTERNAL_ERROR = "internal_error"

# What an attempt transcribes, in the messages below: the whole audio, or a part.
WHOLE = "this audio"

# Problems that fail an attempt at once: retrying cannot help.
PERMANENT_ERRORS = (AudioError, EngineError, SoftTimeLimitExceeded)
# Problems that may pass: the task retries them with back-off, up to the cap.
TRANSIENT_ERRORS = (EngineTransientError, StorageUnavailable)


@dataclass(frozen=True)
class Failure:
    """Why a job failed: a code for programs, a message for people."""

    code: str
    message: str


def part_of(start: float, end: float) -> str:
    """``what`` for a chunk: "part of this audio (0:02:00-0:04:00)"."""

    def clock(seconds: float) -> str:
        minutes, secs = divmod(int(seconds), 60)
        return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"

    return f"part of this audio ({clock(start)}-{clock(end)})"


def worker_lost(*, what: str = WHOLE) -> Failure:
    return Failure(
        WORKER_LOST,
        f"The worker stopped while transcribing {what} {settings.ASR_MAX_ATTEMPTS} "
        "times, so it was not tried again. The file may crash the decoder or the "
        "model; try converting it to WAV or FLAC.",
    )


def timed_out(*, what: str = WHOLE, stopped: bool = False) -> Failure:
    """``stopped``: found past its deadline by the reconciler, not by the worker."""
    message = f"Transcribing {what} took longer than its time limit"
    if stopped:
        return Failure(TIMEOUT, f"{message} and was stopped.")
    if what == WHOLE:
        # A whole file's limit comes from the duration its header declares.
        message += (
            ". The file may declare a shorter duration than it holds; try "
            "re-encoding it"
        )
    return Failure(TIMEOUT, f"{message}.")


def audio_missing(*, what: str = WHOLE) -> Failure:
    if what == WHOLE:
        return Failure(
            AUDIO_MISSING, "The audio of this job is no longer stored; upload it again."
        )
    # A chunk's audio is cut from the job's: running the job again cuts it anew.
    return Failure(
        AUDIO_MISSING, "Part of this job's audio is no longer stored; retry the job."
    )


def internal_failure(*, what: str = WHOLE) -> Failure:
    """Something of ours broke (logged with its traceback where it happened)."""
    return Failure(
        INTERNAL_ERROR,
        f"The server could not transcribe {what} because of an error of its own; "
        "the operators have it in the worker's log.",
    )


def failure_of(exc: BaseException, *, what: str = WHOLE) -> Failure:
    """The failure one of ``PERMANENT_ERRORS`` means."""
    if isinstance(exc, AudioError | EngineError):
        return Failure(exc.code, exc.message)
    if isinstance(exc, SoftTimeLimitExceeded):
        return timed_out(what=what)
    raise TypeError(f"not a permanent error: {exc!r}")


def transient_failure(
    exc: EngineTransientError | StorageUnavailable, *, attempts: int, what: str = WHOLE
) -> Failure:
    """What a transient engine or storage error ends in: below the attempt cap it is
    raised again, for the task to retry (a new attempt, counted like a worker's
    death); at the cap the job fails with a code, rather than running into the cap's
    ``worker_lost`` or staying running until the reconciler times it out."""
    if attempts < settings.ASR_MAX_ATTEMPTS:
        raise exc
    if isinstance(exc, StorageUnavailable):
        return Failure(
            STORAGE_UNAVAILABLE,
            f"The audio store failed {attempts} times while reading {what} "
            f"({exc.reason}). Retry the job when the store is back.",
        )
    return Failure(
        ENGINE_UNAVAILABLE,
        f"The recognition engine failed {attempts} times on {what} ({exc}). Try "
        "again later.",
    )


def attempt_claim(
    rows: QuerySet[Any],
    *,
    hostname: str,
    now: datetime,
    deadline_at: datetime | None,
    **fields: Any,
) -> int:
    """Claim ``rows`` (jobs or chunks, already narrowed to the state they may be
    claimed from) for a new attempt; how many were."""
    return rows.filter(attempts__lt=settings.ASR_MAX_ATTEMPTS).update(
        status=Status.RUNNING,
        attempts=F("attempts") + 1,
        started_at=now,
        deadline_at=deadline_at,
        worker_hostname=hostname[:255],
        **fields,
    )


# A job, the data of its outcome's event, and the fields written on its row.
Outcome = tuple[Transcription, dict[str, Any], dict[str, Any]]


def failed(job: Transcription, failure: Failure, **event: Any) -> Outcome:
    """An attempt's outcome: ``job`` failed; ``event`` joins the event's data."""
    return (
        job,
        {"code": failure.code, **event},
        {
            "status": Status.FAILED,
            "error_code": failure.code,
            "error_message": failure.message,
        },
    )


def succeeded(
    job: Transcription,
    *,
    text: str,
    segments: list[dict[str, Any]],
    language: str,
    meta: dict[str, Any],
    duration: float,
    engine: str,
    model: str,
    device: str,
    engine_seconds: float,
    **fields: Any,
) -> Outcome:
    """An attempt's outcome: ``job`` transcribed. ``engine_seconds`` is the compute
    its audio cost (a fanned-out job's chunks together, a batch member's share);
    ``fields`` go on the row too (``decode_seconds``)."""
    duration = round(duration, 3)
    return (
        job,
        {"duration": duration, "engine_seconds": round(engine_seconds, 4)},
        {
            "status": Status.SUCCEEDED,
            "text": text,
            "segments": segments,
            "meta": meta,
            "detected_language": language,
            "duration": duration,
            "processed_seconds": duration,
            "engine": engine,
            "model": model,
            "device": device,
            "engine_seconds": round(engine_seconds, 4),
            "real_time_factor": round(engine_seconds / duration, 4)
            if duration
            else None,
            "error_code": "",
            "error_message": "",
            **fields,
        },
    )


def attempt_update(job: Transcription, **fields: Any) -> bool:
    """Write ``fields`` on the job's row, and take its next event sequence number,
    if ``job``'s attempt still holds it (running, no newer attempt); whether it did.

    An attempt is its number and the message that runs it: a job that a dead
    batch gave its attempt back (``asr.services.claim``) runs the same number again,
    under a new message.

    The attempt holds the number as it left it (claim, progress): the next is known
    without reading it back, unless an event from elsewhere came in between.
    """
    current = Transcription.objects.filter(
        pk=job.pk,
        status=Status.RUNNING,
        attempts=job.attempts,
        task_id=job.task_id,
        batch_task_id=job.batch_task_id,
    )
    if current.filter(event_seq=job.event_seq).update(
        event_seq=job.event_seq + 1, **fields
    ):
        job.event_seq += 1
        return True
    if not current.update(event_seq=F("event_seq") + 1, **fields):
        return False
    job.event_seq = (
        Transcription.objects.filter(pk=job.pk)
        .values_list("event_seq", flat=True)
        .get()
    )
    return True


def attempts_finish(outcomes: list[Outcome]) -> list[Transcription]:
    """Write outcomes (one job's, or a batch's) in one transaction; the jobs written.

    A job whose attempt is no longer the latest (another worker took it over) or
    that is no longer running keeps what it has.
    """
    now = timezone.now()
    done: list[tuple[Transcription, str, dict[str, Any]]] = []
    with transaction.atomic():
        for job, event, fields in outcomes:
            fields = {"finished_at": now, **fields}
            if job.started_at is not None:
                fields["processing_seconds"] = (now - job.started_at).total_seconds()
            if not attempt_update(job, **fields):
                continue
            for name, value in fields.items():
                setattr(job, name, value)
            done.append((job, fields["status"], event))
        transcription_events_record_bulk(done)
    written = {job.pk for job, _, _ in done}
    for job, event, fields in outcomes:
        _log_outcome(job, event, fields, written=job.pk in written)
    return [job for job, _, _ in done]


def attempt_finish(outcome: Outcome) -> bool:
    """``attempts_finish`` for one job: whether its outcome was written."""
    return bool(attempts_finish([outcome]))


def transcription_fail(
    *, transcription: Transcription, code: str, message: str
) -> bool:
    """Mark a running job failed, by the attempt that holds it."""
    return attempt_finish(failed(transcription, Failure(code, message)))


def transcription_fail_unheld(
    rows: QuerySet[Transcription], *, transcription_id: Any, failure: Failure
) -> bool:
    """Fail a job that no attempt holds any more: its workers died at the attempt
    cap, or the reconciler found it past its deadline. ``rows`` selects the job in
    the state that allows it (a conditional UPDATE, as everywhere). The status and
    its event are one transaction, as in ``attempts_finish``: what the event's
    listeners write (a webhook's delivery row) comes with the failure or not at all."""
    with transaction.atomic():
        if not rows.update(
            status=Status.FAILED,
            error_code=failure.code,
            error_message=failure.message,
            finished_at=timezone.now(),
            batch_task_id="",
        ):
            return False
        transcription_event_record(
            transcription_id=transcription_id,
            kind=Kind.FAILED,
            data={"code": failure.code},
        )
    logger.warning("job %s failed: %s", transcription_id, failure.code)
    return True


def _log_outcome(
    job: Transcription, event: dict[str, Any], fields: dict[str, Any], *, written: bool
) -> None:
    # A batch's log context names its leader: each line names its own job.
    extra = {"job_id": str(job.id)}
    if not written:
        logger.warning(
            "job %s: result dropped, another attempt finished it", job.id, extra=extra
        )
    elif fields["status"] == Status.FAILED:
        logger.info(
            "job %s failed: %s: %s",
            job.id,
            fields["error_code"],
            fields["error_message"],
            extra=extra,
        )
    else:
        logger.info(
            "job %s succeeded: %.1f s of audio (engine %.2f s)",
            job.id,
            event["duration"],
            event["engine_seconds"],
            extra=extra,
        )
