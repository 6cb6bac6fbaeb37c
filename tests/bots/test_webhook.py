"""POST /bots/telegram/webhook/: the secret, the unique update id, what is ignored."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from django.test import Client

from bots.models import TelegramUpdate
from tests.bots import updates as u
from tests.bots.conftest import SECRET
from tests.bots.conftest import WEBHOOK

pytestmark = pytest.mark.django_db


@pytest.fixture
def client(bot_api: Any) -> Client:
    return Client()


def post(
    client: Client, body: Any, *, secret: str | None = SECRET, raw: bool = False
) -> Any:
    headers = {"X-Telegram-Bot-Api-Secret-Token": secret} if secret is not None else {}
    return client.post(
        WEBHOOK,
        data=body if raw else __import__("json").dumps(body),
        content_type="application/json",
        headers=headers,
    )


def voice_update() -> dict[str, Any]:
    return u.update(u.message(u.private_chat(), voice=u.voice("f1")))


def test_an_update_is_stored_once_and_processing_enqueued_after_commit(
    client: Client, enqueued: list, django_capture_on_commit_callbacks: Any
) -> None:
    body = voice_update()
    with django_capture_on_commit_callbacks(execute=True):
        response = post(client, body)

    assert response.status_code == 200
    stored = TelegramUpdate.objects.get()
    assert stored.update_id == body["update_id"]
    assert stored.status == "received"
    assert enqueued == [("process_update", (stored.pk,))]


def test_the_same_update_delivered_three_times_is_stored_once(
    client: Client, enqueued: list, django_capture_on_commit_callbacks: Any
) -> None:
    body = voice_update()
    with django_capture_on_commit_callbacks(execute=True):
        statuses = [post(client, body).status_code for _ in range(3)]

    assert statuses == [200, 200, 200]
    assert TelegramUpdate.objects.count() == 1
    assert len(enqueued) == 1


@pytest.mark.parametrize("secret", [None, "", "wrong", SECRET + "x", SECRET[:-1]])
def test_a_wrong_or_missing_secret_is_refused_and_nothing_is_stored(
    client: Client,
    enqueued: list,
    django_capture_on_commit_callbacks: Any,
    secret: str | None,
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        response = post(client, voice_update(), secret=secret)

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"
    assert not TelegramUpdate.objects.exists()
    assert enqueued == []


def test_without_a_configured_secret_every_call_is_refused(
    client: Client, settings: Any
) -> None:
    settings.TELEGRAM_WEBHOOK_SECRET = ""
    assert post(client, voice_update(), secret="").status_code == 403
    assert not TelegramUpdate.objects.exists()


@pytest.mark.parametrize(
    "body",
    [
        u.update(edited_message=u.message(u.private_chat(), text="edited")),
        # chatter in a group: only commands are for the bot
        u.update(u.message(u.group_chat(), text="hello all")),
        u.update(u.message(u.group_chat(), voice=u.voice("f2"))),
        {"update_id": 5, "some_future_kind": {"x": 1}},
    ],
    ids=["edited", "group-text", "group-voice", "unknown-kind"],
)
def test_updates_the_bot_does_not_handle_are_answered_200_and_forgotten(
    client: Client, enqueued: list, body: dict
) -> None:
    assert post(client, body).status_code == 200
    assert not TelegramUpdate.objects.exists()
    assert enqueued == []


def test_chats_outside_the_allowlist_are_ignored(
    client: Client, enqueued: list, settings: Any
) -> None:
    allowed = u.private_chat()
    settings.TELEGRAM_ALLOWED_CHAT_IDS = [allowed.id]
    other = u.update(u.message(u.private_chat(), voice=u.voice("f3")))
    mine = u.update(u.message(allowed, voice=u.voice("f4")))

    assert post(client, other).status_code == 200
    assert post(client, mine).status_code == 200
    assert list(TelegramUpdate.objects.values_list("chat_id", flat=True)) == [
        allowed.id
    ]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "invalid_json"),
        (b"[1, 2]", "invalid_update"),
        (b'{"message": {}}', "invalid_update"),
        (b'{"update_id": "7"}', "invalid_update"),
        (b'{"update_id": 8, "message": {"text": "no chat"}}', "invalid_update"),
    ],
)
def test_a_body_that_is_not_an_update_is_a_400_not_a_500(
    client: Client, body: bytes, code: str
) -> None:
    response = post(client, body, raw=True)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == code
    assert not TelegramUpdate.objects.exists()


def test_only_post_is_allowed(client: Client) -> None:
    assert client.get(WEBHOOK).status_code == 405


def test_the_publisher_sends_the_ids_that_piled_up_as_one_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bots import publisher
    from bots import tasks

    # given a publish that takes a while (a slow Redis, say)
    sent: list[list[int]] = []
    slow = threading.Event()

    def delay(batch: list[int]) -> None:
        sent.append(list(batch))
        slow.wait(5)

    monkeypatch.setattr(tasks.process_updates, "delay", delay)
    monkeypatch.setattr(publisher, "_owner_pid", None)  # a thread of its own

    # when one update is submitted, then fifty more while it is being published
    publisher.submit(1)
    deadline = time.monotonic() + 5
    while not sent and time.monotonic() < deadline:
        time.sleep(0.01)
    for pk in range(2, 52):
        publisher.submit(pk)
    slow.set()
    while len(sent) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)

    # then the fifty went out together, in order
    assert sent == [[1], list(range(2, 52))]
