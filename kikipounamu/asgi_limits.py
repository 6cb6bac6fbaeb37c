"""ASGI middleware that refuses request bodies over a size limit.

Django's ASGI handler reads the whole body into a spooled file before any view runs,
so a limit checked in a view comes after the damage (disk, time). This answers 413
from the Content-Length header before reading anything, and stops a body sent
without one (chunked) as soon as it passes the limit.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable
from collections.abc import Callable
from typing import Any

Scope = dict[str, Any]
Message = Any
Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class _BodyTooLarge(Exception):
    pass


def _error(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


# An error's JSON body from its code and message.
ErrorBody = Callable[[str, str], bytes]


class BodySizeLimitMiddleware:
    """``error_body`` renders the refusals for an app whose errors have another
    shape than the API's (the OpenAI-compatible door)."""

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        describe_limit: str,
        error_body: ErrorBody = _error,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.describe_limit = describe_limit
        self.error_body = error_body
        # Made once: this runs ahead of every request.
        self.too_large = error_body(
            "too_large",
            f"The request is larger than the upload limit of {describe_limit}.",
        )

    async def _respond(self, send: Send, status: int, body: bytes) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = self.too_large
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    await self._respond(
                        send,
                        400,
                        self.error_body(
                            "bad_request", "Content-Length is not a number."
                        ),
                    )
                    return
                if length > self.max_body_bytes:
                    await self._respond(send, 413, too_large)
                    return

        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await self._respond(send, 413, too_large)
