"""Delivering a chat's reply parts: one at a time, in order, under a per-chat lease
(``bots.services.lease``); each part marked before its Bot API call and recorded
after it, so that a retried or redelivered task skips what was delivered."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from django.conf import settings
from django.db.models import F
from django.utils import timezone

from asr import formats
from bots import selectors
from bots.models import TelegramChat
from bots.models import TelegramReply
from bots.services.lease import Holding
from bots.services.lease import lease_claim
from bots.services.lease import lease_hold_until_retry
from bots.services.lease import lease_kept
from bots.services.lease import lease_release
from bots.services.retry import backoff
from bots.transport import bot_api
from bots.transport import text as texts
from kikipounamu.logs import log_context

logger = logging.getLogger(__name__)

Reply = TelegramReply
Method = TelegramReply.Method
PartState = TelegramReply.State


@dataclass(frozen=True)
class DeliveryOutcome:
    """What one delivery run did, and whether its task should run again."""

    delivered: int = 0
    retry_in: float | None = None
    busy: bool = False  # another task holds the chat's lease


def telegram_chat_deliver(*, chat_id: int, owner: str) -> DeliveryOutcome:
    """Send the chat's undelivered parts in order, each exactly once where the Bot
    API allows it (see ``_deliver_part``). Returns when none is left, when another
    task holds the chat, or when the caller should retry after a delay.

    The chat's lease (``bots.services.lease``) is taken before each part and renewed
    by this process while the part's call runs, however long it takes.
    """
    with lease_kept(chat_id, owner) as holding:
        return _chat_deliver(chat_id, owner, holding)


def _chat_deliver(chat_id: int, owner: str, holding: Holding) -> DeliveryOutcome:
    delivered = 0
    while True:
        if not lease_claim(chat_id, owner):
            return DeliveryOutcome(delivered, busy=True)
        holding.claimed()
        not_before = (
            TelegramChat.objects.filter(pk=chat_id)
            .values_list("delivery_not_before", flat=True)
            .first()
        )
        wait = (not_before - timezone.now()).total_seconds() if not_before else 0
        if wait > 0:
            # Retried before its back-off ended: the lease stays held through it.
            lease_hold_until_retry(chat_id, owner, wait)
            return DeliveryOutcome(delivered, retry_in=wait)
        part = selectors.reply_next(chat_id=chat_id)
        if part is None:
            lease_release(chat_id, owner)
            # A part committed while we held the lease found it taken and left:
            # look once more now that the lease is free.
            if selectors.reply_undelivered_exists(chat_id=chat_id):
                continue
            return DeliveryOutcome(delivered)
        with log_context(telegram_update_id=part.update.update_id):
            retry_in, sent = _deliver_part(part)
        delivered += sent
        if retry_in is not None:
            lease_hold_until_retry(chat_id, owner, retry_in)
            return DeliveryOutcome(delivered, retry_in=retry_in)


def _edit_target(part: TelegramReply) -> int | None:
    ack = part.edit_of
    if ack is None or ack.state != PartState.SENT:
        return None
    return ack.telegram_message_id


def _document(part: TelegramReply) -> tuple[bytes, str]:
    """The document's bytes, rendered from the job's row now."""
    job = part.job
    result = job.transcription if job else None
    if result is None:
        raise ValueError("the transcription of this document was deleted")
    body = formats.render(part.document_format, result.text, result.segments)
    return body.encode(), f"transcript-{str(result.id)[:8]}.{part.document_format}"


def _call(part: TelegramReply) -> int:
    """The Bot API call for one part; the id of the message that now holds it."""
    if part.method == Method.EDIT:
        target = _edit_target(part)
        if target is not None:
            bot_api.edit_message_text(
                chat_id=part.chat_id, message_id=target, text=part.text
            )
            return target
        # The acknowledgement never made it: say it in a message of its own.
    if part.method == Method.DOCUMENT:
        content, filename = _document(part)
        return bot_api.send_document(
            chat_id=part.chat_id,
            content=content,
            filename=filename,
            caption=part.text[: texts.MAX_CAPTION_LENGTH],
            reply_to=part.reply_to_message_id,
        )
    return bot_api.send_message(
        chat_id=part.chat_id, text=part.text, reply_to=part.reply_to_message_id
    )


def _mark_sent(part: TelegramReply, message_id: int | None) -> None:
    Reply.objects.filter(pk=part.pk).update(
        state=PartState.SENT,
        telegram_message_id=message_id,
        sent_at=timezone.now(),
        last_error="",
    )


def _deliver_part(part: TelegramReply) -> tuple[float | None, int]:
    """Make one Bot API call for ``part``; (seconds until a retry or None, 1 if
    delivered else 0).

    The part is marked ``sending`` and committed before the call, and ``sent`` with
    the message id after it. Edits are idempotent: Telegram answers "message is not
    modified" to a repeat, which counts as delivered. A new message is not: if the
    process dies between Telegram's acceptance and our commit, or the answer times
    out, the repeat sends it a second time. That window is the one left.
    """
    age = (timezone.now() - part.created_at).total_seconds()
    if age > settings.TELEGRAM_GIVE_UP_SECONDS:
        _part_give_up(part, f"undelivered after {age / 3600:.1f} h")
        return None, 0
    if not Reply.objects.filter(pk=part.pk, state__in=Reply.UNDELIVERED).update(
        state=PartState.SENDING, attempts=F("attempts") + 1
    ):
        return None, 0  # given up meanwhile (the reconciler): nothing to send
    try:
        message_id = _call(part)
    except Exception as exc:
        failure = bot_api.classify(exc)
    else:
        _mark_sent(part, message_id)
        logger.info(
            "chat %s: part %s (%s of update %s) delivered as message %s",
            part.chat_id,
            part.pk,
            part.key,
            part.update_id,
            message_id,
        )
        return None, 1
    return _after_failure(part, failure)


def _after_failure(
    part: TelegramReply, failure: bot_api.Failure
) -> tuple[float | None, int]:
    """What a failed call means for ``part``: as ``_deliver_part`` answers."""
    if failure.kind == "not_modified":
        # Our earlier edit went through; its answer was lost.
        _mark_sent(part, _edit_target(part))
        logger.info(
            "chat %s: part %s was already delivered (not modified)",
            part.chat_id,
            part.pk,
        )
        return None, 1
    if failure.kind == "edit_target_gone":
        # The acknowledgement was deleted: send the text as a new message instead.
        Reply.objects.filter(pk=part.pk).update(
            method=Method.SEND, state=PartState.PENDING, last_error=failure.message
        )
        return None, 0
    if failure.kind == "permanent":
        _part_give_up(part, failure.message)
        return None, 0
    if failure.kind == "rate_limited":
        # Telegram refused it, so it was not sent: pending again, not "sending".
        Reply.objects.filter(pk=part.pk).update(
            state=PartState.PENDING, last_error=failure.message
        )
        logger.info(
            "chat %s: part %s rate limited, retry after %.1f s",
            part.chat_id,
            part.pk,
            failure.retry_after or 0,
        )
        return failure.retry_after or 1.0, 0
    errors = part.errors + 1
    if errors >= settings.TELEGRAM_DELIVERY_MAX_ATTEMPTS:
        Reply.objects.filter(pk=part.pk).update(errors=errors)
        _part_give_up(part, f"{errors} failures, the last: {failure.message}")
        return None, 0
    Reply.objects.filter(pk=part.pk).update(
        # An answer that timed out may hide a success: the next attempt repeats
        # the call either way, but the row says the outcome is unknown.
        state=PartState.SENDING if failure.ambiguous else PartState.PENDING,
        errors=errors,
        last_error=failure.message,
    )
    delay = backoff(errors)
    logger.warning(
        "chat %s: part %s failed (%s), retry %d in %.1f s",
        part.chat_id,
        part.pk,
        failure.message,
        errors,
        delay,
    )
    return delay, 0


def _part_give_up(part: TelegramReply, reason: str) -> None:
    Reply.objects.filter(pk=part.pk, state__in=Reply.UNDELIVERED).update(
        state=PartState.FAILED, last_error=reason
    )
    logger.error(
        "chat %s: part %s (%s of update %s) given up: %s",
        part.chat_id,
        part.pk,
        part.key,
        part.update_id,
        reason,
    )


def telegram_delivery_release(*, chat_id: int, owner: str) -> None:
    """Let go of a chat's lease (a task out of retries): the reconciler goes on."""
    lease_release(chat_id, owner)
