"""Transient failures of the bot's steps and how long to wait before the next try."""

from __future__ import annotations

import random

from django.conf import settings


class RetryLater(Exception):
    """A transient failure; the task should run again after ``countdown`` seconds."""

    def __init__(self, message: str, countdown: float) -> None:
        super().__init__(message)
        self.countdown = countdown


def backoff(errors: int) -> float:
    """Seconds to wait after the n-th consecutive failure: exponential, capped,
    with jitter so that chats that failed together do not retry together."""
    base = settings.TELEGRAM_RETRY_BACKOFF_BASE * 2 ** max(errors - 1, 0)
    return min(base, settings.TELEGRAM_RETRY_BACKOFF_MAX) * random.uniform(0.75, 1.0)  # noqa: S311
