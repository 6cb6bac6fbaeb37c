"""The live consumer's message loop (asr.realtime.in_turn): what is queued is handled
without a turn of the event loop per message, one handler at a time, fairly; and the
consumer's __call__ sets up what Channels' own does (if a Channels release changes
that, this says so)."""

from __future__ import annotations

import asyncio
from typing import Any

import channels.consumer
import channels.layers
import pytest
from channels.exceptions import StopConsumer
from channels.layers import InMemoryChannelLayer
from channels.utils import await_many_dispatch

from asr.realtime import live
from asr.realtime.in_turn import dispatch_in_turn


async def _turns_to_handle(loop_kind: Any, count: int) -> int:
    """Turns of the event loop a dispatch loop takes for ``count`` queued messages."""
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait({"type": "frame", "i": i})
    idle: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
    handled: list[int] = []
    turns = 0

    async def dispatch(message: dict[str, Any]) -> None:
        handled.append(message["i"])
        if len(handled) == count:
            raise StopConsumer

    async def ticker() -> None:
        nonlocal turns
        while True:
            await asyncio.sleep(0)
            turns += 1

    tick = asyncio.ensure_future(ticker())
    with pytest.raises(StopConsumer):
        await loop_kind([queue.get, lambda: idle], dispatch)
    tick.cancel()
    assert handled == list(range(count))
    return turns


def test_queued_messages_take_no_turn_of_the_loop_each() -> None:
    async def run() -> tuple[int, int]:
        return (
            await _turns_to_handle(dispatch_in_turn, 200),
            await _turns_to_handle(await_many_dispatch, 200),
        )

    ours, channels_ = asyncio.run(run())
    # What the change is measured against: Channels' loop turns several times per
    # message; ours takes what waits in one go.
    assert channels_ >= 2 * 200
    assert ours <= 5


def test_one_handler_at_a_time_each_source_in_order_and_fair() -> None:
    async def run() -> list[str]:
        frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        pushes: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        log: list[str] = []
        inside = 0

        async def dispatch(message: dict[str, Any]) -> None:
            nonlocal inside
            inside += 1
            assert inside == 1, "two handlers at once"
            log.append(message["name"])
            if message["name"] == "f0":
                # A push arrives while a frame is being handled, with more frames
                # already queued behind it.
                pushes.put_nowait({"name": "p0"})
                for i in (1, 2, 3):
                    frames.put_nowait({"name": f"f{i}"})
            await asyncio.sleep(0)  # handlers await (Redis, sends)
            inside -= 1
            if message["name"] == "f3":
                raise StopConsumer

        frames.put_nowait({"name": "f0"})
        with pytest.raises(StopConsumer):
            await dispatch_in_turn([frames.get, pushes.get], dispatch)
        return log

    log = asyncio.run(run())
    frames = [name for name in log if name.startswith("f")]
    assert frames == ["f0", "f1", "f2", "f3"]
    # The push waited for one handler, not for every frame queued after it.
    assert log.index("p0") <= 2


def test_an_error_ends_the_loop_and_cancels_the_other_reader() -> None:
    async def run() -> bool:
        never: asyncio.Future[dict[str, Any]] = (
            asyncio.get_running_loop().create_future()
        )
        waiting = asyncio.Event()

        async def other() -> dict[str, Any]:
            waiting.set()
            return await never

        async def one() -> dict[str, Any]:
            await waiting.wait()
            return {"type": "boom"}

        async def dispatch(message: dict[str, Any]) -> None:
            raise ValueError(message["type"])

        with pytest.raises(ValueError, match="boom"):
            await dispatch_in_turn([one, other], dispatch)
        await asyncio.sleep(0)
        return never.cancelled()

    assert asyncio.run(run())


def test_call_sets_up_what_channels_call_does(monkeypatch) -> None:
    layer = InMemoryChannelLayer()
    monkeypatch.setattr(channels.consumer, "get_channel_layer", lambda alias: layer)
    monkeypatch.setattr(channels.layers, "get_channel_layer", lambda alias: layer)
    monkeypatch.setattr(live, "get_channel_layer", lambda alias: layer)

    class Plain(channels.consumer.AsyncConsumer):
        async def websocket_disconnect(self, message: dict[str, Any]) -> None:
            raise StopConsumer

    class Live(live.NativeLiveConsumer):
        async def websocket_disconnect(self, message: dict[str, Any]) -> None:
            raise StopConsumer

    async def set_up(consumer: Any) -> dict[str, Any]:
        async def receive() -> dict[str, Any]:
            return {"type": "websocket.disconnect", "code": 1000}

        async def send(message: dict[str, Any]) -> None:
            pass

        before = set(vars(consumer))
        await consumer({"type": "websocket"}, receive, send)
        return {k: v for k, v in vars(consumer).items() if k not in before}

    theirs = asyncio.run(set_up(Plain()))
    ours = asyncio.run(set_up(Live()))
    assert set(ours) == set(theirs)
    assert ours["channel_layer"] is layer
    assert "inmemory" in ours["channel_name"]
    assert ours["channel_receive"].args == (ours["channel_name"],)
