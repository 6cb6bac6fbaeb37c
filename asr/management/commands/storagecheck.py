"""Check that the audio store answers (and create its bucket with --create-bucket)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand
from django.core.management.base import CommandError

from asr import storage


class Command(BaseCommand):
    help = (
        "Check that this process can use the audio store (STORAGE_BACKEND); with "
        "--create-bucket, create the S3 bucket first if it is missing."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--create-bucket", action="store_true")

    def handle(self, *args: Any, create_bucket: bool, **options: Any) -> None:
        try:
            if create_bucket and storage.bucket_create():
                self.stdout.write(f"created {storage.store_name()}")
            storage.store_check()
        except storage.StorageUnavailable as exc:
            raise CommandError(f"{storage.store_name()}: {exc}") from exc
        self.stdout.write(f"ok: {storage.store_name()}")
