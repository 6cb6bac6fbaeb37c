"""Live job updates over Django Channels: who may watch, what they get, how it is sent.

Groups: ``job.<uuid>`` (everyone watching one job) and ``user.<id>`` (a user's feed of
their jobs). The channel layer is at-most-once, so a client first gets a snapshot from
the database and then events; every event carries the job's sequence number, which only
grows, and a client drops anything not newer than what it holds.
"""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.core import signing

from asr import selectors
from asr.models import Transcription
from asr.models import TranscriptionEvent

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


def can_watch_job(*, user: Any, token: str | None, transcription_id: str) -> bool:
    """Owners and staff (by session), or anyone holding this job's valid token."""
    if token and ws_token_job_id(token) == str(transcription_id):
        return Transcription.objects.filter(pk=transcription_id).exists()
    return (
        selectors.transcription_visible_to(user=user)
        .filter(pk=transcription_id)
        .exists()
    )


def job_payload(job: Transcription) -> dict[str, Any]:
    from asr.api.serializers import TranscriptionSerializer

    data = dict(TranscriptionSerializer(job).data)
    data["seq"] = job.event_seq
    return data


def job_snapshot(transcription_id: str) -> dict[str, Any] | None:
    job = (
        selectors.with_queue_position(Transcription.objects.select_related("owner"))
        .filter(pk=transcription_id)
        .first()
    )
    return job_payload(job) if job else None


def feed_snapshot(user: Any) -> list[dict[str, Any]]:
    jobs = selectors.transcription_list(user=user, owner_only=True)[
        : settings.WS_FEED_SNAPSHOT_SIZE
    ]
    return [job_payload(job) for job in jobs]


def publish_event(event: TranscriptionEvent) -> None:
    """Push one event, with the job as it is now, to its watchers and its owner."""
    job = job_snapshot(str(event.transcription_id))
    if job is None:
        return
    message = {
        "type": "job.event",
        "event": event.kind,
        "seq": event.seq,
        "job": job,
    }
    layer = get_channel_layer()
    if layer is None:
        return
    send = async_to_sync(_send_all)
    owner_id = (
        Transcription.objects.filter(pk=event.transcription_id)
        .values_list("owner_id", flat=True)
        .first()
    )
    groups = [job_group(event.transcription_id)]
    if owner_id is not None:
        groups.append(user_group(owner_id))
    send(layer, groups, message)


async def _send_all(layer: Any, groups: list[str], message: dict[str, Any]) -> None:
    for group in groups:
        await layer.group_send(group, message)


def on_transcription_event(sender: Any, event: TranscriptionEvent, **_: Any) -> None:
    """Receiver of asr.signals.transcription_event."""
    try:
        publish_event(event)
    except Exception:
        # Browsers resync from a snapshot on reconnect; never fail the job for this.
        logger.warning(
            "job %s: realtime push of %s failed",
            event.transcription_id,
            event.kind,
            exc_info=True,
        )
