"""Cheap reads of Redis for operators: queue depths and worker heartbeats.

The broker may put a prefix before every key (kombu's ``global_keyprefix``, which
tests use per run); heartbeats use the same prefix so they go with the run.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import time
from typing import Any

import redis
from django.conf import settings

logger = logging.getLogger(__name__)

QUEUES = ("asr", "live", "live_partial", "bots", "default")
# kombu's Redis transport keeps one list per priority step beside the plain one.
_PRIORITY_SEP = "\x06\x16"
_PRIORITY_STEPS = (3, 6, 9)
_HEARTBEAT_KEY = "kiki:ops:worker:"
_ENGINE_KEY = "kiki:ops:engine:"


@functools.cache
def _client(url: str) -> redis.Redis:
    # Short time-outs: a scrape or a health check must answer even if Redis hangs.
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


def client() -> redis.Redis:
    return _client(settings.REDIS_URL)


def key_prefix() -> str:
    options = getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", {}) or {}
    return str(options.get("global_keyprefix", ""))


def queue_keys(queue: str) -> list[str]:
    """The Redis lists that hold ``queue``'s waiting messages, without the prefix."""
    return [queue] + [f"{queue}{_PRIORITY_SEP}{step}" for step in _PRIORITY_STEPS]


def queue_depths(queues: tuple[str, ...] = QUEUES) -> dict[str, int]:
    """Messages waiting in each queue (LLEN; delivered, unacked ones not counted)."""
    prefix = key_prefix()
    pipe = client().pipeline(transaction=False)
    for queue in queues:
        for key in queue_keys(queue):
            pipe.llen(f"{prefix}{key}")
    lengths = pipe.execute()
    per = 1 + len(_PRIORITY_STEPS)
    return {q: int(sum(lengths[i * per : (i + 1) * per])) for i, q in enumerate(queues)}


def worker_heartbeat(
    *,
    hostname: str,
    queues: list[str],
    concurrency: int,
    ttl: float,
    held: list[str] | None = None,
) -> None:
    payload = {
        "hostname": hostname,
        "queues": queues,
        "concurrency": concurrency,
        "held": held,
        "pid": os.getpid(),
        "ts": time.time(),
    }
    client().set(
        f"{key_prefix()}{_HEARTBEAT_KEY}{hostname}",
        json.dumps(payload),
        ex=max(1, round(ttl)),
    )


def worker_gone(*, hostname: str) -> None:
    client().delete(
        f"{key_prefix()}{_HEARTBEAT_KEY}{hostname}",
        f"{key_prefix()}{_ENGINE_KEY}{hostname}",
    )


def engine_report(*, hostname: str, engine: str, languages: list[str] | None) -> None:
    """What a worker's pool processes loaded (written by each once its engine is
    loaded). Read only for workers with a live heartbeat: a dead worker's report is
    ignored before it expires."""
    client().set(
        f"{key_prefix()}{_ENGINE_KEY}{hostname}",
        json.dumps({"engine": engine, "languages": languages}),
        ex=7 * 24 * 3600,
    )


def engine_reports(hostnames: list[str]) -> list[dict[str, Any]]:
    if not hostnames:
        return []
    raw: list[bytes | None] = client().mget(  # type: ignore[assignment]
        [f"{key_prefix()}{_ENGINE_KEY}{h}" for h in hostnames]
    )
    reports = []
    for value in raw:
        if value:
            with contextlib.suppress(ValueError):
                reports.append(json.loads(value))
    return reports


def live_workers() -> list[dict[str, Any]]:
    """Workers whose heartbeat has not expired, by hostname."""
    r = client()
    keys = sorted(r.scan_iter(match=f"{key_prefix()}{_HEARTBEAT_KEY}*", count=500))
    if not keys:
        return []
    workers = []
    values: list[bytes | None] = r.mget(keys)  # type: ignore[assignment]
    for raw in values:
        if not raw:
            continue
        try:
            workers.append(json.loads(raw))
        except ValueError:
            continue
    return workers
