"""A webhook receiver for the tests: a real HTTP server on 127.0.0.1 that verifies
every signature with the `standardwebhooks` package (as a user's receiver would) and
answers what a test scripts: 200s, 500s, 429 with Retry-After, 410, redirects, or a
hang until released."""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass
from dataclasses import field
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    # The payload if the signature verified with the path's secret, else None.
    payload: dict[str, Any] | None
    answered: int | None = None

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]


@dataclass
class Script:
    """What a path answers: ``replies`` in turn (the last one again and again).
    A reply is a status, ``("retry_after", status, seconds)``, ``("redirect", to)``,
    ``("flaky", p)`` (500 with probability p, else 200) or ``"hang"``."""

    replies: list[Any] = field(default_factory=lambda: [200])
    secret: str | None = None
    calls: int = 0


class Receiver:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self.scripts: dict[str, Script] = {}
        self.lock = threading.Lock()
        self.released = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def handle(self) -> None:
                try:
                    super().handle()
                except ConnectionError:
                    # A sender killed with a keep-alive connection open.
                    self.close_connection = True

            def do_POST(self) -> None:
                receiver._handle(self)

            do_GET = do_POST

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> Receiver:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def script(self, path: str, *replies: Any, secret: str | None = None) -> str:
        with self.lock:
            self.scripts[path] = Script(list(replies) or [200], secret)
        return self.url(path)

    def reset(self) -> None:
        with self.lock:
            self.received.clear()
            self.scripts.clear()
        self.released.set()
        self.released = threading.Event()

    def calls(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == path]

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("content-length") or 0)
        try:
            body = handler.rfile.read(length)
        except OSError:
            body = b""
        if len(body) < length:
            # The sender went away mid-request (killed): like any HTTP server, no
            # request reached the application.
            handler.close_connection = True
            return
        headers = {k.lower(): v for k, v in handler.headers.items()}
        with self.lock:
            script = self.scripts.get(handler.path) or Script()
            reply = script.replies[min(script.calls, len(script.replies) - 1)]
            script.calls += 1
            payload = None
            if script.secret is not None:
                try:
                    payload = Webhook(script.secret).verify(body, headers)
                except (WebhookVerificationError, ValueError):
                    payload = None
            record = Received(handler.path, headers, body, time.time(), payload)
            self.received.append(record)
            released = self.released
        if reply == "hang":
            released.wait(120)
            handler.close_connection = True
            return
        extra: dict[str, str] = {}
        status = reply
        if isinstance(reply, tuple) and reply[0] == "retry_after":
            status, extra = reply[1], {"Retry-After": str(reply[2])}
        elif isinstance(reply, tuple) and reply[0] == "redirect":
            status, extra = 302, {"Location": reply[1]}
        elif isinstance(reply, tuple) and reply[0] == "flaky":
            status = 500 if random.random() < reply[1] else 200
        record.answered = status
        answer = json.dumps({"status": status}).encode()
        handler.send_response(status)
        for name, value in extra.items():
            handler.send_header(name, value)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(answer)))
        try:
            handler.end_headers()
            handler.wfile.write(answer)
        except OSError:
            # The sender went away before its answer (killed mid-call).
            handler.close_connection = True
