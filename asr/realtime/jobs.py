"""Live job updates: who may watch a job, what they get on (re)connect, and how
each event is pushed.

Groups: ``job.<uuid>`` (everyone watching one job) and ``user.<id>`` (a user's feed of
their jobs). The channel layer is at-most-once, so a client first gets a snapshot from
the database and then events; every event carries the job's sequence number, which only
grows, and a client drops anything not newer than what it holds.
"""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

from channels.layers import get_channel_layer
from django.conf import settings

from asr import selectors
from asr.api.serializers import transcription_representation
from asr.models import Transcription
from asr.models import TranscriptionEvent
from asr.realtime.sender import send_from_sync
from asr.ws_tokens import token_allows_job

Kind = TranscriptionEvent.Kind

logger = logging.getLogger(__name__)


def job_group(transcription_id: UUID | str) -> str:
    return f"job.{transcription_id}"


def user_group(user_id: int) -> str:
    return f"user.{user_id}"


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
    send_from_sync(layer, groups, message)


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
