"""Sending to the channel layer from sync code (a worker, a request), without
waiting for Redis: one event loop per process, in a daemon thread."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from typing import Any

logger = logging.getLogger(__name__)

# A sync caller (a worker finishing jobs, a request) hands its pushes to this process's
# sender loop and goes on: a batch's results go out while the next job runs. At most
# this many may be on their way at once; past that, a caller waits (Redis is slow or
# gone) up to _SEND_TIMEOUT, then the push is dropped, as an at-most-once channel
# layer may drop it anyway: watchers resync from a snapshot when they reconnect.
_MAX_IN_FLIGHT = 512
_SEND_TIMEOUT = 10.0
_sender: tuple[int, asyncio.AbstractEventLoop, _InFlight] | None = None
_sender_lock = threading.Lock()


def _sender_loop() -> tuple[asyncio.AbstractEventLoop, _InFlight]:
    """This process's event loop for sending from sync code, in a daemon thread.

    async_to_sync would start a new thread and a new event loop for every event, and
    channels_redis keeps its Redis connections per event loop, so every event would
    also open, and close, a Redis connection: ~3 ms of CPU per event in a worker, on
    the path from "job finished" to "browser told". One loop for the life of the
    process keeps its connections.
    """
    global _sender
    with _sender_lock:
        # A forked child (Celery prefork) inherits the object but not the thread.
        if _sender is None or _sender[0] != os.getpid():
            loop = asyncio.new_event_loop()
            threading.Thread(
                target=loop.run_forever, name="realtime-sender", daemon=True
            ).start()
            _sender = (os.getpid(), loop, _InFlight())
        return _sender[1], _sender[2]


class _InFlight:
    """How many pushes are on their way; callers wait for room, or for none."""

    def __init__(self) -> None:
        self.count = 0
        self.changed = threading.Condition()

    def enter(self, timeout: float) -> bool:
        with self.changed:
            if not self.changed.wait_for(lambda: self.count < _MAX_IN_FLIGHT, timeout):
                return False
            self.count += 1
            return True

    def leave(self) -> None:
        with self.changed:
            self.count -= 1
            self.changed.notify_all()

    def drain(self, timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: self.count == 0, timeout)


def send_from_sync(layer: Any, groups: list[str], message: dict[str, Any]) -> None:
    loop, in_flight = _sender_loop()
    if not in_flight.enter(_SEND_TIMEOUT):
        logger.warning(
            "realtime push dropped: %d sends still on their way", _MAX_IN_FLIGHT
        )
        return
    # Coroutines start in the order they are handed over, and the layer sends in
    # that order: a job's events reach Redis in their sequence.
    future = asyncio.run_coroutine_threadsafe(_send_all(layer, groups, message), loop)
    future.add_done_callback(lambda done: _sent(done, in_flight))


def _sent(future: Any, in_flight: _InFlight) -> None:
    in_flight.leave()
    if not future.cancelled() and future.exception() is not None:
        logger.warning("realtime push failed", exc_info=future.exception())


def flush(timeout: float = _SEND_TIMEOUT) -> bool:
    """Wait until this process's pushes are out (a worker, after each task: a process
    that is then recycled must not take them with it)."""
    if _sender is None or _sender[0] != os.getpid():
        return True
    return _sender[2].drain(timeout)


async def _send_all(layer: Any, groups: list[str], message: dict[str, Any]) -> None:
    for group in groups:
        await layer.group_send(group, message)
