"""JSON from outside (a webhook body, a REST body, a WebSocket frame), parsed with
bounds: every door refuses what is not JSON, or is nested past reason, with an
error a client can act on instead of a server error.

``json.loads`` raises ``RecursionError``, not ``ValueError``, for input nested near
the interpreter's recursion limit (about 1,000 levels), and what parses a little
below it can still fail later, when the value is stored or encoded again deeper in
the stack. No request we take is nested more than a handful of levels (a Telegram
update: about six), so anything past ``MAX_DEPTH`` is refused at the door.

Python's parser also takes what JSON (RFC 8259) does not, and PostgreSQL's jsonb
then refuses when the value is stored: NaN and Infinity (and numbers too large
for a double), lone UTF-16 surrogates and NUL in strings. They are refused here
too, so that a body that gets in can be stored.
"""

from __future__ import annotations

import json
import math
from typing import Any

MAX_DEPTH = 64


class JSONInputError(ValueError):
    """Input that is not JSON we take; the message says why."""


def loads(data: str | bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """``data`` parsed, or ``JSONInputError``."""
    try:
        value = json.loads(data, parse_constant=_no_constant, parse_float=_finite_float)
    except JSONInputError:
        raise
    except RecursionError:
        raise JSONInputError(
            f"The JSON is nested too deeply (more than {max_depth} levels)."
        ) from None
    except ValueError as exc:  # UnicodeDecodeError is one too
        raise JSONInputError(f"The body is not JSON ({exc}).") from None
    if _deeper_than(value, max_depth):
        raise JSONInputError(
            f"The JSON is nested too deeply (more than {max_depth} levels)."
        )
    return value


def _no_constant(name: str) -> Any:
    raise JSONInputError(f"{name} is not a JSON number.")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise JSONInputError(f"The number {text[:40]} is too large.")
    return number


def _check_text(text: str) -> None:
    if text.isascii():
        if "\x00" in text:
            raise JSONInputError("A string holds a NUL character (\\u0000).")
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise JSONInputError(
            "A string holds a lone UTF-16 surrogate (\\ud800-\\udfff)."
        ) from None
    if "\x00" in text:
        raise JSONInputError("A string holds a NUL character (\\u0000).")


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` nests past ``limit``; JSONInputError for a string that
    could not be stored."""
    # Iterative: a recursive walk would meet the limit it is checking for.
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            _check_text(item)
            continue
        if isinstance(item, dict):
            for key in item:
                _check_text(key)
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False
