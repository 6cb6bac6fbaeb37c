"""ASGI middlewares that protect the web process: body size and concurrency."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kikipounamu.asgi_limits import ConcurrencyLimitMiddleware


@pytest.mark.asyncio
async def test_concurrency_limit_makes_extra_requests_wait_not_fail() -> None:
    inside = 0
    most = 0

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal inside, most
        inside += 1
        most = max(most, inside)
        await asyncio.sleep(0.01)
        inside -= 1
        await send({"type": "http.response.start", "status": 200, "headers": []})

    limited = ConcurrencyLimitMiddleware(app, max_concurrent=3)
    sent: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message["status"])

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    await asyncio.gather(*(limited({"type": "http"}, receive, send) for _ in range(20)))

    assert most == 3
    assert sent == [200] * 20


@pytest.mark.asyncio
async def test_websockets_are_not_limited() -> None:
    seen = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])
        await asyncio.sleep(0.01)

    limited = ConcurrencyLimitMiddleware(app, max_concurrent=1)
    await asyncio.wait_for(
        asyncio.gather(*(limited({"type": "websocket"}, None, None) for _ in range(5))),
        timeout=0.04,
    )
    assert seen == ["websocket"] * 5
