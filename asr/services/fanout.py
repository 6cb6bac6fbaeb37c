"""Long audio fanned out: a job cut at pauses into chunks that run as parallel tasks.

The job's own ``asr.transcribe`` message (the *leader*) claims and decodes the job as
always. Audio longer than ASR_FANOUT_SECONDS then goes to
:func:`transcription_fan_out` instead of the engine: it finds pauses with VAD
(``asr.chunking``), stores each chunk's audio through the storage API
(``asr.storage``: every worker, on any machine, reads it there, as it reads the job's
audio), creates the chunk rows in one transaction
and sends one ``asr.transcribe_chunk`` message per chunk on commit. The job stays
``running``; its leader message is done.

Each chunk task claims its chunk like any attempt (``asr.services.attempts``: a
chunk that succeeded is never computed again), transcribes it with the process's
engine, and stores its segments with times in the whole file. Fan-in: under a row
lock on the job, the chunk that finds every chunk done merges them and finishes the
job through the same path as any success, so its event, realtime push and Telegram
answer happen once. A permanent error in any chunk fails the job; the other chunks
then find nothing to do. The reconciler (``asr.services.reconcile``) re-sends chunk
messages the broker lost, fails a job whose running chunk is past its deadline, and
merges a job whose chunks are all done should that ever be left undone.
"""

from __future__ import annotations

import io
import logging
import os
import time
import uuid
from collections import Counter
from datetime import timedelta
from functools import partial
from typing import Any

import numpy as np
from django.conf import settings
from django.db import IntegrityError
from django.db import transaction
from django.utils import timezone

from asr import chunking
from asr import storage
from asr.audio import SAMPLE_RATE
from asr.audio import AudioError
from asr.broker import held_task_ids
from asr.engines import TranscriptionResult
from asr.events import announce_progress
from asr.events import transcription_event_record
from asr.models import Transcription
from asr.models import TranscriptionChunk
from asr.models import TranscriptionEvent
from asr.services import attempts
from asr.services import dispatch
from asr.services.job_options import job_options
from asr.services.job_options import kept_options
from kikipounamu.logs import log_context

logger = logging.getLogger(__name__)

Status = Transcription.Status
ChunkStatus = TranscriptionChunk.Status
Kind = TranscriptionEvent.Kind

PENDING = (ChunkStatus.QUEUED, ChunkStatus.RUNNING)


class _NotOwned(Exception):
    """The job moved on (another attempt, a cancel) while this leader split it."""


def fan_out_wanted(*, duration: float) -> bool:
    """Whether audio of ``duration`` seconds is cut into chunks (ASR_FANOUT_*)."""
    threshold = settings.ASR_FANOUT_SECONDS
    return threshold > 0 and duration > max(
        threshold, settings.ASR_FANOUT_MAX_CHUNK_SECONDS
    )


def chunk_folder(transcription_id: Any) -> str:
    """Storage name of the folder holding a job's chunk audio."""
    return f"chunks/{transcription_id}"


def chunk_audio_delete(*, transcription_id: Any) -> None:
    """Remove a job's chunk audio (also files of a fan-out that never committed)."""
    storage.audio_delete_prefix(chunk_folder(transcription_id))


def chunk_what(chunk: TranscriptionChunk) -> str:
    """The chunk, as the messages of ``asr.services.attempts`` name it."""
    return attempts.part_of(chunk.start, chunk.end)


# The leader ---------------------------------------------------------------------------


def transcription_fan_out(
    *, transcription: Transcription, samples: np.ndarray, decode_seconds: float
) -> bool:
    """Cut a claimed, decoded job into chunks and send one task for each.

    Called by the leader in place of the engine. The chunk audio is written first;
    the rows, the job's progress fields and the messages (on commit) follow in one
    transaction, so a leader that dies half-way leaves either nothing (its message
    comes back and splits again) or a complete fan-out. Returns False when this
    attempt no longer owns the job; it then keeps nothing.
    """
    job = transcription
    started = time.monotonic()
    spans = chunking.split_long_audio(
        samples,
        sample_rate=SAMPLE_RATE,
        target_seconds=settings.ASR_FANOUT_CHUNK_SECONDS,
        max_seconds=settings.ASR_FANOUT_MAX_CHUNK_SECONDS,
    )
    split_seconds = time.monotonic() - started
    chunks = [
        _chunk_write(job, index, samples, span) for index, span in enumerate(spans)
    ]
    try:
        with transaction.atomic():
            owned = Transcription.objects.filter(
                pk=job.pk, status=Status.RUNNING, attempts=job.attempts
            ).update(
                decode_seconds=round(decode_seconds, 4),
                processed_seconds=0.0,
                meta={
                    # Its chunks ask the engine what the job asked.
                    **kept_options(job.meta),
                    "chunks": {"total": len(chunks), "done": 0},
                    "split_seconds": round(split_seconds, 3),
                },
            )
            if not owned:
                raise _NotOwned
            TranscriptionChunk.objects.bulk_create(chunks)
            for chunk in chunks:
                transaction.on_commit(partial(dispatch.chunk_enqueue, chunk=chunk))
    except (_NotOwned, IntegrityError):
        # Another attempt owns the job, or (unique index) already split it.
        storage.audio_delete(chunk.audio for chunk in chunks)
        logger.warning("job %s: fan-out dropped, another attempt owns the job", job.id)
        return False
    logger.info(
        "job %s: fanned out into %d chunks (split in %.2f s, %.1f s of audio)",
        job.id,
        len(chunks),
        split_seconds,
        samples.shape[0] / SAMPLE_RATE,
    )
    return True


def _chunk_write(
    job: Transcription, index: int, samples: np.ndarray, span: tuple[int, int]
) -> TranscriptionChunk:
    first, last = span
    chunk_id = uuid.uuid4()
    name = f"{chunk_folder(job.id)}/{chunk_id}.wav"
    wav = io.BytesIO()
    chunking.write_wav(wav, samples[first:last])
    name = storage.audio_save(name, wav.getvalue())
    return TranscriptionChunk(
        id=chunk_id,
        transcription_id=job.id,
        index=index,
        start=first / SAMPLE_RATE,
        end=last / SAMPLE_RATE,
        audio=name,
        task_id=str(uuid.uuid4()),
    )


def transcription_fan_out_resume(*, transcription_id: str) -> bool:
    """For the leader's message: True if the job was fanned out already.

    Such a job is never claimed or split again. A leader message comes back after a
    fan-out only when its worker died before acknowledging it, perhaps before it had
    sent every chunk message: those the broker does not hold are sent now.
    """
    if not TranscriptionChunk.objects.filter(
        transcription_id=transcription_id
    ).exists():
        return False
    if Transcription.objects.filter(
        pk=transcription_id, status=Status.RUNNING
    ).exists():
        resent = chunks_resend_lost(
            transcription_id=transcription_id,
            held=held_task_ids(),
            cutoff=timezone.now(),
            reason="leader redelivered",
        )
        logger.warning(
            "job %s: leader message redelivered after the fan-out; %d chunk "
            "message(s) re-sent",
            transcription_id,
            len(resent),
        )
    else:
        logger.info("job %s: fanned out and finished; nothing to do", transcription_id)
    return True


def chunks_resend_lost(
    *, transcription_id: Any, held: set[str], cutoff: Any, reason: str
) -> list[int]:
    """Send again the messages of the job's pending chunks that the broker does not
    hold (``held``); the indexes of those sent."""
    # Read after the broker: a chunk done meanwhile shows as done here (its row is
    # written before its message is acknowledged), so it is not sent again.
    lost = [
        chunk
        for chunk in TranscriptionChunk.objects.filter(
            transcription_id=transcription_id, status__in=PENDING
        ).order_by("index")
        if chunk.task_id not in held
        # A message may still be on its way: sent on commit, or just claimed.
        and (chunk.started_at or chunk.created_at) <= cutoff
    ]
    if lost:
        transcription_event_record(
            transcription_id=transcription_id,
            kind=Kind.REQUEUED,
            data={"reason": reason, "chunks": [chunk.index for chunk in lost]},
        )
        for chunk in lost:
            dispatch.chunk_enqueue(chunk=chunk, again=True)
    return [chunk.index for chunk in lost]


# The chunks ---------------------------------------------------------------------------


def chunk_process(*, chunk_id: str, task_id: str, hostname: str, engine: Any) -> None:
    """Worker side of one chunk: claim, read its audio, transcribe, store, fan in.

    Permanent problems fail the whole job at once. Transient ones
    (``attempts.TRANSIENT_ERRORS``) propagate so that the task retries, until the chunk's attempts are spent.
    """
    job_id = (
        TranscriptionChunk.objects.filter(pk=chunk_id)
        .values_list("transcription_id", flat=True)
        .first()
    )
    if job_id is None:
        logger.info("chunk %s: gone (its job was deleted or retried)", chunk_id)
        return
    with log_context(job_id=job_id):
        chunk = chunk_claim(chunk_id=chunk_id, hostname=hostname)
        if chunk is None:
            return
        logger.info(
            "job %s: chunk %d (%s) claimed by %s (attempt %d, task %s)",
            job_id,
            chunk.index,
            chunk_what(chunk),
            hostname,
            chunk.attempts,
            task_id,
        )
        _chunk_run(chunk, engine)


def chunk_claim(*, chunk_id: str, hostname: str) -> TranscriptionChunk | None:
    """Take the chunk for this process, or ``None`` if there is nothing to do.

    Like the job's claim: a chunk that succeeded, or whose job is no longer running
    (failed by another chunk, finished), is not run; one still marked running may
    be, since its message only comes back once the process that held it is gone.
    """
    now = timezone.now()
    claimable = TranscriptionChunk.objects.filter(
        pk=chunk_id, status__in=PENDING, transcription__status=Status.RUNNING
    )
    chunk = claimable.first()
    if chunk is None:
        logger.info("chunk %s: nothing to do (done, or its job finished)", chunk_id)
        return None
    _, hard = dispatch.transcription_time_limits(duration_hint=chunk.duration)
    if not attempts.attempt_claim(
        claimable,
        hostname=hostname,
        now=now,
        deadline_at=now + timedelta(seconds=hard),
        worker_pid=os.getpid(),
    ):
        chunk_fail(chunk=chunk, failure=attempts.worker_lost(what=chunk_what(chunk)))
        return None
    return TranscriptionChunk.objects.select_related("transcription").get(pk=chunk_id)


def _chunk_samples(chunk: TranscriptionChunk) -> tuple[np.ndarray, int]:
    try:
        return chunking.read_wav(io.BytesIO(storage.audio_read(chunk.audio)))
    except storage.AudioMissing:
        failure = attempts.audio_missing(what=chunk_what(chunk))
        raise AudioError(failure.code, failure.message) from None


def _chunk_run(chunk: TranscriptionChunk, engine: Any) -> None:
    what = chunk_what(chunk)
    try:
        samples, rate = _chunk_samples(chunk)
        started = time.monotonic()
        result: TranscriptionResult = engine.transcribe(
            samples,
            rate,
            chunk.transcription.language or None,
            **job_options(chunk.transcription.meta).engine_options(),
        )
        engine_seconds = time.monotonic() - started
    except attempts.PERMANENT_ERRORS as exc:
        chunk_fail(chunk=chunk, failure=attempts.failure_of(exc, what=what))
        return
    except attempts.TRANSIENT_ERRORS as exc:
        failure = attempts.transient_failure(exc, attempts=chunk.attempts, what=what)
        chunk_fail(chunk=chunk, failure=failure)
        return
    chunk_complete(
        chunk=chunk,
        result=result,
        engine=engine,
        engine_seconds=engine_seconds,
    )


def chunk_complete(
    *,
    chunk: TranscriptionChunk,
    result: TranscriptionResult,
    engine: Any,
    engine_seconds: float,
) -> None:
    """Store a chunk's result, announce progress, and merge if it was the last.

    All under a row lock on the job: of two chunks finishing at once, the second
    waits for the first to commit and then sees it done, so exactly one of them
    finds every chunk done (PostgreSQL, READ COMMITTED; SQLite's IMMEDIATE
    transactions serialize writers anyway).
    """
    segments = chunking.absolute_segments(
        result.segments_as_dicts(), offset=chunk.start, duration=chunk.duration
    )
    with transaction.atomic():
        job = (
            Transcription.objects.select_for_update()
            .filter(pk=chunk.transcription_id, status=Status.RUNNING)
            .first()
        )
        stored = job is not None and bool(
            TranscriptionChunk.objects.filter(
                pk=chunk.pk, status=ChunkStatus.RUNNING, attempts=chunk.attempts
            ).update(
                status=ChunkStatus.SUCCEEDED,
                text=result.text,
                segments=segments,
                language=result.language or "",
                engine=engine.name,
                model=engine.model_name,
                device=engine.device,
                engine_seconds=round(engine_seconds, 4),
                finished_at=timezone.now(),
            )
        )
        if job is None or not stored:
            logger.warning(
                "job %s: chunk %d result dropped (job finished or a newer attempt)",
                chunk.transcription_id,
                chunk.index,
            )
            return
        done, total = _progress(job, chunk)
        logger.info(
            "job %s: chunk %d done in %.2f s (%d of %d)",
            job.pk,
            chunk.index,
            engine_seconds,
            done,
            total,
        )
        if done == total:
            _merge(job)


def _progress(job: Transcription, chunk: TranscriptionChunk) -> tuple[int, int]:
    """Count the job's chunks done, store and announce it (caller holds the job's
    row lock); (done, total)."""
    rows = list(
        TranscriptionChunk.objects.filter(transcription_id=job.pk).values_list(
            "status", "start", "end"
        )
    )
    total = len(rows)
    done = sum(status == ChunkStatus.SUCCEEDED for status, _, _ in rows)
    processed = sum(
        end - start for status, start, end in rows if status == ChunkStatus.SUCCEEDED
    )
    job.meta = {**job.meta, "chunks": {"total": total, "done": done}}
    job.processed_seconds = round(processed, 3)
    # The row is locked and read: its next sequence number is known, and goes in
    # the same UPDATE (the merge then finishes from it).
    seq = job.event_seq = job.event_seq + 1
    Transcription.objects.filter(pk=job.pk).update(
        meta=job.meta, processed_seconds=job.processed_seconds, event_seq=seq
    )
    extra = {"chunk": chunk.index, "chunks_done": done, "chunks_total": total}
    transaction.on_commit(
        lambda: announce_progress(
            transcription_id=job.pk, seq=seq, processed_seconds=processed, extra=extra
        )
    )
    return done, total


def _merge(job: Transcription) -> bool:
    """Finish a job whose chunks all succeeded (caller holds the job's row lock)."""
    chunks = list(
        TranscriptionChunk.objects.filter(transcription=job).order_by("index")
    )
    duration = job.duration or chunks[-1].end
    spoken: dict[str, float] = {}
    for chunk in chunks:
        if chunk.language:
            spoken[chunk.language] = spoken.get(chunk.language, 0.0) + chunk.duration

    def most_common(field: str) -> str:
        return Counter(getattr(chunk, field) for chunk in chunks).most_common(1)[0][0]

    devices = ",".join(sorted({chunk.device for chunk in chunks if chunk.device}))
    outcome = attempts.succeeded(
        job,
        text=" ".join(chunk.text for chunk in chunks if chunk.text).strip(),
        segments=[segment for chunk in chunks for segment in chunk.segments],
        language=max(spoken, key=spoken.__getitem__) if spoken else "",
        meta={
            **job.meta,
            "chunks": {"total": len(chunks), "done": len(chunks)},
            # Which worker processes (and model loads) ran it.
            "worker_pids": sorted({c.worker_pid for c in chunks if c.worker_pid}),
        },
        duration=duration,
        engine=most_common("engine"),
        model=most_common("model"),
        device=devices if len(devices) <= 32 else "mixed",
        # The compute the audio cost, all chunks together (the RTF of one job run
        # whole would be the same); processing_seconds is the wall time.
        engine_seconds=sum(chunk.engine_seconds or 0.0 for chunk in chunks),
    )
    outcome[1]["chunks"] = len(chunks)
    done = attempts.attempt_finish(outcome)
    if done:
        transaction.on_commit(partial(chunk_audio_delete, transcription_id=job.pk))
    return done


def transcription_merge_if_done(*, transcription_id: Any) -> bool:
    """Merge a running job whose chunks have all succeeded (the reconciler's backstop)."""
    with transaction.atomic():
        job = (
            Transcription.objects.select_for_update()
            .filter(pk=transcription_id, status=Status.RUNNING)
            .first()
        )
        if job is None:
            return False
        chunks = TranscriptionChunk.objects.filter(transcription=job)
        if not chunks.exists() or chunks.exclude(status=ChunkStatus.SUCCEEDED).exists():
            return False
        return _merge(job)


def chunk_fail(*, chunk: TranscriptionChunk, failure: attempts.Failure) -> bool:
    """Fail a fanned-out job because of one chunk; its other chunks become no-ops."""
    with transaction.atomic():
        job = (
            Transcription.objects.select_for_update()
            .filter(pk=chunk.transcription_id, status=Status.RUNNING)
            .first()
        )
        # The chunk's own record, even when another chunk failed the job first.
        TranscriptionChunk.objects.filter(pk=chunk.pk, status__in=PENDING).update(
            status=ChunkStatus.FAILED,
            error_code=failure.code,
            error_message=failure.message,
            finished_at=timezone.now(),
        )
        if job is None:
            return False
        done = attempts.attempt_finish(attempts.failed(job, failure, chunk=chunk.index))
        if done:
            transaction.on_commit(partial(chunk_audio_delete, transcription_id=job.pk))
    return done


def transcription_chunks_discard(*, transcription_id: Any) -> None:
    """Forget a finished job's chunks, so that a retry runs (and splits) it afresh."""
    if TranscriptionChunk.objects.filter(transcription_id=transcription_id).delete()[0]:
        transaction.on_commit(
            partial(chunk_audio_delete, transcription_id=transcription_id)
        )
