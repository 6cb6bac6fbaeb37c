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

The request itself runs as under WSGI: the middleware chain is loaded synchronous
(every middleware of ours is), and the thread runs ``request_started``, the request
and the whole chain in one go. Django's async path would cross between the event
loop and the thread about six times a request (the chain adapted to async, the
view's ``sync_to_async``, each synchronous signal receiver), each crossing a future,
a wake-up and a copy of the context. The event loop still reads the body and sends
the response, and ``response.close()`` (``request_finished``) runs in the thread.
A client that goes away is not noticed mid-view: a synchronous view cannot be
stopped anyway. A streamed response over a synchronous iterator (a FileResponse) is
read part by part in the thread as it is sent, where Django's async path reads it
whole into memory first. Measured (two web processes, old and new, interleaved
rounds of 200 uploads): 7.6 ms of web CPU per upload against 8.2.

Against a whole job, measured again beside Django's own handler (with persistent
connections off, as Django's docs want under ASGI), interleaved on one loaded
machine: 21.7 M instructions per upload against 26.6 M (bench/instructions.py,
uploads one at a time); under bursts of 50 and 200 clients (bench/pipeline.py
--quick --only submit, two rounds) 17-18 ms of web CPU per upload against 26-30, and
37-40 uploads/s against 28-30 at 50 clients. The bench's 2.3 s clip costs about
1.1 s of CPU end to end (whisper ~1.05 s, web and worker ~40 ms), so the 2-10 ms
saved (one upload at a time to bursts) are under 1 % of a job. What they buy is the
web tier's own capacity (the doors run apart from the GPU workers, and a burst lands
on them alone), and the bound on threads and database connections per web process.

Doors served ahead of Django on the event loop (the OpenAI-compatible door) run
their synchronous parts (a token check, parsing an upload, a database read) on the
same threads with ``run_sync``, one call per free thread as a request would take it:
such a door adds no threads and no database connections to the process, however
many of its requests are waiting.

It builds on parts of Django's ASGIHandler that Django does not document
(``read_body``, ``create_request``, ``send_response``, ``chunk_size``, the middleware
loading) and on asgiref 3.13's ``ThreadSensitiveContext(executor=...)``: both are
pinned to their minor version in requirements/base.txt, and tests/test_asgi_limits.py
fails if a release changes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator
from collections.abc import Callable
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from typing import TypeVar

from asgiref.sync import ThreadSensitiveContext
from asgiref.sync import sync_to_async
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers import base
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.asgi import get_script_prefix
from django.db import close_old_connections
from django.http import FileResponse
from django.http import HttpResponseBase
from django.urls import set_script_prefix

T = TypeVar("T")


class PooledThreadsASGIHandler(ASGIHandler):
    def __init__(self, threads: int) -> None:
        # Not ASGIHandler's __init__, which loads the chain for the async path.
        base.BaseHandler.__init__(self)
        self.load_middleware(is_async=False)
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

    async def run_sync(self, func: Callable[[], T]) -> T:
        """Run ``func()`` on one of the request threads, as a request runs there: it
        waits on the event loop for a free thread, finds the thread's database
        connection checked (CONN_MAX_AGE, errors) before and after, as
        ``request_started`` and ``request_finished`` do, and frees the thread when
        it returns or raises. The caller's context (log fields) goes with it."""
        free = self._free_executors()
        executor = await free.get()

        def done(future: asyncio.Future[T]) -> None:
            # Freed when func has returned, even if its caller was cancelled
            # meanwhile (a client gone): until then the thread is still busy.
            free.put_nowait(executor)
            if not future.cancelled():
                future.exception()  # retrieved: the caller may be gone

        context = contextvars.copy_context()
        future = asyncio.get_running_loop().run_in_executor(
            executor, context.run, _as_request, func
        )
        future.add_done_callback(done)
        return await asyncio.shield(future)

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

    async def handle(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        try:
            # thread_sensitive: the executor that ThreadSensitiveContext names.
            response = await sync_to_async(self._respond, thread_sensitive=True)(
                scope, body_file
            )
            # Cancelled: the client went away while the response was sent.
            with contextlib.suppress(asyncio.CancelledError):
                await self.send_response(response, send)
            await sync_to_async(response.close, thread_sensitive=True)()
        finally:
            body_file.close()

    def _respond(self, scope: Any, body_file: Any) -> HttpResponseBase:
        """The synchronous part of one request, in its thread: what WSGIHandler does."""
        set_script_prefix(get_script_prefix(scope))
        signals.request_started.send(sender=self.__class__, scope=scope)
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            assert error_response is not None
            return error_response
        response = self.get_response(request)
        response._handler_class = self.__class__  # type: ignore[attr-defined]
        if isinstance(response, FileResponse):
            # The server chunks what it sends: fewer, larger reads.
            response.block_size = self.chunk_size
        if response.streaming and not response.is_async:  # type: ignore[attr-defined]
            # Django's send_response would read a synchronous iterator (a
            # FileResponse: a job's audio, up to the upload limit) whole into memory
            # first; here each part is read in this thread as it is sent.
            response.streaming_content = _parts_from_thread(  # type: ignore[attr-defined]
                iter(response.streaming_content)  # type: ignore[attr-defined]
            )
        return response


def _as_request(func: Callable[[], T]) -> T:
    close_old_connections()
    try:
        return func()
    finally:
        close_old_connections()


_END = object()


def _next_part(parts: Iterator[bytes]) -> object:
    return next(parts, _END)


async def _parts_from_thread(parts: Iterator[bytes]) -> AsyncIterator[bytes]:
    # thread_sensitive: the request's own thread (its ThreadSensitiveContext).
    take = sync_to_async(_next_part, thread_sensitive=True)
    while (part := await take(parts)) is not _END:
        yield part  # type: ignore[misc]
