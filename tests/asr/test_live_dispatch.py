"""The live consumer's dispatch: audio frames and worker pushes skip Channels'
per-message database hop (a thread hop on the process's one thread-sensitive
thread); connect and disconnect keep it. If a Channels release changes dispatch,
this says so."""

from __future__ import annotations

import asyncio
from typing import Any

import channels.consumer
import pytest

from asr.realtime.live import NativeLiveConsumer


@pytest.fixture
def hops(monkeypatch) -> list[str]:
    seen: list[str] = []

    async def counted() -> None:
        seen.append("hop")

    monkeypatch.setattr(channels.consumer, "aclose_old_connections", counted)
    return seen


def test_frames_and_pushes_skip_the_database_hop(hops: list[str]) -> None:
    consumer = NativeLiveConsumer()
    handled: list[str] = []

    async def handler(message: dict[str, Any]) -> None:
        handled.append(message["type"])

    consumer.websocket_receive = handler  # type: ignore[method-assign]
    consumer.live_final = handler  # type: ignore[method-assign]
    consumer.websocket_connect = handler  # type: ignore[method-assign]

    async def run() -> None:
        await consumer.dispatch({"type": "websocket.receive", "bytes": b"\0\0"})
        await consumer.dispatch({"type": "live.final", "final": {}})
        assert hops == []
        await consumer.dispatch({"type": "websocket.connect"})
        assert hops == ["hop"]

    asyncio.run(run())
    assert handled == ["websocket.receive", "live.final", "websocket.connect"]


def test_channels_dispatch_still_makes_the_hop_this_skips(hops: list[str]) -> None:
    # What the override is measured against: Channels' own dispatch hops first.
    consumer = NativeLiveConsumer()

    async def handler(message: dict[str, Any]) -> None:
        pass

    consumer.websocket_receive = handler  # type: ignore[method-assign]
    asyncio.run(
        channels.consumer.AsyncConsumer.dispatch(
            consumer, {"type": "websocket.receive", "bytes": b""}
        )
    )
    assert hops == ["hop"]
