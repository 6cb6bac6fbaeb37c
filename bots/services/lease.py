"""A chat's delivery lease: which task may send the chat's replies now.

One task at a time per chat keeps its replies in order and keeps a part from being
sent by two tasks at once. The lease is short (``TELEGRAM_DELIVERY_LEASE_SECONDS``,
10 s) and its holder's process renews it while the task works, from one thread
per process (:class:`_Keeper`): so a live holder keeps the chat however long a call
takes, and a dead one (a worker SIGKILLed, a machine gone) lets go of it within one
lease. ``bots.reclaim_leases`` then hands such a chat to a new task
(:func:`telegram_leases_reclaim`).

Why this never sends a part twice: a part is sent only by the task that holds the
chat's lease, and a lease passes to another task only once it has not been renewed
for a whole lease, which a process that is alive and reaches the database does every
quarter of one. What is left is the window every design has without help from the
Bot API (see ``delivery._deliver_part``): a holder that died after Telegram took a new
message and before the database heard of it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from dataclasses import field
from datetime import timedelta

from django.conf import settings
from django.db import DatabaseError
from django.db import connection
from django.db.models import Q
from django.utils import timezone

from bots import selectors
from bots.models import TelegramChat
from bots.services import dispatch

logger = logging.getLogger(__name__)

# A part whose call and database writes take longer than the longest call's time-out
# plus this is stuck (a database that does not answer, say): its process stops
# renewing the lease, so that the chat is not held for as long as the process lives.
STUCK_GRACE_SECONDS = 60.0


def _seconds() -> float:
    return float(settings.TELEGRAM_DELIVERY_LEASE_SECONDS)


def lease_claim(chat_id: int, owner: str) -> bool:
    """Take (or renew) the chat's delivery lease: free, expired, or already ours.

    The owner is the Celery task id, which a retry or a redelivered message keeps:
    the same task picks up where a killed process left off without waiting.
    """
    now = timezone.now()
    return bool(
        TelegramChat.objects.filter(pk=chat_id)
        .filter(
            Q(delivery_owner=owner)
            | Q(delivery_lease_until__isnull=True)
            | Q(delivery_lease_until__lt=now)
        )
        .update(
            delivery_owner=owner,
            delivery_lease_until=now + timedelta(seconds=_seconds()),
        )
    )


def lease_renew(chat_id: int, owner: str) -> bool:
    """Push the lease's end a lease away, if it is still ours; never shorten it (a
    back-off holds it longer, see :func:`lease_hold_until_retry`)."""
    until = timezone.now() + timedelta(seconds=_seconds())
    return bool(
        TelegramChat.objects.filter(
            pk=chat_id, delivery_owner=owner, delivery_lease_until__lt=until
        ).update(delivery_lease_until=until)
    )


def lease_release(chat_id: int, owner: str) -> None:
    TelegramChat.objects.filter(pk=chat_id, delivery_owner=owner).update(
        delivery_owner="", delivery_lease_until=None
    )


def lease_hold_until_retry(chat_id: int, owner: str, delay: float) -> None:
    """Keep the lease through a back-off, so that parts stay in order and other
    tasks do not hammer a chat that Telegram asked us to leave alone. Nothing renews
    it meanwhile: if the retry is lost with its worker, the chat is free one lease
    after the back-off ends."""
    now = timezone.now()
    TelegramChat.objects.filter(pk=chat_id, delivery_owner=owner).update(
        delivery_not_before=now + timedelta(seconds=delay),
        delivery_lease_until=now + timedelta(seconds=delay + _seconds()),
    )


@dataclass(eq=False)
class Holding:
    """A lease this process holds while a delivery task works on the chat."""

    chat_id: int
    owner: str
    # time.monotonic() of the last write of the lease, and of the current part's start.
    renewed: float = field(default_factory=time.monotonic)
    part_started: float = field(default_factory=time.monotonic)

    def claimed(self) -> None:
        """The holder wrote the lease itself, at the start of a part."""
        self.renewed = self.part_started = time.monotonic()


class _Keeper:
    """Renews the leases this process holds, from one thread.

    The thread runs only while something is held (it ends, closing its database
    connection, once nothing is), and it writes only for runs that last: a delivery
    run that takes under a quarter of a lease, as nearly all do, costs it nothing.
    """

    def __init__(self) -> None:
        self._reset()
        # A forked pool process starts with no thread and holds nothing.
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._held: set[Holding] = set()
        self._thread: threading.Thread | None = None
        # Set by each new holding: the thread looks at once (and reads the lease's
        # length again, which only tests change).
        self._wake = threading.Event()

    @contextmanager
    def keep(self, chat_id: int, owner: str) -> Iterator[Holding]:
        holding = Holding(chat_id, owner)
        with self._lock:
            self._held.add(holding)
            self._wake.set()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="kiki-telegram-leases", daemon=True
                )
                self._thread.start()
        try:
            yield holding
        finally:
            with self._lock:
                self._held.discard(holding)

    def _run(self) -> None:
        try:
            while True:
                interval = _seconds() / 4
                woken = self._wake.wait(interval)
                self._wake.clear()
                with self._lock:
                    if not self._held and not woken:
                        # A whole interval with nothing held. Decided under the
                        # lock, so that keep() starts a new thread after this one.
                        self._thread = None
                        return
                    due = [
                        h
                        for h in self._held
                        if time.monotonic() - h.renewed >= interval
                    ]
                for holding in due:
                    self._renew(holding)
        finally:
            with self._lock:
                if self._thread is threading.current_thread():
                    self._thread = None
            connection.close()

    def _renew(self, holding: Holding) -> None:
        longest = max(
            settings.TELEGRAM_MESSAGE_TIMEOUT,
            settings.TELEGRAM_DOCUMENT_TIMEOUT,
            settings.TELEGRAM_DOWNLOAD_TIMEOUT,
        )
        stuck = time.monotonic() - holding.part_started
        if stuck > longest + STUCK_GRACE_SECONDS:
            logger.warning(
                "chat %s: delivery task %s on one part for %.0f s; letting its "
                "lease lapse",
                holding.chat_id,
                holding.owner,
                stuck,
            )
            return
        try:
            if lease_renew(holding.chat_id, holding.owner):
                holding.renewed = time.monotonic()
        except DatabaseError:
            # Its holder will fail on the same database; a new connection next time.
            logger.warning(
                "chat %s: lease of task %s not renewed",
                holding.chat_id,
                holding.owner,
                exc_info=True,
            )
            connection.close()


_keeper = _Keeper()


@contextmanager
def lease_kept(chat_id: int, owner: str) -> Iterator[Holding]:
    """While inside, this process renews the chat's lease as long as ``owner``
    holds it; call ``Holding.claimed`` after each :func:`lease_claim`."""
    with _keeper.keep(chat_id, owner) as holding:
        yield holding


def telegram_leases_reclaim() -> int:
    """Hand every chat whose lease lapsed in its holder's hands (the holder died, or
    its retry was lost with its worker) to a new delivery task; how many.

    The new task's id becomes the lease's owner here, in one conditional UPDATE that
    only one reclaimer wins, so that the chat is held from now on: tasks for the
    chat's new replies meanwhile leave them to it, and the next sweep leaves the chat
    alone unless that task too is lost for a whole lease.
    """
    now = timezone.now()
    reclaimed = 0
    for chat_id, owner in selectors.chats_with_lapsed_lease(now=now):
        task_id = str(uuid.uuid4())
        if not TelegramChat.objects.filter(
            pk=chat_id, delivery_owner=owner, delivery_lease_until__lt=now
        ).update(
            delivery_owner=task_id,
            delivery_lease_until=now + timedelta(seconds=_seconds()),
        ):
            continue  # taken meanwhile
        logger.warning(
            "chat %s: delivery task %s let its lease lapse; handed to task %s",
            chat_id,
            owner,
            task_id,
        )
        dispatch.enqueue_delivery(chat_id, task_id=task_id)
        reclaimed += 1
    return reclaimed
