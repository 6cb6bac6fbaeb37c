"""Create the local admin and its API token if missing, and print both."""

from __future__ import annotations

import secrets
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from rest_framework.authtoken.models import Token


def ensure_admin(username: str = "admin") -> tuple[Any, str | None, str]:
    """(user, password if just created else None, token key)."""
    user_model = get_user_model()
    user = user_model.objects.filter(username=username).first()
    password = None
    if user is None:
        password = secrets.token_urlsafe(12)
        user = user_model.objects.create_superuser(
            username=username, email="", password=password
        )
        # Kept so that a later run can show it again; readable by this user only.
        path = settings.VAR_DIR / "admin-password"
        path.write_text(password + "\n")
        path.chmod(0o600)
    token, _ = Token.objects.get_or_create(user=user)
    return user, password, token.key


class Command(BaseCommand):
    help = "Create the local admin user and its API token (once), and print them."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--username", default="admin")

    def handle(self, *args: Any, username: str, **options: Any) -> None:
        user, password, token = ensure_admin(username)
        if password:
            self.stdout.write(
                f"admin user: {user.get_username()}  password: {password}"
            )
        else:
            self.stdout.write(
                f"admin user: {user.get_username()}  (password in {settings.VAR_DIR / 'admin-password'})"
            )
        self.stdout.write(f"API token: {token}")
