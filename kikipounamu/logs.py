"""Log context: job id, Celery task id and Telegram update id on every log line.

Values live in contextvars, so they follow a request, a task or an asyncio task
without being passed around; ``ContextFilter`` (on the console handler, see
settings.LOGGING) copies them onto each record, where the JSON formatter shows them.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import re
from collections.abc import Iterator
from typing import Any

FIELDS = ("job_id", "task_id", "telegram_update_id")

_context: dict[str, contextvars.ContextVar[Any]] = {
    name: contextvars.ContextVar(f"kiki_log_{name}", default=None) for name in FIELDS
}


class ContextFilter(logging.Filter):
    """Adds the bound context fields (only those set) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in _context.items():
            value = var.get()
            if value is not None and not hasattr(record, name):
                setattr(record, name, value)
        return True


def bind(**fields: Any) -> dict[str, contextvars.Token[Any]]:
    """Set context fields until ``unbind`` with the returned tokens."""
    tokens = {}
    for name, value in fields.items():
        if name not in _context:
            raise ValueError(f"unknown log context field {name!r}")
        tokens[name] = _context[name].set(None if value is None else str(value))
    return tokens


def unbind(tokens: dict[str, contextvars.Token[Any]]) -> None:
    for name, token in tokens.items():
        _context[name].reset(token)


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """``with log_context(telegram_update_id=...):`` every log line inside carries it."""
    tokens = bind(**fields)
    try:
        yield
    finally:
        unbind(tokens)


def current() -> dict[str, Any]:
    return {name: var.get() for name, var in _context.items() if var.get() is not None}


# A job's id in a request's path: /api/v1/transcriptions/<uuid>/...
_JOB_IN_PATH = re.compile(r"/transcriptions/([0-9a-fA-F-]{36})(?:/|$)")


class LogContextMiddleware:
    """Binds the job id in a request's path (``/transcriptions/<uuid>/...``) for its
    log lines.

    No context tokens here: under ASGI, Django runs the middleware chain and the view
    in sync_to_async copies of the request's context, so a token taken in one cannot
    be reset in another. The value is cleared instead, for WSGI threads that serve
    one request after another.

    Sync only, and no process_view, on purpose: under ASGI, Django runs a chain of
    sync middleware in one thread, but calls each hook of an async-capable
    MiddlewareMixin (and every process_view) through sync_to_async, a thread hop
    each, ~0.4 ms of CPU apiece; the innermost middleware being sync keeps the whole
    chain sync (measured: 18 hops a request with an all-async chain, 4 like this).
    """

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        found = _JOB_IN_PATH.search(request.path_info)
        _context["job_id"].set(found.group(1) if found else None)
        try:
            return self.get_response(request)
        finally:
            _context["job_id"].set(None)
