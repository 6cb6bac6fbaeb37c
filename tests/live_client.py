"""A client of the live door (/ws/live/) for tests and benchmarks: streams PCM16
audio in frames, paced in real time or as fast as the server reads, and keeps every
message it gets with the time it came."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from dataclasses import field
from typing import Any

import websockets
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect


@dataclass
class LiveRun:
    messages: list[dict[str, Any]] = field(default_factory=list)
    # time.monotonic() of each message, and when the first frame was sent.
    times: list[float] = field(default_factory=list)
    started_at: float = 0.0
    close_code: int | None = None
    close_reason: str = ""

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("type") == kind]

    @property
    def session(self) -> str:
        return self.of("ready")[0]["session"]

    def text(self) -> str:
        return " ".join(f["text"] for f in self.of("final") if f["text"]).strip()


def ws_url(base: str, path: str = "/ws/live/", **query: str) -> str:
    url = base.replace("http://", "ws://").replace("https://", "wss://") + path
    if query:
        url += "?" + "&".join(f"{k}={v}" for k, v in query.items())
    return url


async def stream(
    url: str,
    pcm: bytes,
    *,
    rate: int = 16_000,
    frame_ms: int = 100,
    realtime: bool = False,
    speed: float = 1.0,
    start: dict[str, Any] | None = None,
    stop: bool = True,
    headers: dict[str, str] | None = None,
    timeout: float = 120,
    run: LiveRun | None = None,
) -> LiveRun:
    """Stream ``pcm`` and read until the server closes (after ``end``)."""
    run = run or LiveRun()
    frame = rate * frame_ms // 1000 * 2
    async with websockets.connect(
        url, additional_headers=headers, max_size=2**22, open_timeout=30
    ) as ws:
        await ws.send(
            json.dumps({"type": "start", "sample_rate": rate, **(start or {})})
        )

        async def read() -> None:
            try:
                async for raw in ws:
                    run.messages.append(json.loads(raw))
                    run.times.append(time.monotonic())
            except websockets.ConnectionClosed:
                pass

        reader = asyncio.ensure_future(read())
        run.started_at = time.monotonic()
        for i, offset in enumerate(range(0, len(pcm), frame)):
            if reader.done():
                break
            await ws.send(pcm[offset : offset + frame])
            if realtime:
                due = run.started_at + (i + 1) * frame_ms / 1000 / speed
                await asyncio.sleep(max(0.0, due - time.monotonic()))
            else:
                await asyncio.sleep(0)
        if stop and not reader.done():
            await ws.send(json.dumps({"type": "stop"}))
        await asyncio.wait_for(reader, timeout)
        run.close_code = ws.close_code
        run.close_reason = ws.close_reason or ""
    return run


def closed_with(
    url: str, *frames: str | bytes, subprotocols: list[str] | None = None
) -> tuple[int, str]:
    """The close frame's code and reason after sending ``frames`` to a live socket
    (which says nothing until it has something to say); AssertionError if it did
    not close, or closed without a close frame."""
    with connect(
        url, open_timeout=10, max_size=None, subprotocols=subprotocols
    ) as socket:
        try:
            for frame in frames:
                socket.send(frame)
            while True:
                socket.recv(timeout=10)
        except ConnectionClosed as closed:
            assert closed.rcvd is not None, "closed without a close frame"
            return closed.rcvd.code, closed.rcvd.reason
        except TimeoutError:
            raise AssertionError(f"{url} did not close") from None
