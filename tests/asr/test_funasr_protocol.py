"""FunASR's WebSocket protocol end to end: a real web process, a real live worker
(whisper tiny.en), and FunASR's clients as their users run them: the
``funasr-client`` package from PyPI streaming espeak-ng speech, at the WebSocket
root where those clients connect. Close codes are read with a plain WebSocket
client (the package does not show them)."""

from __future__ import annotations

import asyncio
import io
import json
import time
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from funasr_client import AsyncFunASRClient
from rest_framework.authtoken.models import Token

from asr.realtime.funasr_protocol import funasr_timestamp
from asr.realtime.funasr_protocol import wav_data_start
from asr.realtime.live import LiveRefusal
from tests import processes
from tests.conftest import LiveApi
from tests.factories import UserFactory
from tests.live_client import closed_with as live_closed_with
from tests.live_client import ws_url
from tests.speech import espeak
from tests.speech import espeak_available
from tests.speech import speech_stream
from tests.speech import word_error_rate

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "She sells sea shells by the sea shore.",
    "Open the window and let some fresh air into the room.",
]

needs_espeak = pytest.mark.skipif(
    not espeak_available(), reason="espeak-ng is installed by `make test`"
)


@dataclass
class FunasrRun:
    """What a FunASR client got: every message, in order."""

    messages: list[dict[str, Any]] = field(default_factory=list)

    def of(self, mode: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("mode") == mode and "is_end" not in m]

    def joined(self, mode: str) -> str:
        # As FunASR's clients show it: the texts one after another.
        return "".join(m["text"] for m in self.of(mode))

    @property
    def end(self) -> dict[str, Any]:
        ends = [m for m in self.messages if m.get("is_end")]
        assert len(ends) == 1, self.messages
        return ends[0]


async def funasr_stream(
    url: str,
    audio: bytes,
    *,
    mode: str,
    rate: int = 16_000,
    speed: float | None = 2.0,
    wav_format: str | None = None,
    frame_ms: int = 60,
) -> FunasrRun:
    """Stream ``audio`` with funasr-client in ``frame_ms`` frames (60 ms: FunASR's
    client's stride for chunk_size [5, 10, 5]), paced at ``speed`` times real time
    (None: as fast as it sends), and read until its final message."""
    run = FunasrRun()

    async def received(message: dict[str, Any]) -> None:
        run.messages.append(message)

    client = AsyncFunASRClient(
        url,
        mode=mode,
        audio_fs=rate,
        wav_name="espeak",
        wav_format=wav_format,
        hotwords={"Stella": 20},
        itn=True,
        callback=received,
    )
    await client.connect()
    frame = rate * frame_ms // 1000 * 2
    started = time.monotonic()
    for i, offset in enumerate(range(0, len(audio), frame)):
        await client.send(audio[offset : offset + frame])
        if speed is not None:
            due = started + (i + 1) * frame_ms / 1000 / speed
            await asyncio.sleep(max(0.0, due - time.monotonic()))
    # Sends {"is_speaking": false} and waits for the final message.
    await client.close(timeout=120)
    return run


@pytest.fixture(scope="module")
def untrusting_web(django_db_setup: Any, django_db_blocker: Any) -> Iterator[str]:
    """A web process for which 127.0.0.1 is not a trusted network. In the session's
    queue namespace: the module's live worker serves its sessions too."""
    proc, base = processes.start_web(LIVE_TRUSTED_NETWORKS="10.255.255.0/24")
    yield base
    proc.stop()


@pytest.fixture
def staff_api(transactional_db: Any, web: str) -> LiveApi:
    # Sessions from trusted networks have no owner: staff read them.
    user = UserFactory(is_staff=True)
    return LiveApi(web, Token.objects.create(user=user).key)


def root_url(base: str, **query: str) -> str:
    """The WebSocket root, as FunASR's clients are pointed at it: ws://host:port."""
    url = base.replace("http://", "ws://")
    return url + "/?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else url


def check_session_stored(
    api: LiveApi, run: FunasrRun, texts: str | None = None
) -> dict[str, Any]:
    """The run ended with the is_end acknowledgement (the only message with
    is_final), and its session is a stored job whose text is ``texts``."""
    end = run.end
    assert run.messages[-1] is end, "results after the is_end acknowledgement"
    assert end["is_final"] is True and not end.get("error")
    assert [m for m in run.messages if m.get("is_final")] == [end]
    job = api.get(end["session"])
    assert job["status"] == "succeeded" and job["source"] == "live"
    if texts is not None:
        assert job["text"].split() == texts.split()
    return job


# The three modes, from the trusted loopback without credentials -----------------


@needs_espeak
def test_2pass_streams_online_pieces_and_one_corrected_final_per_sentence(
    web: str, live_worker: Any, staff_api: LiveApi, tmp_path: Path
) -> None:
    pcm, spans = speech_stream(SENTENCES, tmp_path)
    run = asyncio.run(funasr_stream(root_url(web), pcm, mode="2pass", speed=1.0))
    finals = run.of("2pass-offline")
    assert len(finals) == len(SENTENCES), run.messages
    # tiny.en on espeak-ng: ~0.2 (as in tests/asr/test_live.py); garbage is near 1.
    assert word_error_rate(SENTENCES, [f["text"] for f in finals]) < 0.4
    assert run.of("2pass-online"), "no online text while speaking"
    assert {m["mode"] for m in run.messages} == {
        "2pass-online",
        "2pass-offline",
        "2pass",
    }
    assert all(m["wav_name"] == "espeak" for m in run.messages)
    # Each final's timestamps (ms from the stream's start, decoded by the client)
    # fall on its sentence's speech.
    for final, (start, end, _) in zip(finals, spans, strict=True):
        stamps = final["timestamp"]
        assert stamps and all(a <= b for a, b in stamps)
        assert stamps[0][0] <= end * 1000 and stamps[-1][1] >= start * 1000
        assert stamps[0][0] >= (start - 1.0) * 1000
    # Texts are joined as they come: the second sentence starts with its space.
    assert finals[1]["text"].startswith(" ") and not finals[0]["text"].startswith(" ")
    job = check_session_stored(staff_api, run, run.joined("2pass-offline"))
    assert job["owner"] is None
    assert job["duration"] == pytest.approx(len(pcm) / 32000, abs=0.05)


@needs_espeak
def test_online_pieces_add_up_to_the_sentences(
    web: str, live_worker: Any, staff_api: LiveApi, tmp_path: Path
) -> None:
    pcm, _ = speech_stream(SENTENCES, tmp_path)
    url = ws_url(web, "/ws/funasr/")  # the protocol's own path
    run = asyncio.run(funasr_stream(url, pcm, mode="online", speed=1.0))
    assert {m["mode"] for m in run.messages} == {"online"}
    pieces = run.of("online")
    # More pieces than sentences: text came while speaking, not only at the ends.
    assert len(pieces) > len(SENTENCES), run.messages
    text = run.joined("online")
    assert word_error_rate([" ".join(SENTENCES)], [text]) < 0.4, text
    # What a partial would have revised is not in the client's text twice.
    assert len(text.split()) <= len(" ".join(SENTENCES).split()) + 3, text
    # The job holds the finals, which the pieces may differ from where a partial
    # was revised.
    job = check_session_stored(staff_api, run)
    assert word_error_rate([" ".join(SENTENCES)], [job["text"]]) < 0.4


@needs_espeak
def test_offline_sends_only_finals(
    web: str, live_worker: Any, staff_api: LiveApi, tmp_path: Path
) -> None:
    pcm, _ = speech_stream(SENTENCES, tmp_path)
    # FunASR's client sends a file in offline mode without pacing.
    run = asyncio.run(funasr_stream(root_url(web), pcm, mode="offline", speed=None))
    assert {m["mode"] for m in run.messages} == {"offline"}
    finals = run.of("offline")
    assert len(finals) == len(SENTENCES), run.messages
    assert word_error_rate(SENTENCES, [f["text"] for f in finals]) < 0.4
    check_session_stored(staff_api, run, run.joined("offline"))


@needs_espeak
def test_a_wav_stream_is_read_past_its_header_at_the_rate_it_names(
    web: str, live_worker: Any, staff_api: LiveApi, tmp_path: Path
) -> None:
    # espeak-ng writes 22,050 Hz; the client sends the file as it is.
    sentence = SENTENCES[0]
    data = espeak(sentence, tmp_path / "one.wav").read_bytes()
    with wave.open(io.BytesIO(data)) as wav:
        assert wav.getframerate() == 22_050
    silence = np.zeros(22_050, np.int16).tobytes()
    run = asyncio.run(
        funasr_stream(
            root_url(web),
            data + silence,
            mode="offline",
            rate=16_000,  # wrong on purpose: the header says otherwise
            wav_format="wav",
            speed=None,
        )
    )
    (final,) = run.of("offline")
    assert word_error_rate([sentence], [final["text"]]) < 0.4
    check_session_stored(staff_api, run, final["text"])


# Who may connect ------------------------------------------------------------------


@needs_espeak
def test_a_token_in_the_query_string_lets_an_untrusted_address_in(
    untrusting_web: str, live_worker: Any, transactional_db: Any, tmp_path: Path
) -> None:
    user = UserFactory()
    token = Token.objects.create(user=user).key
    pcm, _ = speech_stream(SENTENCES[:1], tmp_path)
    url = root_url(untrusting_web, token=token)
    run = asyncio.run(funasr_stream(url, pcm, mode="2pass"))
    (final,) = run.of("2pass-offline")
    # The session is the token's user's job.
    job = check_session_stored(LiveApi(untrusting_web, token), run, final["text"])
    assert job["owner"] == user.get_username()


def closed_with(url: str, *frames: str | bytes) -> tuple[int, str]:
    return live_closed_with(url, *frames, subprotocols=["binary"])


START = {
    "mode": "2pass",
    "chunk_size": [5, 10, 5],
    "wav_name": "x",
    "is_speaking": True,
}


def test_an_untrusted_address_without_a_token_is_refused_with_a_reason(
    untrusting_web: str, transactional_db: Any
) -> None:
    code, reason = closed_with(root_url(untrusting_web), json.dumps(START))
    assert code == 4401
    assert "LIVE_TRUSTED_NETWORKS" in reason and "token=" in reason
    # A token that is no one's is no better.
    code, _ = closed_with(root_url(untrusting_web, token="nope"), json.dumps(START))
    assert code == 4401


@pytest.mark.parametrize(
    ("first", "code", "words"),
    [
        ({"wav_format": "mp3"}, 4400, "wav_format 'mp3'"),
        ({"audio_fs": 11025}, 4400, "11025 Hz"),
        ({"mode": "3pass"}, 4400, "mode '3pass'"),
        ({"chunk_size": "five"}, 4400, "chunk_size"),
        ({"hotwords": ["a"]}, 4400, "hotwords"),
    ],
)
def test_a_first_message_we_cannot_take_closes_with_a_reason(
    web: str, transactional_db: Any, first: dict[str, Any], code: int, words: str
) -> None:
    got, reason = closed_with(root_url(web), json.dumps({**START, **first}))
    assert (got, words in reason) == (code, True), reason


def test_bad_json_and_audio_before_the_first_message_close_with_a_reason(
    web: str, transactional_db: Any
) -> None:
    code, reason = closed_with(root_url(web), '{"mode": "2pass",')
    assert code == 1007 and "not JSON" in reason
    code, reason = closed_with(root_url(web), b"\x00\x01" * 100)
    assert code == 1003 and reason
    # a WAV stream whose header is not PCM16 mono
    header = io.BytesIO()
    with wave.open(header, "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(16_000)
        wav.writeframes(b"\x00\x00" * 64)
    start = json.dumps({**START, "wav_format": "wav"})
    code, reason = closed_with(root_url(web), start, header.getvalue())
    assert code == 4400 and "16-bit mono" in reason


# The pure parts ---------------------------------------------------------------------


def test_timestamps_are_funasr_strings_of_milliseconds() -> None:
    segments = [
        {"start": 0.5, "end": 1.25, "text": "a b"},
        {
            "start": 2.0,
            "end": 3.0,
            "text": "c d",
            "words": [
                {"start": 2.0, "end": 2.4, "word": "c"},
                {"start": 2.5, "end": 3.0, "word": "d"},
            ],
        },
    ]
    assert funasr_timestamp(segments) == "[[500,1250],[2000,2400],[2500,3000]]"
    assert funasr_timestamp([]) == "[]"


def test_the_wav_header_is_found_whole_and_past_extra_chunks() -> None:
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(22_050)
        wav.writeframes(b"\x01\x00" * 10)
    data = out.getvalue()
    assert wav_data_start(data) == (22_050, 44)
    assert all(wav_data_start(data[:n]) is None for n in range(4, 44))
    # a LIST chunk between fmt and data (as ffmpeg writes)
    listed = (
        data[:36] + b"LIST" + (10).to_bytes(4, "little") + b"INFOabcdef" + data[36:]
    )
    rate, offset = wav_data_start(listed) or (0, 0)
    assert (rate, listed[offset:]) == (22_050, b"\x01\x00" * 10)
    broken = bytearray(data)
    broken[20:22] = (3).to_bytes(2, "little")  # IEEE float samples
    with pytest.raises(LiveRefusal):
        wav_data_start(bytes(broken))
