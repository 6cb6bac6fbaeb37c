"""Cross-site WebSocket hijacking protection that still lets API clients in.

Browsers always send Origin on a WebSocket handshake and also send the session cookie,
so a browser's Origin must be one of ALLOWED_HOSTS. A client with no Origin header is
not a browser: it carries no ambient cookie and must present a signed token instead,
so it is let through (channels' AllowedHostsOriginValidator would refuse it).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import validate_host


class BrowserOriginValidator:
    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: Any, receive: Any, send: Any) -> Any:
        origin = None
        for name, value in scope.get("headers", []):
            if name == b"origin":
                origin = value.decode("latin1")
                break
        if origin is not None:
            host = urlparse(origin).hostname or ""
            allowed = settings.ALLOWED_HOSTS or ["localhost", "127.0.0.1", "[::1]"]
            if origin == "null" or not validate_host(host, allowed):
                denier = WebsocketDenier()
                return await denier(scope, receive, send)
        return await self.application(scope, receive, send)
