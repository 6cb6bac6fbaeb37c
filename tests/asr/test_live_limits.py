"""The live door's limits and its answers to bad input: every refusal is a close
code and a reason a person can act on, never a server error or a silent drop."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import numpy as np
import pytest
import websockets
from rest_framework.authtoken.models import Token

from tests import processes
from tests.factories import UserFactory
from tests.live_client import ws_url

pytestmark = [pytest.mark.pipeline, pytest.mark.django_db(transaction=True)]

NAMESPACE = {
    "KIKI_TEST_NAMESPACE": "-live-limits",
    "LIVE_MAX_STREAMS": "2",
    "LIVE_IDLE_SECONDS": "2",
    "LIVE_START_TIMEOUT": "2",
    "LIVE_MAX_SESSION_SECONDS": "3",
    "WS_HEARTBEAT_SECONDS": "1",
}
# A slow engine: the worker is busy for twice each utterance's length.
WORKER = {**NAMESPACE, "ASR_ENGINE": "synthetic", "ASR_SYNTHETIC_RTF": "2.0"}


@pytest.fixture(scope="module")
def limits_worker(django_db_setup: Any, django_db_blocker: Any) -> Any:
    proc = processes.start_worker(queues="live,live_partial", **WORKER)
    yield proc
    proc.stop()


@pytest.fixture
def url(own_web: str, limits_worker: Any, db: Any) -> str:
    return ws_url(own_web, token=Token.objects.create(user=UserFactory()).key)


def noise(seconds: float, rate: int = 16_000) -> bytes:
    rng = np.random.default_rng(0)
    return (rng.standard_normal(int(seconds * rate)) * 3000).astype("<i2").tobytes()


async def _exchange(url: str, *frames: Any, read: float = 10) -> tuple[list, int, str]:
    """Send ``frames`` (dicts as JSON, bytes as audio, floats as pauses), then read
    until the server closes; (messages, close code, close reason)."""
    messages: list[dict[str, Any]] = []
    async with websockets.connect(url) as ws:
        try:
            for frame in frames:
                if isinstance(frame, float):
                    await asyncio.sleep(frame)
                elif isinstance(frame, dict):
                    await ws.send(json.dumps(frame))
                else:
                    await ws.send(frame)
        except websockets.ConnectionClosed:
            pass  # refused mid-way: the messages and the close say why
        try:
            async with asyncio.timeout(read):
                async for raw in ws:
                    messages.append(json.loads(raw))
        except (websockets.ConnectionClosed, TimeoutError):
            pass
        return messages, ws.close_code or 0, ws.close_reason or ""


def exchange(url: str, *frames: Any, read: float = 10) -> tuple[list, int, str]:
    return asyncio.run(_exchange(url, *frames, read=read))


START = {"type": "start", "sample_rate": 16000}


def test_no_credentials_is_refused_with_a_reason(own_web: str) -> None:
    messages, code, reason = exchange(ws_url(own_web), START)
    assert code == 4401 and "token" in reason
    assert messages[0]["code"] == "unauthorized"


def test_a_bad_token_is_refused(own_web: str) -> None:
    _, code, _ = exchange(ws_url(own_web, token="nope"), START)
    assert code == 4401


@pytest.mark.parametrize(
    ("frames", "close", "error"),
    [
        ([b"\x00\x00" * 160], 1003, "start_first"),
        ([{"type": "start", "sample_rate": 11025}], 4400, "unsupported_sample_rate"),
        ([{"type": "start", "sample_rate": "16k"}], 4400, "invalid_sample_rate"),
        ([{"type": "start", "language": "xx"}], 4400, "unsupported_language"),
        ([{"type": "begin"}], 4400, "start_expected"),
        ([START, b"\x00" * 321], 1007, "invalid_audio"),
        ([START, {"type": "audio", "data": "AAAA"}], 1003, "unexpected_message"),
        ([START, "not json"], 1007, "invalid_json"),
        ([START, b"\x00" * 400_000], 1009, "frame_too_big"),
    ],
)
def test_bad_input_gets_a_close_code_and_a_reason(
    url: str, frames: list, close: int, error: str
) -> None:
    messages, code, reason = exchange(url, *frames)
    assert code == close, (messages, reason)
    assert reason
    assert [m["code"] for m in messages if m["type"] == "error"] == [error]


def test_no_start_message_times_out(url: str) -> None:
    _messages, code, reason = exchange(url, read=6)
    assert code == 4408 and "start" in reason


def test_past_the_stream_limit_a_new_stream_is_told_to_retry(url: str) -> None:
    async def scenario() -> tuple[list, int, str]:
        async with websockets.connect(url) as a, websockets.connect(url) as b:
            for ws in (a, b):
                await ws.send(json.dumps(START))
                await ws.recv()
            return await _exchange(url, START)

    _messages, code, reason = asyncio.run(scenario())
    assert code == 1013
    assert "busy" in reason and "retry in 10 s" in reason


def test_an_idle_stream_ends_and_is_stored(url: str) -> None:
    messages, code, _ = exchange(url, START, noise(0.5), read=20)
    kinds = [m["type"] for m in messages]
    assert kinds[0] == "ready" and kinds[-1] == "end"
    assert {"type": "error", "code": "idle"}.items() <= next(
        m for m in messages if m["type"] == "error"
    ).items()
    assert code == 1000
    assert messages[-1]["job"]["status"] == "succeeded"


def test_a_session_ends_at_its_maximum_length(url: str) -> None:
    frames = [noise(0.5)] * 10  # 5 s, the limit is 3 s
    messages, code, _ = exchange(url, START, *frames, read=30)
    errors = [m["code"] for m in messages if m["type"] == "error"]
    assert errors == ["max_session_length"]
    assert messages[-1]["type"] == "end" and code == 1000
    assert messages[-1]["job"]["duration"] == pytest.approx(3.0, abs=0.2)


def test_heartbeats_and_pings_go_on_while_the_workers_are_busy(url: str) -> None:
    async def scenario() -> tuple[int, float]:
        beats = 0
        async with websockets.connect(url, ping_interval=0.5, ping_timeout=2) as ws:
            await ws.send(json.dumps(START))
            started = time.monotonic()
            # Speech-like noise for 4 s: the worker spends 8 s on it meanwhile.
            for _ in range(40):
                await ws.send(noise(0.1))
                await asyncio.sleep(0.1)
            while time.monotonic() - started < 7:
                message = json.loads(await asyncio.wait_for(ws.recv(), 3))
                beats += message["type"] == "heartbeat"
            latency = await (await ws.ping())
        return beats, latency

    beats, latency = asyncio.run(scenario())
    assert beats >= 4
    assert latency < 1.0
