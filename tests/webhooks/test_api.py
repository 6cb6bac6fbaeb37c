"""/api/v1/webhooks: subscribe (the secret shown once), change, rotate, and follow
deliveries with their attempts; a failed one re-sent by hand."""

from __future__ import annotations

from typing import Any

from rest_framework.test import APIClient

from tests.asr.test_api import upload
from tests.factories import UserFactory
from tests.webhooks.conftest import queued_job
from tests.webhooks.conftest import succeed
from tests.webhooks.receiver import Receiver
from webhooks import services
from webhooks.models import WebhookDelivery

URL = "/api/v1/webhooks"


def client_of(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_subscribe_shows_the_secret_once(loopback: Any, receiver: Receiver) -> None:
    client = client_of(UserFactory())
    created = client.post(
        URL,
        {"url": receiver.url("/hook"), "events": ["transcription.succeeded"]},
        format="json",
    )
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["secret"].startswith("whsec_")
    assert body["events"] == ["transcription.succeeded"]
    listed = client.get(URL).json()
    assert listed["count"] == 1 and "secret" not in listed["results"][0]
    detail = client.get(f"{URL}/{body['id']}").json()
    assert "secret" not in detail
    rotated = client.post(f"{URL}/{body['id']}/rotate-secret").json()
    assert (
        rotated["secret"].startswith("whsec_") and rotated["secret"] != body["secret"]
    )


def test_all_events_by_default_and_unknown_ones_refused(
    loopback: Any, receiver: Receiver
) -> None:
    client = client_of(UserFactory())
    body = client.post(URL, {"url": receiver.url("/a")}, format="json").json()
    assert body["events"] == [
        "transcription.succeeded",
        "transcription.failed",
        "transcription.cancelled",
        "live.finished",
    ]
    bad = client.post(
        URL, {"url": receiver.url("/a"), "events": ["job.done"]}, format="json"
    )
    assert bad.status_code == 400


def test_a_bad_url_is_a_400_saying_why(db: Any) -> None:
    response = client_of(UserFactory()).post(
        URL, {"url": "http://10.0.0.5/hook"}, format="json"
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_url" and "private" in error["message"]


def test_endpoints_are_their_owners_alone(loopback: Any, receiver: Receiver) -> None:
    owner = UserFactory()
    hook = services.endpoint_create(owner=owner, url=receiver.url("/mine"))
    other = client_of(UserFactory())
    assert other.get(f"{URL}/{hook.pk}").status_code == 404
    assert other.patch(f"{URL}/{hook.pk}", {"is_active": False}).status_code == 404
    assert other.delete(f"{URL}/{hook.pk}").status_code == 404
    assert client_of(owner).delete(f"{URL}/{hook.pk}").status_code == 204


def test_turn_off_and_on_again(loopback: Any, receiver: Receiver) -> None:
    owner = UserFactory()
    hook = services.endpoint_create(owner=owner, url=receiver.url("/x"))
    client = client_of(owner)
    off = client.patch(f"{URL}/{hook.pk}", {"is_active": False}, format="json").json()
    assert off["is_active"] is False and off["disabled_reason"]
    on = client.patch(f"{URL}/{hook.pk}", {"is_active": True}, format="json").json()
    assert on["is_active"] is True and on["disabled_reason"] == ""


def test_deliveries_with_attempts_and_a_resend(
    loopback: Any, receiver: Receiver
) -> None:
    owner = UserFactory()
    hook = services.endpoint_create(owner=owner, url=receiver.url("/no"))
    receiver.script("/no", 400)
    job = succeed(queued_job(owner))
    row = WebhookDelivery.objects.get(job_id=job.pk)
    for _ in range(3):
        WebhookDelivery.objects.filter(pk=row.pk).update(next_attempt_at=row.created_at)
        services.webhook_deliver(delivery_id=str(row.pk), owner="t")
    client = client_of(owner)
    listed = client.get(f"{URL}/deliveries", {"job": str(job.pk)}).json()
    (item,) = listed["results"]
    assert item["state"] == "failed" and item["webhook_id"] == row.webhook_id
    assert item["endpoint"] == str(hook.pk)
    detail = client.get(f"{URL}/deliveries/{row.pk}").json()
    assert [a["status_code"] for a in detail["attempt_log"]] == [400, 400, 400]
    assert detail["payload"]["data"]["id"] == str(job.pk)
    resent = client.post(f"{URL}/deliveries/{row.pk}/resend")
    assert resent.status_code == 202 and resent.json()["state"] == "pending"
    again = client.post(f"{URL}/deliveries/{row.pk}/resend")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "not_failed"
    assert client_of(UserFactory()).get(f"{URL}/deliveries/{row.pk}").status_code == 404


def test_the_job_secret_is_shown_when_made_or_rotated(db: Any) -> None:
    client = client_of(UserFactory())
    assert client.get(f"{URL}/job-secret").status_code == 404
    made = client.post(f"{URL}/job-secret").json()
    assert made["secret"].startswith("whsec_")
    shown = client.get(f"{URL}/job-secret").json()
    assert "secret" not in shown and shown["secret_created_at"]
    rotated = client.post(f"{URL}/job-secret").json()
    assert rotated["secret"] != made["secret"] and rotated["previous_secret_until"]


def test_a_job_takes_a_webhook_url(
    loopback: Any, receiver: Receiver, api_client: APIClient
) -> None:
    response = api_client.post(
        "/api/v1/transcriptions",
        {"file": upload(), "webhook_url": receiver.url("/job")},
        format="multipart",
    )
    assert response.status_code == 202, response.content
    assert response.json()["webhook_url"] == receiver.url("/job")
