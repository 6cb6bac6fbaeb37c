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


def enqueue(task_name: str, *args: Any) -> None:
    """Send ``bots.<task_name>`` (``bots/tasks.py``) with ``args``."""
    dispatch.send(f"bots.{task_name}", args, what=f"bots.{task_name}{args!r}")


def enqueue_delivery(chat_id: int) -> None:
    TelegramChat.objects.filter(pk=chat_id).update(delivery_enqueued_at=timezone.now())
    enqueue("deliver", chat_id)


def enqueue_answer(transcription_id: str) -> None:
    enqueue("answer", transcription_id)
