"""The worker side of a job's message: claim, decode, transcribe, store.

What each step may end in (the codes, the attempt cap, who may write) is the state
machine's, ``asr.services.attempts``; which message runs which jobs is
``asr.services.claim``'s; long audio goes to ``asr.services.fanout``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import transaction

from asr import audio as audio_lib
from asr import storage
from asr.engines import EngineError
from asr.engines import TranscriptionResult
from asr.events import announce_progress
from asr.models import Transcription
from asr.services import attempts
from asr.services import claim
from asr.services import fanout
from asr.services.job_options import job_options
from asr.services.job_options import kept_options

logger = logging.getLogger(__name__)

# A job, its samples, and the seconds decoding them took.
Decoded = tuple[Transcription, np.ndarray, float]


def transcription_process(
    *, transcription_id: str, task_id: str, hostname: str, engine: Any
) -> None:
    """Worker side of one message: claim, decode, transcribe, store.

    On an engine that batches natively, a short job takes other short jobs waiting
    in the queue with it (micro-batching, ASR_BATCH_*), unless its message is a
    redelivery. An engine that runs clips one at a time would gain nothing from a
    batch: it would only keep the jobs from idle processes (and other machines) and
    put them all in the way of one crash. Permanent problems (bad audio,
    unsupported language, timeout, audio not in the store) fail a job at once.
    Transient ones (``attempts.TRANSIENT_ERRORS``) propagate so that the task retries, until the cap.
    """
    job = claim.transcription_claim(
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
    if getattr(engine, "batches_natively", False) and not getattr(
        job, "claim_redelivered", False
    ):
        members = claim.transcription_batch_claim(
            leader=job,
            task_id=task_id,
            hostname=hostname,
            wait=settings.ASR_BATCH_WAIT_SECONDS,
        )
    jobs = [job, *members]
    try:
        if members:
            _process_batch(jobs, engine, task_id=task_id)
        else:
            _process_one(job, engine)
    except attempts.TRANSIENT_ERRORS as exc:
        # The message's retry is the leader's attempt: its count decides.
        failure = attempts.transient_failure(exc, attempts=job.attempts)
        attempts.attempts_finish([attempts.failed(stuck, failure) for stuck in jobs])


def _decode(job: Transcription) -> tuple[np.ndarray, float]:
    """The job's audio as samples, and the seconds decoding took; AudioError if it
    cannot be used."""
    started = time.monotonic()
    try:
        # Read through the storage API: the worker may share no disk with the web.
        with storage.audio_open(job.audio.name) as fh:
            samples = audio_lib.decode(
                fh,
                max_seconds=settings.ASR_MAX_DURATION_SECONDS,
                timeout=settings.ASR_DECODE_TIMEOUT_SECONDS,
                # What the upload's probe found in these bytes (empty on older rows).
                format_name=job.audio_format or None,
            )
    except storage.AudioMissing:
        missing = attempts.audio_missing()
        raise audio_lib.AudioError(missing.code, missing.message) from None
    return samples, time.monotonic() - started


def _success(
    job: Transcription,
    engine: Any,
    result: TranscriptionResult,
    *,
    samples: np.ndarray,
    decode_seconds: float,
    engine_seconds: float,
) -> attempts.Outcome:
    return attempts.succeeded(
        job,
        text=result.text,
        segments=result.segments_as_dicts(),
        language=result.language or "",
        # The pid tells which worker process (and model load) ran it.
        meta={**kept_options(job.meta), **result.meta, "worker_pid": os.getpid()},
        duration=samples.shape[0] / audio_lib.SAMPLE_RATE,
        engine=engine.name,
        model=engine.model_name,
        device=engine.device,
        engine_seconds=engine_seconds,
        decode_seconds=round(decode_seconds, 4),
    )


def _process_one(job: Transcription, engine: Any) -> None:
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
            **job_options(job.meta).engine_options(),
        )
        engine_seconds = time.monotonic() - started
    except attempts.PERMANENT_ERRORS as exc:
        attempts.attempt_finish(attempts.failed(job, attempts.failure_of(exc)))
        return
    attempts.attempt_finish(
        _success(
            job,
            engine,
            result,
            samples=samples,
            decode_seconds=decode_seconds,
            engine_seconds=engine_seconds,
        )
    )


def _process_batch(jobs: list[Transcription], engine: Any, *, task_id: str) -> None:
    """Run a batch on an engine that batches: decode every job (a bad file fails
    alone), transcribe them in one call, store them together.

    Before each step the batch records which of its jobs the step is for (the one
    being decoded, those in the engine call): if a file kills the process, only
    those are charged the attempt (``claim.transcription_batch_release``).
    """

    def working_on(step: list[Transcription]) -> None:
        claim.transcription_batch_in_progress(task_id=task_id, jobs=step)

    try:
        failed: list[attempts.Outcome] = []
        ready: list[Decoded] = []
        for job in jobs:
            working_on([job])
            try:
                samples, decode_seconds = _decode(job)
            except audio_lib.AudioError as exc:
                failed.append(attempts.failed(job, attempts.failure_of(exc)))
                continue
            ready.append((job, samples, decode_seconds))
        outcomes = failed
        if ready:
            working_on([job for job, _, _ in ready])
            outcomes += _transcribe_together(ready, engine, working_on)
        attempts.attempts_finish(outcomes)
    except SoftTimeLimitExceeded as exc:
        # Nothing was stored yet (the outcomes are written together, at the end).
        timeout = attempts.failure_of(exc)
        attempts.attempts_finish([attempts.failed(job, timeout) for job in jobs])


def _transcribe_alone(item: Decoded, engine: Any) -> attempts.Outcome:
    job, samples, decode_seconds = item
    started = time.monotonic()
    try:
        result = engine.transcribe(
            samples,
            audio_lib.SAMPLE_RATE,
            job.language or None,
            **job_options(job.meta).engine_options(),
        )
    except EngineError as exc:
        return attempts.failed(job, attempts.failure_of(exc))
    return _success(
        job,
        engine,
        result,
        samples=samples,
        decode_seconds=decode_seconds,
        engine_seconds=time.monotonic() - started,
    )


def _transcribe_together(
    ready: list[Decoded],
    engine: Any,
    working_on: Callable[[list[Transcription]], None],
) -> list[attempts.Outcome]:
    started = time.monotonic()
    try:
        results = engine.transcribe_batch(
            [samples for _, samples, _ in ready],
            audio_lib.SAMPLE_RATE,
            [job.language or None for job, _, _ in ready],
        )
    except EngineError:
        # One job's problem (its language, say) must not fail the others: find it.
        alone = []
        for item in ready:
            working_on([item[0]])
            alone.append(_transcribe_alone(item, engine))
        return alone
    elapsed = time.monotonic() - started
    total = sum(samples.shape[0] for _, samples, _ in ready) or 1
    outcomes = []
    for (job, samples, decode_seconds), result in zip(ready, results, strict=True):
        # One call ran them all: each job is charged its share by audio length.
        outcome = _success(
            job,
            engine,
            result,
            samples=samples,
            decode_seconds=decode_seconds,
            engine_seconds=elapsed * samples.shape[0] / total,
        )
        outcome[1]["batch_size"] = outcome[2]["meta"]["batch_jobs"] = len(ready)
        outcomes.append(outcome)
    return outcomes


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
    with transaction.atomic():
        if not attempts.attempt_update(
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
