"""Start, stop or show the project's own Redis (used when REDIS_URL is unset)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand
from django.core.management.base import CommandError

from kikipounamu.redis_server import embedded_port_from_env
from kikipounamu.redis_server import ensure_embedded_redis
from kikipounamu.redis_server import stop_embedded_redis


class Command(BaseCommand):
    help = "Manage the embedded Redis that the project starts when REDIS_URL is unset."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("action", choices=["start", "stop", "status"])

    def handle(self, *args: Any, action: str, **options: Any) -> None:
        if settings.EMBEDDED_REDIS is None:
            raise CommandError(
                f"REDIS_URL is set ({settings.REDIS_URL}); no embedded Redis is used."
            )
        port = embedded_port_from_env()
        if action == "stop":
            stop_embedded_redis(port=port)
            self.stdout.write(f"embedded redis on port {port} stopped")
            return
        server = ensure_embedded_redis(settings.VAR_DIR / "redis", port=port)
        self.stdout.write(f"embedded redis: {server.url} (data in {server.data_dir})")
