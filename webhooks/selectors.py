"""Reads of the webhooks app: what a user may see, and what the reconciler looks for."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db.models import QuerySet
from django.shortcuts import get_object_or_404

from webhooks.models import WebhookDelivery
from webhooks.models import WebhookEndpoint

State = WebhookDelivery.State


def endpoint_list(*, user: Any) -> QuerySet[WebhookEndpoint]:
    return WebhookEndpoint.objects.filter(owner=user).order_by("-created_at", "pk")


def endpoint_get(*, user: Any, endpoint_id: Any) -> WebhookEndpoint:
    """The user's endpoint, or 404 (someone else's too)."""
    return get_object_or_404(WebhookEndpoint, pk=endpoint_id, owner=user)


def delivery_list(
    *,
    user: Any,
    endpoint_id: Any = None,
    job_id: Any = None,
    state: str | None = None,
) -> QuerySet[WebhookDelivery]:
    """The user's deliveries, newest first. Staff see everyone's."""
    qs = WebhookDelivery.objects.all()
    if not user.is_staff:
        qs = qs.filter(owner=user)
    if endpoint_id is not None:
        qs = qs.filter(endpoint_id=endpoint_id)
    if job_id is not None:
        qs = qs.filter(job_id=job_id)
    if state:
        qs = qs.filter(state=state)
    return qs.order_by("-created_at", "pk")


def delivery_get(*, user: Any, delivery_id: Any) -> WebhookDelivery:
    return get_object_or_404(delivery_list(user=user), pk=delivery_id)


def deliveries_lease_expired(*, now: datetime) -> QuerySet[WebhookDelivery]:
    """Deliveries mid-call whose task died: past their lease."""
    return WebhookDelivery.objects.filter(state=State.SENDING, lease_until__lt=now)


def deliveries_due(*, before: datetime) -> QuerySet[WebhookDelivery]:
    """Deliveries due since before ``before`` and not yet attempted."""
    return WebhookDelivery.objects.filter(
        state=State.PENDING, next_attempt_at__lt=before
    ).order_by("next_attempt_at")
