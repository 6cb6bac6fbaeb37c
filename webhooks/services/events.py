"""From a finished job to the deliveries it owes, written in the finish's transaction.

``deliveries_create`` runs inside the transaction that records the job's finishing
event (``asr.signals.transcription_events_recorded``): the delivery rows commit with
the job's new status or not at all, so a process that dies right after the commit
loses nothing (``webhooks.reconcile`` sends the rows whose task never ran). Each row
is unique per (event, receiver): an event is never owed twice.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from asr.api.serializers import job_links
from asr.models import Transcription
from asr.models import TranscriptionEvent
from webhooks.models import EventType
from webhooks.models import WebhookDelivery
from webhooks.models import WebhookEndpoint
from webhooks.services import dispatch

Kind = TranscriptionEvent.Kind

_FINISHED = {
    Kind.SUCCEEDED: EventType.SUCCEEDED,
    Kind.FAILED: EventType.FAILED,
    Kind.CANCELLED: EventType.CANCELLED,
}
JOB_TARGET = "job"


def event_type_of(kind: str, job: Transcription) -> str | None:
    """The webhook event of a job's event, or None (not a finish)."""
    if kind not in _FINISHED:
        return None
    if job.source == Transcription.Source.LIVE:
        return EventType.LIVE_FINISHED
    return _FINISHED[Kind(kind)]


def payload(
    *,
    event_type: str,
    job: Transcription,
    at: Any,
    include_text: bool,
) -> dict[str, Any]:
    """What a receiver gets: the Standard Webhooks envelope (``type``,
    ``timestamp``, ``data``), the job's id, status and links; its text only when
    asked."""
    links = {
        name: settings.PUBLIC_BASE_URL + path
        for name, path in job_links(job).items()
        if name != "websocket"  # a path without a token: of no use to a receiver
    }
    data: dict[str, Any] = {
        "id": str(job.id),
        "status": job.status,
        "source": job.source,
        "error": job.error(),
        "duration": job.duration,
        "language": job.detected_language or job.language or None,
        "created_at": job.created_at.isoformat(),
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "links": links,
    }
    if include_text:
        data["text"] = job.text
        data["segments"] = job.segments
    return {"type": event_type, "timestamp": at.isoformat(), "data": data}


def _body(value: dict[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def deliveries_create(
    pairs: Iterable[tuple[TranscriptionEvent, Transcription | None]],
) -> list[WebhookDelivery]:
    """The deliveries owed for these events (inside the caller's transaction); their
    tasks are sent once it commits."""
    rows: list[WebhookDelivery] = []
    for event, held in pairs:
        if event.kind not in _FINISHED:
            continue
        job = held
        if job is None:
            job = Transcription.objects.filter(pk=event.transcription_id).first()
        if job is not None and (job.owner_id is not None or job.webhook_url):
            rows += _deliveries_of(event, job)
    if not rows:
        return []
    WebhookDelivery.objects.bulk_create(rows)
    ids = [row.pk for row in rows]
    transaction.on_commit(lambda: dispatch.enqueue_deliveries(ids))
    return rows


def _deliveries_of(
    event: TranscriptionEvent, job: Transcription
) -> list[WebhookDelivery]:
    event_type = event_type_of(event.kind, job)
    assert event_type is not None
    now = timezone.now()
    common = {
        "event_type": event_type,
        "job_id": job.pk,
        "source_event_id": event.pk,
        "owner_id": job.owner_id,
        "give_up_at": now + timedelta(seconds=settings.WEBHOOK_GIVE_UP_SECONDS),
        "next_attempt_at": now,
        "created_at": now,
    }
    # One body per choice of include_text, shared by the endpoints that make it.
    bodies: dict[bool, str] = {}

    def body_of(include_text: bool) -> str:
        if include_text not in bodies:
            bodies[include_text] = _body(
                payload(
                    event_type=event_type,
                    job=job,
                    at=event.created_at,
                    include_text=include_text,
                )
            )
        return bodies[include_text]

    rows = []
    if job.owner_id is not None:
        for endpoint in WebhookEndpoint.objects.filter(
            owner_id=job.owner_id, is_active=True
        ):
            if event_type in endpoint.events:
                rows.append(
                    WebhookDelivery(
                        **common,
                        target=f"endpoint:{endpoint.pk}",
                        endpoint=endpoint,
                        url=endpoint.url,
                        body=body_of(endpoint.include_text),
                    )
                )
    if job.webhook_url and event_type != EventType.LIVE_FINISHED:
        rows.append(
            WebhookDelivery(
                **common, target=JOB_TARGET, url=job.webhook_url, body=body_of(False)
            )
        )
    return rows
