"""Recording a job's events: history rows, sequence numbers, and the after-commit signal."""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

from django.db import transaction
from django.db.models import F

from asr.models import Transcription
from asr.models import TranscriptionEvent
from asr.signals import transcription_event
from asr.signals import transcription_events_recorded

logger = logging.getLogger(__name__)


def next_event_seq(transcription_id: UUID | str) -> int:
    """Take the job's next sequence number (inside the caller's transaction)."""
    Transcription.objects.filter(pk=transcription_id).update(
        event_seq=F("event_seq") + 1
    )
    return int(
        Transcription.objects.filter(pk=transcription_id)
        .values_list("event_seq", flat=True)
        .get()
    )


def transcription_event_record(
    *,
    transcription_id: UUID | str,
    kind: str,
    data: dict[str, Any] | None = None,
    job: Transcription | None = None,
    seq: int | None = None,
) -> TranscriptionEvent | None:
    """Append an event to the job's history and announce it once committed.

    ``job``, when the caller holds it, is the job as this event leaves it: receivers
    (the realtime push) then need no database read. ``seq``: the caller already took
    the job's next sequence number in its own UPDATE (``event_seq=F("event_seq") + 1``).
    """
    # No savepoint (two statements): inside a caller's transaction, a failure here
    # fails it all, which is what every caller wants.
    with transaction.atomic(savepoint=False):
        if seq is None:
            try:
                seq = next_event_seq(transcription_id)
            except Transcription.DoesNotExist:
                return None
            if job is not None:
                job.event_seq = seq
        event = TranscriptionEvent.objects.create(
            transcription_id=transcription_id, seq=seq, kind=kind, data=data or {}
        )
        transcription_events_recorded.send(
            sender=TranscriptionEvent, pairs=[(event, job)]
        )
        transaction.on_commit(lambda: _announce(event, job))
    return event


def transcription_events_record_bulk(
    entries: list[tuple[Transcription, str, dict[str, Any]]],
) -> None:
    """Record one event for each of several jobs in one INSERT (a batch's claim or
    finish). Each job already holds its new ``event_seq``, taken in the caller's
    UPDATE, and is the job as that event leaves it."""
    if not entries:
        return
    with transaction.atomic(savepoint=False):
        events = TranscriptionEvent.objects.bulk_create(
            [
                TranscriptionEvent(
                    transcription_id=job.pk, seq=job.event_seq, kind=kind, data=data
                )
                for job, kind, data in entries
            ]
        )
        pairs = [
            (event, job) for event, (job, _, _) in zip(events, entries, strict=True)
        ]
        transcription_events_recorded.send(sender=TranscriptionEvent, pairs=pairs)
        transaction.on_commit(lambda: _announce_all(pairs))


def _announce_all(pairs: list[tuple[TranscriptionEvent, Transcription]]) -> None:
    for event, job in pairs:
        _announce(event, job)


def _announce(event: TranscriptionEvent, job: Transcription | None = None) -> None:
    for receiver, response in transcription_event.send_robust(
        sender=TranscriptionEvent, event=event, job=job
    ):
        if isinstance(response, Exception):
            logger.error(
                "job %s: event %s receiver %r failed: %s",
                event.transcription_id,
                event.kind,
                receiver,
                response,
                exc_info=response,
            )


def announce_progress(
    *,
    transcription_id: UUID | str,
    seq: int,
    processed_seconds: float,
    extra: dict[str, Any] | None = None,
) -> None:
    """Announce progress like an event, but with no history row behind it.

    ``extra`` joins the event's data (a fanned-out job: chunks done and total).
    """
    event = TranscriptionEvent(
        transcription_id=transcription_id,
        seq=seq,
        kind=TranscriptionEvent.Kind.PROGRESS,
        data={"processed_seconds": round(processed_seconds, 3), **(extra or {})},
    )
    _announce(event)
