"""Completion webhooks: who wants to hear of a finished job, and every call owed.

Every delivery is a row before anything is sent, written in the same transaction as
the job's finish, so that a process that dies at any point leaves behind exactly
what is still to do. Its id is the ``webhook-id`` of every attempt at it.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from django.conf import settings
from django.db import models
from django.utils import timezone


class EventType(models.TextChoices):
    SUCCEEDED = "transcription.succeeded"
    FAILED = "transcription.failed"
    CANCELLED = "transcription.cancelled"
    # A live dictation session ended (its job succeeded or failed: see its status).
    LIVE_FINISHED = "live.finished"


class SigningSecret(models.Model):
    """A Standard Webhooks secret (``whsec_`` + base64 of 32 random bytes), and the
    one it replaced, which signs too until ``previous_secret_until``."""

    secret = models.CharField(max_length=64)
    previous_secret = models.CharField(max_length=64, blank=True)
    previous_secret_until = models.DateTimeField(null=True, blank=True)
    secret_created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        abstract = True

    def signing_secrets(self, now: datetime) -> list[str]:
        secrets = [self.secret]
        if (
            self.previous_secret
            and self.previous_secret_until is not None
            and self.previous_secret_until > now
        ):
            secrets.append(self.previous_secret)
        return secrets


class WebhookEndpoint(SigningSecret):
    """A user's standing subscription: every finished job of theirs whose event is
    in ``events`` is delivered to ``url``."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="webhook_endpoints",
    )
    url = models.CharField(max_length=2048)
    events = models.JSONField(default=list)
    description = models.CharField(max_length=255, blank=True)
    # The transcript's text and segments in the payload (off: links only, small).
    include_text = models.BooleanField(default=False)
    is_active = models.BooleanField(default=True)
    # Why it was turned off: a 410 from the receiver, or by hand.
    disabled_reason = models.CharField(max_length=255, blank=True)
    disabled_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["owner", "is_active"])]

    def __str__(self) -> str:
        return self.url


class JobWebhookSecret(SigningSecret):
    """The secret that signs a user's per-job webhooks (``webhook_url`` on a job)."""

    owner = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        primary_key=True,
        related_name="job_webhook_secret",
    )

    def __str__(self) -> str:
        return f"job webhook secret of {self.owner_id}"


class WebhookDelivery(models.Model):
    """One event owed to one receiver; durable until it answered 2xx or was given up.

    ``sending`` means a call was made whose outcome we do not know yet (in flight, or
    its process died: the lease tells): the next attempt repeats it, with the same
    ``webhook-id``, which is how receivers drop repeats.
    """

    class State(models.TextChoices):
        PENDING = "pending"
        SENDING = "sending"
        DELIVERED = "delivered"
        FAILED = "failed"

    # The webhook-id header: "msg_" + this in hex.
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    event_type = models.CharField(max_length=32, choices=EventType.choices)
    # The job and its event, by value: a job deleted after it finished still has
    # its delivery owed.
    job_id = models.UUIDField(db_index=True)
    source_event_id = models.BigIntegerField()
    # "endpoint:<id>" or "job" (the job's own webhook_url): with source_event_id it
    # names the delivery uniquely, so that one event is never owed twice.
    target = models.CharField(max_length=48)
    endpoint = models.ForeignKey(
        WebhookEndpoint,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="deliveries",
    )
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="webhook_deliveries",
    )
    url = models.CharField(max_length=2048)
    # The exact bytes sent, every attempt alike.
    body = models.TextField()

    state = models.CharField(
        max_length=16, choices=State.choices, default=State.PENDING
    )
    # Attempts since it was created or re-sent by hand (the limits count these).
    attempts = models.PositiveIntegerField(default=0)
    client_errors = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    give_up_at = models.DateTimeField()
    # The task making the call now, and until when it may (past it, the reconciler
    # takes the delivery back: its process died mid-call).
    lease_owner = models.CharField(max_length=64, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["source_event_id", "target"], name="unique_delivery_per_event"
            )
        ]
        indexes = [
            models.Index(fields=["state", "next_attempt_at"]),
            models.Index(fields=["owner", "-created_at"]),
        ]
        verbose_name_plural = "webhook deliveries"

    def __str__(self) -> str:
        return f"{self.event_type} {self.job_id} -> {self.url} ({self.state})"

    @property
    def webhook_id(self) -> str:
        return f"msg_{self.id.hex}"


class WebhookAttempt(models.Model):
    """One call of a delivery: written before the call, completed after it (an
    attempt without ``finished_at`` is one whose process died mid-call)."""

    delivery = models.ForeignKey(
        WebhookDelivery, on_delete=models.CASCADE, related_name="attempt_log"
    )
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    status_code = models.PositiveIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    # The start of the receiver's answer, for an error's reason.
    response_excerpt = models.TextField(blank=True)
    worker = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["delivery", "id"]

    def __str__(self) -> str:
        return (
            f"attempt {self.pk} of {self.delivery_id}: {self.status_code or self.error}"
        )
