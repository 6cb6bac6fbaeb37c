"""The broker: kombu's own Redis transport as settings configure it, against the real
Redis the tests use, through the Celery app's own connection."""

from __future__ import annotations

import time
import uuid
from typing import Any

import redis

from kikipounamu.celery import app


def test_a_message_is_delivered_and_acknowledged_through_it() -> None:
    name = f"transport-{uuid.uuid4().hex[:8]}"
    with app.connection_for_write() as conn:
        queue = conn.SimpleQueue(name)
        try:
            queue.put({"job": 1})
            message = queue.get(timeout=5)
            assert message.payload == {"job": 1}
            channel = queue.channel
            # (HGET: a command kombu prefixes with the tests' key namespace)
            held = channel.client.hget(channel.unacked_key, message.delivery_tag)
            assert held is not None
            message.ack()
            assert (
                channel.client.hget(channel.unacked_key, message.delivery_tag) is None
            )
        finally:
            queue.close()


def test_a_sweep_lock_left_by_a_killed_worker_delays_restores_only_until_it_expires(
    settings: Any,
) -> None:
    # A worker SIGKILLed in the middle of a sweep leaves the sweep's lock behind;
    # until it expires no worker hands on the messages of dead workers.
    with app.connection_for_write() as conn:
        channel = conn.channel()
        try:
            configured = settings.CELERY_BROKER_TRANSPORT_OPTIONS
            assert channel.unacked_mutex_expire == configured["unacked_mutex_expire"]
            assert channel.unacked_mutex_expire <= 60  # kombu's own is 300 s
        finally:
            channel.close()

    # (the same, scaled down to seconds, in a namespace no other test's worker sweeps)
    prefix = f"{settings.REDIS_KEY_PREFIX}sweep-{uuid.uuid4().hex[:8]}:"
    options = {"visibility_timeout": 1, "unacked_mutex_expire": 2}
    with app.connection_for_write(
        transport_options={**options, "global_keyprefix": prefix}
    ) as conn:
        queue = conn.SimpleQueue("jobs")
        channel = queue.channel
        try:
            # (LLEN: a command kombu prefixes with the namespace)
            def waiting() -> int:
                return channel.client.llen("jobs")

            queue.put({"job": 1})
            queue.get(timeout=5)  # taken by a worker that dies before acking it
            with channel.conn_or_acquire() as client:
                dead = client.lock(channel.unacked_mutex_key, timeout=2)
                assert dead.acquire(blocking=False)
            time.sleep(1.1)  # past the visibility timeout

            channel.qos.restore_visible(num=10, interval=1)
            assert waiting() == 0  # the lock holds up the sweep

            deadline = time.monotonic() + 5
            while waiting() == 0 and time.monotonic() < deadline:
                time.sleep(0.2)
                channel.qos.restore_visible(num=10, interval=1)
            assert waiting() == 1
            assert queue.get(timeout=5).payload == {"job": 1}
        finally:
            queue.close()
            client = redis.Redis.from_url(settings.REDIS_URL)
            for key in client.scan_iter(match=f"{prefix}*"):
                client.delete(key)
