"""Celery tasks of the webhooks, on the ``webhooks`` queue: thin, idempotent, take ids.

They wait on receivers that others run: the ``webhooks`` worker runs them on a pool
of threads (Procfile ``worker_webhooks``), so that a receiver that hangs holds one
thread until the call's deadline. Every attempt starts with a conditional claim, so
a task run twice (a redelivered message, the reconciler's copy) calls once; all are
``acks_late``. The retry schedule of a delivery is its row's, not Celery's: a task
retries only its own database trouble, bounded.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from django.db import OperationalError

from webhooks import services

logger = logging.getLogger(__name__)


@shared_task(
    bind=True,
    name="webhooks.deliver",
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    autoretry_for=(OperationalError,),
    retry_backoff=2,
    retry_backoff_max=60,
    retry_jitter=True,
    retry_kwargs={"max_retries": 5},
)
def deliver(self: Any, delivery_id: str) -> None:
    """One attempt at a delivery, if it is due and no one else holds it."""
    services.webhook_deliver(delivery_id=delivery_id, owner=self.request.id or "")


@shared_task(name="webhooks.reconcile", ignore_result=True)
def reconcile() -> dict[str, int]:
    """Periodic (beat): send again the deliveries whose task was lost."""
    counts = services.webhooks_reconcile()
    if any(counts.values()):
        logger.warning("webhooks reconcile: %s", counts)
    return counts
