"""Deliveries from finished jobs, and what each answer of a receiver means; the calls
go to a real HTTP receiver on 127.0.0.1 that verifies signatures with the
`standardwebhooks` package."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.db import transaction
from django.utils import timezone

from asr.models import Transcription
from asr.services import attempts
from asr.services import lifecycle
from tests.factories import UserFactory
from tests.webhooks.conftest import queued_job
from tests.webhooks.conftest import succeed
from tests.webhooks.receiver import Receiver
from webhooks import services
from webhooks.models import EventType
from webhooks.models import WebhookDelivery
from webhooks.models import WebhookEndpoint
from webhooks.services import delivery as delivery_service

State = WebhookDelivery.State


def endpoint(owner: Any, url: str, **fields: Any) -> WebhookEndpoint:
    return services.endpoint_create(owner=owner, url=url, **fields)


def attempt(delivery: WebhookDelivery) -> WebhookDelivery:
    """One attempt, due now (the tests do not wait out back-offs)."""
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        next_attempt_at=timezone.now()
    )
    services.webhook_deliver(delivery_id=str(delivery.pk), owner="test-task")
    delivery.refresh_from_db()
    return delivery


# Delivery rows: one per receiver, written with the finish -------------------------


def test_a_finish_writes_one_delivery_per_endpoint_that_wants_its_event(
    loopback: Any, receiver: Receiver
) -> None:
    # given
    user = UserFactory()
    everything = endpoint(user, receiver.url("/all"))
    endpoint(user, receiver.url("/failures"), events=[EventType.FAILED])
    off = endpoint(user, receiver.url("/off"))
    services.endpoint_update(endpoint=off, is_active=False)
    endpoint(UserFactory(), receiver.url("/someone-else"))
    job = queued_job(user, webhook_url=receiver.url("/job"))
    # when
    job = succeed(job)
    # then
    rows = WebhookDelivery.objects.filter(job_id=job.pk)
    assert sorted(rows.values_list("url", flat=True)) == [
        receiver.url("/all"),
        receiver.url("/job"),
    ]
    row = rows.get(endpoint=everything)
    assert row.event_type == EventType.SUCCEEDED and row.state == State.PENDING
    body = json.loads(row.body)
    assert body["type"] == "transcription.succeeded"
    assert body["data"]["id"] == str(job.pk)
    assert body["data"]["status"] == "succeeded"
    assert body["data"]["links"]["self"].endswith(f"/api/v1/transcriptions/{job.pk}")
    assert body["data"]["links"]["self"].startswith("http")
    assert "text" not in body["data"]  # links only, unless asked


def test_the_text_is_in_the_payload_only_when_asked(
    loopback: Any, receiver: Receiver
) -> None:
    user = UserFactory()
    endpoint(user, receiver.url("/text"), include_text=True)
    job = succeed(queued_job(user), text="words words")
    body = json.loads(WebhookDelivery.objects.get(job_id=job.pk).body)
    assert body["data"]["text"] == "words words"
    assert body["data"]["segments"][0]["text"] == "words words"


def test_every_way_a_job_finishes_owes_its_event(
    loopback: Any, receiver: Receiver
) -> None:
    user = UserFactory()
    endpoint(user, receiver.url("/all"))
    cancelled = lifecycle.transcription_cancel(transcription=queued_job(user))
    running = queued_job(user)
    Transcription.objects.filter(pk=running.pk).update(status="running", attempts=1)
    attempts.transcription_fail_unheld(
        Transcription.objects.filter(pk=running.pk, status="running"),
        transcription_id=running.pk,
        failure=attempts.worker_lost(),
    )
    live = queued_job(user, source=Transcription.Source.LIVE)
    succeed(live)
    kinds = dict(WebhookDelivery.objects.values_list("job_id", "event_type"))
    assert kinds == {
        cancelled.pk: EventType.CANCELLED,
        running.pk: EventType.FAILED,
        live.pk: EventType.LIVE_FINISHED,
    }


def test_no_delivery_outlives_a_finish_that_was_rolled_back(
    loopback: Any, receiver: Receiver
) -> None:
    user = UserFactory()
    endpoint(user, receiver.url("/all"))
    job = queued_job(user)
    with pytest.raises(RuntimeError), transaction.atomic():
        lifecycle.transcription_cancel(transcription=job)
        raise RuntimeError("the finish's transaction fails after the event")
    job.refresh_from_db()
    assert job.status == "queued"
    assert not WebhookDelivery.objects.exists()


def test_a_job_without_subscribers_costs_no_delivery(db: Any) -> None:
    succeed(queued_job(UserFactory()))
    succeed(queued_job(None))
    assert not WebhookDelivery.objects.exists()


# Attempts: signed, and what each answer means ---------------------------------------


def test_a_2xx_delivers_it_signed_the_standard_way(
    loopback: Any, receiver: Receiver
) -> None:
    user = UserFactory()
    hook = endpoint(user, receiver.url("/ok"))
    receiver.script("/ok", 200, secret=hook.secret)
    job = succeed(queued_job(user))
    row = attempt(WebhookDelivery.objects.get(job_id=job.pk))
    assert row.state == State.DELIVERED and row.delivered_at is not None
    (call,) = receiver.calls("/ok")
    assert call.payload is not None, "the signature did not verify"
    assert call.payload["data"]["id"] == str(job.pk)
    assert call.webhook_id == row.webhook_id
    assert call.headers["content-type"] == "application/json"
    assert call.headers["host"] == f"127.0.0.1:{receiver.port}"
    (logged,) = row.attempt_log.all()
    assert logged.status_code == 200 and logged.finished_at is not None


def test_a_job_webhook_is_signed_with_the_owners_job_secret(
    loopback: Any, receiver: Receiver
) -> None:
    user = UserFactory()
    _, secret = services.job_secret_rotate(owner=user)
    receiver.script("/job", 200, secret=secret)
    job = succeed(queued_job(user, webhook_url=receiver.url("/job")))
    assert attempt(WebhookDelivery.objects.get(job_id=job.pk)).state == State.DELIVERED
    assert receiver.calls("/job")[0].payload is not None


def test_after_a_rotation_both_secrets_verify_for_a_while(
    loopback: Any, receiver: Receiver
) -> None:
    user = UserFactory()
    hook = endpoint(user, receiver.url("/rotated"))
    old = hook.secret
    new = services.endpoint_secret_rotate(endpoint=hook)
    assert new != old and new.startswith("whsec_")
    for path, secret in (("/rotated", old), ("/rotated", new)):
        receiver.script(path, 200, secret=secret)
        job = succeed(queued_job(user))
        attempt(WebhookDelivery.objects.get(job_id=job.pk))
        assert receiver.calls(path)[-1].payload is not None
        receiver.reset()
    signature = None
    receiver.script("/rotated", 200, secret=new)
    job = succeed(queued_job(user))
    attempt(WebhookDelivery.objects.get(job_id=job.pk))
    signature = receiver.calls("/rotated")[0].headers["webhook-signature"]
    assert len(signature.split(" ")) == 2  # v1,<new> v1,<old>


def test_5xx_and_timeouts_are_retried_with_the_same_id_and_a_growing_wait(
    loopback: Any, receiver: Receiver
) -> None:
    user = UserFactory()
    hook = endpoint(user, receiver.url("/flaky"))
    receiver.script("/flaky", 500, 503, "hang", 200, secret=hook.secret)
    row = WebhookDelivery.objects.get(job_id=succeed(queued_job(user)).pk)
    waits = []
    for _ in range(3):
        before = timezone.now()
        row = attempt(row)
        assert row.state == State.PENDING
        waits.append((row.next_attempt_at - before).total_seconds())
    assert "timed out" in row.last_error
    assert waits[0] < waits[1] <= 1.2  # 0.2 s, 0.4 s, ... at most WEBHOOK_RETRY_MAX
    assert attempt(row).state == State.DELIVERED
    calls = receiver.calls("/flaky")
    assert len(calls) == 4
    assert {call.webhook_id for call in calls} == {row.webhook_id}
    assert all(call.payload is not None for call in calls)
    log = list(row.attempt_log.values_list("status_code", flat=True))
    assert log == [500, 503, None, 200]


def test_retry_after_says_when(loopback: Any, receiver: Receiver) -> None:
    loopback.WEBHOOK_RETRY_MAX = 60  # Retry-After is bounded by it
    user = UserFactory()
    endpoint(user, receiver.url("/slow-down"))
    receiver.script("/slow-down", ("retry_after", 429, 7))
    row = WebhookDelivery.objects.get(job_id=succeed(queued_job(user)).pk)
    before = timezone.now()
    row = attempt(row)
    assert row.state == State.PENDING and row.last_status_code == 429
    assert 6.5 <= (row.next_attempt_at - before).total_seconds() <= 7.5


def test_410_gives_up_and_turns_the_endpoint_off(
    loopback: Any, receiver: Receiver
) -> None:
    user = UserFactory()
    hook = endpoint(user, receiver.url("/gone"))
    receiver.script("/gone", 410)
    first = WebhookDelivery.objects.get(job_id=succeed(queued_job(user)).pk)
    second = WebhookDelivery.objects.get(job_id=succeed(queued_job(user)).pk)
    assert attempt(first).state == State.FAILED
    hook.refresh_from_db()
    assert not hook.is_active and "410" in hook.disabled_reason
    # What was still owed to it is not sent, and nothing new is owed.
    assert attempt(second).state == State.FAILED
    succeed(queued_job(user))
    assert WebhookDelivery.objects.count() == 2
    assert len(receiver.calls("/gone")) == 1


def test_other_4xx_stop_after_a_few_tries(loopback: Any, receiver: Receiver) -> None:
    user = UserFactory()
    endpoint(user, receiver.url("/bad"))
    receiver.script("/bad", 400)
    row = WebhookDelivery.objects.get(job_id=succeed(queued_job(user)).pk)
    states = [attempt(row).state for _ in range(3)]
    assert states == [State.PENDING, State.PENDING, State.FAILED]
    assert len(receiver.calls("/bad")) == 3


def test_a_delivery_is_given_up_after_its_attempts(
    loopback: Any, receiver: Receiver
) -> None:
    loopback.WEBHOOK_MAX_ATTEMPTS = 3
    user = UserFactory()
    endpoint(user, receiver.url("/down"))
    receiver.script("/down", 500)
    row = WebhookDelivery.objects.get(job_id=succeed(queued_job(user)).pk)
    assert [attempt(row).state for _ in range(4)] == [
        State.PENDING,
        State.PENDING,
        State.FAILED,
        State.FAILED,
    ]
    assert len(receiver.calls("/down")) == 3


def test_a_failed_delivery_is_resent_by_hand_with_its_id(
    loopback: Any, receiver: Receiver
) -> None:
    user = UserFactory()
    endpoint(user, receiver.url("/later"))
    receiver.script("/later", 400, 400, 400, 200)
    row = WebhookDelivery.objects.get(job_id=succeed(queued_job(user)).pk)
    while row.state != State.FAILED:
        row = attempt(row)
    row = services.webhook_delivery_resend(delivery=row)
    assert row.state == State.PENDING and row.attempts == 0
    assert attempt(row).state == State.DELIVERED
    assert {c.webhook_id for c in receiver.calls("/later")} == {row.webhook_id}
    assert row.attempt_log.count() == 4


def test_an_attempt_is_claimed_once(loopback: Any, receiver: Receiver) -> None:
    user = UserFactory()
    endpoint(user, receiver.url("/once"))
    row = WebhookDelivery.objects.get(job_id=succeed(queued_job(user)).pk)
    attempt(row)
    # A second copy of the task (a redelivered message, the reconciler's) finds it
    # delivered and calls no one.
    services.webhook_deliver(delivery_id=str(row.pk), owner="another-task")
    assert len(receiver.calls("/once")) == 1


def test_the_reconciler_takes_back_a_delivery_whose_worker_died_mid_call(
    loopback: Any, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[list[str]] = []
    monkeypatch.setattr(
        "webhooks.services.dispatch.enqueue_deliveries",
        lambda ids, **_: sent.append([str(pk) for pk in ids]),
    )
    user = UserFactory()
    endpoint(user, receiver.url("/x"))
    row = WebhookDelivery.objects.get(job_id=succeed(queued_job(user)).pk)
    # As a killed worker leaves it: claimed, an attempt begun, no outcome.
    past = timezone.now() - timedelta(seconds=1)
    WebhookDelivery.objects.filter(pk=row.pk).update(
        state=State.SENDING, lease_owner="dead-task", lease_until=past, attempts=1
    )
    row.attempt_log.create()
    counts = services.webhooks_reconcile(min_age=0)
    assert counts["taken_back"] == 1 and [str(row.pk)] in sent
    row.refresh_from_db()
    assert row.state == State.PENDING
    assert "stopped mid-call" in row.attempt_log.get().error


def test_backoff_schedule_is_the_documented_one(settings: Any) -> None:
    waits = [delivery_service.backoff_seconds(n) for n in range(1, 10)]
    assert waits[:4] == [5, 20, 80, 320]
    assert waits[-1] == settings.WEBHOOK_RETRY_MAX == 6 * 3600
    assert sum(waits) / 3600 < settings.WEBHOOK_GIVE_UP_SECONDS / 3600
