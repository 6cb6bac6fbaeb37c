"""Fixtures of the webhooks' tests: a receiver on 127.0.0.1, the settings that let
deliveries reach it, and finished jobs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from asr.models import Transcription
from asr.services import attempts
from tests.webhooks.receiver import Receiver

# Loopback is refused by default (SSRF): the tests' receiver is let in by name.
LOOPBACK = {"WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8"}
# Short limits and back-offs, so that injected faults cost seconds, not hours.
FAST = {
    "WEBHOOK_TIMEOUT": "2",
    "WEBHOOK_CONNECT_TIMEOUT": "1",
    "WEBHOOK_RETRY_BASE": "0.2",
    "WEBHOOK_RETRY_FACTOR": "2",
    "WEBHOOK_RETRY_MAX": "1",
    "WEBHOOK_RECONCILE_MIN_AGE": "1",
}


def apply(settings: Any, values: dict[str, str]) -> None:
    for name, value in values.items():
        current = getattr(settings, name)
        if isinstance(current, list):
            setattr(settings, name, value.split(","))
        else:
            setattr(settings, name, type(current)(value))


@pytest.fixture(scope="session")
def receiver_server() -> Iterator[Receiver]:
    server = Receiver().start()
    yield server
    server.stop()


@pytest.fixture
def receiver(receiver_server: Receiver) -> Iterator[Receiver]:
    receiver_server.reset()
    yield receiver_server
    receiver_server.reset()


@pytest.fixture
def fast(settings: Any, db: Any) -> Any:
    apply(settings, FAST)
    return settings


@pytest.fixture
def loopback(fast: Any) -> Any:
    """Deliveries may reach the receiver on 127.0.0.1."""
    apply(fast, LOOPBACK)
    return fast


def queued_job(owner: Any, **fields: Any) -> Transcription:
    return Transcription.objects.create(
        owner=owner, original_filename="x.wav", status="queued", **fields
    )


def succeed(job: Transcription, text: str = "hello there") -> Transcription:
    """Finish a job the way a worker does (attempts_finish)."""
    Transcription.objects.filter(pk=job.pk).update(status="running", attempts=1)
    job.refresh_from_db()
    assert attempts.attempt_finish(
        attempts.succeeded(
            job,
            text=text,
            segments=[{"start": 0.0, "end": 1.0, "text": text}],
            language="en",
            meta={},
            duration=1.0,
            engine="synthetic",
            model="m",
            device="cpu",
            engine_seconds=0.1,
        )
    )
    job.refresh_from_db()
    return job
