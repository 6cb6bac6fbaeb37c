"""Remove the webhook (deleteWebhook): Telegram stops calling this server."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand
from django.core.management.base import CommandError

from bots import services


class Command(BaseCommand):
    help = "Stop Telegram from calling the webhook (deleteWebhook)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--drop-pending-updates",
            action="store_true",
            help="also discard the updates Telegram holds for the bot",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            services.webhook_delete(
                drop_pending_updates=options["drop_pending_updates"]
            )
        except Exception as exc:
            raise CommandError(f"deleteWebhook failed: {exc}") from exc
        self.stdout.write("webhook deleted")
