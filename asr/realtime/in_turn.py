"""A consumer's messages, handled one at a time, without turns of the loop each.

Channels' ``await_many_dispatch`` (channels 4.3) waits on a fresh task per source
after every message, so each audio frame of a live stream costs three or four turns
of the event loop before its handler runs. With 500 streams in one web process a
turn takes 50-80 ms (bench/live.py --what-if looplag), so a stream sending ten frames
a second was read more slowly than it sent: its audio backed up in the socket, its
end points came seconds late, and the keepalive pongs queued behind that audio came
too late for uvicorn's ping timeout (close 1011, "keepalive ping timeout").

``dispatch_in_turn`` gives each source a reader that takes what is already queued
without yielding (``asyncio.Queue.get`` returns at once when a message waits, as
uvicorn's receive does) and hands it to ``dispatch`` under one lock: one handler at a
time, as Channels promises and the live consumer relies on, each source's messages
in order. ``asyncio.Lock`` is fair: a reader waiting for it gets it before the other
takes it again, so a worker's push is not held behind a stream of frames.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from collections.abc import Callable
from typing import Any

Source = Callable[[], Awaitable[dict[str, Any]]]


async def dispatch_in_turn(
    sources: list[Source], dispatch: Callable[[dict[str, Any]], Awaitable[None]]
) -> None:
    """Dispatch every source's messages, one at a time, until a dispatch raises
    (Channels' StopConsumer included, re-raised here) or this is cancelled."""
    lock = asyncio.Lock()

    async def read(source: Source) -> None:
        while True:
            message = await source()
            async with lock:
                await dispatch(message)

    readers = [asyncio.ensure_future(read(source)) for source in sources]
    try:
        done, _ = await asyncio.wait(readers, return_when=asyncio.FIRST_COMPLETED)
        for reader in done:
            reader.result()
    finally:
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
