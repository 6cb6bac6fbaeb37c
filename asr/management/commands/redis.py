"""Start, stop or show the project's own Redis (used when REDIS_URL is unset)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand
from django.core.management.base import CommandError

from kikipounamu.redis_server import embedded_running
from kikipounamu.redis_server import ensure_embedded_redis
from kikipounamu.redis_server import socket_path
from kikipounamu.redis_server import stop_embedded_redis


class Command(BaseCommand):
    help = "Manage the embedded Redis that the project starts when REDIS_URL is unset."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("action", choices=["start", "stop", "status"])

    def handle(self, *args: Any, action: str, **options: Any) -> None:
        if not settings.REDIS_EMBEDDED:
            raise CommandError(
                f"REDIS_URL is set ({settings.REDIS_URL}); no embedded Redis is used."
            )
        data_dir = settings.REDIS_DATA_DIR
        where = f"{socket_path(data_dir)} (data in {data_dir})"
        if action == "stop":
            stopped = stop_embedded_redis(data_dir)
            self.stdout.write(
                f"embedded redis {'stopped' if stopped else 'was not running'}: {where}"
            )
        elif action == "start":
            server = ensure_embedded_redis(data_dir)
            self.stdout.write(
                f"embedded redis {'started' if server.started else 'running'}: {where}"
            )
        else:
            running = embedded_running(data_dir)
            self.stdout.write(
                f"embedded redis {'running' if running else 'not running'}: {where}"
            )
