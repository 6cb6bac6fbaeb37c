"""Per-user rate limits: DRF throttles counted by the `limits` library in Redis.

DRF's own throttles keep a list of every request's time in the cache, read it, append
and write it back: two round trips and a pickled list of up to N floats per request,
and two web processes reading the same list at once both let their request through.
`limits` (the counters behind Flask-Limiter and slowapi) keeps a sliding-window
counter per user and updates it in one atomic Lua call: one round trip, constant
size, and exact across processes. Rates keep DRF's notation ("60/min") and are read
from settings per request (DRF's THROTTLE_RATES is frozen at import).
https://limits.readthedocs.io/en/stable/strategies.html#sliding-window-counter
"""

from __future__ import annotations

import functools
import logging
import math
import time
from typing import Any

from django.conf import settings
from limits import RateLimitItem
from limits import RateLimitItemPerDay
from limits import RateLimitItemPerHour
from limits import RateLimitItemPerMinute
from limits import RateLimitItemPerSecond
from limits.storage import RedisStorage
from limits.strategies import SlidingWindowCounterRateLimiter
from redis.exceptions import RedisError
from rest_framework.throttling import BaseThrottle

from kikipounamu.redis_server import limits_url

logger = logging.getLogger(__name__)

_PERIODS = {
    "s": RateLimitItemPerSecond,
    "m": RateLimitItemPerMinute,
    "h": RateLimitItemPerHour,
    "d": RateLimitItemPerDay,
}


@functools.cache
def parse_rate(rate: str) -> RateLimitItem:
    """DRF's notation: "<n>/<s|sec|m|min|h|hour|d|day>"."""
    count, _, period = rate.partition("/")
    try:
        return _PERIODS[period.strip()[:1]](int(count))
    except (KeyError, ValueError):
        raise ValueError(f"not a rate: {rate!r} (e.g. '60/min')") from None


@functools.cache
def _limiter(url: str, prefix: str) -> SlidingWindowCounterRateLimiter:
    # One storage (and connection pool) per process and Redis: made on first use.
    storage = RedisStorage(limits_url(url), key_prefix=prefix, socket_timeout=2)
    return SlidingWindowCounterRateLimiter(storage)


def limiter() -> SlidingWindowCounterRateLimiter:
    # Under the cache's key prefix, so a test run's counters are its own.
    prefix = f"{settings.CACHES['default'].get('KEY_PREFIX', '')}:throttle"
    return _limiter(settings.REDIS_URL, prefix)


class _RateThrottle(BaseThrottle):
    scope = ""

    def get_rate(self) -> str | None:
        raise NotImplementedError

    def applies(self, request: Any) -> bool:
        return True

    def allow_request(self, request: Any, view: Any) -> bool:
        rate = self.get_rate()
        if not rate or not self.applies(request):
            return True
        item = parse_rate(rate)
        user = getattr(request, "user", None)
        ident = (
            f"user-{user.pk}"
            if user is not None and user.is_authenticated
            else f"ip-{self.get_ident(request)}"
        )
        try:
            if limiter().hit(item, self.scope, ident):
                return True
            stats = limiter().get_window_stats(item, self.scope, ident)
        except RedisError:
            # Redis down must not turn every API call into a 500: reads still work
            # from the database, and the backpressure check has its own fallback.
            # (django-ratelimit offers the same choice as RATELIMIT_FAIL_OPEN.)
            logger.warning("rate limit %s not checked: Redis unreachable", self.scope)
            return True
        self._wait = max(stats.reset_time - time.time(), 1.0)
        return False

    def wait(self) -> float | None:
        return math.ceil(getattr(self, "_wait", 1.0))


class UserRateThrottle(_RateThrottle):
    """Every API call of one user (or one address, for anonymous calls)."""

    scope = "user"

    def get_rate(self) -> str | None:
        return settings.API_THROTTLE_USER or None


class SubmitRateThrottle(_RateThrottle):
    """Calls that enqueue work (POST: uploads, retries) of one user."""

    scope = "submit"

    def get_rate(self) -> str | None:
        return settings.API_THROTTLE_SUBMIT or None

    def applies(self, request: Any) -> bool:
        return bool(request.method == "POST")
