"""Register the webhook with Telegram: URL, secret token, update kinds, connections.

python manage.py telegram_set_webhook --url https://example.org/bots/telegram/webhook/
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand
from django.core.management.base import CommandError

from bots import services
from kikipounamu.errors import ApplicationError


class Command(BaseCommand):
    help = "Point Telegram at this server's webhook (setWebhook)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--url",
            default=settings.TELEGRAM_WEBHOOK_URL,
            help="public https URL of /bots/telegram/webhook/ "
            "(default: TELEGRAM_WEBHOOK_URL)",
        )
        parser.add_argument(
            "--max-connections",
            type=int,
            default=settings.TELEGRAM_WEBHOOK_MAX_CONNECTIONS,
            help="simultaneous webhook connections Telegram may open (1-100)",
        )
        parser.add_argument(
            "--allowed-updates",
            default=",".join(services.ALLOWED_UPDATES),
            help="comma-separated update kinds Telegram should send",
        )
        parser.add_argument(
            "--drop-pending-updates",
            action="store_true",
            help="discard the updates Telegram holds for the bot",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not options["url"]:
            raise CommandError("give --url or set TELEGRAM_WEBHOOK_URL")
        allowed = [k.strip() for k in options["allowed_updates"].split(",") if k]
        try:
            services.webhook_set(
                url=options["url"],
                max_connections=options["max_connections"],
                drop_pending_updates=options["drop_pending_updates"],
                allowed_updates=allowed,
            )
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        except Exception as exc:
            raise CommandError(f"setWebhook failed: {exc}") from exc
        self.stdout.write(
            f"webhook set: {options['url']} (updates: {', '.join(allowed)}; "
            f"max connections {options['max_connections']}; secret token from "
            "TELEGRAM_WEBHOOK_SECRET)"
        )
