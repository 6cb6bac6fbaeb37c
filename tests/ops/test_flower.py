"""`manage.py flower` refuses an open Flower without credentials."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError


@pytest.fixture
def execv(monkeypatch: Any) -> list[list[str]]:
    calls: list[list[str]] = []
    monkeypatch.setattr("os.execv", lambda path, argv: calls.append(argv))
    monkeypatch.delenv("FLOWER_BASIC_AUTH", raising=False)
    monkeypatch.delenv("FLOWER_AUTH", raising=False)
    return calls


def test_refuses_a_public_address_without_credentials(execv: Any) -> None:
    with pytest.raises(CommandError, match="FLOWER_BASIC_AUTH"):
        call_command("flower", "--address", "0.0.0.0")
    assert execv == []


def test_localhost_needs_no_credentials(execv: Any) -> None:
    call_command("flower", "--address", "127.0.0.1", "--port", "5599")
    assert execv == [
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "kikipounamu",
            "flower",
            "--address=127.0.0.1",
            "--port=5599",
        ]
    ]


def test_a_public_address_with_basic_auth_starts(execv: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("FLOWER_BASIC_AUTH", "ops:long-secret")
    call_command("flower", "--address", "0.0.0.0")
    assert execv[0][-2] == "--address=0.0.0.0"


def test_malformed_basic_auth_is_refused(execv: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("FLOWER_BASIC_AUTH", "just-a-user")
    with pytest.raises(CommandError, match="user:password"):
        call_command("flower", "--address", "0.0.0.0")
