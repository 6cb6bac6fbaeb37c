"""The bot's services in this process, against the fake Bot API over real HTTP.

Tasks are not sent to a broker here: ``enqueued`` records them and ``drain`` runs them
in order, as a worker would. The ASR step runs with a scripted engine.
"""

from __future__ import annotations

import concurrent.futures
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import transaction
from django.utils import timezone

from asr.engines.base import Segment
from asr.engines.base import TranscriptionResult
from asr.models import Transcription
from asr.services import transcription_process
from bots import services
from bots.models import TelegramChat
from bots.models import TelegramJob
from bots.models import TelegramReply
from bots.models import TelegramUpdate
from bots.transport import text as texts
from bots.webhook import intake
from tests.bots import media
from tests.bots import updates as u
from tests.bots.fake_bot_api import FakeBotApi

pytestmark = pytest.mark.django_db(transaction=True)


class ScriptedEngine:
    """An engine that hears what the test says it hears."""

    name = "scripted"
    model_name = "scripted"
    device = "cpu"

    def __init__(self, text: str) -> None:
        self.text = text

    def transcribe(self, samples: Any, sample_rate: int = 16_000, language=None, **_):
        duration = len(samples) / sample_rate
        segments = [Segment(0.0, duration, self.text[:80] or "...")]
        return TranscriptionResult(self.text, language or "en", segments)


class Runner:
    """Runs the recorded tasks like a worker: in order, each after commit."""

    def __init__(self, enqueued: list, api: FakeBotApi, tmp_path: Path) -> None:
        self.enqueued = enqueued
        self.api = api
        self.tmp_path = tmp_path
        self.outcomes: list[services.DeliveryOutcome] = []

    def drain(self, *, skip: tuple[str, ...] = ()) -> None:
        while self.enqueued:
            name, args = self.enqueued.pop(0)
            if name in skip:
                continue
            self.run(name, *args)

    def run(self, name: str, *args: Any) -> None:
        if name == "process_update":
            services.telegram_update_process(update_pk=args[0])
        elif name == "fetch_audio":
            services.telegram_job_fetch(job_pk=args[0])
        elif name == "answer":
            services.telegram_job_answer(transcription_id=args[0])
        elif name == "deliver":
            outcome = services.telegram_chat_deliver(chat_id=args[0], owner="unit")
            self.outcomes.append(outcome)
        else:
            raise AssertionError(name)

    def receive(self, body: dict[str, Any]) -> TelegramUpdate | None:
        return intake.telegram_update_receive(payload=body)

    def transcribe_all(self, text: str) -> None:
        """The ASR worker's part, for every queued job."""
        for job in Transcription.objects.filter(status="queued"):
            transcription_process(
                transcription_id=str(job.id),
                task_id=job.task_id,
                hostname="unit",
                engine=ScriptedEngine(text),
            )

    def voice(self, chat: Any, seconds: float = 1.0, **fields: Any) -> dict:
        path = media.voice_note(media.tone(seconds), self.tmp_path / "v.ogg")
        file_id, unique = self.api.add_file(path.read_bytes())
        size = fields.pop("size", path.stat().st_size)
        return u.update(
            u.message(chat, voice=u.voice(file_id, unique, size=size), **fields)
        )


@pytest.fixture
def bot(
    bot_api: FakeBotApi,
    enqueued: list,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Runner:
    # ASR jobs run here, by hand: none may reach a worker of the live tests.
    monkeypatch.setattr("asr.services.dispatch.transcription_enqueue", lambda **_: None)
    # Nor may what those workers' engines serve (tiny.en: English) decide what these
    # jobs may ask for; a test about that says so itself.
    monkeypatch.setattr("asr.selectors.served_languages", lambda queue="asr": None)
    monkeypatch.setattr("bots.services.updates.served_languages", lambda queue: None)
    return Runner(enqueued, bot_api, tmp_path)


def downloads_of(api: FakeBotApi, file_id: str) -> list:
    return [
        c for c in api.calls if c.method == "getFile" and c.params["file_id"] == file_id
    ]


def texts_of(api: FakeBotApi, chat_id: int) -> list[str]:
    return [
        m.text if m.kind == "text" else m.document_name for m in api.messages(chat_id)
    ]


# The whole path ------------------------------------------------------------------------


def test_a_voice_message_is_acknowledged_then_the_ack_becomes_the_transcript(
    bot: Runner,
) -> None:
    # given a voice message in a private chat
    chat = u.private_chat()
    body = bot.voice(chat, message_id=41)

    # when the update is received and its tasks run
    bot.receive(body)
    bot.drain()

    # then the chat has an acknowledgement that quotes the voice message
    [ack] = bot.api.messages(chat.id)
    assert ack.text.startswith("Recognizing…")
    assert ack.reply_to == 41
    job = TelegramJob.objects.get()
    assert job.state == "transcribing"
    assert job.transcription.source == "telegram"
    assert job.transcription.original_filename == "telegram-voice.ogg"

    # when the job is transcribed
    bot.transcribe_all("Hello from the voice message.")
    bot.drain()

    # then the same message now holds the transcript; nothing else was sent
    [message] = bot.api.messages(chat.id)
    assert message.message_id == ack.message_id
    assert message.text == "Hello from the voice message."
    assert message.edits == 1
    assert [c.method for c in bot.api.calls_for(chat.id)] == [
        "sendMessage",
        "editMessageText",
    ]
    assert set(TelegramReply.objects.values_list("state", flat=True)) == {"sent"}


def test_processing_an_update_twice_writes_its_replies_once(bot: Runner) -> None:
    chat = u.private_chat()
    stored = bot.receive(bot.voice(chat))
    assert stored is not None
    services.telegram_update_process(update_pk=stored.pk)
    services.telegram_update_process(update_pk=stored.pk)
    assert TelegramJob.objects.count() == 1
    assert TelegramReply.objects.count() == 1
    assert [name for name, _ in bot.enqueued] == [
        "process_update",
        "deliver",
        "fetch_audio",
    ]


def test_a_chats_updates_are_answered_in_their_order_whichever_task_runs_first(
    bot: Runner,
) -> None:
    # given three messages of one chat, stored, not yet processed
    chat = u.private_chat()
    stored = [
        bot.receive(u.update(u.message(chat, message_id=n, text=text)))
        for n, text in enumerate(["/help", "/lang de", "hello"], start=1)
    ]
    bot.enqueued.clear()

    # when the task for the last one runs first
    services.telegram_update_process(update_pk=stored[2].pk)
    services.telegram_update_process(update_pk=stored[0].pk)
    services.telegram_update_process(update_pk=stored[1].pk)
    bot.drain()

    # then the chat's replies still follow its messages
    assert [m.reply_to for m in bot.api.messages(chat.id)] == [1, 2, 3]
    assert TelegramReply.objects.count() == 3


def test_answering_a_job_twice_writes_its_parts_once(bot: Runner) -> None:
    chat = u.private_chat()
    bot.receive(bot.voice(chat))
    bot.drain()
    bot.transcribe_all("Once.")
    job = TelegramJob.objects.get()
    services.telegram_job_answer(transcription_id=str(job.transcription_id))
    services.telegram_job_answer(transcription_id=str(job.transcription_id))
    bot.drain()
    assert TelegramReply.objects.filter(key="text:1").count() == 1
    assert texts_of(bot.api, chat.id) == ["Once."]


def test_a_long_transcript_is_split_with_the_rest_and_files_in_order(
    bot: Runner,
) -> None:
    # given a transcript of about 2.5 messages
    sentence = "Speech recognition turns spoken words into written text. "
    long_text = (sentence * 180).strip()  # 10,619 characters
    chat = u.private_chat()
    bot.receive(bot.voice(chat))
    bot.drain()

    # when it is answered
    bot.transcribe_all(long_text)
    bot.drain()

    # then the ack holds the first part, two messages follow, then .txt and .srt
    messages = bot.api.messages(chat.id)
    assert [m.kind for m in messages] == [
        "text",
        "text",
        "text",
        "document",
        "document",
    ]
    first, second, third, txt, srt = messages
    assert first.edits == 1
    assert all(len(m.text) <= 4096 for m in (first, second, third))
    assert " ".join(m.text for m in (first, second, third)).split() == long_text.split()
    assert txt.document_name.endswith(".txt")
    assert txt.document.decode().strip() == long_text
    assert srt.document_name.endswith(".srt")
    assert srt.document.decode().startswith("1\n00:00:00,000 --> ")
    # and the calls went out in that order, each once
    assert [c.method for c in bot.api.calls_for(chat.id)] == [
        "sendMessage",
        "editMessageText",
        "sendMessage",
        "sendMessage",
        "sendDocument",
        "sendDocument",
    ]


def test_past_the_message_cap_the_rest_is_only_in_the_file(
    bot: Runner, settings: Any
) -> None:
    settings.TELEGRAM_MAX_TEXT_MESSAGES = 2
    chat = u.private_chat()
    bot.receive(bot.voice(chat))
    bot.drain()
    bot.transcribe_all(("Many words here. " * 800).strip())  # 4 messages' worth
    bot.drain()
    kinds = [(m.kind, m.text[:20]) for m in bot.api.messages(chat.id)]
    assert len(kinds) == 5  # 2 text parts, the note, .txt and .srt
    assert kinds[2] == ("text", texts.TRANSCRIPT_CONTINUES[:20])


def test_silence_is_answered_as_such(bot: Runner) -> None:
    chat = u.private_chat()
    bot.receive(bot.voice(chat))
    bot.drain()
    bot.transcribe_all("")
    bot.drain()
    assert texts_of(bot.api, chat.id) == [texts.NO_SPEECH]


def test_a_failed_job_turns_the_ack_into_a_clear_message(bot: Runner) -> None:
    # given a voice message whose file is not audio after all
    chat = u.private_chat()
    file_id, unique = bot.api.add_file(b"this is not audio at all" * 100)
    bot.receive(u.update(u.message(chat, voice=u.voice(file_id, unique))))

    # when it is fetched and submitted
    bot.drain()

    # then the pipeline refused it, and the acknowledgement says why
    job = TelegramJob.objects.get()
    assert job.state == "answered"
    assert job.error_code == "unsupported_format"
    assert job.transcription is None
    [message] = bot.api.messages(chat.id)
    assert message.edits == 1
    assert message.text.startswith("Sorry, I could not transcribe this recording.")
    assert job.error_message and job.error_message in message.text


def test_a_job_the_worker_fails_edits_the_ack_into_the_error(bot: Runner) -> None:
    chat = u.private_chat()
    bot.receive(bot.voice(chat))
    bot.drain()
    job = TelegramJob.objects.get()
    Transcription.objects.filter(pk=job.transcription_id).update(
        status="failed",
        error_code="timeout",
        error_message="Transcribing took too long.",
    )
    services.telegram_job_answer(transcription_id=str(job.transcription_id))
    bot.drain()
    assert texts_of(bot.api, chat.id) == [
        "Sorry, I could not transcribe this recording. Transcribing took too long."
    ]


# What it understands -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["audio", "video_note", "video", "audio_document"])
def test_audio_round_videos_videos_and_audio_documents_are_transcribed(
    bot: Runner, kind: str
) -> None:
    chat = u.private_chat()
    if kind in ("video_note", "video"):
        path = media.round_video(media.tone(1), bot.tmp_path / "v.mp4")
    else:
        path = media.voice_note(media.tone(1), bot.tmp_path / "a.ogg")
    file_id, unique = bot.api.add_file(path.read_bytes(), suffix=path.suffix)
    item = {
        "audio": lambda: {"audio": u.audio(file_id, unique, name="talk.ogg")},
        "video_note": lambda: {"video_note": u.video_note(file_id, unique)},
        "video": lambda: {"video": u.video(file_id, unique)},
        "audio_document": lambda: {
            "document": u.document(
                file_id, unique, mime_type="audio/ogg", name="memo.ogg"
            )
        },
    }[kind]()
    bot.receive(u.update(u.message(chat, **item)))
    bot.drain()
    bot.transcribe_all("Heard it.")
    bot.drain()
    assert texts_of(bot.api, chat.id) == ["Heard it."]
    assert Transcription.objects.get().status == "succeeded"


def test_a_file_over_20_mb_gets_a_polite_reply_and_no_download(bot: Runner) -> None:
    chat = u.private_chat()
    file_id, unique = bot.api.add_file(b"x", size=25_000_000)
    bot.receive(
        u.update(u.message(chat, voice=u.voice(file_id, unique, size=25_000_000)))
    )
    bot.drain()
    [message] = bot.api.messages(chat.id)
    assert "25.0 MB" in message.text and "20 MB" in message.text
    assert not TelegramJob.objects.exists()
    assert not downloads_of(bot.api, file_id)


def test_a_file_whose_size_telegram_only_tells_at_getfile_is_refused_politely(
    bot: Runner,
) -> None:
    # given a message that does not say how big its file is
    chat = u.private_chat()
    file_id, unique = bot.api.add_file(b"x", size=21_000_000)
    bot.receive(u.update(u.message(chat, audio=u.audio(file_id, unique, size=None))))
    bot.drain()
    [message] = bot.api.messages(chat.id)
    assert message.text == texts.TOO_BIG_UNKNOWN_SIZE
    assert TelegramJob.objects.get().error_code == "too_large"


def test_while_the_pipeline_is_too_busy_the_user_is_told_and_nothing_downloaded(
    bot: Runner, settings: Any
) -> None:
    # given an asr queue at its limit (the API's 503 busy)
    settings.ASR_MAX_QUEUE_DEPTH = 0
    chat = u.private_chat()
    body = bot.voice(chat)

    bot.receive(body)
    bot.drain()

    [message] = bot.api.messages(chat.id)
    assert message.text.startswith("Sorry, I have too many recordings")
    assert not TelegramJob.objects.exists()
    assert not downloads_of(bot.api, body["message"]["voice"]["file_id"])
    # commands still work meanwhile
    bot.receive(u.update(u.message(chat, text="/help")))
    bot.drain()
    assert bot.api.messages(chat.id)[-1].text == texts.HELP


def test_a_document_that_is_not_audio_gets_a_polite_reply(bot: Runner) -> None:
    chat = u.private_chat()
    file_id, unique = bot.api.add_file(b"%PDF-1.7")
    body = u.update(
        u.message(
            chat,
            document=u.document(
                file_id, unique, mime_type="application/pdf", name="cv.pdf"
            ),
        )
    )
    bot.receive(body)
    bot.drain()
    [message] = bot.api.messages(chat.id)
    assert message.text.startswith("This document (application/pdf) is not audio")
    assert not TelegramJob.objects.exists()
    assert not downloads_of(bot.api, file_id)


def test_start_help_and_plain_text_get_help(bot: Runner) -> None:
    chat = u.private_chat()
    for text in ("/start", "/help", "hello?"):
        bot.receive(u.update(u.message(chat, text=text)))
    bot.drain()
    start, help_, hint = texts_of(bot.api, chat.id)
    assert start.startswith("Hello! Send me a voice message")
    assert help_ == texts.HELP
    assert hint == texts.NOT_MEDIA_HINT


def test_lang_sets_the_chat_language_used_by_its_next_jobs(bot: Runner) -> None:
    chat = u.private_chat()
    for text in ("/lang", "/lang de", "/lang klingon", "/lang"):
        bot.receive(u.update(u.message(chat, text=text)))
    bot.drain()
    before, set_, unknown, after = texts_of(bot.api, chat.id)
    assert "detected for each recording" in before
    assert set_ == "I will transcribe your recordings as 'de'."
    assert unknown.startswith("'klingon' is not a language code I know.")
    assert "'de'" in after
    assert TelegramChat.objects.get(pk=chat.id).language == "de"

    bot.receive(bot.voice(chat))
    bot.drain()
    assert TelegramJob.objects.get().transcription.language == "de"

    bot.receive(u.update(u.message(chat, text="/lang auto")))
    bot.drain()
    assert TelegramChat.objects.get(pk=chat.id).language == ""


def test_in_a_group_transcribe_as_a_reply_to_a_voice_message(bot: Runner) -> None:
    group = u.group_chat()
    voice_update = bot.voice(group, message_id=7)
    voice_message = u.message(group, message_id=7, **_voice_of(voice_update))

    # a voice message alone is not for the bot: stored, and ignored by the task
    bot.receive(voice_update)
    # /transcribe without a reply explains itself
    bot.receive(u.update(u.message(group, text="/transcribe")))
    # /transcribe@otherbot is someone else's
    bot.receive(
        u.update(
            u.message(
                group, text="/transcribe@otherbot", reply_to_message=voice_message
            )
        )
    )
    # /transcribe@kiki_test_bot in reply to the voice message is ours
    bot.receive(
        u.update(
            u.message(
                group,
                text="/transcribe@kiki_test_bot",
                reply_to_message=voice_message,
            )
        )
    )
    bot.drain()
    bot.transcribe_all("Group voice.")
    bot.drain()

    usage, transcript = bot.api.messages(group.id)
    assert usage.text == texts.TRANSCRIBE_USAGE
    assert transcript.text == "Group voice."
    assert transcript.reply_to == 7  # it quotes the voice message, not the command
    assert TelegramJob.objects.count() == 1


def _voice_of(body: dict) -> dict:
    from telegram import Voice

    return {"voice": Voice.de_json(body["message"]["voice"], None)}


# Delivery under faults ------------------------------------------------------------------


def _two_jobs_ready(bot: Runner, chat: Any) -> None:
    """Two voice messages acknowledged and transcribed; their answers not yet sent."""
    bot.receive(bot.voice(chat, message_id=1))
    bot.receive(bot.voice(chat, message_id=2))
    bot.drain()
    bot.transcribe_all("Answer.")
    bot.drain(skip=("deliver",))


def _deliver_until_done(bot: Runner, chat_id: int) -> list[services.DeliveryOutcome]:
    """What the deliver task and its Celery retries do, with the waits shortened."""
    outcomes = []
    for _ in range(20):
        TelegramChat.objects.filter(pk=chat_id).update(delivery_not_before=None)
        outcome = services.telegram_chat_deliver(chat_id=chat_id, owner="unit")
        outcomes.append(outcome)
        if outcome.retry_in is None:
            return outcomes
    raise AssertionError(outcomes)


def test_a_429_is_retried_after_retry_after_and_delivered_once(bot: Runner) -> None:
    chat = u.private_chat()
    bot.receive(bot.voice(chat))
    bot.drain(skip=("deliver",))
    bot.api.inject("sendMessage", "status", status=429, retry_after=7, chat_id=chat.id)

    first = services.telegram_chat_deliver(chat_id=chat.id, owner="unit")

    assert first.retry_in == 7
    assert TelegramReply.objects.get().state == "pending"
    chat_row = TelegramChat.objects.get(pk=chat.id)
    assert chat_row.delivery_owner == "unit"
    # another task meanwhile finds the chat taken and leaves it alone
    assert services.telegram_chat_deliver(chat_id=chat.id, owner="other").busy
    # the same task, retried early, waits out the rest of retry_after
    assert services.telegram_chat_deliver(chat_id=chat.id, owner="unit").retry_in > 6

    _deliver_until_done(bot, chat.id)
    assert len(bot.api.messages(chat.id)) == 1
    assert [c.status for c in bot.api.calls_for(chat.id)] == [429, 200]


def test_500s_and_timeouts_are_retried_and_every_reply_arrives_once_in_order(
    bot: Runner,
) -> None:
    chat = u.private_chat()
    _two_jobs_ready(bot, chat)
    # the first edit fails twice, the second one's request hangs past the time-out
    bot.api.inject("editMessageText", "status", status=500, chat_id=chat.id, times=2)
    bot.api.inject("editMessageText", "status", status=502, chat_id=chat.id)

    outcomes = _deliver_until_done(bot, chat.id)

    assert sum(o.retry_in is not None for o in outcomes) == 3
    messages = bot.api.messages(chat.id)
    assert [m.text for m in messages] == ["Answer.", "Answer."]
    assert [m.reply_to for m in messages] == [1, 2]
    assert all(m.edits == 1 for m in messages)


def test_a_request_that_times_out_unanswered_is_sent_again_once(bot: Runner) -> None:
    chat = u.private_chat()
    bot.receive(bot.voice(chat))
    bot.drain(skip=("deliver",))
    bot.api.inject("sendMessage", "hang", seconds=3, chat_id=chat.id)  # > 2 s

    outcomes = _deliver_until_done(bot, chat.id)

    assert outcomes[0].retry_in is not None
    assert len(bot.api.messages(chat.id)) == 1
    part = TelegramReply.objects.get()
    assert part.state == "sent" and part.attempts == 2 and part.errors == 1


def test_an_edit_whose_answer_was_lost_counts_as_delivered_when_not_modified(
    bot: Runner,
) -> None:
    # given an edit that Telegram carries out but whose answer never arrives
    chat = u.private_chat()
    bot.receive(bot.voice(chat))
    bot.drain()
    bot.transcribe_all("Edited once.")
    bot.drain(skip=("deliver",))
    bot.api.inject("editMessageText", "slow", seconds=3, chat_id=chat.id)

    # when delivery times out and tries again
    outcomes = _deliver_until_done(bot, chat.id)

    # then Telegram says "not modified", and that is a delivery
    assert outcomes[0].retry_in is not None
    statuses = [c.status for c in bot.api.calls_for(chat.id, "editMessageText")]
    assert statuses == [200, 400]
    [message] = bot.api.messages(chat.id)
    assert message.text == "Edited once." and message.edits == 1
    assert TelegramReply.objects.get(key="text:1").state == "sent"


def test_an_injected_not_modified_answer_counts_as_delivered(bot: Runner) -> None:
    chat = u.private_chat()
    bot.receive(bot.voice(chat))
    bot.drain()
    bot.transcribe_all("Whatever.")
    bot.drain(skip=("deliver",))
    bot.api.inject("editMessageText", "not_modified", chat_id=chat.id)
    _deliver_until_done(bot, chat.id)
    assert TelegramReply.objects.get(key="text:1").state == "sent"
    assert len(bot.api.calls_for(chat.id, "editMessageText")) == 1


def test_a_part_refused_for_good_is_given_up_and_the_next_one_goes_out(
    bot: Runner,
) -> None:
    chat = u.private_chat()
    _two_jobs_ready(bot, chat)
    bot.api.inject("editMessageText", "status", status=403, chat_id=chat.id)
    _deliver_until_done(bot, chat.id)
    states = list(
        TelegramReply.objects.filter(key="text:1")
        .order_by("id")
        .values_list("state", flat=True)
    )
    assert states == ["failed", "sent"]


def test_when_the_ack_is_gone_the_transcript_is_sent_as_a_new_message(
    bot: Runner,
) -> None:
    chat = u.private_chat()
    bot.receive(bot.voice(chat, message_id=5))
    bot.drain()
    bot.transcribe_all("Still here.")
    bot.drain(skip=("deliver",))
    # the user deleted the acknowledgement
    bot.api.chats[chat.id].clear()

    _deliver_until_done(bot, chat.id)

    [message] = bot.api.messages(chat.id)
    assert message.text == "Still here." and message.reply_to == 5


def test_a_part_that_keeps_failing_is_given_up_after_the_cap(
    bot: Runner, settings: Any
) -> None:
    settings.TELEGRAM_DELIVERY_MAX_ATTEMPTS = 3
    chat = u.private_chat()
    bot.receive(bot.voice(chat))
    bot.drain(skip=("deliver",))
    bot.api.inject("sendMessage", "status", status=500, chat_id=chat.id, times=99)
    outcomes = _deliver_until_done(bot, chat.id)
    assert len(outcomes) == 3
    part = TelegramReply.objects.get()
    assert part.state == "failed" and part.errors == 3


# The lease ---------------------------------------------------------------------------


def _help_owed(bot: Runner) -> Any:
    """A chat owed one reply (the answer to /help), its delivery not yet run."""
    chat = u.private_chat()
    bot.receive(u.update(u.message(chat, message_id=1, text="/help")))
    bot.drain(skip=("deliver",))
    return chat


def test_a_call_slower_than_the_lease_keeps_it_and_nothing_is_sent_twice(
    bot: Runner, settings: Any
) -> None:
    # given a lease of 2 s and a send that Telegram carries out at once but answers
    # only after 5 s
    settings.TELEGRAM_DELIVERY_LEASE_SECONDS = 2
    settings.TELEGRAM_MESSAGE_TIMEOUT = 10
    chat = _help_owed(bot)
    bot.api.inject("sendMessage", "slow", seconds=5, chat_id=chat.id)

    # when a task delivers it, in a thread, while others try to take the chat
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(
            services.telegram_chat_deliver, chat_id=chat.id, owner="holder"
        )
        bot.api.wait_for(lambda: bot.api.calls_for(chat.id), 10, "the send")
        tries = 0
        while not running.done():
            # then its process renews the lease: nobody can take the chat
            assert services.telegram_leases_reclaim() == 0
            other = services.telegram_chat_deliver(chat_id=chat.id, owner="other")
            assert other.busy, other
            tries += 1
            time.sleep(0.2)
        outcome = running.result()

    # and the reply went out once, by its holder, which let go of the chat
    assert tries > 15  # 5 s of tries: more than two leases
    assert outcome.delivered == 1
    assert len(bot.api.messages(chat.id)) == 1
    assert len(bot.api.calls_for(chat.id)) == 1
    assert TelegramChat.objects.get(pk=chat.id).delivery_owner == ""


def test_a_lease_that_lapsed_with_its_holder_goes_to_a_new_task(
    bot: Runner, settings: Any
) -> None:
    # given a chat whose delivery task died holding the lease, one lease ago
    chat = _help_owed(bot)
    lapsed = timezone.now() - timedelta(seconds=1)
    TelegramChat.objects.filter(pk=chat.id).update(
        delivery_owner="dead-task", delivery_lease_until=lapsed
    )
    # and a chat whose lease is alive
    held = _help_owed(bot)
    TelegramChat.objects.filter(pk=held.id).update(
        delivery_owner="alive",
        delivery_lease_until=timezone.now() + timedelta(seconds=5),
    )

    bot.enqueued.clear()

    # when the sweep runs
    assert services.telegram_leases_reclaim() == 1

    # then the lapsed chat has a new owner, the task enqueued for it
    assert bot.enqueued == [("deliver", (chat.id,))]
    row = TelegramChat.objects.get(pk=chat.id)
    assert row.delivery_owner not in ("", "dead-task")
    assert row.delivery_lease_until > timezone.now()
    # which the dead one's new replies leave to it, and the next sweep too
    assert services.telegram_chat_deliver(chat_id=chat.id, owner="late").busy
    assert services.telegram_leases_reclaim() == 0
    # and that task, under the id it was given, sends the reply, once
    outcome = services.telegram_chat_deliver(chat_id=chat.id, owner=row.delivery_owner)
    assert outcome.delivered == 1
    assert len(bot.api.messages(chat.id)) == 1
    assert TelegramChat.objects.get(pk=chat.id).delivery_owner == ""


def test_a_lease_held_through_a_back_off_is_not_reclaimed_before_it_ends(
    bot: Runner,
) -> None:
    chat = _help_owed(bot)
    bot.api.inject("sendMessage", "status", status=429, retry_after=30, chat_id=chat.id)
    outcome = services.telegram_chat_deliver(chat_id=chat.id, owner="waiting")
    assert outcome.retry_in == 30
    assert services.telegram_leases_reclaim() == 0
    row = TelegramChat.objects.get(pk=chat.id)
    assert row.delivery_lease_until > row.delivery_not_before


# Reconciling -------------------------------------------------------------------------


def test_the_reconciler_re_enqueues_work_whose_task_was_lost(bot: Runner) -> None:
    # given an update stored but never processed (the web process died after its
    # commit, before the enqueue)
    chat = u.private_chat()
    stored = bot.receive(bot.voice(chat))
    bot.enqueued.clear()

    counts = services.telegram_reconcile(min_age=0)
    assert counts["updates"] == 1
    assert bot.enqueued == [("process_update", (stored.pk,))]

    # given replies committed but their delivery task lost
    bot.drain(skip=("deliver",))
    counts = services.telegram_reconcile(min_age=0)
    assert counts["deliveries"] == 1
    bot.drain()
    assert len(bot.api.messages(chat.id)) == 1

    # given a finished job whose answer task was lost
    bot.transcribe_all("Found again.")
    bot.enqueued.clear()
    counts = services.telegram_reconcile(min_age=0)
    assert counts["answers"] == 1
    bot.drain()
    assert texts_of(bot.api, chat.id) == ["Found again."]

    # and nothing is left to do
    assert not any(services.telegram_reconcile(min_age=0).values())


def test_the_reconciler_leaves_young_work_to_its_own_task(bot: Runner) -> None:
    bot.receive(bot.voice(u.private_chat()))
    bot.enqueued.clear()
    assert services.telegram_reconcile(min_age=60)["updates"] == 0


def test_job_events_other_than_finishing_enqueue_nothing(
    bot: Runner,
) -> None:
    chat = u.private_chat()
    bot.receive(bot.voice(chat))
    bot.drain()
    bot.transcribe_all("Done.")
    # accepted and started said nothing; succeeded enqueued the answer
    assert [name for name, _ in bot.enqueued] == ["answer"]


def test_the_receiver_enqueues_after_commit_only(enqueued: list) -> None:
    from asr.models import TranscriptionEvent
    from bots.receivers import transcription_event_received

    event = TranscriptionEvent(transcription_id="0" * 32, kind="succeeded", seq=1)
    with transaction.atomic():
        transcription_event_received(sender=None, event=event)
        assert enqueued == []
    assert enqueued == [("answer", ("0" * 32,))]


def test_beat_runs_the_reconciler_and_the_lease_sweep() -> None:
    from django.conf import settings

    from kikipounamu.celery import app

    app.loader.import_default_modules()  # what a worker does at start
    entry = settings.CELERY_BEAT_SCHEDULE["bots-reconcile"]
    assert entry["task"] == "bots.reconcile"
    assert "bots.reconcile" in app.tasks
    sweep = settings.CELERY_BEAT_SCHEDULE["bots-reclaim-leases"]
    assert sweep["task"] == "bots.reclaim_leases" and sweep["schedule"] <= 5
    assert "bots.reclaim_leases" in app.tasks
    for name in ("bots.deliver", "bots.reclaim_leases"):
        assert app.amqp.router.route({}, name)["queue"].name == "bots"


def test_lang_offers_and_takes_only_what_the_workers_serve(
    bot: Runner, monkeypatch
) -> None:
    from bots.services import updates

    monkeypatch.setattr(updates, "served_languages", lambda queue: frozenset({"en"}))
    chat = u.private_chat()
    for text in ("/lang", "/lang zh", "/lang en"):
        bot.receive(u.update(u.message(chat, text=text)))
    bot.drain()
    current, refused, set_ = texts_of(bot.api, chat.id)
    assert "I can transcribe en" in current
    assert refused.startswith("I cannot transcribe 'zh' here: I can transcribe en.")
    assert set_ == "I will transcribe your recordings as 'en'."
    assert TelegramChat.objects.get(pk=chat.id).language == "en"


def _fetch_until_done(bot: Runner, job_pk: int) -> list[float]:
    """What fetch_audio and its Celery retries do, with the waits skipped: the
    countdowns asked for, in order."""
    waits = []
    for _ in range(30):
        try:
            services.telegram_job_fetch(job_pk=job_pk)
        except services.RetryLater as exc:
            waits.append(exc.countdown)
            continue
        return waits
    raise AssertionError(waits)


def _fetching_job(bot: Runner, method: str, **fault: Any) -> TelegramJob:
    """A voice note's job, not yet fetched, whose Bot API ``method`` will fail as
    ``fault`` says (FakeBotApi.inject)."""
    bot.receive(bot.voice(u.private_chat()))
    bot.drain(skip=("deliver", "fetch_audio"))
    bot.api.inject(method, "status", **fault)
    return TelegramJob.objects.get()


def test_429s_on_a_download_wait_as_told_and_use_up_no_attempts(
    bot: Runner, settings: Any
) -> None:
    # given a voice note whose getFile Telegram answers 429 more times than there
    # are download attempts, then a 500, then the file
    settings.TELEGRAM_FETCH_MAX_ATTEMPTS = 2
    job = _fetching_job(bot, "getFile", status=429, retry_after=3, times=4)
    bot.api.inject("getFile", "status", status=500)

    waits = _fetch_until_done(bot, job.pk)

    # then each 429's retry_after was the wait, and the download went through
    assert waits[:4] == [3, 3, 3, 3] and len(waits) == 5
    job.refresh_from_db()
    assert job.state == "transcribing" and job.error_code == ""
    assert job.fetch_attempts == 2  # the 500 and the success


def test_a_download_failing_past_its_attempts_is_answered_download_failed(
    bot: Runner, settings: Any
) -> None:
    settings.TELEGRAM_FETCH_MAX_ATTEMPTS = 2
    job = _fetching_job(bot, "getFile", status=500, times=5)

    assert len(_fetch_until_done(bot, job.pk)) == 2

    job.refresh_from_db()
    assert job.error_code == "download_failed"
    assert job.error_message == "gave up after 2 download attempts"
    assert len(downloads_of(bot.api, job.file_id)) == 2


def test_a_download_still_rate_limited_past_the_give_up_time_is_answered(
    bot: Runner, settings: Any
) -> None:
    job = _fetching_job(bot, "getFile", status=429, retry_after=3, times=99)
    with pytest.raises(services.RetryLater):
        services.telegram_job_fetch(job_pk=job.pk)

    TelegramJob.objects.filter(pk=job.pk).update(
        created_at=timezone.now()
        - timedelta(seconds=settings.TELEGRAM_GIVE_UP_SECONDS + 1)
    )
    services.telegram_job_fetch(job_pk=job.pk)

    job.refresh_from_db()
    assert job.error_code == "download_failed"
    assert job.error_message.startswith("not downloaded after 24.0 h")
