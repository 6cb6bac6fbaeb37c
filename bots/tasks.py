"""Celery tasks of the bot, all on the ``bots`` queue: thin, idempotent, take ids.

They are Telegram I/O and database writes, waiting more than computing: the ``bots``
worker runs them on a pool of threads (Procfile ``worker_bots``), so that a Bot API call
that hangs holds one thread, not the bot. Nothing here or in the services they call
keeps state between tasks but the Bot API client (one per thread) and the lease
keeper (one per process, locked).

Every task is safe to run twice (each service starts with a conditional UPDATE that
only one attempt wins), so all are ``acks_late``: a worker killed mid-task gives its
message back to the broker. Retries are bounded; what runs out of them is picked up
again by ``bots.reconcile``.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from django.db import OperationalError

from bots import services

logger = logging.getLogger(__name__)

_COMMON: dict[str, Any] = {
    "acks_late": True,
    "reject_on_worker_lost": True,
    "ignore_result": True,
}
# Automatic retries back off 2, 4, 8 ... s with jitter, at most a minute apart
# (without a back-off Celery waits its default 3 minutes before each).
_BACKOFF: dict[str, Any] = {
    "retry_backoff": 2,
    "retry_backoff_max": 60,
    "retry_jitter": True,
}


@shared_task(
    name="bots.process_update",
    autoretry_for=(services.RetryLater, OperationalError),
    **_BACKOFF,
    retry_kwargs={"max_retries": 5},
    **_COMMON,
)
def process_update(update_pk: int) -> None:
    """Turn a stored webhook update into replies and, for audio, a job."""
    services.telegram_update_process(update_pk=update_pk)


@shared_task(
    name="bots.process_updates",
    autoretry_for=(OperationalError,),
    **_BACKOFF,
    retry_kwargs={"max_retries": 5},
    **_COMMON,
)
def process_updates(update_pks: list[int]) -> None:
    """The webhook's batch (see bots.webhook.publisher), in the order the updates came."""
    for update_pk in update_pks:
        try:
            services.telegram_update_process(update_pk=update_pk)
        except services.RetryLater as exc:
            # One update's trouble must not hold up the rest of the batch.
            process_update.apply_async((update_pk,), countdown=exc.countdown)


@shared_task(
    bind=True,
    name="bots.fetch_audio",
    autoretry_for=(OperationalError,),
    **_BACKOFF,
    # Both for the automatic retries and for self.retry() below. More than
    # TELEGRAM_FETCH_MAX_ATTEMPTS: a 429 gives its attempt back (fetch.py), so a
    # chat told to wait several times still gets its voice note fetched; past this
    # the job waits for bots.reconcile.
    max_retries=20,
    retry_kwargs={"max_retries": 20},
    **_COMMON,
)
def fetch_audio(self: Any, job_pk: int) -> None:
    """Download a job's file from Telegram and submit it to the ASR pipeline."""
    try:
        services.telegram_job_fetch(job_pk=job_pk)
    except services.RetryLater as exc:
        # Honours retry_after on a 429; bounded by retry_kwargs.
        raise self.retry(exc=exc, countdown=exc.countdown) from exc


@shared_task(
    name="bots.answer",
    autoretry_for=(OperationalError,),
    **_BACKOFF,
    retry_kwargs={"max_retries": 5},
    **_COMMON,
)
def answer(transcription_id: str) -> None:
    """Write the reply parts of a finished job (a no-op for non-Telegram jobs)."""
    services.telegram_job_answer(transcription_id=transcription_id)


@shared_task(
    bind=True,
    name="bots.deliver",
    autoretry_for=(OperationalError,),
    **_BACKOFF,
    # Both for the automatic retries and for self.retry() below; past them the
    # reconciler starts a new task.
    max_retries=30,
    retry_kwargs={"max_retries": 30},
    **_COMMON,
)
def deliver(self: Any, chat_id: int) -> None:
    """Send a chat's undelivered reply parts, in order, each once."""
    outcome = services.telegram_chat_deliver(chat_id=chat_id, owner=self.request.id)
    if outcome.retry_in is None:
        return
    if self.request.retries >= self.max_retries:
        services.telegram_delivery_release(chat_id=chat_id, owner=self.request.id)
        logger.warning(
            "chat %s: delivery task %s out of retries, left for the reconciler",
            chat_id,
            self.request.id,
        )
        return
    raise self.retry(countdown=outcome.retry_in)


@shared_task(name="bots.reclaim_leases", ignore_result=True)
def reclaim_leases() -> int:
    """Periodic (beat, every few seconds): chats whose delivery task died holding
    the lease go to a new task."""
    return services.telegram_leases_reclaim()


@shared_task(name="bots.reconcile", ignore_result=True)
def reconcile() -> dict[str, int]:
    """Periodic (beat): re-enqueue the bot's work whose task was lost."""
    counts = services.telegram_reconcile()
    if any(counts.values()):
        logger.warning("bots reconcile: %s", counts)
    return counts
