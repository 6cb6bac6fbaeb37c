"""The Bot API client: python-telegram-bot's ``Bot``, called from synchronous code.

python-telegram-bot is asynchronous; Celery tasks and management commands are not. Each
thread keeps one event loop (``asyncio.Runner``) and one ``Bot`` on it, so that the
HTTP connections are reused between calls instead of being built (TLS context and
all) for every message. Per thread, because the bots worker runs its tasks on a pool
of threads (Telegram I/O is waiting, not computing) and a loop serves one thread: a
call that hangs holds its own thread and connection, no other chat's.

Every call has a deadline for the whole of it, by method (``TELEGRAM_*_TIMEOUT``):
past it the call is abandoned and raises ``TimedOut``. Errors stay
python-telegram-bot's; :func:`classify` says what each one means for a retry.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import threading
from collections.abc import Callable
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from typing import TypeVar

import httpx
from django.conf import settings
from telegram import Bot
from telegram import InputFile
from telegram import ReplyParameters
from telegram import User
from telegram import WebhookInfo
from telegram.error import BadRequest
from telegram.error import ChatMigrated
from telegram.error import Forbidden
from telegram.error import InvalidToken
from telegram.error import RetryAfter
from telegram.error import TelegramError
from telegram.error import TimedOut
from telegram.request import HTTPXRequest

T = TypeVar("T")


def seconds(value: Any) -> float | None:
    """A python-telegram-bot time period (``timedelta``, or ``int`` without
    PTB_TIMEDELTA, see bots.apps) in seconds."""
    if value is None:
        return None
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    return float(value)


# Bot API descriptions (lower-cased) that we act on.
NOT_MODIFIED = "message is not modified"
EDIT_TARGET_GONE = (
    "message to edit not found",
    "message can't be edited",
    "message_id_invalid",
)
FILE_TOO_BIG = "file is too big"


class BotNotConfigured(Exception):
    """TELEGRAM_BOT_TOKEN is empty."""


@dataclass(frozen=True)
class Failure:
    """What a failed call means for the part or job it was for."""

    kind: str  # rate_limited | not_modified | edit_target_gone | permanent | transient
    message: str
    retry_after: float | None = None
    # True when Telegram may have carried out the call although we got no answer.
    ambiguous: bool = False


def classify(exc: Exception) -> Failure:
    """Sort a Bot API failure: wait and retry, count as done, retry later, or give up."""
    text = str(exc)
    lowered = text.lower()
    if isinstance(exc, RetryAfter):
        return Failure(
            "rate_limited", text, retry_after=max(seconds(exc.retry_after) or 0, 0.0)
        )
    if isinstance(exc, BadRequest):
        if NOT_MODIFIED in lowered:
            return Failure("not_modified", text)
        if any(needle in lowered for needle in EDIT_TARGET_GONE):
            return Failure("edit_target_gone", text)
        return Failure("permanent", text)
    if isinstance(exc, Forbidden | ChatMigrated):
        # Blocked by the user, kicked from the group, or a group that became a
        # supergroup: no retry will get this message through.
        return Failure("permanent", text)
    if isinstance(exc, TimedOut):
        # A request that never reached Telegram (no connection) is safe to repeat;
        # one whose answer we did not get may have been carried out.
        cause = exc.__cause__
        sent = not isinstance(cause, httpx.ConnectTimeout | httpx.PoolTimeout)
        return Failure("transient", text or "timed out", ambiguous=sent)
    if isinstance(exc, InvalidToken):
        # An operator's mistake: keep the replies until the token is fixed.
        return Failure("transient", f"the bot token was refused: {text}")
    if isinstance(exc, TelegramError):
        # NetworkError: 5xx answers and connection failures.
        return Failure("transient", text)
    return Failure("transient", repr(exc))


@dataclass
class _State:
    pid: int
    config: tuple[Any, ...]
    runner: asyncio.Runner
    bot: Bot


_local = threading.local()


def _config() -> tuple[Any, ...]:
    return (
        settings.TELEGRAM_BOT_TOKEN,
        settings.TELEGRAM_API_BASE_URL,
        settings.TELEGRAM_CONNECT_TIMEOUT,
        _longest_call(),
    )


def _longest_call() -> float:
    return max(
        settings.TELEGRAM_MESSAGE_TIMEOUT,
        settings.TELEGRAM_DOCUMENT_TIMEOUT,
        settings.TELEGRAM_DOWNLOAD_TIMEOUT,
    )


def _build_bot(config: tuple[Any, ...]) -> Bot:
    token, base, connect, longest = config
    if not token:
        raise BotNotConfigured(
            "TELEGRAM_BOT_TOKEN is not set: the bot cannot call the Bot API."
        )
    # httpx's time-outs are per read or write, not per call: the deadline in call()
    # is what bounds a call, so these only need to let the longest one through.
    # One thread makes one call at a time: two connections are plenty.
    request = HTTPXRequest(
        connection_pool_size=2,
        connect_timeout=connect,
        read_timeout=longest,
        write_timeout=longest,
        media_write_timeout=longest,
        pool_timeout=connect,
    )
    return Bot(
        token,
        base_url=f"{base}/bot",
        base_file_url=f"{base}/file/bot",
        request=request,
        get_updates_request=HTTPXRequest(connection_pool_size=1),
    )


def _current() -> _State:
    """This thread's loop and bot, rebuilt after a fork or a change of settings."""
    config = _config()
    state: _State | None = getattr(_local, "state", None)
    if state is not None and (state.pid != os.getpid() or state.config != config):
        if state.pid == os.getpid():
            state.runner.close()
        state = None
    if state is None:
        bot = _build_bot(config)
        state = _State(os.getpid(), config, asyncio.Runner(), bot)
        _local.state = state
    return state


async def _within(seconds: float, call: Coroutine[Any, Any, T]) -> T:
    try:
        async with asyncio.timeout(seconds):
            return await call
    except TimeoutError as exc:
        # Like a read time-out: the request may have reached Telegram (classify
        # calls it ambiguous).
        raise TimedOut(f"Timed out: no answer within {seconds:g} s") from exc


def call(fn: Callable[[Bot], Coroutine[Any, Any, T]], *, timeout: float) -> T:
    """Run one Bot API coroutine to completion on this thread's loop, abandoning it
    after ``timeout`` seconds."""
    state = _current()
    return state.runner.run(_within(timeout, fn(state.bot)))


def _reply_to(message_id: int | None) -> ReplyParameters | None:
    if message_id is None:
        return None
    # The user may have deleted their message meanwhile: answer anyway.
    return ReplyParameters(message_id=message_id, allow_sending_without_reply=True)


def send_message(*, chat_id: int, text: str, reply_to: int | None = None) -> int:
    """Send a plain-text message; its message id."""
    message = call(
        lambda bot: bot.send_message(
            chat_id=chat_id,
            text=text,
            reply_parameters=_reply_to(reply_to),
        ),
        timeout=settings.TELEGRAM_MESSAGE_TIMEOUT,
    )
    return message.message_id


def edit_message_text(*, chat_id: int, message_id: int, text: str) -> None:
    call(
        lambda bot: bot.edit_message_text(
            chat_id=chat_id, message_id=message_id, text=text
        ),
        timeout=settings.TELEGRAM_MESSAGE_TIMEOUT,
    )


def send_document(
    *,
    chat_id: int,
    content: bytes,
    filename: str,
    caption: str = "",
    reply_to: int | None = None,
) -> int:
    message = call(
        lambda bot: bot.send_document(
            chat_id=chat_id,
            document=InputFile(content, filename=filename),
            caption=caption or None,
            reply_parameters=_reply_to(reply_to),
        ),
        timeout=settings.TELEGRAM_DOCUMENT_TIMEOUT,
    )
    return message.message_id


def download(*, file_id: str, destination: Path, max_bytes: int) -> int:
    """getFile, then fetch the file to ``destination``; the number of bytes.

    Raises ``BadRequest`` ("file is too big") when the file is over ``max_bytes``.
    getFile has the time-out of a message, the download its own.
    """

    async def _download(bot: Bot) -> int:
        remote = await _within(settings.TELEGRAM_MESSAGE_TIMEOUT, bot.get_file(file_id))
        if remote.file_size and remote.file_size > max_bytes:
            raise BadRequest(f"Bad Request: {FILE_TOO_BIG}")
        await remote.download_to_drive(destination)
        return destination.stat().st_size

    return call(
        _download,
        timeout=settings.TELEGRAM_MESSAGE_TIMEOUT + settings.TELEGRAM_DOWNLOAD_TIMEOUT,
    )


def get_me() -> User:
    return call(lambda bot: bot.get_me(), timeout=settings.TELEGRAM_MESSAGE_TIMEOUT)


def set_webhook(
    *,
    url: str,
    secret_token: str,
    allowed_updates: list[str],
    max_connections: int,
    drop_pending_updates: bool,
) -> bool:
    return call(
        lambda bot: bot.set_webhook(
            url=url,
            secret_token=secret_token,
            allowed_updates=allowed_updates,
            max_connections=max_connections,
            drop_pending_updates=drop_pending_updates,
        ),
        timeout=settings.TELEGRAM_MESSAGE_TIMEOUT,
    )


def delete_webhook(*, drop_pending_updates: bool) -> bool:
    return call(
        lambda bot: bot.delete_webhook(drop_pending_updates=drop_pending_updates),
        timeout=settings.TELEGRAM_MESSAGE_TIMEOUT,
    )


def get_webhook_info() -> WebhookInfo:
    return call(
        lambda bot: bot.get_webhook_info(), timeout=settings.TELEGRAM_MESSAGE_TIMEOUT
    )
