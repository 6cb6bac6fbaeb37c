"""The webhooks' reconciler (beat runs ``webhooks.reconcile``): deliveries whose
task was lost are sent again.

- ``sending`` past its lease: its process died mid-call (the receiver may or may not
  have the event). Its attempt is closed as lost and the delivery is due again; the
  next attempt has the same ``webhook-id``, so a receiver that got the first drops it.
- ``pending`` and due for longer than ``WEBHOOK_RECONCILE_MIN_AGE``: its task never
  ran (a process killed between commit and enqueue, a Redis without its data), or its
  retry is further off than a delayed task is sent for (``WEBHOOK_COUNTDOWN_MAX``).

Sending one still queued is harmless: an attempt starts with a conditional claim.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from webhooks import selectors
from webhooks.models import WebhookAttempt
from webhooks.models import WebhookDelivery
from webhooks.services import dispatch

State = WebhookDelivery.State
BATCH = 1000


def webhooks_reconcile(*, min_age: float | None = None) -> dict[str, int]:
    """Take back deliveries whose lease ran out and send the stale ones again."""
    now = timezone.now()
    age = settings.WEBHOOK_RECONCILE_MIN_AGE if min_age is None else min_age
    counts = {"taken_back": 0, "sent": 0}
    lost = list(
        selectors.deliveries_lease_expired(now=now).values_list("pk", "lease_owner")[
            :BATCH
        ]
    )
    for pk, lease_owner in lost:
        with transaction.atomic():
            if WebhookDelivery.objects.filter(
                pk=pk, state=State.SENDING, lease_owner=lease_owner
            ).update(
                state=State.PENDING,
                lease_owner="",
                lease_until=None,
                next_attempt_at=now,
            ):
                WebhookAttempt.objects.filter(
                    delivery_id=pk, finished_at__isnull=True
                ).update(
                    finished_at=now, error="no outcome: its worker stopped mid-call"
                )
                counts["taken_back"] += 1
    stale = list(
        selectors.deliveries_due(before=now - timedelta(seconds=age)).values_list(
            "pk", flat=True
        )[:BATCH]
    )
    taken_back = [pk for pk, _ in lost]
    dispatch.enqueue_deliveries([*taken_back, *stale])
    counts["sent"] = len(taken_back) + len(stale)
    return counts
