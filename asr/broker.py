"""Reading what the Redis broker holds, for the reconciler."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable

from kikipounamu.celery import app

# kombu's Redis transport keeps one list per priority step beside the plain one.
_PRIORITY_SEP = "\x06\x16"
_PRIORITY_STEPS = (0, 3, 6, 9)


def _queue_keys(queue: str) -> list[str]:
    return [queue] + [
        f"{queue}{_PRIORITY_SEP}{step}" for step in _PRIORITY_STEPS if step
    ]


def broker_task_ids(queues: Iterable[str]) -> set[str]:
    """Task ids waiting in ``queues`` or delivered but not yet acknowledged."""
    ids: set[str] = set()
    with app.connection_for_read() as conn:
        client = conn.default_channel.client  # type: ignore[attr-defined]
        raw: list[bytes] = []
        for queue in queues:
            for key in _queue_keys(queue):
                raw.extend(client.lrange(key, 0, -1))
        for value in client.hvals("unacked"):
            try:
                raw.append(json.dumps(json.loads(value)[0]).encode())
            except (ValueError, IndexError, TypeError):
                continue
    for item in raw:
        try:
            headers = json.loads(item).get("headers") or {}
        except ValueError:
            continue
        task_id = headers.get("id")
        if task_id:
            ids.add(task_id)
    return ids


def held_task_ids(queues: Iterable[str] = ("asr",), *, gap: float = 0.5) -> set[str]:
    """``broker_task_ids`` read twice, ``gap`` seconds apart: a message in flight
    between the queue and the unacked set is in neither for an instant, and must
    not look lost to the reconciler."""
    queues = list(queues)
    held = broker_task_ids(queues)
    time.sleep(gap)
    return held | broker_task_ids(queues)
