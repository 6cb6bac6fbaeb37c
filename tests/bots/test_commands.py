"""manage.py telegram_set_webhook / telegram_delete_webhook / telegram_check."""

from __future__ import annotations

import io
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from tests.bots.conftest import SECRET
from tests.bots.fake_bot_api import FakeBotApi

URL = "https://bot.example.org/bots/telegram/webhook/"


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_set_webhook_registers_url_secret_updates_and_connections(
    bot_api: FakeBotApi,
) -> None:
    output = run("telegram_set_webhook", "--url", URL, "--max-connections", "20")

    assert "webhook set" in output
    assert bot_api.webhook["url"] == URL
    assert bot_api.webhook["secret_token"] == SECRET
    assert bot_api.webhook["allowed_updates"] == ["message"]
    assert bot_api.webhook["max_connections"] == "20"


def test_set_webhook_uses_the_url_setting_by_default(
    bot_api: FakeBotApi, settings: Any
) -> None:
    settings.TELEGRAM_WEBHOOK_URL = URL
    run("telegram_set_webhook")
    assert bot_api.webhook["url"] == URL


@pytest.mark.parametrize(
    ("setting", "args", "message"),
    [
        ({"TELEGRAM_WEBHOOK_SECRET": ""}, ["--url", URL], "TELEGRAM_WEBHOOK_SECRET"),
        (
            {"TELEGRAM_WEBHOOK_SECRET": "has spaces"},
            ["--url", URL],
            "TELEGRAM_WEBHOOK_SECRET",
        ),
        ({}, ["--url", "http://insecure.example.org/"], "https"),
        ({}, ["--url", URL, "--max-connections", "500"], "between 1 and 100"),
        ({"TELEGRAM_WEBHOOK_URL": ""}, [], "--url"),
    ],
)
def test_set_webhook_refuses_what_telegram_would(
    bot_api: FakeBotApi, settings: Any, setting: dict, args: list, message: str
) -> None:
    for name, value in setting.items():
        setattr(settings, name, value)
    before = sets_of(bot_api)
    with pytest.raises(CommandError, match=message):
        run("telegram_set_webhook", *args)
    assert sets_of(bot_api) == before  # refused before calling Telegram


def sets_of(api: FakeBotApi) -> int:
    return sum(c.method == "setWebhook" for c in api.calls)


def test_delete_webhook(bot_api: FakeBotApi) -> None:
    run("telegram_set_webhook", "--url", URL)
    assert "webhook deleted" in run("telegram_delete_webhook")
    assert bot_api.webhook == {}


def test_check_shows_the_bot_and_its_webhook(bot_api: FakeBotApi) -> None:
    run("telegram_set_webhook", "--url", URL)
    output = run("telegram_check")
    assert "token ok: @kiki_test_bot" in output
    assert URL in output


def test_check_says_when_the_token_is_refused(
    bot_api: FakeBotApi, settings: Any
) -> None:
    settings.TELEGRAM_BOT_TOKEN = "4242:wrong"
    with pytest.raises(CommandError, match="refused the token"):
        run("telegram_check")


def test_check_says_when_no_token_is_set(bot_api: FakeBotApi, settings: Any) -> None:
    settings.TELEGRAM_BOT_TOKEN = ""
    with pytest.raises(CommandError, match="TELEGRAM_BOT_TOKEN is not set"):
        run("telegram_check")
