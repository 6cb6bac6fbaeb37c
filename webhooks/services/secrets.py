"""Signing secrets: made, rotated, and used to sign (the Standard Webhooks way).

Signatures come from ``standardwebhooks``, the specification's own reference
implementation (no dependencies), so what receivers verify with it is what we sign.
"""

from __future__ import annotations

import base64
import secrets
from datetime import datetime
from datetime import timedelta

from django.conf import settings
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from webhooks.models import SigningSecret

SECRET_PREFIX = "whsec_"  # noqa: S105 -- the format's prefix, not a secret


def secret_new() -> str:
    """A fresh secret: ``whsec_`` + base64 of 32 random bytes (what receivers'
    libraries take as it is)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_rotate(holder: SigningSecret, *, now: datetime | None = None) -> str:
    """Give ``holder`` a new secret (not saved); the old one signs too for
    ``WEBHOOK_SECRET_ROTATION_GRACE`` seconds. Returns the new secret."""
    now = now or timezone.now()
    holder.previous_secret = holder.secret
    holder.previous_secret_until = now + timedelta(
        seconds=settings.WEBHOOK_SECRET_ROTATION_GRACE
    )
    holder.secret = secret_new()
    holder.secret_created_at = now
    return holder.secret


def signature_headers(
    *, webhook_id: str, body: str, secrets_: list[str], at: datetime
) -> dict[str, str]:
    """``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` (one ``v1,``
    signature per secret, space-separated, as the specification allows)."""
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": " ".join(
            Webhook(secret).sign(webhook_id, at, body) for secret in secrets_
        ),
    }
