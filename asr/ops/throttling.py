"""Per-user rate limits (DRF throttling on the shared Redis cache).

Throttles are made per request; their rates are read from settings then, rather than
from DRF's ``THROTTLE_RATES``, which is frozen at import.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from redis.exceptions import RedisError
from rest_framework import throttling

logger = logging.getLogger(__name__)


class _FailOpen(throttling.UserRateThrottle):
    # Redis down must not turn every API call into a 500: reads still work from the
    # database, and the backpressure check has its own fallback. (django-ratelimit
    # offers the same choice as RATELIMIT_FAIL_OPEN.)
    def allow_request(self, request: Any, view: Any) -> bool:
        try:
            return super().allow_request(request, view)
        except RedisError:
            logger.warning("rate limit %s not checked: cache unreachable", self.scope)
            return True


class UserRateThrottle(_FailOpen):
    """Every API call of one user (or one address, for anonymous calls)."""

    scope = "user"

    def get_rate(self) -> str | None:
        return settings.API_THROTTLE_USER or None


class SubmitRateThrottle(_FailOpen):
    """Calls that enqueue work (POST: uploads, retries) of one user."""

    scope = "submit"

    def get_rate(self) -> str | None:
        return settings.API_THROTTLE_SUBMIT or None

    def allow_request(self, request: Any, view: Any) -> bool:
        if request.method != "POST":
            return True
        return super().allow_request(request, view)
