"""POST /bots/telegram/webhook/: a small ASGI application ahead of Django's handler.

Telegram opens up to TELEGRAM_WEBHOOK_MAX_CONNECTIONS connections and sends updates
on all of them at once; its next update on a connection waits for our answer. Through
Django's HTTP handler each request costs a thread hop, the middleware and the request
machinery: about 2 ms of CPU before the view runs, so a burst of 200 updates on two
cores takes hundreds of milliseconds whatever the view does. This application does
only what the webhook needs, on the event loop: check the secret, read the body
(under a limit sized for updates), parse it (``intake.telegram_update_read``), and
wait for the process's writer thread to commit the row together with the others that
arrived meanwhile (``bots.webhook.writer``). It answers 200 only once the row is committed:
Telegram does not send an update again after a 200.

``kikipounamu/asgi.py`` routes the path here with Channels' ``URLRouter``; everything
else goes to Django. The rules (secret, what is an update, what is stored, the unique
``update_id``) are the services'; this module maps their outcomes to HTTP:

- wrong or missing ``X-Telegram-Bot-Api-Secret-Token``: 403, nothing read or stored;
- not JSON, or not an update: 400 ``{"error": {"code", "message"}}``;
- stored, stored before, or not for the bot: 200 (anything else makes Telegram
  deliver it again);
- the database write failed: 503, so that Telegram delivers it again;
- a body over ``MAX_BODY_BYTES``: 413; a method other than POST: 405.
"""

from __future__ import annotations

import json
import logging

from bots.webhook import intake
from bots.webhook import writer
from kikipounamu.asgi_limits import BodySizeLimitMiddleware
from kikipounamu.asgi_limits import Receive
from kikipounamu.asgi_limits import Scope
from kikipounamu.asgi_limits import Send
from kikipounamu.errors import ApplicationError

logger = logging.getLogger(__name__)

# Telegram's updates are a few kilobytes (a message's text is at most 4096
# characters, and the replied-to message is nested once): a megabyte is generous,
# and keeps a caller with the secret from making us read the upload limit's 100 MB.
MAX_BODY_BYTES = 1024 * 1024
_SECRET_HEADER = intake.SECRET_HEADER.lower().encode()
_JSON = (b"content-type", b"application/json")


async def _respond(send: Send, status: int, body: bytes = b"", *headers: tuple) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _error(
    send: Send, status: int, code: str, message: str, *headers: tuple
) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    await _respond(send, status, body, _JSON, *headers)


async def _read_body(receive: Receive) -> bytes | None:
    """The whole body, or ``None`` if the client went away."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _serve(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["method"] != "POST":
        await _error(
            send,
            405,
            "method_not_allowed",
            "The webhook takes POST only.",
            (b"allow", b"POST"),
        )
        return
    token = None
    for name, value in scope["headers"]:
        if name == _SECRET_HEADER:
            token = value.decode("latin-1")
            break
    if not intake.webhook_secret_valid(token=token):
        logger.warning("telegram webhook: call without the right secret token refused")
        await _error(send, 403, "forbidden", "Wrong or missing secret token.")
        return
    body = await _read_body(receive)
    if body is None:
        return
    try:
        row = intake.telegram_update_read(body=body)
    except ApplicationError as exc:
        await _error(send, exc.status_code, exc.code, exc.message)
        return
    if row is not None:
        try:
            await writer.store(row)
        except writer.NotStored:
            # Logged by the writer, once per failed transaction.
            await _error(
                send,
                503,
                "unavailable",
                "The update could not be stored; send it again.",
                (b"retry-after", b"1"),
            )
            return
    await _respond(send, 200)


telegram_webhook = BodySizeLimitMiddleware(
    _serve,
    max_body_bytes=MAX_BODY_BYTES,
    describe_limit=f"{MAX_BODY_BYTES / 2**20:.0f} MiB",
)
