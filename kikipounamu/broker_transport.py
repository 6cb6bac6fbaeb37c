"""kombu's Redis transport, with one Redis client per channel instead of one per call.

Celery uses it through CELERY_BROKER_TRANSPORT. kombu 5.7's channel builds a new
``redis.Redis`` around its connection pool for every publish, every acknowledgement
and every delivery's bookkeeping (``Channel.conn_or_acquire``). A client is only a
handle on the pool (the pool owns the sockets, and is safe across threads and, by
checking its pid, across fork), yet building one costs ~70 µs of CPU here: a
submit's publish pays it once, a worker's main process twice per job. Everything
else is kombu's own code.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import redis


class Channel(redis.Channel):
    _shared_client: Any = None
    _shared_client_pool: Any = None

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        pool = self.pool
        # A pool kombu replaced (after a connection error) gets a client of its own.
        if self._shared_client_pool is not pool:
            self._shared_client = self._create_client()  # type: ignore[attr-defined]
            self._shared_client_pool = pool
        yield self._shared_client


class Transport(redis.Transport):
    Channel = Channel
