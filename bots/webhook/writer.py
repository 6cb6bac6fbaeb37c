"""Group commit of webhook updates: one writer thread per web process.

Telegram does not send an update again once we answered 200, so the webhook answers
only after the update's row is committed. One transaction per request would make a
burst of updates queue up on the database's write lock, each paying a transaction
(and, under ASGI, a thread of its own for the synchronous ORM). Instead requests
parsed on the event loop hand their rows to this process's writer thread, which
inserts everything that piled up meanwhile in one transaction
(``intake.telegram_updates_store``), then wakes each waiting request with its
outcome. Under no load a batch is a single update and goes at once; under a burst,
the updates that arrive while one batch commits make the next one. Nothing waits
for a timer.

If the transaction fails, every request of the batch gets the exception (and answers
5xx: Telegram delivers the update again). A batch that failed for something other
than the database being unreachable is retried row by row, so that one update the
database refuses cannot fail the others with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections import defaultdict
from typing import NamedTuple

from django.db import InterfaceError
from django.db import OperationalError
from django.db import connection

from bots.webhook import intake
from kikipounamu.process_queue import ProcessQueue

logger = logging.getLogger(__name__)

# One transaction carries at most this many updates: bounds its time and size.
MAX_BATCH = 500
# After this long without a batch, the connection is checked before use.
IDLE_CHECK_SECONDS = 30.0


# What one request gets back: whether its update was new, or why it is not stored.
Outcome = bool | BaseException


_Result = tuple["asyncio.Future[Outcome]", Outcome]


class NotStored(Exception):
    """The update's transaction failed: answer 5xx, so that Telegram sends it again."""


class _Waiting(NamedTuple):
    row: intake.IncomingUpdate
    future: asyncio.Future[Outcome]
    loop: asyncio.AbstractEventLoop


async def store(row: intake.IncomingUpdate) -> bool:
    """Commit ``row`` with whatever else is waiting; whether it was new (``False``:
    stored before). Raises ``NotStored`` if the transaction failed."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Outcome] = loop.create_future()
    _pending.put(_Waiting(row, future, loop))
    outcome = await future
    if isinstance(outcome, BaseException):
        raise NotStored(f"update {row.update_id} was not stored") from outcome
    return outcome


def release_connection(timeout: float = 10.0) -> bool:
    """Have the writer thread close its database connection (it opens a new one when
    the next update comes). For a test run, whose database cannot be dropped while a
    connection to it is open; True once done, or if there is no writer."""
    if not _pending.started:
        return True
    done = threading.Event()
    _pending.put(done)
    return done.wait(timeout)


def _take_batch(first: _Waiting) -> list[_Waiting]:
    batch = [first]
    while len(batch) < MAX_BATCH:
        try:
            item = _pending.get_nowait()
        except queue.Empty:
            break
        if isinstance(item, threading.Event):
            _pending.put(item)  # after this batch
            break
        batch.append(item)
    return batch


def _run() -> None:
    last = time.monotonic()
    while True:
        first = _pending.get()
        if isinstance(first, threading.Event):
            connection.close()
            first.set()
            continue
        batch = _take_batch(first)
        if time.monotonic() - last > IDLE_CHECK_SECONDS:
            _drop_if_broken()
        last = time.monotonic()
        try:
            outcomes = _commit([waiting.row for waiting in batch])
        except Exception as exc:  # a bug of ours: still, no request waits for ever
            logger.exception("webhook: storing %d update(s) failed", len(batch))
            outcomes = [exc] * len(batch)
        _resolve(batch, outcomes)


def _drop_if_broken() -> None:
    # The connection lives as long as the thread. After a quiet spell, check it
    # first (a database restarted, a proxy's idle time-out) rather than fail the
    # first updates after it.
    if connection.connection is not None and not connection.is_usable():
        connection.close()


def _commit(rows: list[intake.IncomingUpdate]) -> list[Outcome]:
    try:
        return list(intake.telegram_updates_store(updates=rows))
    except Exception as exc:
        logger.exception("webhook: %d update(s) could not be stored", len(rows))
        if isinstance(exc, OperationalError | InterfaceError):
            # Unreachable, locked past the time-out, or the connection broke: the
            # next batch opens a fresh connection.
            connection.close()
            return [exc] * len(rows)
        if len(rows) == 1:
            return [exc]
    outcomes: list[Outcome] = []
    for row in rows:
        try:
            outcomes += intake.telegram_updates_store(updates=[row])
        except Exception as exc:
            logger.exception("webhook: update %s could not be stored", row.update_id)
            outcomes.append(exc)
    return outcomes


def _resolve(batch: list[_Waiting], outcomes: list[Outcome]) -> None:
    # One wake-up per event loop (one per web process, in practice) for the whole
    # batch, rather than one per request.
    by_loop: dict[asyncio.AbstractEventLoop, list[_Result]] = defaultdict(list)
    for waiting, outcome in zip(batch, outcomes, strict=True):
        by_loop[waiting.loop].append((waiting.future, outcome))
    for loop, results in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
            loop.call_soon_threadsafe(_set_all, results)


def _set_all(results: list[_Result]) -> None:
    for future, outcome in results:
        if not future.done():  # else the request went away meanwhile
            future.set_result(outcome)


# This process's writer thread runs _run. Besides requests' rows, it takes the
# event of release_connection.
_pending: ProcessQueue[_Waiting | threading.Event] = ProcessQueue(
    "bots-update-writer", _run
)
