"""Webhooks through a real Celery worker (the Procfile's worker_webhooks: the
webhooks queue on threads) and a real receiver: retries in order, a 410, nothing lost
and nothing sent under a new webhook-id when the delivering worker is SIGKILLed
mid-call, and a fault run of many jobs."""

from __future__ import annotations

import time
from collections.abc import Callable
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from asr.services import lifecycle
from tests import processes
from tests.factories import UserFactory
from tests.webhooks.conftest import FAST
from tests.webhooks.conftest import LOOPBACK
from tests.webhooks.conftest import queued_job
from tests.webhooks.receiver import Receiver
from webhooks import services
from webhooks.models import WebhookDelivery
from webhooks.models import WebhookEndpoint

pytestmark = pytest.mark.pipeline
State = WebhookDelivery.State
PATIENCE = 60


def start_webhooks_worker(**env: str) -> processes.Process:
    return processes.start_worker(
        queues="webhooks", pool="threads", concurrency=8, **{**FAST, **LOOPBACK, **env}
    )


@pytest.fixture
def webhooks_worker(transactional_db: Any) -> Iterator[processes.Process]:
    proc = start_webhooks_worker()
    yield proc
    proc.stop()


def wait_until(predicate: Callable[[], Any], timeout: float = PATIENCE) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"{predicate} not true after {timeout}s")


def finish(owner: Any) -> Any:
    """A job finished (cancelled) by this process: its deliveries are committed with
    it and their tasks sent on commit, as any finish does."""
    return lifecycle.transcription_cancel(transcription=queued_job(owner))


def settled(job_ids: list[Any]) -> bool:
    rows = WebhookDelivery.objects.filter(job_id__in=job_ids)
    return (
        bool(rows.count())
        and not rows.exclude(state__in=[State.DELIVERED, State.FAILED]).exists()
    )


def test_retries_come_in_order_with_one_webhook_id_and_410_turns_it_off(
    transactional_db: Any, loopback: Any, receiver: Receiver, webhooks_worker: Any
) -> None:
    # given
    user = UserFactory()
    flaky = services.endpoint_create(owner=user, url=receiver.url("/flaky"))
    gone = services.endpoint_create(owner=user, url=receiver.url("/gone"))
    receiver.script("/flaky", 500, ("retry_after", 503, 1), 200, secret=flaky.secret)
    receiver.script("/gone", 410, secret=gone.secret)
    # when
    job = finish(user)
    # then
    wait_until(lambda: settled([job.pk]))
    row = WebhookDelivery.objects.get(job_id=job.pk, endpoint=flaky)
    assert row.state == State.DELIVERED
    calls = receiver.calls("/flaky")
    assert [call.answered for call in calls] == [500, 503, 200]
    assert {call.webhook_id for call in calls} == {row.webhook_id}
    assert all(call.payload is not None for call in calls), "a signature failed"
    assert calls[2].at - calls[1].at >= 1.0  # Retry-After: 1
    assert list(row.attempt_log.values_list("status_code", flat=True)) == [
        500,
        503,
        200,
    ]
    assert (
        WebhookDelivery.objects.get(job_id=job.pk, endpoint=gone).state == State.FAILED
    )
    assert not WebhookEndpoint.objects.get(pk=gone.pk).is_active
    assert len(receiver.calls("/gone")) == 1


def test_a_worker_killed_mid_call_loses_nothing_and_the_id_stays(
    transactional_db: Any, loopback: Any, receiver: Receiver
) -> None:
    # given: a worker whose call waits long enough on a receiver that hangs
    patient = start_webhooks_worker(WEBHOOK_TIMEOUT="60")
    try:
        user = UserFactory()
        hook = services.endpoint_create(owner=user, url=receiver.url("/hang"))
        receiver.script("/hang", "hang", 200, secret=hook.secret)
        job = finish(user)
        wait_until(lambda: receiver.calls("/hang"))
        row = WebhookDelivery.objects.get(job_id=job.pk)
        assert row.state == State.SENDING
        # when: SIGKILL mid-call, another worker starts, and the lease runs out
        patient.kill()
        survivor = start_webhooks_worker()
        WebhookDelivery.objects.filter(pk=row.pk).update(
            lease_until=timezone.now() - timedelta(seconds=1)
        )
        services.webhooks_reconcile(min_age=0)
        # then
        wait_until(lambda: settled([job.pk]))
        row.refresh_from_db()
        assert row.state == State.DELIVERED
        calls = receiver.calls("/hang")
        assert len(calls) == 2
        assert {call.webhook_id for call in calls} == {row.webhook_id}
        assert [call.answered for call in calls] == [None, 200]
        assert all(call.payload is not None for call in calls)
        first, second = row.attempt_log.all()
        assert "stopped mid-call" in first.error and second.status_code == 200
        survivor.stop()
    finally:
        patient.stop()


def test_a_fault_run_loses_nothing_and_sends_nothing_under_a_new_id(
    transactional_db: Any, loopback: Any, receiver: Receiver, webhooks_worker: Any
) -> None:
    user = UserFactory()
    hook = services.endpoint_create(owner=user, url=receiver.url("/faulty"))
    receiver.script("/faulty", ("flaky", 0.2), secret=hook.secret)
    jobs = [finish(user).pk for _ in range(40)]
    wait_until(lambda: settled(jobs), timeout=120)
    rows = WebhookDelivery.objects.filter(job_id__in=jobs)
    assert rows.count() == 40
    assert set(rows.values_list("state", flat=True)) == {State.DELIVERED}
    ids_of_job: dict[str, set[str]] = {}
    for call in receiver.calls("/faulty"):
        assert call.payload is not None
        ids_of_job.setdefault(call.payload["data"]["id"], set()).add(call.webhook_id)
    assert len(ids_of_job) == 40
    assert all(len(ids) == 1 for ids in ids_of_job.values())
    ok = [c.webhook_id for c in receiver.calls("/faulty") if c.answered == 200]
    assert len(ok) == len(set(ok)) == 40
