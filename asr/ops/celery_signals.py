"""Worker-side hooks: log context per task, database connections, heartbeats.

Connected when the asr app is ready (``AsrConfig.ready``), which Celery's Django
fixup brings about in every worker and beat process before any task runs.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any

from celery import signals
from celery.worker import state as worker_state
from django.conf import settings
from django.db import close_old_connections

from asr.ops import redis_state
from kikipounamu import logs

logger = logging.getLogger(__name__)

_task_tokens: dict[str, Any] = {}
_heartbeat_stop = threading.Event()


@signals.task_prerun.connect
@signals.task_postrun.connect
def _close_old_connections(**_: Any) -> None:
    # What Django does around each request, here around each task: a connection
    # past CONN_MAX_AGE, or one that broke, is closed; the others are kept (Celery's
    # own fixup, which would close them all, waits for CELERY_DB_REUSE_MAX tasks).
    close_old_connections()


@signals.task_prerun.connect
def _bind_task(
    task_id: str, task: Any, args: Any = None, kwargs: Any = None, **_: Any
) -> None:
    job_id = None
    if task.name == "asr.transcribe":
        job_id = (kwargs or {}).get("transcription_id") or (args or [None])[0]
    _task_tokens[task_id] = logs.bind(task_id=task_id, job_id=job_id)


@signals.task_postrun.connect
def _unbind_task(task_id: str, **_: Any) -> None:
    tokens = _task_tokens.pop(task_id, None)
    if tokens:
        # ValueError: bound in another context (a thread pool); nothing to reset.
        with contextlib.suppress(ValueError):
            logs.unbind(tokens)


def _held() -> list[str] | None:
    """The delivery tags of every message this worker holds unacknowledged:
    reserved, running, or waiting for its ETA (Celery's own books, which its
    ``inspect reserved/active/scheduled`` read); None if they changed under every
    try (the consumer's thread adds to them while this one reads)."""
    for _ in range(5):
        try:
            requests = [
                *worker_state.reserved_requests,
                *worker_state.active_requests,
                *worker_state.scheduled_requests,  # type: ignore[attr-defined]
            ]
        except RuntimeError:
            continue
        return sorted(
            {
                str(tag)
                for request in requests
                if (tag := getattr(request.message, "delivery_tag", None)) is not None
            }
        )
    return None


def _beat(hostname: str, queues: list[str], concurrency: int) -> None:
    interval = settings.OPS_WORKER_HEARTBEAT_SECONDS
    while not _heartbeat_stop.is_set():
        try:
            redis_state.worker_heartbeat(
                hostname=hostname,
                queues=queues,
                concurrency=concurrency,
                ttl=settings.OPS_WORKER_GONE_SECONDS,
                # What asr.broker.unacked_reclaim must leave alone.
                held=_held(),
            )
        except Exception:
            logger.warning("worker heartbeat not written", exc_info=True)
        _heartbeat_stop.wait(interval)


@signals.worker_ready.connect
def _start_heartbeat(sender: Any = None, **_: Any) -> None:
    # sender is the worker's Consumer; Celery's own heartbeats are events on a
    # fanout exchange that only a listening process (Flower) sees, so the
    # dashboard, the metrics and the ETAs read this key instead.
    hostname = sender.hostname
    queues = sorted(sender.app.amqp.queues.consume_from or {})
    controller = getattr(sender, "controller", None)
    concurrency = int(getattr(controller, "concurrency", None) or 1)
    _heartbeat_stop.clear()
    thread = threading.Thread(
        target=_beat,
        args=(hostname, queues, concurrency),
        name="kiki-heartbeat",
        daemon=True,
    )
    thread.start()


@signals.worker_shutdown.connect
def _stop_heartbeat(sender: Any = None, **_: Any) -> None:
    _heartbeat_stop.set()
    hostname = getattr(sender, "hostname", None)
    if hostname:
        try:
            redis_state.worker_gone(hostname=hostname)
        except Exception:
            logger.warning("worker heartbeat not removed", exc_info=True)
