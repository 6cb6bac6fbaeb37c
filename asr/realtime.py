"""Live job updates over Django Channels: who may watch, what they get, how it is sent.

Groups: ``job.<uuid>`` (everyone watching one job) and ``user.<id>`` (a user's feed of
their jobs). The channel layer is at-most-once, so a client first gets a snapshot from
the database and then events; every event carries the job's sequence number, which only
grows, and a client drops anything not newer than what it holds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from typing import Any
from uuid import UUID

from channels.layers import get_channel_layer
from django.conf import settings
from django.core import signing

from asr import selectors
from asr.models import Transcription
from asr.models import TranscriptionEvent

Kind = TranscriptionEvent.Kind

logger = logging.getLogger(__name__)

_WS_SALT = "asr.realtime.ws"


def job_group(transcription_id: UUID | str) -> str:
    return f"job.{transcription_id}"


def user_group(user_id: int) -> str:
    return f"user.{user_id}"


def ws_token_for_job(job: Transcription) -> str:
    """A signed, expiring token that lets its holder watch this one job."""
    return signing.dumps({"j": str(job.id)}, salt=_WS_SALT, compress=True)


def ws_token_job_id(token: str) -> str | None:
    try:
        data = signing.loads(token, salt=_WS_SALT, max_age=settings.WS_TOKEN_MAX_AGE)
    except signing.BadSignature:  # also SignatureExpired
        return None
    return data.get("j") if isinstance(data, dict) else None


def token_allows_job(*, token: str | None, transcription_id: str) -> bool:
    """Whether ``token`` is this job's valid signed token (no database read)."""
    return bool(token) and ws_token_job_id(token or "") == str(transcription_id)


def can_watch_job(*, user: Any, token: str | None, transcription_id: str) -> bool:
    """Owners and staff (by session), or anyone holding this job's valid token."""
    if token_allows_job(token=token, transcription_id=transcription_id):
        return Transcription.objects.filter(pk=transcription_id).exists()
    return (
        selectors.transcription_visible_to(user=user)
        .filter(pk=transcription_id)
        .exists()
    )


def job_payload(job: Transcription) -> dict[str, Any]:
    """The job as the API shows it (links as paths), with its sequence number."""
    from asr.api.serializers import transcription_representation

    data = transcription_representation(job)
    data["seq"] = job.event_seq
    return data


def _job_with_position(transcription_id: str) -> Transcription | None:
    return (
        selectors.with_queue_position(Transcription.objects.select_related("owner"))
        .filter(pk=transcription_id)
        .first()
    )


def job_snapshot(transcription_id: str) -> dict[str, Any] | None:
    job = _job_with_position(transcription_id)
    return job_payload(job) if job else None


def feed_snapshot(user: Any) -> list[dict[str, Any]]:
    jobs = selectors.transcription_list(user=user, owner_only=True)[
        : settings.WS_FEED_SNAPSHOT_SIZE
    ]
    return [job_payload(job) for job in jobs]


def publish_event(event: TranscriptionEvent, job: Transcription | None = None) -> None:
    """Push one event, with the job as it left it, to its watchers and its owner.

    ``job`` comes from the code that recorded the event, which holds it anyway: then
    nothing is read from the database on the way from "job finished" to "browser
    told". Without it (rare paths), the job is read as it is now.
    """
    layer = get_channel_layer()
    if layer is None:
        return
    if job is None:
        job = Transcription.objects.filter(pk=event.transcription_id).first()
        if job is None:
            return
    # A job's own watchers subscribe with its id, which its submitter learns only
    # from the answer that follows this first event: nobody can be in that group
    # yet (and an empty group still costs a Redis round trip per submit).
    groups = [] if event.kind == Kind.ACCEPTED else [job_group(event.transcription_id)]
    if job.owner_id is not None:
        groups.append(user_group(job.owner_id))
    if not groups:
        return
    payload = job_payload(job)
    # A later event's job must not be shown under this event's number.
    payload["seq"] = max(event.seq, job.event_seq or 0)
    message = {
        "type": "job.event",
        "event": event.kind,
        "seq": event.seq,
        "job": payload,
    }
    _send_from_sync(layer, groups, message)


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


def _send_from_sync(layer: Any, groups: list[str], message: dict[str, Any]) -> None:
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


def on_transcription_event(
    sender: Any, event: TranscriptionEvent, job: Transcription | None = None, **_: Any
) -> None:
    """Receiver of asr.signals.transcription_event."""
    try:
        publish_event(event, job)
    except Exception:
        # Browsers resync from a snapshot on reconnect; never fail the job for this.
        logger.warning(
            "job %s: realtime push of %s failed",
            event.transcription_id,
            event.kind,
            exc_info=True,
        )
