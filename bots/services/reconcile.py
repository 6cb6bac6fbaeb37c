"""The bot's reconciler (beat runs ``bots.reconcile``): whatever step's task was lost
(a process killed between commit and enqueue, a Redis without its data) is enqueued
again; parts past their time are given up."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from bots import selectors
from bots.models import TelegramReply
from bots.services import dispatch
from bots.services.answer import telegram_job_answer_error
from bots.transport import text as texts

PartState = TelegramReply.State


def telegram_reconcile(*, min_age: float | None = None) -> dict[str, int]:
    """Re-enqueue every step whose task was lost; give up parts past their time.

    Only what is older than ``min_age`` is touched, so that work in flight is left
    to its own task. Re-enqueueing something still queued is harmless: every task
    is idempotent.
    """
    now = timezone.now()
    age = settings.TELEGRAM_RECONCILE_MIN_AGE if min_age is None else min_age
    before = now - timedelta(seconds=age)
    counts = {"updates": 0, "fetches": 0, "answers": 0, "orphans": 0}
    counts["given_up"] = selectors.replies_expired(
        before=now - timedelta(seconds=settings.TELEGRAM_GIVE_UP_SECONDS)
    ).update(state=PartState.FAILED, last_error="given up by the reconciler")
    for update_pk in selectors.updates_unprocessed(before=before).values_list(
        "pk", flat=True
    )[:500]:
        dispatch.enqueue("process_update", update_pk)
        counts["updates"] += 1
    for job_pk in selectors.jobs_not_fetched(before=before).values_list(
        "pk", flat=True
    )[:500]:
        dispatch.enqueue("fetch_audio", job_pk)
        counts["fetches"] += 1
    for transcription_id in selectors.jobs_finished_unanswered(
        before=before
    ).values_list("transcription_id", flat=True)[:500]:
        dispatch.enqueue_answer(str(transcription_id))
        counts["answers"] += 1
    for job_pk in selectors.jobs_orphaned(before=before).values_list("pk", flat=True)[
        :500
    ]:
        telegram_job_answer_error(
            job_pk,
            code="deleted",
            message="the transcription was deleted",
            body=texts.failed("The job was deleted before it finished."),
        )
        counts["orphans"] += 1
    chats = selectors.chats_with_stalled_replies(before=before, now=now)
    for chat_id in chats:
        dispatch.enqueue_delivery(chat_id)
    counts["deliveries"] = len(chats)
    return counts
