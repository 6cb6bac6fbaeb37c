"""Reads of the bot's state: what a chat is still owed, and what looks abandoned."""

from __future__ import annotations

from datetime import datetime

from django.db.models import Q
from django.db.models import QuerySet

from asr.models import Transcription
from bots.models import TelegramChat
from bots.models import TelegramJob
from bots.models import TelegramReply
from bots.models import TelegramUpdate

Reply = TelegramReply


def reply_next(*, chat_id: int) -> TelegramReply | None:
    """The chat's oldest part not yet delivered: parts go out strictly in id order."""
    return (
        Reply.objects.filter(chat_id=chat_id, state__in=Reply.UNDELIVERED)
        .select_related("edit_of", "job", "update")
        .order_by("id")
        .first()
    )


def reply_undelivered_exists(*, chat_id: int) -> bool:
    return Reply.objects.filter(chat_id=chat_id, state__in=Reply.UNDELIVERED).exists()


def replies_of_chat(*, chat_id: int) -> QuerySet[TelegramReply]:
    return Reply.objects.filter(chat_id=chat_id).order_by("id")


def updates_unprocessed(*, before: datetime) -> QuerySet[TelegramUpdate]:
    """Stored updates whose processing task never ran to the end."""
    return TelegramUpdate.objects.filter(
        status=TelegramUpdate.Status.RECEIVED, received_at__lt=before
    ).order_by("id")


def jobs_not_fetched(*, before: datetime) -> QuerySet[TelegramJob]:
    return TelegramJob.objects.filter(
        state=TelegramJob.State.FETCHING, created_at__lt=before
    ).order_by("id")


def jobs_finished_unanswered(*, before: datetime) -> QuerySet[TelegramJob]:
    """Jobs whose transcription finished without its answer being written (the
    finishing process died between its commit and the enqueue, say)."""
    return TelegramJob.objects.filter(
        state=TelegramJob.State.TRANSCRIBING,
        transcription__status__in=Transcription.FINISHED,
        transcription__finished_at__lt=before,
    ).order_by("id")


def jobs_orphaned(*, before: datetime) -> QuerySet[TelegramJob]:
    """Jobs whose transcription was deleted before it could be answered."""
    return TelegramJob.objects.filter(
        state=TelegramJob.State.TRANSCRIBING,
        transcription__isnull=True,
        created_at__lt=before,
    ).order_by("id")


def chats_with_stalled_replies(
    *, before: datetime, now: datetime, limit: int = 500
) -> list[int]:
    """Chat ids owing a part older than ``before`` that no delivery task is on: no
    live lease, no back-off running, none enqueued lately."""
    stalled = (
        Reply.objects.filter(state__in=Reply.UNDELIVERED, created_at__lt=before)
        .values_list("chat_id", flat=True)
        .distinct()
    )
    return list(
        TelegramChat.objects.filter(chat_id__in=stalled)
        .filter(
            Q(delivery_lease_until__isnull=True) | Q(delivery_lease_until__lt=now),
            Q(delivery_not_before__isnull=True) | Q(delivery_not_before__lte=now),
            Q(delivery_enqueued_at__isnull=True) | Q(delivery_enqueued_at__lt=before),
        )
        .values_list("chat_id", flat=True)[:limit]
    )


def replies_expired(*, before: datetime) -> QuerySet[TelegramReply]:
    return Reply.objects.filter(state__in=Reply.UNDELIVERED, created_at__lt=before)


def chats_with_lapsed_lease(
    *, now: datetime, limit: int = 500
) -> list[tuple[int, str]]:
    """(chat id, owner) of chats whose delivery lease ran out with an owner still on
    it: a task that finishes or gives up lets go of the lease, so this one died (or
    its retry was lost with its worker). A partial index keeps this cheap: only
    leases held are in it."""
    return list(
        TelegramChat.objects.exclude(delivery_owner="")
        .filter(delivery_lease_until__lt=now)
        .values_list("chat_id", "delivery_owner")[:limit]
    )
