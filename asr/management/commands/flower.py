"""`manage.py flower`: Flower, but never open to the network without a password.

Flower reads FLOWER_BASIC_AUTH (user:password[,user2:password2]) from the
environment itself (https://flower.readthedocs.io/en/latest/config.html#basic-auth).
This refuses to start it on any address but loopback without that, or without
FLOWER_AUTH (OAuth), then replaces this process with `celery flower`.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from django.core.management.base import BaseCommand
from django.core.management.base import CommandError
from django.core.management.base import CommandParser

LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


def flower_argv(*, address: str, port: int, extra: list[str]) -> list[str]:
    """The command line that runs Flower; refuses an open, password-less one."""
    has_auth = bool(
        os.environ.get("FLOWER_BASIC_AUTH", "").strip()
        or os.environ.get("FLOWER_AUTH", "").strip()
    )
    if address not in LOOPBACK and not has_auth:
        raise CommandError(
            f"Flower would listen on {address} without authentication. Set "
            "FLOWER_BASIC_AUTH=user:password (or FLOWER_AUTH for OAuth), or bind it "
            "to 127.0.0.1 for development."
        )
    for pair in filter(None, os.environ.get("FLOWER_BASIC_AUTH", "").split(",")):
        user, _, password = pair.partition(":")
        if not user or not password:
            raise CommandError(
                "FLOWER_BASIC_AUTH must be user:password[,user:password]"
            )
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "kikipounamu",
        "flower",
        f"--address={address}",
        f"--port={port}",
        *extra,
    ]


class Command(BaseCommand):
    help = "Run Flower; refuses to listen beyond loopback without FLOWER_BASIC_AUTH."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--address", default=os.environ.get("FLOWER_ADDRESS") or "127.0.0.1"
        )
        parser.add_argument(
            "--port", type=int, default=int(os.environ.get("FLOWER_PORT") or 5555)
        )
        parser.add_argument("extra", nargs="*", help="more `celery flower` options")

    def handle(self, *args: Any, **options: Any) -> None:
        argv = flower_argv(
            address=options["address"], port=options["port"], extra=options["extra"]
        )
        self.stderr.write(f"starting Flower on {options['address']}:{options['port']}")
        os.execv(argv[0], argv)  # noqa: S606 - our own interpreter, argv as a list
