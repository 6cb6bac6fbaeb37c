"""OpenAI's realtime transcription on the live pipeline, driven by the official
``openai`` client against a real web process and a real live worker."""

from __future__ import annotations

import asyncio
import base64
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
import soxr
from rest_framework.authtoken.models import Token

from asr.models import Transcription
from tests.factories import UserFactory
from tests.speech import espeak_available
from tests.speech import speech_stream
from tests.speech import word_error_rate

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not espeak_available(), reason="espeak-ng is installed by `make test`"
    ),
]

SENTENCES = [
    "Open the window and let some fresh air into the room.",
    "We will meet again next week to finish the project.",
]


@pytest.fixture
def client(web: str, db: Any) -> openai.AsyncOpenAI:
    token = Token.objects.create(user=UserFactory()).key
    return openai.AsyncOpenAI(api_key=token, base_url=f"{web}/v1", max_retries=0)


def pcm24(pcm16k: bytes) -> bytes:
    samples = np.frombuffer(pcm16k, "<i2")
    return soxr.resample(samples, 16_000, 24_000).astype("<i2").tobytes()


async def transcribe(
    client: openai.AsyncOpenAI, audio: bytes, *, extra: list[dict[str, Any]] = ()
) -> tuple[list[Any], str]:
    events: list[Any] = []
    async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
        created = await conn.recv()
        assert created.type == "session.created"
        session = created.session.id
        await conn.session.update(
            session={
                "type": "transcription",
                "audio": {
                    "input": {
                        "format": {"type": "audio/pcm", "rate": 24000},
                        "transcription": {"model": "whisper-1", "language": "en"},
                        "turn_detection": {
                            "type": "server_vad",
                            "threshold": 0.5,
                            "prefix_padding_ms": 300,
                            "silence_duration_ms": 400,
                        },
                    }
                },
            }
        )
        for event in extra:
            await conn.send(event)

        async def send() -> None:
            step = 4800  # 100 ms at 24 kHz, 16-bit
            for offset in range(0, len(audio), step):
                await conn.input_audio_buffer.append(
                    audio=base64.b64encode(audio[offset : offset + step]).decode()
                )
                await asyncio.sleep(0.1)

        sender = asyncio.ensure_future(send())
        completed = 0
        async with asyncio.timeout(90):
            async for event in conn:
                events.append((time.monotonic(), event))
                if (
                    event.type
                    == "conversation.item.input_audio_transcription.completed"
                ):
                    completed += 1
                    if completed == len(SENTENCES):
                        break
        await sender
    return events, session


def test_the_openai_client_streams_a_clip_and_gets_deltas_and_completed_transcripts(
    client: openai.AsyncOpenAI, live_worker: Any, tmp_path: Path
) -> None:
    pcm, _ = speech_stream(SENTENCES, tmp_path)
    timed, session = asyncio.run(transcribe(client, pcm24(pcm)))
    events = [event for _, event in timed]
    types = [e.type for e in events]
    assert types[0] == "session.updated"
    completed = [
        e
        for e in events
        if e.type == "conversation.item.input_audio_transcription.completed"
    ]
    assert word_error_rate(SENTENCES, [c.transcript for c in completed]) < 0.4
    for item in completed:
        item_events = [e for e in events if getattr(e, "item_id", None) == item.item_id]
        kinds = [e.type for e in item_events]
        assert (
            kinds.index("input_audio_buffer.speech_started")
            < kinds.index("input_audio_buffer.speech_stopped")
            < kinds.index("input_audio_buffer.committed")
        )
        deltas = [
            e.delta
            for e in item_events
            if e.type == "conversation.item.input_audio_transcription.delta"
        ]
        assert deltas, f"no delta for {item.item_id}"
        # Append-only: the deltas add up to the transcript's words. Agreement is on
        # words (asr.realtime.stable_text): a comma two partials had and the final
        # did not stays sent, as a delta cannot be taken back.
        assert words("".join(deltas)) == words(item.transcript), (
            deltas,
            item.transcript,
        )
    # Closing ends the session: it is stored as a job.
    job_id = session.removeprefix("sess_")
    deadline = time.monotonic() + 60
    job = None
    while time.monotonic() < deadline:
        job = (
            Transcription.objects.filter(pk__startswith="")
            .filter(meta__protocol="openai")
            .order_by("-created_at")
            .first()
        )
        if job is not None and job.status == "succeeded":
            break
        time.sleep(0.2)
    assert job is not None and job.status == "succeeded"
    assert str(job.pk).replace("-", "") == job_id
    assert job.source == "live"
    assert word_error_rate([" ".join(SENTENCES)], [job.text]) < 0.4


def test_bad_events_get_error_events_and_the_session_goes_on(
    client: openai.AsyncOpenAI, live_worker: Any, tmp_path: Path
) -> None:
    async def scenario() -> list[Any]:
        got = []
        async with client.realtime.connect(
            extra_query={"intent": "transcription"}
        ) as conn:
            await conn.recv()  # session.created
            for event in (
                {"type": "input_audio_buffer.append", "audio": "not base64!"},
                {
                    "type": "input_audio_buffer.append",
                    "audio": base64.b64encode(b"\0" * 3).decode(),
                },
                {"type": "response.create"},
                {
                    "type": "session.update",
                    "session": {
                        "type": "transcription",
                        "audio": {"input": {"format": {"type": "audio/pcmu"}}},
                    },
                },
                {"type": "input_audio_buffer.commit"},
                {"type": "input_audio_buffer.clear"},
            ):
                await conn.send(event)
            async with asyncio.timeout(10):
                async for event in conn:
                    got.append(event)
                    if event.type == "input_audio_buffer.cleared":
                        break
        return got

    events = asyncio.run(scenario())
    errors = [e.error for e in events if e.type == "error"]
    assert [(e.code, e.param) for e in errors] == [
        ("invalid_value", "audio"),
        ("invalid_audio", "audio"),
        ("unknown_event", "type"),
        ("invalid_value", "audio.input.format"),
        ("input_audio_buffer_commit_empty", None),
    ]
    assert all(e.type == "invalid_request_error" and e.message for e in errors)
    assert events[-1].type == "input_audio_buffer.cleared"


def test_a_bad_token_is_refused(web: str) -> None:
    bad = openai.AsyncOpenAI(api_key="nope", base_url=f"{web}/v1", max_retries=0)

    async def scenario() -> Any:
        async with bad.realtime.connect(
            extra_query={"intent": "transcription"}
        ) as conn:
            return await conn.recv()

    with pytest.raises(Exception) as caught:
        event = asyncio.run(scenario())
        assert event.type == "error"
        raise RuntimeError(event.error.code)
    assert "unauthorized" in str(caught.value) or "4401" in str(caught.value)


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())
