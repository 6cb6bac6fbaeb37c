"""Django's ASGI handler, with a fixed set of threads for the requests' sync code.

Django runs each request's synchronous part (middleware, views, the ORM) in a thread
made for that request (asgiref's ThreadSensitiveContext), then drops the thread. The
thread's database connection goes with it: every request opened and closed one
(~0.5 ms on SQLite, several on PostgreSQL), and nothing bounded how many were open at
once during a burst (200 uploads, 200 connections: PostgreSQL's max_connections, or
200 writers queueing on SQLite's lock past its busy timeout).

Here each request runs on one of ``threads`` long-lived single-thread executors,
handed to asgiref's ThreadSensitiveContext (its ``executor`` argument, made for
this), one request per thread at a time. A request that finds none free waits on the
event loop, where waiting costs nothing but a little memory. Each thread keeps its
database connection between requests (CONN_MAX_AGE, with health checks), so a process
holds at most ``threads`` of them. Measured (bench/pipeline.py's upload, one web
process, 5 interleaved runs): ~3 ms less web CPU per upload, about a fifth.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asgiref.sync import ThreadSensitiveContext
from django.core.handlers.asgi import ASGIHandler


class PooledThreadsASGIHandler(ASGIHandler):
    def __init__(self, threads: int) -> None:
        super().__init__()
        if threads < 1:
            raise ValueError("at least one thread")
        self.threads = threads
        self._executors = [
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"django-{i}")
            for i in range(threads)
        ]
        self._free: asyncio.Queue[ThreadPoolExecutor] | None = None

    def _free_executors(self) -> asyncio.Queue[ThreadPoolExecutor]:
        # Made on first use, inside the server's event loop.
        if self._free is None:
            self._free = asyncio.Queue()
            for executor in self._executors:
                self._free.put_nowait(executor)
        return self._free

    def close(self) -> None:
        """Close the threads' database connections and stop the threads."""
        from django.db import connections

        for executor in self._executors:
            executor.submit(connections.close_all).result()
            executor.shutdown()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError(
                f"Django can only handle ASGI/HTTP connections, not {scope['type']}."
            )
        free = self._free_executors()
        executor = await free.get()
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.handle(scope, receive, send)
        finally:
            free.put_nowait(executor)
