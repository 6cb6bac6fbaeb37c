"""kikipounamu.broker_transport: kombu's Redis transport with one client per channel,
against the real Redis the tests use, through the Celery app's own connection."""

from __future__ import annotations

import uuid

from kikipounamu import broker_transport
from kikipounamu.celery import app


def test_a_channel_keeps_one_client_until_kombu_replaces_its_pool() -> None:
    with app.connection_for_write() as conn:
        channel = conn.channel()
        try:
            assert isinstance(channel, broker_transport.Channel)
            with (
                channel.conn_or_acquire() as first,
                channel.conn_or_acquire() as second,
            ):
                assert first is second
            # what kombu does to a channel whose connection failed
            channel._disconnect_pools()
            with channel.conn_or_acquire() as third:
                assert third is not first
                assert third.ping()
            # a client handed in is used as it is
            with channel.conn_or_acquire(first) as given:
                assert given is first
        finally:
            channel.close()


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
