"""Business logic of transcription jobs: every door and every task calls these."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import time
import uuid
from datetime import timedelta
from typing import Any

import numpy as np
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.core.files.base import File
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from asr import audio as audio_lib
from asr.engines import EngineError
from asr.engines import EngineTransientError
from asr.engines import TranscriptionResult
from asr.events import transcription_event_record
from asr.events import transcription_events_record_bulk
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
        # The ACCEPTED event below is the job's first.
        event_seq=1,
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
                job=job,
                seq=1,
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


def batchable(duration_hint: float | None) -> bool:
    """Whether a job this long may run in a micro-batch (see ASR_BATCH_*)."""
    return (
        settings.ASR_BATCH_JOBS > 1
        and duration_hint is not None
        and 0 < duration_hint <= settings.ASR_BATCH_JOB_MAX_SECONDS
    )


def _message_time_limits(duration_hint: float | None) -> tuple[float, float]:
    # A short job's message may lead a batch: its limits cover a full one.
    if batchable(duration_hint):
        duration_hint = max(duration_hint or 0.0, settings.ASR_BATCH_AUDIO_SECONDS)
    return transcription_time_limits(duration_hint=duration_hint)


def transcription_enqueue(*, transcription: Transcription) -> None:
    """Send the job's message; a broker outage leaves the job to the reconciler."""
    from asr.tasks import transcribe

    soft, hard = _message_time_limits(transcription.duration_hint)
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


def holder_task_id(*, status: str, task_id: str, batch_task_id: str) -> str | None:
    """The task id of the message that holds a job: while it waits, its own; while
    it runs, the message it runs under (its own, or a batch's)."""
    if status == Status.QUEUED:
        return task_id
    if status == Status.RUNNING:
        return batch_task_id or task_id
    return None


def transcription_claim(
    *, transcription_id: str, task_id: str, hostname: str
) -> Transcription | None:
    """Take the job for this worker, or ``None`` if there is nothing to do.

    A conditional UPDATE decides: a job already finished (a redelivered message) or
    one whose workers died too often is not run again. A running job may be claimed
    by the message that holds it (its own, or the batch's it runs in): that message
    is only redelivered once the worker that held it is gone (the broker's visibility
    timeout is longer than any task's hard limit). Any other message for a running
    job (its own, while a batch runs it) does nothing.
    """
    now = timezone.now()
    row = (
        Transcription.objects.filter(pk=transcription_id)
        .values("status", "duration_hint", "task_id", "batch_task_id")
        .first()
    )
    if row is None or row["status"] not in (Status.QUEUED, Status.RUNNING):
        # DEBUG: with micro-batching, most jobs' own messages come to this.
        logger.debug(
            "job %s: nothing to do (finished, cancelled or gone)", transcription_id
        )
        # This message may have led a batch whose worker died after finishing this
        # job but not the others: those go back to the queue. (A job that ran in
        # another message's batch keeps that message's id: its own message led none.)
        if (
            row is not None
            and not row["batch_task_id"]
            and Transcription.objects.filter(
                batch_task_id=task_id, status=Status.RUNNING
            ).exists()
        ):
            transcription_batch_release(task_id=task_id)
        return None
    redelivered = row["status"] == Status.RUNNING
    holder = holder_task_id(
        status=row["status"], task_id=row["task_id"], batch_task_id=row["batch_task_id"]
    )
    if redelivered and holder != task_id:
        logger.debug(
            "job %s: running under task %s; this message has nothing to do",
            transcription_id,
            holder,
        )
        return None
    claimable = Transcription.objects.filter(pk=transcription_id, status=row["status"])
    if redelivered:
        from asr import fanout

        # Long audio already split into chunks: never claimed or split again.
        if fanout.transcription_fan_out_resume(transcription_id=transcription_id):
            return None
        claimable = claimable.filter(batch_task_id=row["batch_task_id"])
    _, hard = _message_time_limits(row["duration_hint"])
    job: Transcription | None = None
    with transaction.atomic():
        updated = claimable.filter(attempts__lt=settings.ASR_MAX_ATTEMPTS).update(
            status=Status.RUNNING,
            attempts=F("attempts") + 1,
            started_at=now,
            deadline_at=now + timedelta(seconds=hard),
            task_id=task_id,
            batch_task_id="",
            worker_hostname=hostname[:255],
            event_seq=F("event_seq") + 1,
        )
        if updated:
            job = Transcription.objects.select_related("owner").get(pk=transcription_id)
            transcription_event_record(
                transcription_id=transcription_id,
                kind=Kind.STARTED,
                data={"worker": hostname, "task_id": task_id},
                job=job,
                seq=job.event_seq,
            )
    if job is None:
        _fail_worker_lost(claimable, transcription_id, now)
        return None
    if redelivered:
        # This message ran a batch when its worker died: the jobs it had taken go
        # back to the queue, each to run on its own, so one file that kills workers
        # cannot take the others down with it.
        transcription_batch_release(task_id=task_id, keep=transcription_id)
    job.claim_redelivered = redelivered  # type: ignore[attr-defined]
    return job


def _fail_worker_lost(claimable: Any, transcription_id: str, now: Any) -> None:
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
        batch_task_id="",
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


def transcription_batch_claim(
    *, leader: Transcription, task_id: str, hostname: str, wait: float = 0.0
) -> list[Transcription]:
    """Take other short queued jobs to run with ``leader`` under its message.

    The oldest first, within ASR_BATCH_JOBS and ASR_BATCH_AUDIO_SECONDS; if fewer
    are waiting, look again for up to ``wait`` seconds. Each is claimed like a job
    of its own (queued -> running, attempts + 1, a STARTED event), marked as held by
    ``task_id``; its own message, when it comes, does nothing.
    """
    if not batchable(leader.duration_hint):
        return []
    room = settings.ASR_BATCH_JOBS - 1
    budget = settings.ASR_BATCH_AUDIO_SECONDS - (leader.duration_hint or 0.0)
    members: list[Transcription] = []
    give_up = time.monotonic() + wait
    while room > 0 and budget > 0:
        taken = _batch_claim_once(
            leader=leader, task_id=task_id, hostname=hostname, room=room, budget=budget
        )
        members += taken
        room -= len(taken)
        budget -= sum(job.duration_hint or 0.0 for job in taken)
        if room <= 0 or time.monotonic() >= give_up:
            break
        time.sleep(min(0.005, max(give_up - time.monotonic(), 0)))
    if members:
        logger.info(
            "job %s: batch of %d under task %s (%s)",
            leader.id,
            len(members) + 1,
            task_id,
            ", ".join(str(job.id) for job in members),
        )
        _revoke_own_messages(members)
    return members


def _revoke_own_messages(members: list[Transcription]) -> None:
    """Have the workers drop, unrun, the messages of jobs a batch now holds.

    Each would otherwise go through a worker's pool only to find nothing to do (its
    claim sees the job running under the batch): on short clips, a good part of a
    worker's CPU per job. One broadcast per batch. Safe either way: a message that
    reaches a worker before the word (or one started since) still finds nothing to
    do, and a job that goes back to the queue gets a new task id.
    """
    _revoke_messages(
        [job.task_id for job in members], what=f"batch {members[0].batch_task_id}"
    )


def _revoke_messages(task_ids: list[str], *, what: str) -> None:
    """Tell every worker to drop these messages unrun. Best effort: each message's
    claim would find nothing to do anyway, revoking only spares a worker the trip."""
    from kikipounamu.celery import app

    try:
        app.control.revoke(task_ids)
    except Exception:
        logger.warning("%s: revoke not sent", what, exc_info=True)


def _batch_claim_once(
    *, leader: Transcription, task_id: str, hostname: str, room: int, budget: float
) -> list[Transcription]:
    now = timezone.now()
    longest = min(settings.ASR_BATCH_JOB_MAX_SECONDS, budget)
    with transaction.atomic():
        # SKIP LOCKED: two workers batching at once take different jobs instead of
        # waiting on each other (PostgreSQL; SQLite has one writer at a time anyway).
        waiting = list(
            Transcription.objects.select_for_update(skip_locked=True)
            .filter(
                status=Status.QUEUED,
                duration_hint__gt=0,
                duration_hint__lte=longest,
                attempts__lt=settings.ASR_MAX_ATTEMPTS,
            )
            .exclude(pk=leader.pk)
            .order_by("created_at")
            .values_list("pk", "duration_hint")[:room]
        )
        chosen, total = [], 0.0
        for pk, hint in waiting:
            duration = hint or 0.0
            if total + duration > budget:
                break
            chosen.append(pk)
            total += duration
        if not chosen:
            return []
        Transcription.objects.filter(pk__in=chosen, status=Status.QUEUED).update(
            status=Status.RUNNING,
            attempts=F("attempts") + 1,
            started_at=now,
            deadline_at=leader.deadline_at,
            batch_task_id=task_id,
            worker_hostname=hostname[:255],
            event_seq=F("event_seq") + 1,
        )
        members = list(
            Transcription.objects.select_related("owner")
            .filter(pk__in=chosen, status=Status.RUNNING, batch_task_id=task_id)
            .order_by("created_at")
        )
        transcription_events_record_bulk(
            [
                (
                    job,
                    Kind.STARTED,
                    {
                        "worker": hostname,
                        "task_id": task_id,
                        "batch_of": str(leader.id),
                    },
                )
                for job in members
            ]
        )
    return members


def transcription_batch_release(*, task_id: str, keep: Any = None) -> int:
    """Put back in the queue the running jobs held by batch message ``task_id``
    (but ``keep``), each under a new message of its own."""
    released = 0
    with transaction.atomic():
        held = Transcription.objects.filter(
            batch_task_id=task_id, status=Status.RUNNING
        )
        if keep is not None:
            held = held.exclude(pk=keep)
        for job in held.select_for_update():
            # A new task id: the job's old message may still be waiting in the queue,
            # and two messages with one id could both take the job.
            new_task_id = str(uuid.uuid4())
            if not Transcription.objects.filter(
                pk=job.pk, status=Status.RUNNING, batch_task_id=task_id
            ).update(
                status=Status.QUEUED,
                batch_task_id="",
                task_id=new_task_id,
                started_at=None,
                deadline_at=None,
            ):
                continue
            job.status, job.task_id, job.batch_task_id = Status.QUEUED, new_task_id, ""
            transcription_event_record(
                transcription_id=job.pk,
                kind=Kind.REQUEUED,
                data={"reason": "its batch's worker stopped", "batch_task_id": task_id},
            )
            transaction.on_commit(
                functools.partial(transcription_enqueue, transcription=job)
            )
            released += 1
    if released:
        logger.warning(
            "batch %s: %d jobs put back in the queue after its worker stopped",
            task_id,
            released,
        )
    return released


def _finish(job: Transcription, event: dict[str, Any], **fields: Any) -> bool:
    """Write the outcome of this attempt, unless another attempt got there first."""
    return bool(_finish_many([(job, event, fields)]))


# A job, the data of its outcome's event, and the fields written on its row.
Outcome = tuple[Transcription, dict[str, Any], dict[str, Any]]


def _update_attempt(job: Transcription, **fields: Any) -> bool:
    """Write ``fields`` on the job's row, and take its next event sequence number,
    if ``job``'s attempt still holds it (running, no newer attempt); whether it did.

    The attempt holds the number as it left it (claim, progress): the next is known
    without reading it back, unless an event from elsewhere came in between.
    """
    current = Transcription.objects.filter(
        pk=job.pk, status=Status.RUNNING, attempts=job.attempts
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


def _finish_many(outcomes: list[Outcome]) -> list[Transcription]:
    """Write several jobs' outcomes in one transaction (a batch's); returns the jobs
    written. A job whose attempt is no longer the latest (another worker took it
    over) or that is no longer running keeps what it has."""
    now = timezone.now()
    done: list[tuple[Transcription, str, dict[str, Any]]] = []
    with transaction.atomic():
        for job, event, fields in outcomes:
            fields = {"finished_at": now, **fields}
            if job.started_at is not None:
                fields["processing_seconds"] = (
                    fields["finished_at"] - job.started_at
                ).total_seconds()
            if not _update_attempt(job, **fields):
                continue
            for name, value in fields.items():
                setattr(job, name, value)
            done.append((job, fields["status"], event))
        transcription_events_record_bulk(done)
    return [job for job, _, _ in done]


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


_TIMEOUT_MESSAGE = (
    "Transcribing took longer than this audio's time limit. The file may declare a "
    "shorter duration than it holds; try re-encoding it."
)


def transcription_process(
    *, transcription_id: str, task_id: str, hostname: str, engine: Any
) -> None:
    """Worker side of one message: claim, decode, transcribe, store.

    A short job takes other short jobs waiting in the queue with it (micro-batching,
    ASR_BATCH_*), unless its message is a redelivery. Permanent problems (bad audio,
    unsupported language, timeout) fail a job at once. Transient ones
    (``EngineTransientError``) propagate so that the task retries.
    """
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
    members: list[Transcription] = []
    if not getattr(job, "claim_redelivered", False):
        members = transcription_batch_claim(
            leader=job,
            task_id=task_id,
            hostname=hostname,
            wait=settings.ASR_BATCH_WAIT_SECONDS
            if getattr(engine, "batches_natively", False)
            else 0.0,
        )
    try:
        if members:
            _process_batch([job, *members], engine)
        else:
            _process_one(job, engine)
    except EngineTransientError as exc:
        # The task retries (a new attempt, counted like a worker's death) until the
        # attempt cap; then the job fails with a code, rather than running into the
        # cap's worker_lost or staying "running" until the reconciler times it out.
        if job.attempts < settings.ASR_MAX_ATTEMPTS:
            raise
        for stuck in [job, *members]:
            transcription_fail(
                transcription=stuck,
                code="engine_unavailable",
                message=f"The recognition engine failed {job.attempts} times on "
                f"this audio ({exc}). Try again later.",
            )


def _decode(job: Transcription) -> tuple[np.ndarray, float]:
    """The job's audio as samples, and the seconds decoding took; AudioError if it
    cannot be used."""
    if not job.audio.name or not default_storage.exists(job.audio.name):
        raise audio_lib.AudioError(
            "audio_missing",
            "The audio of this job is no longer stored; upload it again.",
        )
    started = time.monotonic()
    samples = audio_lib.decode(
        job.audio.path,
        max_seconds=settings.ASR_MAX_DURATION_SECONDS,
        timeout=settings.ASR_DECODE_TIMEOUT_SECONDS,
        # What the upload's probe found in these bytes (empty on older rows).
        format_name=job.audio_format or None,
    )
    return samples, time.monotonic() - started


def _success_fields(
    job: Transcription,
    engine: Any,
    result: TranscriptionResult,
    *,
    duration: float,
    decode_seconds: float,
    engine_seconds: float,
) -> tuple[dict[str, Any], dict[str, Any]]:
    event = {"duration": round(duration, 3), "engine_seconds": round(engine_seconds, 4)}
    fields = {
        "status": Status.SUCCEEDED,
        "text": result.text,
        "segments": result.segments_as_dicts(),
        # The pid tells which worker process (and model load) ran it.
        "meta": {**result.meta, "worker_pid": os.getpid()},
        "detected_language": result.language or "",
        "duration": round(duration, 3),
        "engine": engine.name,
        "model": engine.model_name,
        "device": engine.device,
        "decode_seconds": round(decode_seconds, 4),
        "engine_seconds": round(engine_seconds, 4),
        "real_time_factor": round(engine_seconds / duration, 4) if duration else None,
        "error_code": "",
        "error_message": "",
    }
    return event, fields


def _process_one(job: Transcription, engine: Any) -> None:
    from asr import fanout

    try:
        samples, decode_seconds = _decode(job)
        duration = samples.shape[0] / audio_lib.SAMPLE_RATE
        Transcription.objects.filter(pk=job.pk, attempts=job.attempts).update(
            duration=round(duration, 3)
        )
        if fanout.fan_out_wanted(duration=duration):
            # Long audio: chunks run as parallel tasks and the last one merges.
            fanout.transcription_fan_out(
                transcription=job, samples=samples, decode_seconds=decode_seconds
            )
            return
        started = time.monotonic()
        result: TranscriptionResult = engine.transcribe(
            samples,
            audio_lib.SAMPLE_RATE,
            job.language or None,
            on_segment=ProgressReporter(job),
        )
        engine_seconds = time.monotonic() - started
    except (audio_lib.AudioError, EngineError) as exc:
        transcription_fail(transcription=job, code=exc.code, message=exc.message)
        return
    except SoftTimeLimitExceeded:
        transcription_fail(transcription=job, code="timeout", message=_TIMEOUT_MESSAGE)
        return
    event, fields = _success_fields(
        job,
        engine,
        result,
        duration=duration,
        decode_seconds=decode_seconds,
        engine_seconds=engine_seconds,
    )
    if _finish(job, event, **fields):
        logger.info(
            "job %s succeeded: %.1f s of audio in %.2f s (engine %.2f s)",
            job.id,
            duration,
            decode_seconds + engine_seconds,
            engine_seconds,
        )
    else:
        logger.warning("job %s: result dropped, another attempt finished it", job.id)


def _process_batch(jobs: list[Transcription], engine: Any) -> None:
    """Run a batch: on an engine that batches, decode every job (a bad file fails
    alone), transcribe them in one call and store them together; on the others, each
    job in turn, stored as soon as it is done (its watchers need not wait for the
    rest of the batch)."""
    done: set[Any] = set()

    def write(outcomes: list[Outcome]) -> None:
        _write_outcomes(outcomes)
        done.update(job.pk for job, _, _ in outcomes)

    try:
        if getattr(engine, "batches_natively", False):
            failed: list[Outcome] = []
            ready: list[tuple[Transcription, np.ndarray, float]] = []
            for job in jobs:
                try:
                    samples, decode_seconds = _decode(job)
                except audio_lib.AudioError as exc:
                    failed.append(_failure(job, exc.code, exc.message))
                    continue
                ready.append((job, samples, decode_seconds))
            write(failed + (_transcribe_together(ready, engine) if ready else []))
        else:
            for job in jobs:
                try:
                    samples, decode_seconds = _decode(job)
                except audio_lib.AudioError as exc:
                    write([_failure(job, exc.code, exc.message)])
                    continue
                write([_transcribe_alone((job, samples, decode_seconds), engine)])
    except SoftTimeLimitExceeded:
        write(
            [
                _failure(job, "timeout", _TIMEOUT_MESSAGE)
                for job in jobs
                if job.pk not in done
            ]
        )


def _failure(job: Transcription, code: str, message: str) -> Outcome:
    return (
        job,
        {"code": code},
        {"status": Status.FAILED, "error_code": code, "error_message": message},
    )


def _transcribe_alone(
    item: tuple[Transcription, np.ndarray, float], engine: Any
) -> Outcome:
    job, samples, decode_seconds = item
    started = time.monotonic()
    try:
        result = engine.transcribe(samples, audio_lib.SAMPLE_RATE, job.language or None)
    except EngineError as exc:
        return _failure(job, exc.code, exc.message)
    event, fields = _success_fields(
        job,
        engine,
        result,
        duration=samples.shape[0] / audio_lib.SAMPLE_RATE,
        decode_seconds=decode_seconds,
        engine_seconds=time.monotonic() - started,
    )
    return job, event, fields


def _transcribe_together(
    ready: list[tuple[Transcription, np.ndarray, float]], engine: Any
) -> list[Outcome]:
    started = time.monotonic()
    try:
        results = engine.transcribe_batch(
            [samples for _, samples, _ in ready],
            audio_lib.SAMPLE_RATE,
            [job.language or None for job, _, _ in ready],
        )
    except EngineError:
        # One job's problem (its language, say) must not fail the others: find it.
        return [_transcribe_alone(item, engine) for item in ready]
    elapsed = time.monotonic() - started
    total = sum(samples.shape[0] for _, samples, _ in ready) or 1
    outcomes = []
    for (job, samples, decode_seconds), result in zip(ready, results, strict=True):
        # One call ran them all: each job is charged its share by audio length.
        share = elapsed * samples.shape[0] / total
        event, fields = _success_fields(
            job,
            engine,
            result,
            duration=samples.shape[0] / audio_lib.SAMPLE_RATE,
            decode_seconds=decode_seconds,
            engine_seconds=share,
        )
        event["batch_size"] = fields["meta"]["batch_jobs"] = len(ready)
        outcomes.append((job, event, fields))
    return outcomes


def _write_outcomes(
    outcomes: list[Outcome],
) -> None:
    if not outcomes:
        return
    written = {job.pk for job in _finish_many(outcomes)}
    for job, event, fields in outcomes:
        # The task's log context names the batch's leader: each line names its job.
        extra = {"job_id": str(job.id)}
        if job.pk not in written:
            logger.warning(
                "job %s: result dropped, another attempt finished it",
                job.id,
                extra=extra,
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
                "job %s succeeded: %.1f s of audio in %.2f s (engine %.2f s), batched",
                job.id,
                event["duration"],
                fields["decode_seconds"] + event["engine_seconds"],
                event["engine_seconds"],
                extra=extra,
            )


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

    with transaction.atomic():
        if not _update_attempt(
            transcription,
            processed_seconds=round(processed_seconds, 3),
            segments=segments,
            text=" ".join(s["text"] for s in segments if s["text"]).strip(),
        ):
            return
        seq = transcription.event_seq
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
    _revoke_messages([transcription.task_id], what=f"job {transcription.pk}")
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
    queued or running job whose holding message (``holder_task_id``: its own, or the
    batch's it runs in) is not among them has no message that would ever run it:
    Redis restarted without its data, or a hard time limit killed it.
    """
    now = timezone.now()
    cutoff = now - timedelta(seconds=min_age)
    counts = {"requeued": 0, "timed_out": 0}
    candidates = (
        Transcription.objects.filter(
            status__in=[Status.QUEUED, Status.RUNNING],
            created_at__lt=cutoff,
            # Fanned-out jobs have chunk messages, not this one: asr.fanout
            # reconciles them.
            chunks__isnull=True,
        )
        .exclude(batch_task_id="", task_id__in=broker_task_ids)
        .exclude(status=Status.RUNNING, batch_task_id__in=broker_task_ids)
    )
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
                batch_task_id="",
            ):
                counts["timed_out"] += 1
                transcription_event_record(
                    transcription_id=job.pk, kind=Kind.FAILED, data={"code": "timeout"}
                )
            continue
        if job.status == Status.RUNNING and job.started_at and job.started_at > cutoff:
            continue
        if job.status == Status.RUNNING and job.batch_task_id:
            # The batch's message is gone: its jobs go back to the queue.
            counts["requeued"] += transcription_batch_release(task_id=job.batch_task_id)
            continue
        logger.warning("job %s: no message in the broker, re-sending", job.id)
        transcription_event_record(
            transcription_id=job.pk, kind=Kind.REQUEUED, data={"reason": "message lost"}
        )
        transcription_enqueue(transcription=job)
        counts["requeued"] += 1
    return counts
