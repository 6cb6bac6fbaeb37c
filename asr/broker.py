"""Reading what the Redis broker holds, for the reconciler, and taking back the
messages of workers that are gone."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable

from asr.ops import redis_state
from kikipounamu.celery import app

logger = logging.getLogger(__name__)


# kombu's names for the hash of delivered, unacknowledged messages and its index
# (delivery tag -> time of delivery).
_UNACKED = "unacked"
_UNACKED_INDEX = "unacked_index"


def broker_task_ids(queues: Iterable[str]) -> set[str]:
    """Task ids waiting in ``queues`` or delivered but not yet acknowledged."""
    ids: set[str] = set()
    # A plain client with the prefix spelled out: kombu's own prefixes only the
    # commands it uses itself, not LRANGE or HVALS.
    prefix = redis_state.key_prefix()
    client = redis_state.client()
    raw: list[bytes] = []
    for queue in queues:
        for key in redis_state.queue_keys(queue):
            raw.extend(client.lrange(f"{prefix}{key}", 0, -1))  # type: ignore[arg-type]
    for value in client.hvals(f"{prefix}{_UNACKED}"):  # type: ignore[union-attr]
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


def unacked_reclaim(*, gone_after: float) -> list[str]:
    """Put back at the head of their queues the messages delivered to workers that
    are gone; their delivery tags.

    kombu's Redis transport gives an unacknowledged message back only after the
    visibility timeout, which must outlast the longest task (hours in production):
    a machine that dies would strand its jobs that long. Each worker lists what it
    holds (reserved, running, waiting for an ETA) in its heartbeat, every
    OPS_WORKER_HEARTBEAT_SECONDS. A message delivered more than ``gone_after``
    seconds ago (the heartbeat's time to live) that no live heartbeat lists was
    delivered to a worker whose heartbeats stopped: its main process, or its
    machine, or its link to Redis is gone. A worker that is only slow (a pool
    process busy on a GPU, a long collection) still beats from its main process's
    thread and keeps its messages. If one was taken from a worker that comes back,
    the job's claim in the database makes its late finish harmless.
    """
    workers = redis_state.live_workers()
    listed: set[str] = set()
    for worker in workers:
        held = worker.get("held")
        if held is None:
            # A worker that does not say (an older version, or its list could not
            # be read this beat): nothing is known to be free.
            logger.info(
                "reclaim skipped: worker %s does not list what it holds",
                worker.get("hostname"),
            )
            return []
        listed.update(str(tag) for tag in held)
    stale = redis_state.client().zrangebyscore(
        f"{redis_state.key_prefix()}{_UNACKED_INDEX}", "-inf", time.time() - gone_after
    )
    orphans = [
        tag
        for raw in stale  # type: ignore[union-attr]
        if (tag := raw.decode() if isinstance(raw, bytes) else str(raw)) not in listed
    ]
    restored = []
    if orphans:
        with app.connection_for_write() as conn:
            qos = conn.default_channel.qos  # type: ignore[attr-defined]
            for tag in orphans:
                # kombu's own restore: in a WATCH transaction on the unacked hash,
                # so a worker's ack in between, or another sweeper, wins and this
                # does nothing; pushed where consumers pop (leftmost=False), not
                # behind the queue as a rejected message is.
                qos.restore_by_tag(tag, leftmost=False)
                restored.append(tag)
    if restored:
        logger.warning(
            "reclaimed %d messages of workers gone for %.0f s (no heartbeat lists "
            "them): back at the head of their queues",
            len(restored),
            gone_after,
        )
    return restored
