"""The bot with real processes: uvicorn, a Celery worker on asr + bots, Redis, and the
fake Bot API over HTTP. Every reply must arrive exactly once, whatever is killed."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings

from asr.models import Transcription
from bots.models import TelegramReply
from bots.models import TelegramUpdate
from bots.tasks import reconcile
from kikipounamu.redis_server import ensure_embedded_redis
from kikipounamu.redis_server import stop_embedded_redis
from kikipounamu.redis_server import with_db
from tests import processes
from tests.bots import media
from tests.bots import updates as u
from tests.bots.conftest import PATIENCE
from tests.bots.conftest import Webhook
from tests.bots.conftest import answered
from tests.bots.conftest import bot_env
from tests.bots.conftest import start_bots_worker
from tests.bots.conftest import wait_until
from tests.bots.fake_bot_api import FakeBotApi
from tests.speech import espeak_available

pytestmark = [
    pytest.mark.pipeline,
    pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed"),
]


def voice_update(
    api: FakeBotApi, chat: Any, path: Path, *, message_id: int
) -> dict[str, Any]:
    file_id, unique = api.add_file(path.read_bytes())
    size = path.stat().st_size
    return u.update(
        u.message(
            chat, message_id=message_id, voice=u.voice(file_id, unique, size=size)
        )
    )


def spoken(text: str, tmp_path: Path, name: str) -> Path:
    directory = tmp_path / name
    directory.mkdir()
    return media.voice_note(media.speech(text, directory), tmp_path / f"{name}.ogg")


def test_a_voice_note_delivered_three_times_is_transcribed_and_answered_once(
    webhook: Webhook, bot_worker: processes.Process, fake_api: FakeBotApi, tmp_path
) -> None:
    # given a spoken voice message (OGG/Opus, as Telegram's apps record it)
    chat = u.private_chat()
    clip = spoken("The weather today is sunny and warm.", tmp_path, "weather")
    body = voice_update(fake_api, chat, clip, message_id=10)

    # when Telegram delivers the same update three times, at once
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        statuses = [r.status_code for r in pool.map(webhook.post, [body] * 3)]

    # then every delivery got 200, and one job ran
    assert statuses == [200, 200, 200]
    wait_until(lambda: answered(chat.id), PATIENCE, "the transcript delivered")
    assert TelegramUpdate.objects.filter(update_id=body["update_id"]).count() == 1
    job = Transcription.objects.get()
    assert job.source == "telegram" and job.engine == "whisper"

    # and the chat saw one message: the acknowledgement, edited into the transcript
    [message] = fake_api.messages(chat.id)
    assert message.reply_to == 10 and message.edits == 1
    words = message.text.lower()
    assert "weather" in words and "sunny" in words, message.text
    calls = fake_api.calls_for(chat.id)
    assert [c.method for c in calls] == ["sendMessage", "editMessageText"]
    assert calls[0].params["text"].startswith("Recognizing…")


def test_replies_arrive_once_and_in_order_through_429s_500s_and_timeouts(
    webhook: Webhook, bot_worker: processes.Process, fake_api: FakeBotApi, tmp_path
) -> None:
    # given three voice messages in one chat, and a Bot API that misbehaves: a 429
    # with retry_after, 500s, a request that hangs past the time-out (not carried
    # out), and an edit carried out whose answer comes too late
    chat = u.private_chat()
    fake_api.inject("sendMessage", "status", status=429, retry_after=1, chat_id=chat.id)
    fake_api.inject("sendMessage", "hang", seconds=3, chat_id=chat.id)
    fake_api.inject("editMessageText", "status", status=500, chat_id=chat.id, times=2)
    fake_api.inject("editMessageText", "slow", seconds=3, chat_id=chat.id)
    sentences = ["The first message.", "The second message.", "The third message."]
    bodies = [
        voice_update(
            fake_api, chat, spoken(text, tmp_path, f"m{n}"), message_id=100 + n
        )
        for n, text in enumerate(sentences)
    ]

    # when they arrive one after the other
    for body in bodies:
        assert webhook.post(body).status_code == 200

    # then each gets exactly one message, edited once into its own transcript
    wait_until(lambda: answered(chat.id, 3), PATIENCE, "three answers delivered")
    messages = fake_api.messages(chat.id)
    assert [m.reply_to for m in messages] == [100, 101, 102]
    assert all(m.edits == 1 for m in messages)
    for message, ordinal in zip(messages, ["first", "second", "third"], strict=True):
        assert ordinal in message.text.lower(), message.text
    # and every fault was met: 429 and the hang retried, the late edit not repeated
    statuses = [c.status for c in fake_api.calls_for(chat.id, "sendMessage")]
    assert statuses.count(429) == 1 and statuses.count(-1) == 1
    assert statuses.count(200) == 3
    edits = [c.status for c in fake_api.calls_for(chat.id, "editMessageText")]
    assert edits.count(500) == 2 and edits.count(200) == 3 and edits.count(400) == 1
    assert TelegramReply.objects.filter(chat_id=chat.id).count() == 6
    assert set(
        TelegramReply.objects.filter(chat_id=chat.id).values_list("state", flat=True)
    ) == {"sent"}


def test_a_wrong_secret_is_refused_and_nothing_is_stored_or_enqueued(
    webhook: Webhook, fake_api: FakeBotApi, tmp_path
) -> None:
    chat = u.private_chat()
    body = u.update(u.message(chat, text="/help"))
    for secret in (None, "not-the-secret"):
        assert webhook.post(body, secret=secret).status_code == 403
    time.sleep(1)
    assert not TelegramUpdate.objects.exists()
    assert fake_api.calls_for(chat.id) == []


def test_an_oversize_file_and_a_document_that_is_not_audio_get_polite_replies(
    webhook: Webhook, bot_worker: processes.Process, fake_api: FakeBotApi
) -> None:
    chat = u.private_chat()
    big_id, big_unique = fake_api.add_file(b"x", size=30_000_000)
    pdf_id, pdf_unique = fake_api.add_file(b"%PDF-1.7 ...")
    big = u.update(
        u.message(
            chat, message_id=1, voice=u.voice(big_id, big_unique, size=30_000_000)
        )
    )
    pdf = u.update(
        u.message(
            chat,
            message_id=2,
            document=u.document(
                pdf_id, pdf_unique, mime_type="application/pdf", name="cv.pdf"
            ),
        )
    )
    assert webhook.post(big).status_code == 200
    assert webhook.post(pdf).status_code == 200

    wait_until(lambda: len(fake_api.messages(chat.id)) == 2, PATIENCE, "two replies")
    too_big, not_audio = fake_api.messages(chat.id)
    assert too_big.reply_to == 1 and "30.0 MB" in too_big.text
    assert "20 MB" in too_big.text
    assert not_audio.reply_to == 2 and "is not audio" in not_audio.text
    # no download was even asked for, and no job made
    assert not [
        c
        for c in fake_api.calls
        if c.method == "getFile" and c.params["file_id"] in (big_id, pdf_id)
    ]
    assert not Transcription.objects.exists()


def test_an_update_whose_enqueue_was_lost_is_answered_by_the_reconciler(
    webhook: Webhook, bot_worker: processes.Process, fake_api: FakeBotApi
) -> None:
    # given an update the web process stored but died before enqueueing
    chat = u.private_chat()
    body = u.update(u.message(chat, text="/help"))
    TelegramUpdate.objects.create(
        update_id=body["update_id"], chat_id=chat.id, payload=body
    )
    time.sleep(1.5)  # older than TELEGRAM_RECONCILE_MIN_AGE

    # when the periodic reconciler runs (beat would send it)
    reconcile.delay()

    # then the chat is answered, once
    wait_until(lambda: fake_api.messages(chat.id), PATIENCE, "the help reply")
    time.sleep(1)
    [message] = fake_api.messages(chat.id)
    assert message.text.startswith("Send me a voice message")


# Killing processes --------------------------------------------------------------------

# The broker hands a killed worker's messages on after 7 s, which must stay longer
# than any task's hard time limit (5 s + 1 s); a job takes 2 s of the 5.
ISOLATED_DB = 12
FAST_REDELIVERY = {
    "ASR_ENGINE": "synthetic",
    "ASR_SYNTHETIC_RTF": "0.5",
    "ASR_TIME_LIMIT_MAX": "5",
    "ASR_TIME_LIMIT_GRACE": "1",
    "CELERY_VISIBILITY_TIMEOUT": "7",
    "BROKER_UNACKED_RESTORE_INTERVAL": "1",
    "BROKER_UNACKED_RESTORE_THROTTLE": "1",
    "BROKER_UNACKED_MUTEX_EXPIRE": "2",
}


@pytest.fixture
def isolated_redis() -> Any:
    # The same Redis, another database: queues no other worker of this run reads.
    url = with_db(settings.REDIS_URL, ISOLATED_DB)
    yield url
    client = redis.Redis.from_url(url)
    for key in client.scan_iter(match=f"{settings.REDIS_KEY_PREFIX}*", count=1000):
        client.delete(key)


def test_killing_web_and_worker_mid_job_and_the_worker_mid_reply_loses_nothing(
    transactional_db: Any, fake_api: FakeBotApi, isolated_redis: str, tmp_path
) -> None:
    # Its own broker database: a worker of another test must not take the job.
    env = bot_env(fake_api, **FAST_REDELIVERY, REDIS_URL=isolated_redis)
    web, base = processes.start_web(**env)
    worker = processes.start_worker(queues="asr,default,bots", concurrency=2, **env)
    chat = u.private_chat()
    first = voice_update(
        fake_api,
        chat,
        media.voice_note(media.tone(4), tmp_path / "a.ogg"),
        message_id=1,
    )
    started: list[processes.Process] = []
    try:
        # given a voice message acknowledged and being transcribed (2 s of work)
        assert Webhook(base).post(first).status_code == 200
        wait_until(
            lambda: (
                Transcription.objects.filter(status="running").exists()
                and fake_api.messages(chat.id)
            ),
            PATIENCE,
            "the job running and acknowledged",
        )

        # when the web process and the worker are SIGKILLed, and start again
        web.kill()
        worker.kill()
        web, base = processes.start_web(**env)
        worker = processes.start_worker(queues="asr,default,bots", concurrency=2, **env)
        started += [web, worker]
        # Telegram, which may not have had our 200, delivers the update again
        assert Webhook(base).post(first).status_code == 200

        # then the job runs again and its answer arrives once
        wait_until(lambda: answered(chat.id, 1), PATIENCE, "the first answer")
        job = Transcription.objects.get()
        assert job.status == "succeeded" and job.attempts == 2

        # given a second voice message, whose answering edit Telegram carries out
        # but answers only after 8 s
        fake_api.inject("editMessageText", "slow", seconds=8, chat_id=chat.id)
        second = voice_update(
            fake_api,
            chat,
            media.voice_note(media.tone(1), tmp_path / "b.ogg"),
            message_id=2,
        )
        assert Webhook(base).post(second).status_code == 200
        wait_until(
            lambda: len(fake_api.calls_for(chat.id, "editMessageText")) == 2,
            PATIENCE,
            "the second edit under way",
        )

        # when the worker is SIGKILLed while it waits for that answer
        worker.kill()
        worker = processes.start_worker(queues="asr,default,bots", concurrency=2, **env)
        started.append(worker)

        # then the redelivered task repeats the edit, hears "not modified", and
        # counts it as delivered: nothing is sent twice
        wait_until(lambda: answered(chat.id, 2), PATIENCE, "the second answer")
    finally:
        for proc in [web, worker, *started]:
            proc.stop()

    messages = fake_api.messages(chat.id)
    assert [m.reply_to for m in messages] == [1, 2]
    assert all(m.edits == 1 and m.text == "[synthetic transcript]" for m in messages)
    assert len(fake_api.calls_for(chat.id, "sendMessage")) == 2
    edits = [c.status for c in fake_api.calls_for(chat.id, "editMessageText")]
    assert edits == [200, 200, 400]  # the last: "message is not modified"
    assert TelegramUpdate.objects.count() == 2


class Supervised:
    """A worker kept running as a process manager would: restarted if it exits."""

    def __init__(self, **env: str) -> None:
        self.env = env
        self.procs = [self._start()]
        self.restarts = 0

    def _start(self) -> processes.Process:
        return processes.start_worker(
            queues="asr,default,bots", concurrency=2, **self.env
        )

    def check(self) -> None:
        if self.procs[-1].popen.poll() is not None:
            self.restarts += 1
            self.procs.append(self._start())

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()


def test_a_redis_killed_and_restarted_mid_job_loses_no_reply(
    transactional_db: Any, fake_api: FakeBotApi, tmp_path
) -> None:
    # given a Redis of its own, configured as in production (AOF, fsync every s),
    # a web process, a supervised worker and beat with its reconcilers
    data = tmp_path / "redis"
    server = ensure_embedded_redis(data)
    env = bot_env(
        fake_api,
        **FAST_REDELIVERY,
        REDIS_URL=server.url(),
        TELEGRAM_RECONCILE_INTERVAL="1",
        ASR_RECONCILE_INTERVAL="5",
    )
    web, base = processes.start_web(**env)
    worker = Supervised(**env)
    beat = processes.start_beat(tmp_path, **env)
    chat = u.private_chat()
    body = voice_update(
        fake_api,
        chat,
        media.voice_note(media.tone(4), tmp_path / "a.ogg"),
        message_id=3,
    )
    try:
        assert Webhook(base).post(body).status_code == 200
        wait_until(
            lambda: (
                Transcription.objects.filter(status="running").exists()
                and fake_api.messages(chat.id)
            ),
            PATIENCE,
            "the job running and acknowledged",
        )

        # when Redis is SIGKILLed mid-job and comes back from its append-only file
        os.kill(int((data / "redis.pid").read_text()), signal.SIGKILL)
        time.sleep(1)
        ensure_embedded_redis(data)

        # then the job finishes and the chat gets its answer, once
        def done() -> bool:
            worker.check()
            return answered(chat.id)

        wait_until(done, PATIENCE, "the answer after the restart")
        time.sleep(2)  # room for a duplicate to show, were there one
    finally:
        beat.stop()
        web.stop()
        worker.stop()
        stop_embedded_redis(data)
    job = Transcription.objects.get()
    [message] = fake_api.messages(chat.id)
    assert message.edits == 1
    assert [c.method for c in fake_api.calls_for(chat.id)] == [
        "sendMessage",
        "editMessageText",
    ]
    # Usually the job is run again and succeeds. When the crash took its broker
    # message with it, asr.reconcile fails it as timed out once past its deadline;
    # either way the chat is told, once.
    if job.status == "succeeded":
        assert message.text == "[synthetic transcript]"
    else:
        assert job.error_code == "timeout", job.error_code
        assert message.text.startswith("Sorry, I could not transcribe")


# The bots worker: threads, leases ----------------------------------------------------


def help_update(chat: Any, message_id: int) -> dict[str, Any]:
    return u.update(u.message(chat, message_id=message_id, text="/help"))


def test_a_hung_bot_api_call_delays_no_other_chat(
    transactional_db: Any, fake_api: FakeBotApi, isolated_redis: str, tmp_path
) -> None:
    # given the bots worker as the Procfile runs it (threads), with time-outs long
    # enough that two calls for chat A hang for 8 s: its acknowledgement's send and
    # its recording's getFile (the two that held both prefork processes before)
    env = bot_env(
        fake_api,
        REDIS_URL=isolated_redis,
        TELEGRAM_MESSAGE_TIMEOUT="10",
        TELEGRAM_DOWNLOAD_TIMEOUT="10",
    )
    web, base = processes.start_web(**env)
    worker = start_bots_worker(**env)
    a, b = u.private_chat(), u.private_chat()
    fake_api.inject("sendMessage", "hang", seconds=8, chat_id=a.id)
    fake_api.inject("getFile", "hang", seconds=8)
    hook = Webhook(base)
    try:
        voice = voice_update(
            fake_api,
            a,
            media.voice_note(media.tone(1), tmp_path / "a.ogg"),
            message_id=1,
        )
        assert hook.post(voice).status_code == 200
        hung = fake_api.wait_for(
            lambda: [c for c in fake_api.calls if c.fault == "hang"][1:],
            PATIENCE,
            "both of chat A's calls hanging",
        )

        # when chat B asks for help meanwhile
        started = time.monotonic()
        assert hook.post(help_update(b, 1)).status_code == 200
        fake_api.wait_for(lambda: fake_api.messages(b.id), PATIENCE, "B's reply")
        waited = time.monotonic() - started

        # then B is answered at once, while A's calls still hang
        assert all(call.status == 0 for call in hung), [c.status for c in hung]
        assert waited < 3, waited
        print(f"chat B answered in {waited * 1000:.0f} ms beside two hung calls")
        # and A's acknowledgement goes out once the hang ends, once
        wait_until(lambda: fake_api.messages(a.id), PATIENCE, "A's acknowledgement")
    finally:
        worker.stop()
        web.stop()
    [ack] = fake_api.messages(a.id)
    assert ack.text.startswith("Recognizing…")
    assert len(fake_api.messages(b.id)) == 1


def test_a_killed_bots_worker_delays_its_chats_replies_by_at_most_15_s(
    transactional_db: Any, fake_api: FakeBotApi, isolated_redis: str, tmp_path
) -> None:
    # given the production lease and sweep, beat running the sweep, and the general
    # reconciler kept out of it (it leaves work younger than a minute alone)
    env = bot_env(
        fake_api,
        REDIS_URL=isolated_redis,
        TELEGRAM_DELIVERY_LEASE_SECONDS="10",
        TELEGRAM_LEASE_RECLAIM_INTERVAL="3",
        TELEGRAM_RECONCILE_MIN_AGE="60",
        # long enough that the call is still under way when its worker is killed
        TELEGRAM_MESSAGE_TIMEOUT="30",
    )
    web, base = processes.start_web(**env)
    first = start_bots_worker(**env)
    beat = processes.start_beat(tmp_path, **env)
    started = [first]
    chat, other = u.private_chat(), u.private_chat()
    hook = Webhook(base)
    fake_api.inject("sendMessage", "hang", seconds=60, chat_id=chat.id)
    try:
        # given a bots worker in the middle of a chat's reply (the call hangs), and a
        # second bots worker
        assert hook.post(help_update(chat, 1)).status_code == 200
        fake_api.wait_for(
            lambda: fake_api.calls_for(chat.id, "sendMessage"), PATIENCE, "the send"
        )
        second = start_bots_worker(**env)
        started.append(second)

        # when the first is SIGKILLed, holding the chat's lease, and the chat and
        # another one write again
        first.kill()
        killed = time.monotonic()
        assert hook.post(help_update(chat, 2)).status_code == 200
        assert hook.post(help_update(other, 1)).status_code == 200

        # then the other chat is answered at once, and the chat's replies, the one
        # under way and the next, within 15 s
        fake_api.wait_for(lambda: fake_api.messages(other.id), PATIENCE, "the other")
        other_waited = time.monotonic() - killed
        wait_until(
            lambda: len(fake_api.messages(chat.id)) == 2, PATIENCE, "both replies"
        )
        waited = time.monotonic() - killed
        print(
            f"after the kill: the chat's replies in {waited:.1f} s, another chat's "
            f"in {other_waited:.1f} s"
        )
        assert waited <= 15, waited
        assert other_waited < 5, other_waited
        assert "handed to task" in second.log()
        time.sleep(2)  # room for a duplicate to show, were there one
    finally:
        beat.stop()
        for proc in started:
            proc.stop()
        web.stop()

    # and nothing was sent twice: the hung call never reached the chat, the part
    # was sent again once, then the next one
    messages = fake_api.messages(chat.id)
    assert [m.reply_to for m in messages] == [1, 2]
    statuses = [c.status for c in fake_api.calls_for(chat.id, "sendMessage")]
    assert statuses.count(200) == 2 and len(statuses) == 3, statuses
    parts = TelegramReply.objects.filter(chat_id=chat.id).order_by("id")
    assert [(p.state, p.attempts) for p in parts] == [("sent", 2), ("sent", 1)]
