"""One attempt at a delivery, and what its answer means.

An attempt claims the delivery with a conditional UPDATE (pending and due -> sending,
under a lease named by its task), writes its attempt row, makes the call, and records
the outcome only while it still holds the lease. Rules of an answer:

- 2xx: delivered;
- 410 Gone: the receiver wants no more: the delivery fails and its endpoint is
  turned off;
- 408, 429, 5xx, a time-out, a connection error: retried later (exponential
  back-off; a ``Retry-After`` header says when instead);
- another 4xx, or a redirect (never followed): retried, but given up after
  ``WEBHOOK_MAX_CLIENT_ERRORS`` of them;
- an address we may not send to (SSRF rules, checked after DNS): failed at once;
- past ``WEBHOOK_MAX_ATTEMPTS`` or ``give_up_at``: failed.

The ``webhook-id`` is the delivery's, on every attempt; the timestamp and signature
are the attempt's own.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from datetime import timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import httpcore
from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from kikipounamu import outbound
from kikipounamu.errors import ApplicationError
from kikipounamu.logs import log_context
from webhooks.models import WebhookAttempt
from webhooks.models import WebhookDelivery
from webhooks.models import WebhookEndpoint
from webhooks.services import dispatch
from webhooks.services.secrets import signature_headers
from webhooks.services.subscriptions import job_secret_for

logger = logging.getLogger(__name__)

State = WebhookDelivery.State
USER_AGENT = "kikipounamu-webhooks/1"
# The lease outlasts the call's deadline by this much: the database writes around it
# (a delivery whose lease ran out while its outcome was being written is sent again,
# with the same webhook-id).
_LEASE_MARGIN_SECONDS = 10
_RETRIED_4XX = (408, 429)

_pool_lock = threading.Lock()
_pool: tuple[tuple[Any, ...], httpcore.ConnectionPool] | None = None


def _client() -> httpcore.ConnectionPool:
    """The process's connection pool (thread-safe; made anew if the settings that
    shape it change, as tests do)."""
    global _pool
    key = (outbound.allowed_networks(), settings.WEBHOOK_MAX_CONNECTIONS)
    with _pool_lock:
        if _pool is None or _pool[0] != key:
            _pool = (
                key,
                outbound.pool(allowed=key[0], max_connections=key[1]),
            )
        return _pool[1]


def lease_seconds() -> float:
    return settings.WEBHOOK_TIMEOUT + _LEASE_MARGIN_SECONDS


def backoff_seconds(attempt: int) -> float:
    """The wait after failed attempt number ``attempt`` (1, 2, ...), before jitter."""
    delay = settings.WEBHOOK_RETRY_BASE * settings.WEBHOOK_RETRY_FACTOR ** (attempt - 1)
    return float(min(delay, settings.WEBHOOK_RETRY_MAX))


def retry_after_seconds(value: str | None, *, now: datetime) -> float | None:
    """A ``Retry-After`` header (seconds, or an HTTP date), bounded by
    ``WEBHOOK_RETRY_MAX``; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - now).total_seconds()
        except (TypeError, ValueError):
            return None
    return max(0.0, min(seconds, settings.WEBHOOK_RETRY_MAX))


@dataclass(frozen=True)
class Result:
    """What one call came to."""

    status_code: int | None = None
    error: str = ""
    excerpt: str = ""
    retry_after: float | None = None
    # Not to be sent (the SSRF rules refused the address, the endpoint is off):
    # retrying cannot help.
    refused: bool = False


def _call(delivery: WebhookDelivery, secrets_: list[str]) -> Result:
    now = timezone.now()
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        **signature_headers(
            webhook_id=delivery.webhook_id,
            body=delivery.body,
            secrets_=secrets_,
            at=now,
        ),
    }
    try:
        answer = outbound.post(
            _client(),
            delivery.url,
            body=delivery.body.encode(),
            headers=headers,
            timeout=settings.WEBHOOK_TIMEOUT,
            connect_timeout=settings.WEBHOOK_CONNECT_TIMEOUT,
        )
    except outbound.Refused as exc:
        return Result(error=f"refused: {exc}", refused=True)
    except httpcore.TimeoutException as exc:
        return Result(error=f"timed out: {exc or type(exc).__name__}")
    except (httpcore.NetworkError, httpcore.ProtocolError, OSError) as exc:
        return Result(error=f"{type(exc).__name__}: {exc}")
    return Result(
        status_code=answer.status,
        excerpt=answer.body.decode("utf-8", "replace"),
        retry_after=retry_after_seconds(answer.headers.get("retry-after"), now=now),
    )


def webhook_deliver(*, delivery_id: str, owner: str) -> None:
    """One attempt at the delivery, if it is due and no one else holds it; the next
    one is scheduled (a delayed task, or the reconciler's when it is far off)."""
    now = timezone.now()
    # The claim and its attempt row in one write: a worker killed after it leaves
    # an attempt without an outcome, which the reconciler closes.
    with transaction.atomic():
        if not WebhookDelivery.objects.filter(
            pk=delivery_id, state=State.PENDING, next_attempt_at__lte=now
        ).update(
            state=State.SENDING,
            lease_owner=owner,
            lease_until=now + timedelta(seconds=lease_seconds()),
            attempts=F("attempts") + 1,
        ):
            return  # delivered, given up, held by another task, or not due yet
        attempt = WebhookAttempt.objects.create(
            delivery_id=delivery_id, started_at=now, worker=settings.WORKER_HOSTNAME
        )
    delivery = WebhookDelivery.objects.select_related("endpoint").get(pk=delivery_id)
    with log_context(job_id=str(delivery.job_id)):
        _attempt(delivery, attempt, owner=owner)


def _attempt(delivery: WebhookDelivery, attempt: WebhookAttempt, *, owner: str) -> None:
    endpoint = delivery.endpoint
    now = timezone.now()
    if delivery.target.startswith("endpoint:") and (
        endpoint is None or not endpoint.is_active
    ):
        refusal = Result(
            error="not sent: the endpoint is turned off or gone", refused=True
        )
        _record(delivery, attempt, refusal, owner=owner, elapsed_ms=0)
        return
    if endpoint is not None:
        secrets_ = endpoint.signing_secrets(now)
    elif delivery.owner_id is not None:
        secrets_ = job_secret_for(owner_id=delivery.owner_id).signing_secrets(now)
    else:
        refusal = Result(error="not sent: no owner, so no secret", refused=True)
        _record(delivery, attempt, refusal, owner=owner, elapsed_ms=0)
        return
    started = time.monotonic()
    result = _call(delivery, secrets_)
    elapsed_ms = int((time.monotonic() - started) * 1000)
    _record(delivery, attempt, result, owner=owner, elapsed_ms=elapsed_ms)


def _outcome(
    delivery: WebhookDelivery, result: Result, now: datetime
) -> tuple[str, dict[str, Any], float | None]:
    """The delivery's next state, the fields that go with it, and the wait before
    its next attempt (retries only)."""
    code = result.status_code
    if code is not None and 200 <= code < 300:
        return State.DELIVERED, {"delivered_at": now}, None
    if result.refused:
        return State.FAILED, {}, None
    if code == 410:
        return State.FAILED, {}, None
    fields: dict[str, Any] = {}
    client_error = code is not None and code < 500 and code not in _RETRIED_4XX
    if client_error:
        fields["client_errors"] = delivery.client_errors + 1
        if fields["client_errors"] >= settings.WEBHOOK_MAX_CLIENT_ERRORS:
            return State.FAILED, fields, None
    if delivery.attempts >= settings.WEBHOOK_MAX_ATTEMPTS:
        return State.FAILED, fields, None
    wait = result.retry_after
    if wait is None:
        wait = backoff_seconds(delivery.attempts) * (1 + random.random() / 10)  # noqa: S311
    if now + timedelta(seconds=wait) > delivery.give_up_at:
        return State.FAILED, fields, None
    fields["next_attempt_at"] = now + timedelta(seconds=wait)
    return State.PENDING, fields, wait


def _describe(result: Result) -> str:
    if result.error:
        return result.error
    code = result.status_code
    if code is not None and 300 <= code < 400:
        return f"HTTP {code}: redirects are not followed"
    return f"HTTP {code}"


def _record(
    delivery: WebhookDelivery,
    attempt: WebhookAttempt,
    result: Result,
    *,
    owner: str,
    elapsed_ms: int,
) -> None:
    now = timezone.now()
    state, fields, wait = _outcome(delivery, result, now)
    error = "" if state == State.DELIVERED else _describe(result)
    with transaction.atomic():
        WebhookAttempt.objects.filter(pk=attempt.pk).update(
            finished_at=now,
            status_code=result.status_code,
            error=error,
            duration_ms=elapsed_ms,
            response_excerpt=result.excerpt,
        )
        # Only while this attempt still holds it: one that ran past its lease was
        # taken over, and the newer attempt's outcome is the one that counts.
        held = WebhookDelivery.objects.filter(
            pk=delivery.pk, state=State.SENDING, lease_owner=owner
        ).update(
            state=state,
            last_status_code=result.status_code,
            last_error=error,
            lease_owner="",
            lease_until=None,
            **fields,
        )
        if held and result.status_code == 410 and delivery.endpoint_id is not None:
            WebhookEndpoint.objects.filter(pk=delivery.endpoint_id).update(
                is_active=False,
                disabled_reason="the receiver answered 410 Gone",
                disabled_at=now,
            )
        if held and wait is not None and wait <= settings.WEBHOOK_COUNTDOWN_MAX:
            pk = delivery.pk
            transaction.on_commit(
                lambda: dispatch.enqueue_deliveries([pk], countdown=wait)
            )
    level = logging.INFO if state == State.DELIVERED else logging.WARNING
    logger.log(
        level,
        "webhook delivery %s (%s, attempt %d) to %s: %s -> %s",
        delivery.pk,
        delivery.event_type,
        delivery.attempts,
        delivery.url,
        _describe(result),
        state,
    )


def webhook_delivery_resend(*, delivery: WebhookDelivery) -> WebhookDelivery:
    """Send a failed delivery again, by hand: same ``webhook-id``, the limits counted
    afresh. Its endpoint must be on."""
    if (
        delivery.endpoint_id is not None
        and not WebhookEndpoint.objects.filter(
            pk=delivery.endpoint_id, is_active=True
        ).exists()
    ):
        raise ApplicationError(
            "Its endpoint is turned off; turn it on first (PATCH is_active).",
            code="endpoint_disabled",
            status=409,
        )
    now = timezone.now()
    with transaction.atomic():
        if not WebhookDelivery.objects.filter(
            pk=delivery.pk, state=State.FAILED
        ).update(
            state=State.PENDING,
            attempts=0,
            client_errors=0,
            next_attempt_at=now,
            give_up_at=now + timedelta(seconds=settings.WEBHOOK_GIVE_UP_SECONDS),
            last_error="",
        ):
            delivery.refresh_from_db()
            raise ApplicationError(
                f"This delivery is {delivery.state}; only a failed one is re-sent.",
                code="not_failed",
                status=409,
            )
        pk = delivery.pk
        transaction.on_commit(lambda: dispatch.enqueue_deliveries([pk]))
    delivery.refresh_from_db()
    return delivery
