"""The web process's own ASGI layers: Django's handler on a fixed set of threads."""

from __future__ import annotations

import asyncio
import inspect
import io
import threading
import time
import warnings
from typing import Any

import pytest
from asgiref.sync import ThreadSensitiveContext
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.base import BaseHandler
from django.core.signals import request_finished
from django.core.signals import request_started
from django.db import connection
from django.db import connections
from django.http import FileResponse
from django.http import HttpRequest
from django.http import JsonResponse
from django.urls import path

from kikipounamu.asgi_handler import PooledThreadsASGIHandler

seen: list[dict[str, Any]] = []
_inside = 0
_lock = threading.Lock()


def probe(request: HttpRequest) -> JsonResponse:
    """Records the thread and database connection a request ran on."""
    global _inside
    with _lock:
        _inside += 1
        at_once = _inside
    connection.ensure_connection()
    time.sleep(0.02)
    seen.append(
        {
            "thread": threading.get_ident(),
            "connection": id(connection.connection),
            "at_once": at_once,
        }
    )
    with _lock:
        _inside -= 1
    return JsonResponse({"ok": True})


STREAMED = bytes(range(256)) * 1024  # 256 KiB: several of the handler's chunks


def stream(request: HttpRequest) -> FileResponse:
    seen.append({"view_thread": threading.get_ident()})
    return FileResponse(io.BytesIO(STREAMED), content_type="application/octet-stream")


def boom(request: HttpRequest) -> JsonResponse:
    raise RuntimeError("a bug in a view")


urlpatterns = [path("probe", probe), path("stream", stream), path("boom", boom)]


async def call(handler: PooledThreadsASGIHandler) -> int:
    status, _ = await fetch(handler, "/probe")
    return status


async def fetch(handler: PooledThreadsASGIHandler, url: str) -> tuple[int, bytes]:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": url,
        "raw_path": url.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1")],
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 8000),
    }
    done = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if not done.is_set():
            done.set()
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    statuses: list[int] = []
    body: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])
        else:
            body.append(message.get("body", b""))

    await handler(scope, receive, send)
    return statuses[0], b"".join(body)


@pytest.mark.django_db(transaction=True)
def test_requests_share_a_few_threads_and_their_database_connections(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given Django's handler with three threads for sync code, whose connections
    # persist (as in the servers; tests/settings.py turns that off in pytest)
    settings.ROOT_URLCONF = __name__
    settings.ALLOWED_HOSTS = ["127.0.0.1"]
    monkeypatch.setitem(connections.settings["default"], "CONN_MAX_AGE", 600)
    handler = PooledThreadsASGIHandler(threads=3)
    seen.clear()

    async def burst() -> list[int]:
        return await asyncio.gather(*(call(handler) for _ in range(30)))

    # when thirty requests come at once
    try:
        statuses = asyncio.run(burst())
    finally:
        handler.close()

    # then all are served; at most three ran at once, on three threads, which kept
    # their database connections from one request to the next
    assert statuses == [200] * 30
    assert max(s["at_once"] for s in seen) <= 3
    assert len({s["thread"] for s in seen}) <= 3
    assert len({s["connection"] for s in seen}) <= 3


def test_a_streamed_response_is_sent_whole_and_the_request_signals_fire_in_its_thread(
    settings: Any,
) -> None:
    settings.ROOT_URLCONF = __name__
    settings.ALLOWED_HOSTS = ["127.0.0.1"]
    handler = PooledThreadsASGIHandler(threads=1)
    fired: list[tuple[str, int]] = []

    def started(**_: Any) -> None:
        fired.append(("started", threading.get_ident()))

    def finished(**_: Any) -> None:
        fired.append(("finished", threading.get_ident()))

    request_started.connect(started)
    request_finished.connect(finished)
    seen.clear()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            status, body = asyncio.run(fetch(handler, "/stream"))
    finally:
        request_started.disconnect(started)
        request_finished.disconnect(finished)
        handler.close()

    assert status == 200
    assert body == STREAMED
    # Read part by part as it is sent, not whole first (Django's async path warns
    # when it does that).
    assert not [w for w in caught if "synchronous iterators" in str(w.message)]
    view_thread = seen[0]["view_thread"]
    assert fired == [("started", view_thread), ("finished", view_thread)]


def test_a_view_that_raises_gets_a_500_not_an_exception(settings: Any) -> None:
    settings.ROOT_URLCONF = __name__
    settings.ALLOWED_HOSTS = ["127.0.0.1"]
    handler = PooledThreadsASGIHandler(threads=1)
    try:
        status, _ = asyncio.run(fetch(handler, "/boom"))
    finally:
        handler.close()
    assert status == 500


def test_run_sync_takes_the_request_threads_one_call_per_free_thread() -> None:
    # given a handler with two threads, and a function that notes where it ran
    handler = PooledThreadsASGIHandler(threads=2)
    inside = most = 0
    names: set[str] = set()

    def work() -> int:
        nonlocal inside, most
        with _lock:
            inside += 1
            most = max(most, inside)
        names.add(threading.current_thread().name)
        time.sleep(0.01)
        with _lock:
            inside -= 1
        return 7

    # when twenty calls come at once
    async def burst() -> list[int]:
        return await asyncio.gather(*(handler.run_sync(work) for _ in range(20)))

    try:
        results = asyncio.run(burst())
    finally:
        handler.close()

    # then each ran on one of the handler's threads, two at most at a time
    assert results == [7] * 20
    assert most <= 2
    assert names <= {"django-0_0", "django-1_0"}


def test_run_sync_frees_its_thread_when_the_call_raises_or_its_caller_is_gone() -> None:
    handler = PooledThreadsASGIHandler(threads=1)
    release = threading.Event()
    ran: list[str] = []

    def fails() -> None:
        raise LookupError("a bug")

    def slow() -> None:
        release.wait(5)
        ran.append("slow")

    def quick() -> None:
        ran.append("quick")

    async def scenario() -> None:
        with pytest.raises(LookupError):
            await handler.run_sync(fails)
        # a caller cancelled mid-call (a client gone): the thread is still busy
        first = asyncio.ensure_future(handler.run_sync(slow))
        await asyncio.sleep(0.05)
        first.cancel()
        second = asyncio.ensure_future(handler.run_sync(quick))
        await asyncio.sleep(0.05)
        assert ran == []
        # until the call returns
        release.set()
        await asyncio.wait_for(second, 5)

    try:
        asyncio.run(scenario())
    finally:
        handler.close()
    assert ran == ["slow", "quick"]


def test_a_handler_needs_a_thread() -> None:
    with pytest.raises(ValueError, match="at least one thread"):
        PooledThreadsASGIHandler(threads=0)


def test_websockets_are_not_its_business() -> None:
    handler = PooledThreadsASGIHandler(threads=1)
    with pytest.raises(ValueError, match="not websocket"):
        asyncio.run(handler({"type": "websocket"}, None, None))


def _parameters(function: Any) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_djangos_handler_still_has_the_parts_the_pooled_handler_is_built_from() -> None:
    # The pooled handler replaces ASGIHandler's __init__, __call__ and handle and
    # calls these undocumented parts of it (Django pinned to 5.2.x, asgiref to 3.13.x
    # in requirements/base.txt): a release that renames or reshapes one fails here.
    assert _parameters(ASGIHandler.read_body) == ["self", "receive"]
    assert inspect.iscoroutinefunction(ASGIHandler.read_body)
    assert _parameters(ASGIHandler.create_request) == ["self", "scope", "body_file"]
    assert _parameters(ASGIHandler.send_response) == ["self", "response", "send"]
    assert inspect.iscoroutinefunction(ASGIHandler.send_response)
    assert isinstance(ASGIHandler.chunk_size, int)
    assert _parameters(BaseHandler.load_middleware) == ["self", "is_async"]
    assert _parameters(BaseHandler.get_response) == ["self", "request"]
    # asgiref 3.13's thread-sensitive context on an executor the caller owns.
    assert _parameters(ThreadSensitiveContext) == ["executor"]


def test_the_pooled_handler_sets_up_all_that_djangos_handler_does() -> None:
    # Its __init__ is BaseHandler's, not ASGIHandler's (which loads the chain for
    # the async path): whatever Django's sets up must be set up here too.
    handler = PooledThreadsASGIHandler(threads=1)
    try:
        assert set(vars(ASGIHandler())) <= set(vars(handler))
    finally:
        handler.close()
