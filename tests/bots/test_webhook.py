"""POST /bots/telegram/webhook/: the secret, the unique update id, what is ignored.

Requests go through ``kikipounamu.asgi.application``, the way a real one does (the
webhook's ASGI application ahead of Django, and the writer thread's group commit);
the bursts go to a live uvicorn.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from django.conf import settings
from django.db import DataError
from django.db import OperationalError

from bots import services
from bots.models import TelegramChat
from bots.models import TelegramReply
from bots.models import TelegramUpdate
from bots.webhook import intake
from bots.webhook import publisher
from bots.webhook import writer
from kikipounamu import dispatch
from kikipounamu.asgi import application
from kikipounamu.process_queue import ProcessQueue
from tests.bots import updates as u
from tests.bots.conftest import SECRET
from tests.bots.conftest import WEBHOOK
from tests.bots.conftest import wait_until
from tests.hostile_json import HOSTILE_JSON

pytestmark = pytest.mark.django_db(transaction=True)

# The live web process of this module enqueues under a namespace of its own, which
# no worker of this run reads: its messages stay in the queue for the test to read.
NAMESPACE = {"KIKI_TEST_NAMESPACE": "-webhook", "TELEGRAM_WEBHOOK_SECRET": SECRET}


def headers(secret: str | None = SECRET) -> dict[str, str]:
    return {"X-Telegram-Bot-Api-Secret-Token": secret} if secret is not None else {}


async def _send(
    requests: list[tuple[str, Any, dict[str, str]]], base: str | None
) -> list[httpx.Response]:
    transport = None if base else httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(
        transport=transport,
        base_url=base or "http://testserver",
        timeout=60,
        limits=httpx.Limits(max_connections=len(requests)),
    ) as client:
        return await asyncio.gather(
            *(
                client.request(method, WEBHOOK, content=content, headers=h)
                for method, content, h in requests
            )
        )


def post_all(
    bodies: list[Any],
    *,
    secret: str | None = SECRET,
    raw: bool = False,
    base: str | None = None,
) -> list[httpx.Response]:
    """POST every body at once: through the ASGI application in this process, or to
    the live server at ``base``."""
    h = {"Content-Type": "application/json", **headers(secret)}
    requests = [("POST", b if raw else json.dumps(b).encode(), h) for b in bodies]
    return asyncio.run(_send(requests, base))


def post(body: Any, *, secret: str | None = SECRET, raw: bool = False) -> Any:
    return post_all([body], secret=secret, raw=raw)[0]


def voice_update() -> dict[str, Any]:
    return u.update(u.message(u.private_chat(), voice=u.voice("f1")))


@pytest.fixture(autouse=True)
def _secret(bot_api: Any) -> None:
    """The webhook's secret in this process's settings (``bot_api`` sets it)."""


def test_an_update_is_stored_once_and_processing_enqueued_after_commit(
    enqueued: list,
) -> None:
    body = voice_update()
    response = post(body)

    assert response.status_code == 200
    stored = TelegramUpdate.objects.get()
    assert stored.update_id == body["update_id"]
    assert stored.chat_id == body["message"]["chat"]["id"]
    assert stored.payload == body
    assert stored.status == "received"
    assert enqueued == [("process_update", (stored.pk,))]


def test_the_same_update_delivered_three_times_is_stored_once(enqueued: list) -> None:
    body = voice_update()
    statuses = [post(body).status_code for _ in range(3)]

    assert statuses == [200, 200, 200]
    assert TelegramUpdate.objects.count() == 1
    assert len(enqueued) == 1


def test_the_same_update_three_times_at_once_is_stored_once(enqueued: list) -> None:
    # at once: usually in one transaction of the writer, sometimes in two
    body = voice_update()
    statuses = [r.status_code for r in post_all([body] * 3)]

    assert statuses == [200, 200, 200]
    assert TelegramUpdate.objects.count() == 1
    assert len(enqueued) == 1


@pytest.mark.parametrize("secret", [None, "", "wrong", SECRET + "x", SECRET[:-1]])
def test_a_wrong_or_missing_secret_is_refused_and_nothing_is_stored(
    enqueued: list, secret: str | None
) -> None:
    response = post(voice_update(), secret=secret)

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"
    assert not TelegramUpdate.objects.exists()
    assert enqueued == []


def test_without_a_configured_secret_every_call_is_refused(settings: Any) -> None:
    settings.TELEGRAM_WEBHOOK_SECRET = ""
    assert post(voice_update(), secret="").status_code == 403
    assert not TelegramUpdate.objects.exists()


@pytest.mark.parametrize(
    "body",
    [
        u.update(edited_message=u.message(u.private_chat(), text="edited")),
        {"update_id": 5, "some_future_kind": {"x": 1}},
    ],
    ids=["edited", "unknown-kind"],
)
def test_update_kinds_the_bot_does_not_handle_are_answered_200_and_forgotten(
    enqueued: list, body: dict
) -> None:
    assert post(body).status_code == 200
    assert not TelegramUpdate.objects.exists()
    assert enqueued == []


@pytest.mark.parametrize(
    "body",
    [
        u.update(u.message(u.group_chat(), text="hello all")),
        u.update(u.message(u.group_chat(), voice=u.voice("f2"))),
        u.update(u.message(u.group_chat(), text="/help@another_bot")),
    ],
    ids=["group-text", "group-voice", "another-bots-command"],
)
def test_chatter_in_a_group_is_stored_and_ignored_by_the_task(
    bot_api: Any, enqueued: list, body: dict
) -> None:
    # Telling it apart takes python-telegram-bot's types, which the task reads.
    assert post(body).status_code == 200
    stored = TelegramUpdate.objects.get()
    assert enqueued == [("process_update", (stored.pk,))]

    services.telegram_update_process(update_pk=stored.pk)

    stored.refresh_from_db()
    assert stored.status == "processed"
    assert not TelegramReply.objects.exists()
    assert not TelegramChat.objects.exists()
    assert enqueued == [("process_update", (stored.pk,))]


def test_an_update_the_library_cannot_read_is_stored_then_failed_not_retried(
    enqueued: list,
) -> None:
    # given an update with a chat but not a message as Telegram sends it
    body = {"update_id": u.new_id(), "message": {"chat": {"id": 5, "type": "private"}}}
    assert post(body).status_code == 200
    stored = TelegramUpdate.objects.get()

    # when the task reads it
    services.telegram_update_process(update_pk=stored.pk)

    # then it is failed at once with the reason, and nothing is answered
    stored.refresh_from_db()
    assert stored.status == "failed"
    assert "python-telegram-bot" in stored.error and "date" in stored.error
    assert not TelegramReply.objects.exists()


def test_chats_outside_the_allowlist_are_ignored(enqueued: list, settings: Any) -> None:
    allowed = u.private_chat()
    settings.TELEGRAM_ALLOWED_CHAT_IDS = [allowed.id]
    other = u.update(u.message(u.private_chat(), voice=u.voice("f3")))
    mine = u.update(u.message(allowed, voice=u.voice("f4")))

    assert post(other).status_code == 200
    assert post(mine).status_code == 200
    assert list(TelegramUpdate.objects.values_list("chat_id", flat=True)) == [
        allowed.id
    ]


@pytest.mark.parametrize("body", HOSTILE_JSON.values(), ids=HOSTILE_JSON.keys())
def test_hostile_json_is_a_400_and_stores_nothing(enqueued: list, body: bytes) -> None:
    response = post(body, raw=True)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"
    assert response.json()["error"]["message"]
    assert not TelegramUpdate.objects.exists()
    assert enqueued == []


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "invalid_json"),
        (b"\xff\xfe\x00", "invalid_json"),
        (b"", "invalid_json"),
        (b"[1, 2]", "invalid_update"),
        (b'{"message": {}}', "invalid_update"),
        (b'{"update_id": "7"}', "invalid_update"),
        (b'{"update_id": true}', "invalid_update"),
        (b'{"update_id": 8, "message": {"text": "no chat"}}', "invalid_update"),
    ],
)
def test_a_body_that_is_not_an_update_is_a_400_not_a_500(
    enqueued: list, body: bytes, code: str
) -> None:
    response = post(body, raw=True)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"]
    assert not TelegramUpdate.objects.exists()
    assert enqueued == []


def test_a_body_over_the_limit_is_refused_unread() -> None:
    body = voice_update()
    body["message"]["text"] = "x" * (1024 * 1024)

    response = post(body)

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"
    assert not TelegramUpdate.objects.exists()


@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "DELETE"])
def test_only_post_is_allowed(method: str) -> None:
    [response] = asyncio.run(_send([(method, None, headers())], None))
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


def test_other_paths_still_go_to_django() -> None:
    async def get(path: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver"
        ) as client:
            return await client.get(path)

    assert asyncio.run(get("/healthz")).json() == {"status": "ok"}
    # the webhook's path and nothing else: Django answers the near misses
    assert asyncio.run(get(WEBHOOK.rstrip("/"))).status_code == 404


# When the database write fails ------------------------------------------------------


def test_a_failed_database_write_answers_503_so_that_telegram_sends_it_again(
    enqueued: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a database that fails the write (disk full, unreachable, locked too long)
    body = voice_update()

    def broken(*args: Any, **kwargs: Any) -> None:
        raise OperationalError("disk I/O error")

    with monkeypatch.context() as patch:
        patch.setattr(intake, "_insert_new", broken)
        response = post(body)

    # then Telegram is told to deliver it again, and nothing was stored or enqueued
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "unavailable"
    assert not TelegramUpdate.objects.exists()
    assert enqueued == []

    # and when it does, once the database is back, the update is stored, once
    assert post(body).status_code == 200
    assert post(body).status_code == 200
    assert TelegramUpdate.objects.get().update_id == body["update_id"]
    assert len(enqueued) == 1


def test_an_update_the_database_refuses_fails_alone_not_its_whole_batch(
    enqueued: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a batch of three, one of which the database refuses (PostgreSQL refuses
    # a \u0000 in a JSON string, say)
    rows = [
        intake.IncomingUpdate(update_id=u.new_id(), chat_id=1, payload={"n": n})
        for n in range(3)
    ]
    refused = rows[1].update_id
    insert_new = intake._insert_new

    def picky(objs: list[intake.IncomingUpdate]) -> Any:
        if any(row.update_id == refused for row in objs):
            raise DataError("unsupported Unicode escape sequence")
        return insert_new(objs)

    monkeypatch.setattr(intake, "_insert_new", picky)

    # when the writer commits them
    outcomes = writer._commit(rows)

    # then the other two are stored and answered 200; the refused one gets its error
    assert outcomes[0] is True and outcomes[2] is True
    assert isinstance(outcomes[1], DataError)
    assert set(TelegramUpdate.objects.values_list("update_id", flat=True)) == {
        rows[0].update_id,
        rows[2].update_id,
    }
    assert len(enqueued) == 2


def test_an_update_another_process_stored_meanwhile_is_a_repeat_not_an_error(
    enqueued: list,
) -> None:
    # given an update that another web process stored while this one's batch
    # formed: the INSERT meets the unique constraint, which ON CONFLICT DO NOTHING
    # settles in the same statement (no window between a check and the write)
    theirs = TelegramUpdate.objects.create(update_id=u.new_id(), chat_id=1, payload={})
    ours = intake.IncomingUpdate(update_id=u.new_id(), chat_id=1, payload={"n": 1})
    again = intake.IncomingUpdate(update_id=theirs.update_id, chat_id=1, payload={})

    # when the batch is stored
    stored = intake.telegram_updates_store(updates=[again, ours])

    # then theirs is a repeat, ours is stored and enqueued
    assert stored == [False, True]
    assert TelegramUpdate.objects.count() == 2
    row = TelegramUpdate.objects.get(update_id=ours.update_id)
    assert (row.payload, row.chat_id, row.status) == ({"n": 1}, 1, "received")
    assert enqueued == [("process_update", (row.pk,))]


# A burst, against a live web process ------------------------------------------------


@pytest.fixture
def own_queue() -> Iterator[str]:
    """The ``bots`` queue of this module's web process."""
    key = f"kiki-test-{settings.RUN_ID}{NAMESPACE['KIKI_TEST_NAMESPACE']}:bots"
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.delete(key)
    yield key
    client.delete(key)


def enqueued_update_pks(queue_key: str) -> list[int]:
    """The update ids carried by the ``bots.process_updates`` messages in a queue."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    pks: list[int] = []
    for raw in client.lrange(queue_key, 0, -1):
        message = json.loads(raw)
        assert message["headers"]["task"] == "bots.process_updates"
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        pks += args[0]
    return pks


def test_a_burst_of_updates_is_answered_200_and_stored_exactly_once(
    own_web: str, own_queue: str
) -> None:
    # given 100 updates from 40 chats, 20 of which Telegram also delivers again
    bodies = [
        u.update(u.message(u.private_chat(10_000_000 + n % 40), voice=u.voice(f"b{n}")))
        for n in range(100)
    ]
    repeated = bodies[:20]

    # when all 120 arrive at once
    responses = post_all(bodies + repeated, base=own_web)

    # then every one is answered 200, and only after its row was committed
    assert [r.status_code for r in responses] == [200] * 120
    rows = dict(TelegramUpdate.objects.values_list("update_id", "pk"))
    assert sorted(rows) == sorted(b["update_id"] for b in bodies)

    # and each stored update is handed to the bots queue exactly once
    wait_until(
        lambda: len(enqueued_update_pks(own_queue)) >= len(rows), 30, "publishing"
    )
    assert sorted(enqueued_update_pks(own_queue)) == sorted(rows.values())


def test_the_publisher_sends_the_ids_that_piled_up_as_one_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given a publish that takes a while (a slow Redis, say)
    sent: list[list[int]] = []
    slow = threading.Event()

    def send(name: str, args: Any, **_: Any) -> bool:
        assert name == "bots.process_updates"
        sent.append(list(args[0]))
        slow.wait(5)
        return True

    monkeypatch.setattr(dispatch, "send", send)
    # a queue and thread of its own
    monkeypatch.setattr(
        publisher, "_pending", ProcessQueue("test-publisher", publisher._run)
    )

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
