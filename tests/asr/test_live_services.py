"""The live sessions' services with a fake engine and the real Redis: finals made
once, the finish, and the reconciler's rule for sessions nobody finishes."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest

from asr import live_store
from asr import storage
from asr.engines.base import Segment
from asr.engines.base import TranscriptionResult
from asr.models import LiveUtterance
from asr.models import Transcription
from asr.services import live
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

RATE = 16_000


class CountingEngine:
    name = "fake"
    model_name = "fake-1"
    device = "cpu"

    def __init__(self) -> None:
        self.calls: list[tuple[int, dict[str, Any]]] = []

    def transcribe(self, samples: np.ndarray, rate: int, language: Any, **options: Any):
        self.calls.append((samples.size, options))
        seconds = samples.size / rate
        text = f"words {len(self.calls)}"
        return TranscriptionResult(
            text=text, language="en", segments=[Segment(0.1, seconds - 0.1, text)]
        )


def open_session(*, utterances: list[tuple[float, float]], seconds: float) -> str:
    job = live.live_session_open(
        owner=UserFactory(), language="en", protocol="native", sample_rate=RATE
    )
    session = str(job.pk)

    async def fill() -> None:
        await live_store.session_create(
            session, {"language": "en", "hotwords": "", "state": "streaming"}
        )
        await live_store.audio_append(session, b"\x01\x00" * int(seconds * RATE))
        for index, (start, end) in enumerate(utterances):
            await live_store.utterance_begin(session, index, int(start * RATE))
            await live_store.utterance_end(
                session, index, int(start * RATE), int(end * RATE)
            )
        await live_store.session_set(session, state="stopped")

    asyncio.run(fill())
    return session


def test_a_final_is_made_once_and_its_times_are_the_sessions() -> None:
    session = open_session(utterances=[(1.0, 3.0), (4.0, 5.5)], seconds=6)
    engine = CountingEngine()
    final, made = live.live_final(
        session_id=session, index=1, engine=engine, hostname="h"
    )
    again, made_again = live.live_final(
        session_id=session, index=1, engine=engine, hostname="h"
    )
    assert made and not made_again and again == final
    assert len(engine.calls) == 1 and engine.calls[0][0] == int(1.5 * RATE)
    assert final is not None
    assert (final["start"], final["end"]) == (4.0, 5.5)
    assert final["segments"][0]["start"] == pytest.approx(4.1)


def test_a_partial_is_greedy_and_skipped_once_its_final_is_asked_for() -> None:
    session = open_session(utterances=[(1.0, 3.0)], seconds=6)
    engine = CountingEngine()
    asyncio.run(live_store.utterance_begin(session, 1, 4 * RATE))
    partial = live.live_partial(
        session_id=session, index=1, end=5 * RATE, engine=engine
    )
    assert partial is not None and partial["start"] == 4.0
    assert engine.calls[0][1]["beam_size"] == 1
    assert (
        live.live_partial(session_id=session, index=0, end=RATE, engine=engine) is None
    )


def test_the_finish_makes_missing_finals_stores_the_audio_and_ends_the_job() -> None:
    session = open_session(utterances=[(1.0, 3.0), (4.0, 5.5)], seconds=6)
    engine = CountingEngine()
    live.live_final(session_id=session, index=0, engine=engine, hostname="h")
    job, made = live.live_finish(session_id=session, engine=engine, hostname="h")
    assert [f["index"] for f in made] == [1]
    assert job is not None and job.status == Transcription.Status.SUCCEEDED
    assert job.text == "words 1 words 2"
    assert [s["start"] for s in job.segments] == [
        pytest.approx(1.1),
        pytest.approx(4.1),
    ]
    assert job.duration == 6.0
    assert storage.audio_read(job.audio.name)[:4] == b"RIFF"
    assert live_store.state(session) == {}
    # Idempotent: a second finish changes nothing.
    again, made = live.live_finish(session_id=session, engine=engine, hostname="h")
    assert again is not None and again.finished_at == job.finished_at and made == []
    assert LiveUtterance.objects.filter(transcription_id=session).count() == 2


def test_a_resumed_session_is_not_finished_by_the_dropped_connections_finish() -> None:
    session = open_session(utterances=[(1.0, 3.0)], seconds=4)
    asyncio.run(live_store.session_set(session, state="streaming"))
    job, _ = live.live_finish(session_id=session, engine=CountingEngine(), hostname="h")
    assert job is None
    assert Transcription.objects.get(pk=session).status == "running"


def test_the_reconciler_finishes_only_sessions_nobody_will(monkeypatch) -> None:
    sent: list[str] = []
    monkeypatch.setattr(
        live, "live_enqueue", lambda name, args, **_: sent.append(args[0]) or True
    )
    streaming, dropped_now, dropped_long_ago, web_died = (
        open_session(utterances=[], seconds=1) for _ in range(4)
    )
    old = time.time() - 3600
    Transcription.objects.update(
        created_at=Transcription.objects.get(pk=streaming).created_at.replace(year=2020)
    )

    async def arrange() -> None:
        await live_store.active_touch(streaming)
        await live_store.session_set(
            dropped_now, state="detached", detached_at=str(time.time())
        )
        await live_store.session_set(
            dropped_long_ago, state="detached", detached_at=str(old)
        )
        await live_store.session_set(web_died, state="streaming")

    asyncio.run(arrange())
    assert live.live_reconcile() == {"live_finished": 2}
    assert sorted(sent) == sorted([dropped_long_ago, web_died])
    # Asked once: the next pass waits for that finish.
    assert live.live_reconcile() == {"live_finished": 0}


def test_a_final_takes_the_text_prepared_for_its_audio_and_only_that() -> None:
    session = open_session(utterances=[(1.0, 3.0)], seconds=6)
    engine = CountingEngine()
    asyncio.run(live_store.utterance_begin(session, 1, 4 * RATE))
    # Prepared when a pause began: the first as it ended; the second at a pause
    # after which speech went on.
    assert live.live_prepare(
        session_id=session, index=0, start=RATE, end=3 * RATE, engine=engine
    )
    assert live.live_prepare(
        session_id=session, index=1, start=4 * RATE, end=5 * RATE, engine=engine
    )
    asyncio.run(live_store.utterance_end(session, 1, 4 * RATE, int(5.5 * RATE)))
    first, _ = live.live_final(session_id=session, index=0, engine=engine, hostname="h")
    second, _ = live.live_final(
        session_id=session, index=1, engine=engine, hostname="h"
    )
    assert first is not None and first["text"] == "words 1"
    assert second is not None and second["text"] == "words 3"
    assert len(engine.calls) == 3
    # Nothing to prepare once the final is made, or for other bounds than its own.
    assert not live.live_prepare(
        session_id=session, index=0, start=RATE, end=3 * RATE, engine=engine
    )
    assert not live.live_prepare(
        session_id=session, index=1, start=4 * RATE, end=5 * RATE, engine=engine
    )


def test_failed_finals_are_sent_with_their_error_and_all_failed_fail_the_session() -> (
    None
):
    from asr.services.attempts import Failure

    session = open_session(utterances=[(1.0, 3.0), (4.0, 5.5)], seconds=6)
    engine = CountingEngine()
    failure = Failure("unsupported_language", "English only.")
    for index in (0, 1):
        final, made = live.live_final_failed(
            session_id=session, index=index, failure=failure, hostname="h"
        )
        assert made and final is not None
        assert final["error"] == {
            "code": "unsupported_language",
            "message": "English only.",
        }
        assert final["text"] == ""
    job, made = live.live_finish(session_id=session, engine=engine, hostname="h")
    assert made == [] and engine.calls == []
    assert job is not None and job.status == Transcription.Status.FAILED
    assert job.error_code == "unsupported_language"
