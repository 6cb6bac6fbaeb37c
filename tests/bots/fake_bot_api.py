"""A fake Telegram Bot API: a real HTTP server on a free local port.

The bot reaches it through TELEGRAM_API_BASE_URL, from the test process or from the
web and worker processes that tests start. It keeps what a chat would show (messages
by id, their text after edits, documents) and records every call, so tests can check
that each reply arrived exactly once and in order.

Faults are injected per method (and optionally per chat), for the next n calls:

* ``status``: answer an error without doing anything, e.g. 429 with ``retry_after``
  or 500, as Telegram does when it refuses a call;
* ``hang``: do nothing, wait, then drop the connection: the client times out first;
* ``slow``: carry the call out at once but answer only after a while, so that a
  client with a shorter read time-out never learns that it succeeded;
* ``not_modified``: answer "message is not modified".

Editing a message to the text it already has answers "message is not modified", as
Telegram does.
"""

from __future__ import annotations

import email.parser
import email.policy
import itertools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl
from urllib.parse import unquote
from urllib.parse import urlparse

MAX_TEXT = 4096
MAX_DOWNLOAD = 20_000_000
NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply "
    "markup are exactly the same as a current content and reply markup of the message"
)


@dataclass
class Fault:
    kind: str  # status | hang | slow | not_modified
    status: int = 500
    retry_after: int | None = None
    seconds: float = 0.0
    chat_id: int | None = None
    times: int = 1


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    at: float
    status: int = 0
    fault: str | None = None
    result: Any = None
    files: dict[str, tuple[str, bytes]] = field(default_factory=dict)

    @property
    def chat_id(self) -> int | None:
        value = self.params.get("chat_id")
        return int(value) if value is not None else None

    @property
    def ok(self) -> bool:
        return self.status == 200


@dataclass
class Sent:
    """A message the bot put in a chat, as the chat shows it now."""

    message_id: int
    chat_id: int
    kind: str  # text | document
    text: str = ""
    reply_to: int | None = None
    edits: int = 0
    document_name: str = ""
    document: bytes = b""
    caption: str = ""


class _ApiError(Exception):
    def __init__(self, status: int, description: str, **parameters: Any) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.parameters = parameters


class FakeBotApi:
    def __init__(
        self, token: str = "4242:fake-token", username: str = "kiki_test_bot"
    ) -> None:
        self.token = token
        self.username = username
        self.bot_id = int(token.split(":")[0])
        self._lock = threading.RLock()
        self._message_ids = itertools.count(1000)
        self._file_ids = itertools.count(1)
        self.calls: list[Call] = []
        self.chats: dict[int, dict[int, Sent]] = {}
        self.files: dict[str, tuple[str, bytes, int]] = {}
        self.faults: dict[str, list[Fault]] = {}
        self.webhook: dict[str, Any] = {}
        self._server: ThreadingHTTPServer | None = None

    # Life cycle --------------------------------------------------------------------

    def start(self) -> FakeBotApi:
        fake = self

        class Handler(_Handler):
            api = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(
            target=self._server.serve_forever, name="fake-bot-api", daemon=True
        ).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # Set-up by tests ---------------------------------------------------------------

    def add_file(
        self, data: bytes, *, suffix: str = ".oga", size: int | None = None
    ) -> tuple[str, str]:
        """Host a file for getFile; ``size`` overrides the size getFile reports."""
        with self._lock:
            n = next(self._file_ids)
        file_id = f"file-{n}-{time.monotonic_ns()}"
        unique = f"u{n}"
        path = f"voice/file_{n}{suffix}"
        with self._lock:
            self.files[file_id] = (path, data, size if size is not None else len(data))
        return file_id, unique

    def inject(
        self,
        method: str,
        kind: str,
        *,
        status: int = 500,
        retry_after: int | None = None,
        seconds: float = 0.0,
        chat_id: int | None = None,
        times: int = 1,
    ) -> None:
        with self._lock:
            self.faults.setdefault(method, []).append(
                Fault(kind, status, retry_after, seconds, chat_id, times)
            )

    def reset_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    # Reading by tests --------------------------------------------------------------

    def calls_for(self, chat_id: int, *methods: str) -> list[Call]:
        with self._lock:
            return [
                c
                for c in self.calls
                if c.chat_id == chat_id and (not methods or c.method in methods)
            ]

    def messages(self, chat_id: int) -> list[Sent]:
        """The bot's messages in this chat, in the order they were sent."""
        with self._lock:
            return sorted(
                self.chats.get(chat_id, {}).values(), key=lambda m: m.message_id
            )

    def wait_for(
        self, predicate: Callable[[], Any], timeout: float = 60, what: str = ""
    ) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.05)
        raise TimeoutError(f"fake Bot API: {what or predicate} not seen in {timeout}s")

    # Serving -----------------------------------------------------------------------

    def _take_fault(self, method: str, chat_id: int | None) -> Fault | None:
        with self._lock:
            for fault in self.faults.get(method, []):
                if fault.times > 0 and fault.chat_id in (None, chat_id):
                    fault.times -= 1
                    return fault
        return None

    def handle(self, method: str, params: dict[str, Any], files: dict) -> Any:
        handler = getattr(self, f"_api_{method}", None)
        if handler is None:
            raise _ApiError(404, "Not Found: method not found")
        with self._lock:
            return handler(params, files)

    def _chat_of(self, params: dict[str, Any]) -> int:
        try:
            return int(params["chat_id"])
        except (KeyError, ValueError):
            raise _ApiError(400, "Bad Request: chat_id is empty") from None

    def _bot_user(self) -> dict[str, Any]:
        return {
            "id": self.bot_id,
            "is_bot": True,
            "first_name": "Kiki",
            "username": self.username,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }

    def _message_json(self, sent: Sent) -> dict[str, Any]:
        body: dict[str, Any] = {
            "message_id": sent.message_id,
            "date": int(time.time()),
            "chat": {
                "id": sent.chat_id,
                "type": "private" if sent.chat_id > 0 else "supergroup",
            },
            "from": self._bot_user(),
        }
        if sent.kind == "text":
            body["text"] = sent.text
        else:
            body["document"] = {
                "file_id": f"doc-{sent.message_id}",
                "file_unique_id": f"d{sent.message_id}",
                "file_name": sent.document_name,
                "file_size": len(sent.document),
            }
            if sent.caption:
                body["caption"] = sent.caption
        if sent.edits:
            body["edit_date"] = int(time.time())
        return body

    def _check_text(self, text: str) -> None:
        if not text.strip():
            raise _ApiError(400, "Bad Request: message text is empty")
        if len(text.encode("utf-16-le")) // 2 > MAX_TEXT:
            raise _ApiError(400, "Bad Request: message is too long")

    def _reply_to(self, params: dict[str, Any]) -> int | None:
        reply = params.get("reply_parameters")
        if isinstance(reply, dict):
            return int(reply["message_id"])
        return None

    def _api_getMe(self, params: dict, files: dict) -> Any:
        return self._bot_user()

    def _api_sendMessage(self, params: dict, files: dict) -> Any:
        chat_id = self._chat_of(params)
        text = str(params.get("text", ""))
        self._check_text(text)
        sent = Sent(
            next(self._message_ids),
            chat_id,
            "text",
            text=text,
            reply_to=self._reply_to(params),
        )
        self.chats.setdefault(chat_id, {})[sent.message_id] = sent
        return self._message_json(sent)

    def _api_editMessageText(self, params: dict, files: dict) -> Any:
        chat_id = self._chat_of(params)
        text = str(params.get("text", ""))
        sent = self.chats.get(chat_id, {}).get(int(params.get("message_id", 0)))
        if sent is None or sent.kind != "text":
            raise _ApiError(400, "Bad Request: message to edit not found")
        self._check_text(text)
        if sent.text == text:
            raise _ApiError(400, NOT_MODIFIED)
        sent.text = text
        sent.edits += 1
        return self._message_json(sent)

    def _api_sendDocument(self, params: dict, files: dict) -> Any:
        chat_id = self._chat_of(params)
        if "document" not in files:
            raise _ApiError(400, "Bad Request: there is no document in the request")
        name, data = files["document"]
        sent = Sent(
            next(self._message_ids),
            chat_id,
            "document",
            reply_to=self._reply_to(params),
            document_name=name,
            document=data,
            caption=str(params.get("caption", "")),
        )
        self.chats.setdefault(chat_id, {})[sent.message_id] = sent
        return self._message_json(sent)

    def _api_getFile(self, params: dict, files: dict) -> Any:
        file_id = str(params.get("file_id", ""))
        if file_id not in self.files:
            raise _ApiError(400, "Bad Request: invalid file_id")
        path, _, size = self.files[file_id]
        if size > MAX_DOWNLOAD:
            raise _ApiError(400, "Bad Request: file is too big")
        return {
            "file_id": file_id,
            "file_unique_id": f"u-{file_id}",
            "file_size": size,
            "file_path": path,
        }

    def _api_setWebhook(self, params: dict, files: dict) -> Any:
        self.webhook = dict(params)
        return True

    def _api_deleteWebhook(self, params: dict, files: dict) -> Any:
        self.webhook = {}
        return True

    def _api_getWebhookInfo(self, params: dict, files: dict) -> Any:
        info: dict[str, Any] = {
            "url": self.webhook.get("url", ""),
            "has_custom_certificate": False,
            "pending_update_count": 0,
        }
        if self.webhook:
            info["max_connections"] = int(self.webhook.get("max_connections", 40))
            info["allowed_updates"] = self.webhook.get("allowed_updates", [])
        return info

    def file_bytes(self, path: str) -> bytes | None:
        with self._lock:
            for file_path, data, _ in self.files.values():
                if file_path == path:
                    return data
        return None


def _parse_value(value: str) -> Any:
    # python-telegram-bot sends objects and lists (reply_parameters,
    # allowed_updates) as JSON inside form fields.
    if value[:1] in ("{", "["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _parse_body(content_type: str, body: bytes) -> tuple[dict, dict]:
    params: dict[str, Any] = {}
    files: dict[str, tuple[str, bytes]] = {}
    if content_type.startswith("application/json"):
        params = json.loads(body or b"{}")
    elif content_type.startswith("multipart/form-data"):
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode() + body
        )
        for part in message.iter_parts():  # type: ignore[attr-defined]
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True) or b""
            filename = part.get_filename()
            if filename is not None:
                files[name] = (filename, payload)
            else:
                params[name] = _parse_value(payload.decode())
    else:
        params = {key: _parse_value(value) for key, value in parse_qsl(body.decode())}
    return params, files


class _Handler(BaseHTTPRequestHandler):
    api: FakeBotApi
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _json(self, status: int, body: dict[str, Any]) -> None:
        self._answer(status, json.dumps(body).encode(), "application/json")

    def do_GET(self) -> None:
        api = self.api
        prefix = f"/file/bot{api.token}/"
        path = unquote(urlparse(self.path).path)
        data = api.file_bytes(path[len(prefix) :]) if path.startswith(prefix) else None
        if data is None:
            self._json(
                404, {"ok": False, "error_code": 404, "description": "Not Found"}
            )
            return
        self._answer(200, data, "application/octet-stream")

    def do_POST(self) -> None:
        api = self.api
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        path = unquote(urlparse(self.path).path)
        prefix = f"/bot{api.token}/"
        if not path.startswith(prefix):
            self._json(
                401, {"ok": False, "error_code": 401, "description": "Unauthorized"}
            )
            return
        method = path[len(prefix) :]
        params, files = _parse_body(self.headers.get("Content-Type", ""), body)
        call = Call(method, params, time.monotonic(), files=files)
        with api._lock:
            api.calls.append(call)
        fault = api._take_fault(method, call.chat_id)
        call.fault = fault.kind if fault else None

        if fault and fault.kind == "hang":
            time.sleep(fault.seconds)
            self.close_connection = True
            call.status = -1
            return
        if fault and fault.kind == "status":
            parameters = (
                {"retry_after": fault.retry_after} if fault.retry_after else None
            )
            description = {
                429: f"Too Many Requests: retry after {fault.retry_after}",
                500: "Internal Server Error",
                502: "Bad Gateway",
            }.get(fault.status, "Error")
            call.status = fault.status
            self._json(
                fault.status,
                {
                    "ok": False,
                    "error_code": fault.status,
                    "description": description,
                    **({"parameters": parameters} if parameters else {}),
                },
            )
            return
        if fault and fault.kind == "not_modified":
            call.status = 400
            self._json(
                400, {"ok": False, "error_code": 400, "description": NOT_MODIFIED}
            )
            return
        try:
            result = api.handle(method, params, files)
        except _ApiError as exc:
            call.status = exc.status
            call.result = exc.description
            body_json: dict[str, Any] = {
                "ok": False,
                "error_code": exc.status,
                "description": exc.description,
            }
            if exc.parameters:
                body_json["parameters"] = exc.parameters
            self._json(exc.status, body_json)
            return
        call.status = 200
        call.result = result
        if fault and fault.kind == "slow":
            # Done already; the answer comes too late for the client to hear it.
            time.sleep(fault.seconds)
        self._json(200, {"ok": True, "result": result})
