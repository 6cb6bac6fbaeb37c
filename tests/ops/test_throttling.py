"""The rate-limit counters themselves, against the real Redis."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import pytest

from asr.ops.throttling import SubmitRateThrottle
from asr.ops.throttling import parse_rate


def request_of(user_id: int, method: str = "POST") -> Any:
    user = SimpleNamespace(pk=user_id, is_authenticated=True)
    return SimpleNamespace(user=user, method=method, META={"REMOTE_ADDR": "10.0.0.1"})


def test_concurrent_requests_never_get_past_the_limit(settings: Any) -> None:
    # DRF's own throttle reads, appends and writes a list: requests racing each
    # other can all pass. The counter here is one atomic update in Redis.
    settings.API_THROTTLE_SUBMIT = "5/min"
    request = request_of(987_654)

    def attempt(_: int) -> bool:
        return SubmitRateThrottle().allow_request(request, None)

    with ThreadPoolExecutor(max_workers=16) as pool:
        allowed = list(pool.map(attempt, range(40)))

    assert allowed.count(True) == 5
    throttle = SubmitRateThrottle()
    assert throttle.allow_request(request, None) is False
    assert 1 <= throttle.wait() <= 60
    # another user has a counter of their own; reads are not submissions
    assert SubmitRateThrottle().allow_request(request_of(987_655), None)
    assert SubmitRateThrottle().allow_request(request_of(987_654, "GET"), None)


@pytest.mark.parametrize(
    ("rate", "amount", "seconds"),
    [("60/min", 60, 60), ("5/s", 5, 1), ("1000/hour", 1000, 3600), ("3/day", 3, 86400)],
)
def test_rates_keep_drfs_notation(rate: str, amount: int, seconds: int) -> None:
    item = parse_rate(rate)
    assert (item.amount, item.get_expiry()) == (amount, seconds)


def test_a_rate_that_is_not_one_is_refused() -> None:
    with pytest.raises(ValueError, match="not a rate"):
        parse_rate("lots")
