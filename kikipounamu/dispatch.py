"""Sending Celery tasks by name: the one way services enqueue work.

Services name the task they want run; they never import a task module, which
imports the services. ``CELERY_TASK_ROUTES`` picks the queue from the name, as it
would for ``task.apply_async``. Every row a task works on is written before the task
is sent, and a periodic reconciler re-sends what a row still needs, so a broker
outage must not fail the request or the task that committed: a failed send is
logged and reported, not raised.

A refused send is also kept, in this process, and sent again in the background as
soon as the broker answers (:class:`Resender`): an upload accepted while Redis was
down runs a second or two after Redis is back, not at the reconciler's next pass
(up to ``ASR_RECONCILE_INTERVAL`` plus its minimum age later). The reconciler stays
the net for a process that dies holding such sends, and for sends past
``DISPATCH_RESEND_SECONDS`` or ``DISPATCH_RESEND_LIMIT``. A send made twice (this
one and the reconciler's) is harmless: the claim in the database runs a job once.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from django.conf import settings

from kikipounamu.celery import app

logger = logging.getLogger(__name__)


def _publish(name: str, args: list[Any], options: dict[str, Any]) -> None:
    app.send_task(name, args=args, ignore_result=True, **options)


def send(
    name: str,
    args: Sequence[Any] = (),
    *,
    what: str,
    resend: bool = True,
    **options: Any,
) -> bool:
    """Send task ``name`` with ``args``; False (logged) if the broker refused it.

    ``what`` names the work in the log line ("job <id>", "chunk 3 of job <id>").
    ``resend``: keep a refused send and make it again once the broker answers
    (False for work that is stale a second later, such as a live partial).
    ``options`` are ``apply_async``'s (``task_id``, ``countdown``, time limits).
    No task result is ever waited on (outcomes live in rows): without
    ``ignore_result`` the sender would also subscribe to each task's result.
    """
    try:
        _publish(name, list(args), options)
    except Exception:
        logger.warning(
            "%s: enqueue of %s failed, %s",
            what,
            name,
            "sent again once the broker answers"
            if resend
            else "left for the reconciler",
            exc_info=True,
        )
        if resend:
            resender.keep(name, list(args), options, what=what)
        return False
    return True


class Resender:
    """Sends the broker refused, made again by one background thread of this
    process once it answers.

    Kept in memory, oldest first, keyed by task id where there is one (a send
    refused twice is held once). The thread tries the oldest with a back-off from
    ``first_wait`` to ``max_wait`` seconds, and on success sends the rest at once.
    A send held past ``max_age`` seconds, or pushed out by ``limit`` newer ones, is
    dropped with a warning: its row's reconciler sends it. Nothing here touches the
    database, so the thread holds no connection while Redis is down.
    """

    def __init__(
        self,
        *,
        limit: int | None = None,
        max_age: float | None = None,
        first_wait: float = 0.25,
        max_wait: float = 2.0,
    ) -> None:
        self._limit = limit
        self._max_age = max_age
        self.first_wait = first_wait
        self.max_wait = max_wait
        self._held: OrderedDict[str, tuple[float, str, list[Any], dict[str, Any], str]]
        self._held = OrderedDict()
        self._serial = 0
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self.sent = 0
        self.dropped = 0

    @property
    def limit(self) -> int:
        return (
            self._limit if self._limit is not None else settings.DISPATCH_RESEND_LIMIT
        )

    @property
    def max_age(self) -> float:
        if self._max_age is not None:
            return self._max_age
        return float(settings.DISPATCH_RESEND_SECONDS)

    def __len__(self) -> int:
        with self._wake:
            return len(self._held)

    def keep(
        self, name: str, args: list[Any], options: dict[str, Any], *, what: str
    ) -> None:
        if self.max_age <= 0 or self.limit <= 0:
            return
        with self._wake:
            self._serial += 1
            key = str(options.get("task_id") or f"#{self._serial}")
            self._held.pop(key, None)
            self._held[key] = (time.monotonic(), name, args, options, what)
            while len(self._held) > self.limit:
                _, (_, _, _, _, old) = self._held.popitem(last=False)
                self.dropped += 1
                logger.warning(
                    "%s: more than %d sends held, left for the reconciler",
                    old,
                    self.limit,
                )
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="dispatch-resend", daemon=True
                )
                self._thread.start()
            self._wake.notify()

    def _oldest(self) -> tuple[str, str, list[Any], dict[str, Any], str] | None:
        """The oldest held send still young enough; those too old are dropped."""
        with self._wake:
            while not self._held:
                self._wake.wait()
            now = time.monotonic()
            while self._held:
                key, (kept_at, name, args, options, what) = next(
                    iter(self._held.items())
                )
                if now - kept_at <= self.max_age:
                    return key, name, args, options, what
                del self._held[key]
                self.dropped += 1
                logger.warning(
                    "%s: not sent within %.0f s, left for the reconciler",
                    what,
                    self.max_age,
                )
            return None

    def _run(self) -> None:
        wait = self.first_wait
        while True:
            oldest = self._oldest()
            if oldest is None:
                continue
            key, name, args, options, what = oldest
            try:
                # No publish retries of Celery's own: this loop is the retry, and a
                # held send must not wait behind one.
                _publish(name, args, {**options, "retry": False})
            except Exception as exc:
                logger.debug("%s: resend of %s failed: %s", what, name, exc)
                time.sleep(wait)
                wait = min(wait * 2, self.max_wait)
                continue
            wait = self.first_wait
            with self._wake:
                # A newer refusal of the same task id, if any, is this same send.
                self._held.pop(key, None)
                self.sent += 1
            logger.info("%s: %s sent, the broker answers again", what, name)

    def _after_fork(self) -> None:
        # A forked child (a prefork pool process) has no thread: its own refusals
        # start one. The parent's held sends stay the parent's to make.
        self._held = OrderedDict()
        self._wake = threading.Condition()
        self._thread = None

    def _at_exit(self) -> None:
        held = len(self)
        if held:
            logger.warning(
                "%d refused sends not made before exit, left for the reconciler", held
            )


resender = Resender()
os.register_at_fork(after_in_child=resender._after_fork)
atexit.register(resender._at_exit)


def revoke(task_ids: Sequence[str], *, what: str) -> None:
    """Tell every worker to drop these messages unrun.

    Best effort: callers revoke only messages that would find nothing to do anyway
    (their claim is a no-op); revoking spares a worker the trip.
    """
    if not task_ids:
        return
    try:
        app.control.revoke(list(task_ids))
    except Exception:
        logger.warning("%s: revoke not sent", what, exc_info=True)
