"""Who hears of finished jobs: users' endpoints and their per-job webhook secret."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone

from kikipounamu import outbound
from kikipounamu.errors import ApplicationError
from webhooks.models import EventType
from webhooks.models import JobWebhookSecret
from webhooks.models import WebhookEndpoint
from webhooks.services.secrets import secret_new
from webhooks.services.secrets import secret_rotate

ALL_EVENTS = [choice.value for choice in EventType]


def _events_checked(events: list[str] | None) -> list[str]:
    if not events:
        return list(ALL_EVENTS)
    unknown = sorted(set(events) - set(ALL_EVENTS))
    if unknown:
        raise ApplicationError(
            f"Unknown event(s) {', '.join(unknown)}; choose from "
            f"{', '.join(ALL_EVENTS)}.",
            code="invalid_events",
        )
    # In the order of EventType, once each.
    return [event for event in ALL_EVENTS if event in events]


def endpoint_create(
    *,
    owner: Any,
    url: str,
    events: list[str] | None = None,
    description: str = "",
    include_text: bool = False,
) -> WebhookEndpoint:
    """A new endpoint with a fresh secret (the caller shows it once). No ``events``:
    all of them."""
    return WebhookEndpoint.objects.create(
        owner=owner,
        url=outbound.webhook_url_check(url),
        events=_events_checked(events),
        description=description,
        include_text=include_text,
        secret=secret_new(),
    )


def endpoint_update(*, endpoint: WebhookEndpoint, **fields: Any) -> WebhookEndpoint:
    """Change ``url``, ``events``, ``description``, ``include_text`` or
    ``is_active`` (turning it on again clears why it was turned off)."""
    if "url" in fields:
        fields["url"] = outbound.webhook_url_check(fields["url"])
    if "events" in fields:
        fields["events"] = _events_checked(fields["events"])
    if "is_active" in fields:
        if fields["is_active"]:
            fields.update(disabled_reason="", disabled_at=None)
        elif endpoint.is_active:
            fields.update(disabled_reason="turned off by its owner")
            fields.update(disabled_at=timezone.now())
    for name, value in fields.items():
        setattr(endpoint, name, value)
    endpoint.save()
    return endpoint


def endpoint_secret_rotate(*, endpoint: WebhookEndpoint) -> str:
    """A new secret for ``endpoint`` (returned once); the old one signs too for a
    while."""
    with transaction.atomic():
        endpoint = WebhookEndpoint.objects.select_for_update().get(pk=endpoint.pk)
        secret = secret_rotate(endpoint)
        endpoint.save()
    return secret


def job_secret_rotate(*, owner: Any) -> tuple[JobWebhookSecret, str]:
    """Create the user's per-job webhook secret, or rotate it; the new secret is
    returned once."""
    with transaction.atomic():
        holder = (
            JobWebhookSecret.objects.select_for_update().filter(owner=owner).first()
        )
        if holder is None:
            holder = JobWebhookSecret(owner=owner, secret=secret_new())
            secret = holder.secret
        else:
            secret = secret_rotate(holder)
        holder.save()
    return holder, secret


def job_secret_for(*, owner_id: int) -> JobWebhookSecret:
    """The secret that signs the owner's per-job webhooks, made if the owner has
    none yet (they see it by rotating it)."""
    holder, _ = JobWebhookSecret.objects.get_or_create(
        owner_id=owner_id, defaults={"secret": secret_new()}
    )
    return holder
