"""Registering the webhook with Telegram and checking the bot's account (the
``telegram_*`` management commands)."""

from __future__ import annotations

from django.conf import settings
from telegram import User
from telegram import WebhookInfo

from bots.transport import bot_api
from kikipounamu.errors import ApplicationError

# The update kinds the webhook is registered for; Telegram drops the others.
ALLOWED_UPDATES = ["message"]


def webhook_set(
    *,
    url: str,
    max_connections: int,
    drop_pending_updates: bool = False,
    allowed_updates: list[str] | None = None,
) -> bool:
    """Register the webhook with its secret token, update kinds and connections."""
    secret = settings.TELEGRAM_WEBHOOK_SECRET
    if not secret or not all(c.isalnum() or c in "_-" for c in secret):
        raise ApplicationError(
            "Set TELEGRAM_WEBHOOK_SECRET to 1-256 characters of A-Z, a-z, 0-9, _ "
            "and - first: the webhook refuses every call without it.",
            code="no_secret",
        )
    if len(secret) > 256:
        raise ApplicationError(
            "TELEGRAM_WEBHOOK_SECRET is longer than Telegram's 256 characters.",
            code="bad_secret",
        )
    if not url.startswith("https://"):
        raise ApplicationError(
            f"Telegram only calls https webhooks; {url!r} is not one.",
            code="bad_url",
        )
    if not 1 <= max_connections <= 100:
        raise ApplicationError(
            "max_connections must be between 1 and 100.", code="bad_max_connections"
        )
    return bot_api.set_webhook(
        url=url,
        secret_token=secret,
        allowed_updates=allowed_updates or ALLOWED_UPDATES,
        max_connections=max_connections,
        drop_pending_updates=drop_pending_updates,
    )


def webhook_delete(*, drop_pending_updates: bool = False) -> bool:
    """Remove the webhook (Telegram then keeps updates for getUpdates)."""
    return bot_api.delete_webhook(drop_pending_updates=drop_pending_updates)


def bot_check() -> tuple[User, WebhookInfo]:
    """The bot's own account (getMe: is the token good?) and its webhook's state."""
    return bot_api.get_me(), bot_api.get_webhook_info()
