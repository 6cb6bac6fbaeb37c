"""Celery tasks of the asr app: thin wrappers that take ids and call services."""

from __future__ import annotations

import gc
import logging
from typing import Any

from celery import shared_task
from celery.signals import task_postrun
from celery.signals import worker_process_init
from django.conf import settings

from asr import services
from asr.broker import held_task_ids
from asr.realtime import sender as realtime_sender
from asr.services import fanout
from asr.services.attempts import TRANSIENT_ERRORS
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


@shared_task(name="asr.transcribe", **_ENGINE_TASK)
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


@shared_task(name="asr.reconcile", ignore_result=True)
def reconcile() -> dict[str, int]:
    """Periodic (beat): re-send jobs whose broker message was lost."""
    held = held_task_ids(["asr"])
    counts = services.transcription_reconcile(broker_task_ids=held)
    counts.update(services.fanout_reconcile(broker_task_ids=held))
    if any(counts.values()):
        logger.warning("reconcile: %s", counts)
    return counts


@shared_task(name="asr.retention", ignore_result=True)
def retention() -> dict[str, int]:
    """Periodic (beat): delete old audio, then old finished jobs (ASR_RETENTION_*)."""
    return retention_purge()


@worker_process_init.connect
def _preload_engine(**_: Any) -> None:
    # Load the model when the process starts so the first job does not pay for it,
    # but only in workers that consume the asr queue.
    queues = set(app.amqp.queues.consume_from or {})
    if settings.ASR_PRELOAD and "asr" in queues:
        get_engine()
    # What the process loaded (Django, the engine's Python side) stays for its
    # life: keep it out of the cyclic collector's full passes (see kikipounamu/asgi.py).
    gc.freeze()


@task_postrun.connect
def _after_asr_task(sender: Any = None, **_: Any) -> None:
    if getattr(sender, "name", "") not in ("asr.transcribe", "asr.transcribe_chunk"):
        return
    # Pushes to browsers go out in the background while a task runs; they must be
    # out before the process may be recycled.
    realtime_sender.flush()
    # CUDA memory fragments over days; a process past its limit is replaced.
    recycle_if_over_vram()
