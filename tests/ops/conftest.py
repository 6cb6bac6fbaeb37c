from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings as django_settings

from asr.ops import stats


@pytest.fixture(autouse=True)
def _own_media_root(settings: Any, tmp_path: Path) -> None:
    settings.MEDIA_ROOT = tmp_path / "media"


@pytest.fixture(autouse=True)
def _fresh_estimates() -> Iterator[None]:
    stats.clear_memo()
    yield
    stats.clear_memo()


@pytest.fixture
def broker_prefix(settings: Any) -> Iterator[str]:
    """A key prefix of this test's own, so that the queues it fills are not the ones
    a worker of this run is consuming."""
    prefix = f"{django_settings.REDIS_KEY_PREFIX}ops-{uuid.uuid4().hex[:6]}:"
    url = django_settings.REDIS_URL  # a test may point REDIS_URL elsewhere
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {
        **django_settings.CELERY_BROKER_TRANSPORT_OPTIONS,
        "global_keyprefix": prefix,
    }
    yield prefix
    client = redis.Redis.from_url(url)
    for key in client.scan_iter(match=f"{prefix}*"):
        client.delete(key)


@pytest.fixture
def fill_queue(broker_prefix: str) -> Any:
    def fill(queue: str, n: int) -> None:
        client = redis.Redis.from_url(django_settings.REDIS_URL)
        for i in range(n):
            client.lpush(f"{broker_prefix}{queue}", f'{{"fake": {i}}}')

    return fill
