"""Fixtures of the bot's tests: the fake Bot API, and web + worker processes that
talk to it."""

from __future__ import annotations

import time
from collections.abc import Callable
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from bots.models import TelegramJob
from bots.models import TelegramReply
from tests import processes
from tests.bots.fake_bot_api import FakeBotApi

SECRET = "test-secret_0123456789"
# How long live tests wait for something that takes seconds: only a failure waits
# this long, and a machine shared with other test runs can be slow.
PATIENCE = 180
WEBHOOK = "/bots/telegram/webhook/"

# Short time-outs and back-offs so that injected faults cost seconds, not minutes.
FAST_BOT = {
    "TELEGRAM_WEBHOOK_SECRET": SECRET,
    "TELEGRAM_CONNECT_TIMEOUT": "2",
    "TELEGRAM_MESSAGE_TIMEOUT": "2",
    "TELEGRAM_DOCUMENT_TIMEOUT": "2",
    "TELEGRAM_DOWNLOAD_TIMEOUT": "5",
    "TELEGRAM_DELIVERY_LEASE_SECONDS": "10",
    "TELEGRAM_RETRY_BACKOFF_BASE": "0.2",
    "TELEGRAM_RETRY_BACKOFF_MAX": "1",
    "TELEGRAM_RECONCILE_MIN_AGE": "1",
}


def bot_env(fake: FakeBotApi, **extra: str) -> dict[str, str]:
    return {
        **FAST_BOT,
        "TELEGRAM_BOT_TOKEN": fake.token,
        "TELEGRAM_API_BASE_URL": fake.url,
        **extra,
    }


@pytest.fixture(scope="session", autouse=True)
def _webhook_writer_lets_go_of_the_database(django_db_setup: Any) -> Iterator[None]:
    # Webhook tests run the ASGI app in this process; its writer thread keeps a
    # connection, and PostgreSQL will not drop the test database under it. (Set up
    # after the test database, so torn down before it.)
    yield
    from bots.webhook import writer

    writer.release_connection()


@pytest.fixture(scope="session")
def fake_api() -> Iterator[FakeBotApi]:
    fake = FakeBotApi().start()
    yield fake
    fake.stop()


@pytest.fixture
def bot_api(fake_api: FakeBotApi, settings: Any) -> Iterator[FakeBotApi]:
    """The fake Bot API, with this process's settings pointed at it."""
    fake_api.reset_faults()
    for name, value in bot_env(fake_api).items():
        current = getattr(settings, name, None)
        number = isinstance(current, int | float)
        setattr(settings, name, type(current)(value) if number else value)
    yield fake_api
    fake_api.reset_faults()


@pytest.fixture
def enqueued(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple]]:
    """Tasks the services enqueue, recorded instead of sent (unit tests run them
    by hand, in order)."""
    calls: list[tuple[str, tuple]] = []
    monkeypatch.setattr(
        "bots.services.dispatch.enqueue",
        lambda name, *args, **_: calls.append((name, args)),
    )
    monkeypatch.setattr(
        "bots.webhook.publisher.submit",
        lambda pk: calls.append(("process_update", (pk,))),
    )
    return calls


# Real processes -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def bot_web(
    django_db_setup: Any, django_db_blocker: Any, fake_api: FakeBotApi
) -> Iterator[str]:
    proc, base = processes.start_web(**bot_env(fake_api))
    yield base
    proc.stop()


@pytest.fixture(scope="session")
def bot_worker(
    django_db_setup: Any, django_db_blocker: Any, fake_api: FakeBotApi
) -> Iterator[processes.Process]:
    """The workers as the Procfile runs them: one on asr and default with the
    whisper engine, and the bots worker on threads (``bots_worker``)."""
    proc = processes.start_worker(queues="asr,default", **bot_env(fake_api))
    bots = start_bots_worker(**bot_env(fake_api))
    yield proc
    bots.stop()
    proc.stop()


def start_bots_worker(**env: str) -> processes.Process:
    """The Procfile's worker_bots: the bots queue on a pool of threads."""
    return processes.start_worker(queues="bots", pool="threads", concurrency=8, **env)


class Webhook:
    """Telegram's side of the webhook: POSTs updates to a live web process."""

    def __init__(self, base: str) -> None:
        self.url = f"{base}{WEBHOOK}"
        self.session = requests.Session()

    def post(
        self, update: dict[str, Any], *, secret: str | None = SECRET
    ) -> requests.Response:
        headers = {"X-Telegram-Bot-Api-Secret-Token": secret} if secret else {}
        return self.session.post(self.url, json=update, headers=headers, timeout=30)


@pytest.fixture
def webhook(transactional_db: Any, bot_web: str) -> Webhook:
    return Webhook(bot_web)


def wait_until(
    predicate: Callable[[], Any], timeout: float = 60, what: str = ""
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(f"{what or predicate} not true after {timeout}s")


def all_delivered(chat_id: int) -> bool:
    parts = TelegramReply.objects.filter(chat_id=chat_id)
    return (
        parts.exists()
        and not parts.filter(state__in=TelegramReply.UNDELIVERED).exists()
    )


def answered(chat_id: int, jobs: int = 1) -> bool:
    """``jobs`` recordings of the chat answered, and every reply part delivered."""
    done = TelegramJob.objects.filter(chat_id=chat_id, state="answered").count()
    return done == jobs and all_delivered(chat_id)
