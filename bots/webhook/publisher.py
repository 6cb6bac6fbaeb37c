"""Handing stored webhook updates to the ``bots`` queue off the request's path.

Publishing a Celery message costs the web process a Redis round trip and several
milliseconds of CPU. Telegram waits for our answer, and sends up to
TELEGRAM_WEBHOOK_MAX_CONNECTIONS updates at once: paying that inside every request
would make each answer wait for the others' publishing. So the request only commits the
update's row and passes its id to this process's publisher thread, which sends the
ids that piled up meanwhile as one ``bots.process_updates`` message. Under no load a
batch is a single id and goes out at once; under a burst, one message carries many.

If the process dies between the commit and the publish, the row stays ``received`` and
``bots.reconcile`` enqueues it: the same guarantee as an on-commit enqueue, whose
window this widens by the time a batch waits (milliseconds).
"""

from __future__ import annotations

import logging
import queue
import time

from kikipounamu import dispatch
from kikipounamu.process_queue import ProcessQueue

logger = logging.getLogger(__name__)

# One message carries at most this many updates, so that one task stays short.
MAX_BATCH = 100
# At most one message per this many seconds per process while updates keep coming.
MIN_INTERVAL = 0.01


def submit(update_pk: int) -> None:
    """Queue a committed update for the ``bots`` queue (called after commit)."""
    _pending.put(update_pk)


def _take_batch(first: int) -> list[int]:
    batch = [first]
    while len(batch) < MAX_BATCH:
        try:
            batch.append(_pending.get_nowait())
        except queue.Empty:
            break
    return batch


def _publish(batch: list[int]) -> None:
    dispatch.send("bots.process_updates", (batch,), what=f"updates {batch}")


def _run() -> None:
    last = 0.0
    while True:
        first = _pending.get()
        # Under load, leave MIN_INTERVAL between messages, for more ids to pile up:
        # a message costs the web process about 1 ms of CPU whatever it carries, taken
        # from the requests it serves. After a quiet spell the first goes at once.
        wait = last + MIN_INTERVAL - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        _publish(_take_batch(first))
        last = time.monotonic()


def _flush() -> None:
    # At a clean exit, send what is still waiting rather than leave it to the
    # reconciler's next round.
    while True:
        try:
            first = _pending.get_nowait()
        except queue.Empty:
            return
        _publish(_take_batch(first))


# This process's publisher thread runs _run; at a clean exit, _flush.
_pending: ProcessQueue[int] = ProcessQueue(
    "bots-update-publisher", _run, at_exit=_flush
)
