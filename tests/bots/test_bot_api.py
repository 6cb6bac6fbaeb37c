"""The Bot API client against the fake Bot API over real HTTP: deadlines by method, and
calls from several threads at once (the bots worker's pool)."""

from __future__ import annotations

import concurrent.futures
import time
from typing import Any

import pytest
from telegram.error import TimedOut

from bots.transport import bot_api as client
from tests.bots.fake_bot_api import FakeBotApi


def test_a_send_is_abandoned_at_its_deadline_and_a_document_has_a_longer_one(
    bot_api: FakeBotApi, settings: Any
) -> None:
    settings.TELEGRAM_MESSAGE_TIMEOUT = 1
    settings.TELEGRAM_DOCUMENT_TIMEOUT = 5
    # Telegram carries both out at once and answers after 2 s.
    bot_api.inject("sendMessage", "slow", seconds=2, chat_id=1)
    bot_api.inject("sendDocument", "slow", seconds=2, chat_id=1)

    started = time.monotonic()
    with pytest.raises(TimedOut) as raised:
        client.send_message(chat_id=1, text="hello")
    waited = time.monotonic() - started
    assert 1 <= waited < 1.8, waited
    # we cannot know whether it arrived: a retry says so on the part
    failure = client.classify(raised.value)
    assert failure.kind == "transient" and failure.ambiguous

    message_id = client.send_document(chat_id=1, content=b"text", filename="t.txt")
    assert bot_api.messages(1)[-1].message_id == message_id


def test_threads_call_at_once_each_on_its_own_loop(bot_api: FakeBotApi) -> None:
    # given four chats whose sends each take a second to answer
    chats = [101, 102, 103, 104]
    for chat_id in chats:
        bot_api.inject("sendMessage", "slow", seconds=1, chat_id=chat_id)

    # when four threads send at once
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(len(chats)) as pool:
        ids = list(pool.map(lambda c: client.send_message(chat_id=c, text="hi"), chats))
    waited = time.monotonic() - started

    # then the seconds overlap: no call waits for another's
    assert waited < 1.9, waited
    assert len(set(ids)) == len(chats)
