"""Check the bot token (getMe) and show the webhook's state (getWebhookInfo)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand
from django.core.management.base import CommandError

from bots import services


class Command(BaseCommand):
    help = "Check TELEGRAM_BOT_TOKEN with getMe and print the webhook's state."

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            me, webhook = services.bot_check()
        except Exception as exc:
            raise CommandError(
                f"the Bot API refused the token or failed: {exc}"
            ) from exc
        self.stdout.write(f"token ok: @{me.username} (id {me.id}, {me.first_name})")
        if not webhook.url:
            self.stdout.write("webhook: not set")
            return
        self.stdout.write(
            f"webhook: {webhook.url}, {webhook.pending_update_count} pending update(s), "
            f"max connections {webhook.max_connections}, "
            f"updates {', '.join(webhook.allowed_updates or ['all'])}"
        )
        if webhook.last_error_message:
            self.stdout.write(
                f"last error: {webhook.last_error_message} at {webhook.last_error_date}"
            )
