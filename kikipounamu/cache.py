"""Django's Redis cache with one connection pool per process.

Django keeps a cache object per async context, and each object opens its own
connection pool (django.core.cache.backends.redis.RedisCacheClient). Under ASGI every
request runs in a context of its own, so every request that touched the cache (the
rate limits: all of them) opened a new Redis connection and closed it again: a TCP
handshake, a HELLO and redis-py's client set-up, about 1 ms of CPU. Here the pools and
the clients on them (both thread-safe) are shared by the whole process; a forked
child makes its own.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from django.core.cache.backends.redis import RedisCache
from django.core.cache.backends.redis import RedisCacheClient

_clients: dict[tuple[int, str], Any] = {}
_lock = threading.Lock()


class SharedPoolRedisCacheClient(RedisCacheClient):
    # django-stubs does not describe RedisCacheClient's private attributes.
    _servers: list[str]
    _pool_class: Any
    _pool_options: dict[str, Any]
    _client: Any

    def _get_connection_pool_index(self, write: bool) -> int:
        return int(super()._get_connection_pool_index(write))  # type: ignore[misc]

    def get_client(self, key: Any = None, *, write: bool = False) -> Any:
        server = self._servers[self._get_connection_pool_index(write)]
        slot = (os.getpid(), server)
        client = _clients.get(slot)
        if client is None:
            with _lock:
                client = _clients.get(slot)
                if client is None:
                    pool = self._pool_class.from_url(server, **self._pool_options)
                    client = _clients[slot] = self._client(connection_pool=pool)
        return client


class SharedPoolRedisCache(RedisCache):
    def __init__(self, server: str, params: dict[str, Any]) -> None:
        super().__init__(server, params)
        self._class = SharedPoolRedisCacheClient
