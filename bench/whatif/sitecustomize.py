"""What-if patches for bench/pipeline.py --what-if: never part of the project.

Python imports ``sitecustomize`` at start-up from PYTHONPATH, so the bench puts this
directory there for the web and worker processes it starts, with KIKI_WHAT_IF naming
the fixes to try. Each one stands for a change proposed to the project, so that its
effect can be measured before anyone edits the code:

  av          asr/audio.py opens files with max_probe_packets=0: FFmpeg's codec probe
              of PCM WAV (up to 32 packets, each run through every demuxer's probe)
              is skipped; it costs ~7 ms of CPU per open of a short WAV.
  nobackend   CELERY_RESULT_BACKEND unset: no task result is read, yet every submit
              builds a Redis result backend (per thread, and ASGI runs each request
              in a new thread), ~2 ms of CPU each.
  noevents    CELERY_WORKER_SEND_TASK_EVENTS / CELERY_TASK_SEND_SENT_EVENT off: four
              event messages per job that only a monitor reads.
  connmaxage  CONN_MAX_AGE for SQLite too, so a worker keeps its connection between
              tasks instead of reconnecting (and re-running the PRAGMAs) per task.
  norealtime  no realtime push of job events (asr.realtime receiver disconnected):
              what the push costs; the event rows are still written.
  webconcurrency
              at most 8 HTTP requests inside Django per web process; the rest wait in
              the event loop. Under ASGI every request runs in a thread of its own with
              its own database connection, so a burst of 200 uploads opens 200
              connections (PostgreSQL: "too many clients") or 200 writers queueing on
              SQLite's lock ("database is locked" after the 30 s busy timeout).

For bench/live.py --what-if:

  livedispatch
              asr.realtime.live's consumer skips channels' close_old_connections
              hop for audio frames and worker pushes: AsyncConsumer.dispatch
              (channels 4.3) runs it through sync_to_async before every message,
              in the web's one thread-sensitive thread, so every 100 ms frame of
              every stream queues there behind the others (and behind the DB calls
              of sessions that are opening). Its own DB calls go through
              database_sync_to_async, which closes old connections around each.
  livepriority
              the kombu Redis transport reads a worker's queues in the order given
              (queue_order_strategy "priority") instead of in turn: a live worker
              (-Q live,live_partial) takes a waiting final before any partial.
  executor    the web's default thread pool (sync_to_async without thread
              sensitivity: every Celery publish of the live door) cut to
              KIKI_WHAT_IF_EXECUTOR threads (1): does the GIL those threads take
              starve the event loop? (No: at 500 streams finals then wait for the
              one thread's Redis round trips, and start messages time out.)
  looplag     not a change, a probe: the web prints its event loop's lag (p50 and
              max of a 50 ms sleep's overshoot) and its task count every 2 s to
              its log.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
from collections.abc import Callable
from typing import Any

FIXES = set(filter(None, os.environ.get("KIKI_WHAT_IF", "").split(",")))


def _after_import(name: str, patch: Callable[[Any], None]) -> None:
    """Run ``patch(module)`` right after ``name`` is first executed."""

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
            if fullname != name:
                return None
            # Look it up with the other finders (Django also asks for specs only to
            # see whether a module exists, so stay in place until it runs).
            sys.meta_path.remove(self)
            try:
                spec = importlib.util.find_spec(fullname)
            finally:
                sys.meta_path.insert(0, self)
            if spec is None or spec.loader is None:
                return spec
            execute = spec.loader.exec_module
            finder = self

            def exec_module(module: Any) -> None:
                execute(module)
                if finder in sys.meta_path:
                    sys.meta_path.remove(finder)
                patch(module)

            spec.loader.exec_module = exec_module  # type: ignore[method-assign]
            return spec

    sys.meta_path.insert(0, Finder())


def _patch_av(av: Any) -> None:
    open_ = av.open

    def open_without_codec_probe(*args: Any, options: Any = None, **kwargs: Any) -> Any:
        return open_(
            *args, options={**(options or {}), "max_probe_packets": "0"}, **kwargs
        )

    av.open = open_without_codec_probe


def _patch_settings(settings: Any) -> None:
    if "nobackend" in FIXES:
        settings.CELERY_RESULT_BACKEND = None
    if "noevents" in FIXES:
        settings.CELERY_WORKER_SEND_TASK_EVENTS = False
        settings.CELERY_TASK_SEND_SENT_EVENT = False
    if "connmaxage" in FIXES:
        settings.DATABASES["default"]["CONN_MAX_AGE"] = 600
    if "livepriority" in FIXES:
        settings.CELERY_BROKER_TRANSPORT_OPTIONS = {
            **settings.CELERY_BROKER_TRANSPORT_OPTIONS,
            "queue_order_strategy": "priority",
        }


def _patch_live(live: Any) -> None:
    dispatch = live.LiveConsumer.dispatch

    async def dispatch_without_db_hop(self: Any, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "websocket.receive" or kind.startswith("live."):
            await getattr(self, kind.replace(".", "_"))(message)
            return
        await dispatch(self, message)

    live.LiveConsumer.dispatch = dispatch_without_db_hop


def _patch_asr_apps(apps: Any) -> None:
    ready = apps.AsrConfig.ready

    def ready_without_push(self: Any) -> None:
        ready(self)
        from asr.signals import transcription_event

        transcription_event.disconnect(dispatch_uid="asr.realtime.push")

    apps.AsrConfig.ready = ready_without_push


def _patch_executor(asgi: Any) -> None:
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    app = asgi.application
    done: set[Any] = set()
    size = int(os.environ.get("KIKI_WHAT_IF_EXECUTOR", "1"))

    async def with_small_executor(scope: Any, receive: Any, send: Any) -> None:
        loop = asyncio.get_running_loop()
        if loop not in done:
            done.add(loop)
            loop.set_default_executor(ThreadPoolExecutor(size))
        await app(scope, receive, send)

    asgi.application = with_small_executor


def _patch_looplag(asgi: Any) -> None:
    import asyncio
    import time

    app = asgi.application
    started: set[Any] = set()

    async def monitor() -> None:
        lags: list[float] = []
        while True:
            t = time.monotonic()
            await asyncio.sleep(0.05)
            lags.append(time.monotonic() - t - 0.05)
            if len(lags) >= 40:
                lags.sort()
                n = len(asyncio.all_tasks())
                print(
                    f"looplag p50 {lags[20] * 1000:.0f} ms max {lags[-1] * 1000:.0f}"
                    f" ms tasks {n}",
                    file=sys.stderr,
                    flush=True,
                )
                lags = []

    async def with_monitor(scope: Any, receive: Any, send: Any) -> None:
        loop = asyncio.get_running_loop()
        if loop not in started:
            started.add(loop)
            task = asyncio.ensure_future(monitor())
            started.add(task)
        await app(scope, receive, send)

    asgi.application = with_monitor


def _patch_asgi(asgi: Any) -> None:
    import asyncio

    app = asgi.application
    limit = asyncio.Semaphore(8)

    async def bounded(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        async with limit:
            await app(scope, receive, send)

    asgi.application = bounded


if "av" in FIXES:
    _after_import("av", _patch_av)
if "webconcurrency" in FIXES:
    _after_import("kikipounamu.asgi", _patch_asgi)
if "executor" in FIXES:
    _after_import("kikipounamu.asgi", _patch_executor)
if "looplag" in FIXES:
    _after_import("kikipounamu.asgi", _patch_looplag)
if "livedispatch" in FIXES:
    _after_import("asr.realtime.live", _patch_live)
if "norealtime" in FIXES:
    _after_import("asr.apps", _patch_asr_apps)
_after_import("kikipounamu.settings", _patch_settings)
