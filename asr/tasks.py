"""Celery tasks of the asr app: thin wrappers that take ids and call services."""

from __future__ import annotations

import gc
import logging
from typing import Any

from billiard.einfo import ExceptionWithTraceback  # type: ignore[attr-defined]
from billiard.exceptions import WorkerLostError
from celery import shared_task
from celery.signals import task_postrun
from celery.signals import worker_process_init
from celery.worker.request import Request
from celery.worker.state import task_ready
from django.conf import settings

from asr import services
from asr.broker import held_task_ids
from asr.broker import unacked_reclaim
from asr.realtime import live_push
from asr.realtime import sender as realtime_sender
from asr.services import claim
from asr.services import fanout
from asr.services import live
from asr.services.attempts import PERMANENT_ERRORS
from asr.services.attempts import TRANSIENT_ERRORS
from asr.services.attempts import failure_of
from asr.services.attempts import internal_failure
from asr.services.attempts import transient_failure
from asr.services.retention import retention_purge
from asr.worker import get_engine
from asr.worker import recycle_if_over_vram
from kikipounamu.celery import app

logger = logging.getLogger(__name__)


# What both engine tasks are: idempotent (they claim their work with a conditional
# UPDATE), so acknowledged late and given back when their worker dies; retried with
# backoff on transient engine and storage errors, boundedly; their rows hold the outcome, so a
# copy in the result backend would be unread.
_ENGINE_TASK: dict[str, Any] = {
    "bind": True,
    "acks_late": True,
    "reject_on_worker_lost": True,
    "ignore_result": True,
    "autoretry_for": TRANSIENT_ERRORS,
    "retry_backoff": 5,
    "retry_backoff_max": 120,
    "retry_jitter": True,
    # Bounded twice: the claims also stop at ASR_MAX_ATTEMPTS.
    "max_retries": 3,
}


class TranscribeRequest(Request):
    """A job's message in the worker's main process (Celery's custom requests:
    https://docs.celeryq.dev/en/stable/userguide/tasks.html#requests-and-custom-requests).

    When the pool process running it dies, its jobs go back to the head of the
    queue at once (``claim.transcription_worker_lost``) and the message is
    acknowledged, instead of Celery's requeue behind the whole queue.
    """

    def on_failure(
        self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False
    ) -> None:
        exc = getattr(exc_info, "exception", None)
        if isinstance(exc, ExceptionWithTraceback):
            exc = exc.exc
        if isinstance(exc, WorkerLostError) and not self.acknowledged:
            released: int | None
            try:
                released = claim.transcription_worker_lost(task_id=self.id)
            except Exception:
                # The database is away: Celery's requeue keeps the message.
                logger.exception("task %s: worker lost; left to Celery", self.id)
                released = None
            if released is not None:
                # None running (0): the job had finished, or failed at its last
                # attempt, before the process died; nothing to run again.
                logger.warning(
                    "task %s: its pool process died (%s); %d jobs back at the "
                    "head of the queue",
                    self.id,
                    exc,
                    released,
                )
                task_ready(self)
                self.acknowledge()
                return
        super().on_failure(exc_info, send_failed_event, return_ok)


@shared_task(name="asr.transcribe", Request=TranscribeRequest, **_ENGINE_TASK)
def transcribe(self: Any, transcription_id: str) -> None:
    """Transcribe one job. Idempotent: a redelivered message for a finished job is a
    no-op, so acks_late is safe and a dead worker's job runs again elsewhere."""
    services.transcription_process(
        transcription_id=transcription_id,
        task_id=self.request.id,
        hostname=self.request.hostname or settings.WORKER_HOSTNAME,
        engine=get_engine(),
    )


@shared_task(name="asr.transcribe_chunk", **_ENGINE_TASK)
def transcribe_chunk(self: Any, chunk_id: str) -> None:
    """Transcribe one chunk of a long job (asr.fanout). Idempotent: a chunk that
    succeeded, or whose job is no longer running, is a no-op; the last chunk to
    finish merges the job."""
    fanout.chunk_process(
        chunk_id=chunk_id,
        task_id=self.request.id,
        hostname=self.request.hostname or settings.WORKER_HOSTNAME,
        engine=get_engine(),
    )


# Live work (the `live` and `live_partial` queues, their own workers: file jobs
# never stand in front of it). A final is acknowledged late and given back when its
# worker dies, so the utterance runs again elsewhere; it is idempotent (one row per
# utterance). A partial is not given back: a lost one is replaced by the next.
_LIVE_TASK: dict[str, Any] = {
    **_ENGINE_TASK,
    "retry_backoff": 1,
    "retry_backoff_max": 10,
}


# Partials and prepares are acknowledged late too, though a lost one costs nothing:
# a message acknowledged on receipt no longer counts against the prefetch limit, so
# the worker would take the next one while it runs this, and a final arriving then
# would wait behind that one as well. Not given back when their worker dies
# (reject_on_worker_lost off): by then they are stale.
_LIVE_BEST_EFFORT: dict[str, Any] = {
    "bind": True,
    "ignore_result": True,
    "acks_late": True,
    "reject_on_worker_lost": False,
}


@shared_task(name="asr.live_partial", **_LIVE_BEST_EFFORT)
def live_partial(self: Any, session_id: str, index: int, end: int) -> None:
    """Utterance ``index`` of a live session so far (up to sample ``end``)."""
    result = None
    try:
        result = live.live_partial(
            session_id=session_id, index=index, end=end, engine=get_engine()
        )
    finally:
        # Answered, with text or not (an error): the stream may ask for its next.
        live_push.partial(session_id, index, result)


@shared_task(name="asr.live_prepare", **_LIVE_BEST_EFFORT)
def live_prepare(self: Any, session_id: str, index: int, start: int, end: int) -> None:
    """Utterance ``index`` as it would end at ``end``: ready for its final. Lost,
    it costs only time (the final transcribes it itself)."""
    live.live_prepare(
        session_id=session_id, index=index, start=start, end=end, engine=get_engine()
    )


@shared_task(
    name="asr.live_final",
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    max_retries=3,
)
def live_final(self: Any, session_id: str, index: int) -> None:
    """Utterance ``index``'s final: stored, then pushed. A redelivered message
    pushes the stored final again; the stream drops copies by index. An utterance
    the engine refuses, or cannot run past the retries, is stored as a failed final:
    the stream is told and goes on (a final never goes missing)."""
    hostname = self.request.hostname or settings.WORKER_HOSTNAME
    try:
        final, _ = live.live_final(
            session_id=session_id, index=index, engine=get_engine(), hostname=hostname
        )
    except TRANSIENT_ERRORS as exc:
        if self.request.retries < self.max_retries:
            raise self.retry(
                exc=exc, countdown=min(10, 2**self.request.retries)
            ) from exc
        final, _ = live.live_final_failed(
            session_id=session_id,
            index=index,
            failure=transient_failure(
                exc, attempts=settings.ASR_MAX_ATTEMPTS, what="this utterance"
            ),
            hostname=hostname,
        )
    except PERMANENT_ERRORS as exc:
        final, _ = live.live_final_failed(
            session_id=session_id,
            index=index,
            failure=failure_of(exc, what="this utterance"),
            hostname=hostname,
        )
    except Exception:
        # A bug, not the audio: logged with its traceback, and the utterance still
        # gets its final (an error), or the stream would wait for it in vain.
        logger.exception("live session %s: utterance %d failed", session_id, index)
        final, _ = live.live_final_failed(
            session_id=session_id,
            index=index,
            failure=internal_failure(what="this utterance"),
            hostname=hostname,
        )
    if final is not None:
        live_push.final(session_id, final)


@shared_task(name="asr.live_finish", **_LIVE_TASK)
def live_finish(self: Any, session_id: str) -> None:
    """End a live session: missing finals made, audio stored, the job succeeded."""
    job, made = live.live_finish(
        session_id=session_id,
        engine=get_engine(),
        hostname=self.request.hostname or settings.WORKER_HOSTNAME,
    )
    for final in made:
        live_push.final(session_id, final)
    if job is not None:
        live_push.finished(session_id, job)


@shared_task(name="asr.reconcile", ignore_result=True)
def reconcile() -> dict[str, int]:
    """Periodic (beat): re-send jobs whose broker message was lost, and finish live
    sessions no connection will."""
    held = held_task_ids(["asr"])
    counts = services.transcription_reconcile(broker_task_ids=held)
    counts.update(services.fanout_reconcile(broker_task_ids=held))
    counts.update(live.live_reconcile())
    if any(counts.values()):
        logger.warning("reconcile: %s", counts)
    return counts


@shared_task(name="asr.reclaim", ignore_result=True)
def reclaim() -> int:
    """Periodic (beat, every ASR_RECLAIM_INTERVAL): the messages of workers whose
    heartbeat stopped go back to their queues (``asr.broker.unacked_reclaim``)."""
    return len(unacked_reclaim(gone_after=settings.OPS_WORKER_GONE_SECONDS))


@shared_task(name="asr.retention", ignore_result=True)
def retention() -> dict[str, int]:
    """Periodic (beat): delete old audio, then old finished jobs (ASR_RETENTION_*)."""
    return retention_purge()


@worker_process_init.connect
def _preload_engine(**_: Any) -> None:
    # Load the model when the process starts so the first job does not pay for it,
    # but only in workers that consume the asr queue.
    queues = set(app.amqp.queues.consume_from or {})
    if settings.ASR_PRELOAD and queues & {"asr", "live"}:
        get_engine()
    # What the process loaded (Django, the engine's Python side) stays for its
    # life: keep it out of the cyclic collector's full passes (see kikipounamu/asgi.py).
    gc.freeze()


_ENGINE_TASK_NAMES = frozenset(
    (
        "asr.transcribe",
        "asr.transcribe_chunk",
        "asr.live_partial",
        "asr.live_prepare",
        "asr.live_final",
        "asr.live_finish",
    )
)


@task_postrun.connect
def _after_asr_task(sender: Any = None, **_: Any) -> None:
    if getattr(sender, "name", "") not in _ENGINE_TASK_NAMES:
        return
    # Pushes to browsers go out in the background while a task runs; they must be
    # out before the process may be recycled.
    realtime_sender.flush()
    # CUDA memory fragments over days; a process past its limit is replaced.
    recycle_if_over_vram()
