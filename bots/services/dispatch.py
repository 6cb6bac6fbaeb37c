"""The bot's tasks, sent by name (``kikipounamu.dispatch``) after the rows they work on
are committed.

A broker outage must not fail the request or the task that committed: the rows are
there, and ``bots.reconcile`` re-enqueues what they still need.
"""

from __future__ import annotations

from typing import Any

from django.utils import timezone

from bots.models import TelegramChat
from kikipounamu import dispatch


def enqueue(task_name: str, *args: Any, **options: Any) -> None:
    """Send ``bots.<task_name>`` (``bots/tasks.py``) with ``args``; ``options`` are
    ``apply_async``'s."""
    dispatch.send(
        f"bots.{task_name}", args, what=f"bots.{task_name}{args!r}", **options
    )


def enqueue_delivery(chat_id: int, *, task_id: str | None = None) -> None:
    """``task_id``: the id the task must run under (the owner of a lease handed to
    it, see ``lease.telegram_leases_reclaim``)."""
    TelegramChat.objects.filter(pk=chat_id).update(delivery_enqueued_at=timezone.now())
    if task_id is None:
        enqueue("deliver", chat_id)
    else:
        enqueue("deliver", chat_id, task_id=task_id)


def enqueue_answer(transcription_id: str) -> None:
    enqueue("answer", transcription_id)
