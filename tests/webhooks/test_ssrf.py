"""SSRF: URLs that reach inside are refused when given and again at delivery, after
DNS, so a name that resolves to an internal address reaches nothing; redirects are
not followed. WEBHOOK_ALLOWED_NETWORKS is unset here unless a test sets it."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from django.utils import timezone

from kikipounamu import outbound
from kikipounamu.errors import ApplicationError
from tests.asr.test_api import upload
from tests.factories import UserFactory
from tests.webhooks.conftest import queued_job
from tests.webhooks.conftest import succeed
from tests.webhooks.receiver import Receiver
from webhooks import services
from webhooks.models import WebhookDelivery

State = WebhookDelivery.State

REFUSED = [
    ("http://127.0.0.1/hook", "loopback"),
    ("http://localhost/hook", "loopback"),  # a name that resolves to 127.0.0.1
    ("http://[::1]/hook", "loopback"),
    ("http://[::ffff:127.0.0.1]/hook", "loopback"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://10.1.2.3/hook", "private"),
    ("http://192.168.0.10/hook", "private"),
    ("http://[fd00:ec2::254]/hook", "private"),
    ("http://100.100.100.200/hook", "reserved or shared"),
    ("http://0.0.0.0/hook", "unspecified"),
    ("ftp://example.org/hook", "Only http and https"),
    ("file:///etc/passwd", "Only http and https"),
    ("http://user:pw@example.org/hook", "Credentials"),
    ("http:///hook", "no host"),
]


@pytest.mark.parametrize(("url", "why"), REFUSED)
def test_internal_and_odd_urls_are_refused_with_the_reason(url: str, why: str) -> None:
    with pytest.raises(outbound.Refused, match=why):
        outbound.url_check(url, allowed=(), resolve_name=True)


def test_public_addresses_and_unresolved_names_pass() -> None:
    outbound.url_check("https://93.184.215.14/hook", allowed=(), resolve_name=True)
    # Not resolvable now: checked again at every connection.
    outbound.url_check(
        "https://no-such-host.invalid/hook", allowed=(), resolve_name=True
    )


def test_allowed_networks_open_exceptions() -> None:
    allowed = outbound.networks(["10.0.0.0/8", "::1"])
    outbound.address_check(ipaddress.ip_address("10.9.9.9"), allowed=allowed)
    outbound.address_check(ipaddress.ip_address("::1"), allowed=allowed)
    with pytest.raises(outbound.Refused):
        outbound.address_check(ipaddress.ip_address("127.0.0.1"), allowed=allowed)


def test_a_subscription_to_an_internal_url_is_a_400_saying_why(db: Any) -> None:
    with pytest.raises(ApplicationError) as caught:
        services.endpoint_create(owner=UserFactory(), url="http://localhost:8000/x")
    assert caught.value.code == "invalid_url"
    assert caught.value.status_code == 400
    assert "loopback" in caught.value.message


def _delivery_to(url: str) -> WebhookDelivery:
    """A delivery owed to ``url``, as if the URL had passed when it was given (a
    name that resolved elsewhere then: DNS rebinding)."""
    user = UserFactory()
    job = succeed(queued_job(user, webhook_url="https://example.org/hook"))
    row = WebhookDelivery.objects.get(job_id=job.pk)
    WebhookDelivery.objects.filter(pk=row.pk).update(url=url)
    row.refresh_from_db()
    return row


def test_at_delivery_a_name_that_resolves_to_loopback_reaches_nothing(
    fast: Any, receiver: Receiver
) -> None:
    row = _delivery_to(receiver.url("/inside", host="localhost"))
    services.webhook_deliver(delivery_id=str(row.pk), owner="t")
    row.refresh_from_db()
    assert row.state == State.FAILED
    assert "localhost resolves to 127.0.0.1 is a loopback address" in row.last_error
    assert receiver.calls("/inside") == []


def test_a_redirect_to_the_metadata_address_is_not_followed(
    fast: Any, receiver: Receiver
) -> None:
    # The receiver itself is let in; where it redirects to is never asked.
    fast.WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    receiver.script("/moved", ("redirect", "http://169.254.169.254/latest/meta-data/"))
    row = _delivery_to(receiver.url("/moved"))
    services.webhook_deliver(delivery_id=str(row.pk), owner="t")
    row.refresh_from_db()
    assert row.last_status_code == 302
    assert "redirects are not followed" in row.last_error
    assert [call.path for call in receiver.received] == ["/moved"]
    # Counted as a client error: given up after a few, never followed.
    for _ in range(5):
        WebhookDelivery.objects.filter(pk=row.pk).update(next_attempt_at=timezone.now())
        services.webhook_deliver(delivery_id=str(row.pk), owner="t")
    row.refresh_from_db()
    assert row.state == State.FAILED
    assert {call.path for call in receiver.received} == {"/moved"}


def test_a_job_submitted_with_an_internal_webhook_url_is_a_400(
    api_client: Any,
) -> None:
    response = api_client.post(
        "/api/v1/transcriptions",
        {"file": upload(), "webhook_url": "http://169.254.169.254/"},
        format="multipart",
    )
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid_url"
    assert "link-local" in error["message"]
