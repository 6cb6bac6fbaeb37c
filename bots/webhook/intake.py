"""The webhook's rules: whose calls are answered, what is an update, and storing
updates once each (the group commit of ``bots.webhook.writer``).

The path of one voice message starts here: ``telegram_update_read`` (the request,
``bots.webhook.app``) says whether to store the update; ``telegram_updates_store``
(the process's writer thread) stores it with the others that arrived meanwhile, in
one transaction, under its unique ``update_id``, and the request is answered once
that commits. After commit its id goes to ``bots.process_updates`` (batched by
``bots.webhook.publisher``); the rest of the path is ``bots.services``'. A repeated
delivery is a no-op.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Sequence
from functools import partial
from typing import Any
from typing import NamedTuple
from typing import TypeGuard

from django.conf import settings
from django.db import connection
from django.db import transaction

from bots.models import TelegramUpdate
from bots.webhook import publisher
from kikipounamu import json_input
from kikipounamu.errors import ApplicationError
from kikipounamu.logs import log_context

logger = logging.getLogger(__name__)

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"  # noqa: S105 (a header's name)


def webhook_secret_valid(*, token: str | None) -> bool:
    """Compare the secret header in constant time; no secret configured refuses all."""
    expected = settings.TELEGRAM_WEBHOOK_SECRET
    if not expected:
        return False
    return hmac.compare_digest((token or "").encode(), expected.encode())


class IncomingUpdate(NamedTuple):
    """An update as the webhook accepted it, not stored yet: what goes in columns,
    and the whole payload. A plain tuple: building a model instance on the event
    loop (field defaults, a clock read through the settings) cost more than the
    rest of reading the update."""

    update_id: int
    chat_id: int
    payload: dict[str, Any]


def telegram_update_read(*, body: bytes) -> IncomingUpdate | None:
    """The webhook's body as a row to store (unsaved), or ``None`` for an update the
    bot does not act on. Raises ``ApplicationError`` (400) for a body that is not
    JSON, or not an update: see ``telegram_update_accept``."""
    try:
        payload = json_input.loads(body)
    except json_input.JSONInputError as exc:
        raise ApplicationError(str(exc), code="invalid_json") from exc
    return telegram_update_accept(payload=payload)


def telegram_update_accept(*, payload: Any) -> IncomingUpdate | None:
    """Whether to store an update: the row to store (unsaved), or ``None`` for one
    the bot does not act on: a kind it does not handle, a chat not allowed. Raises
    ``ApplicationError`` (400) for something that is not an update. Nothing is
    written here: see ``telegram_updates_store``.

    It reads only what it stores in columns, the ``update_id`` and the chat's id.
    The rest is read with python-telegram-bot's types by the task, which ignores
    what is not for the bot (chatter in a group): parsing a message into them
    costs 150-200 us of CPU, more than everything else the webhook does for an
    update, and a burst of 200 updates on two cores has 500 us per update in all.
    """
    update_id = payload.get("update_id") if isinstance(payload, dict) else None
    if not _is_int(update_id):
        raise ApplicationError(
            "This is not a Telegram update: it must be a JSON object with an integer "
            "update_id.",
            code="invalid_update",
        )
    # The one kind the webhook is registered for (ALLOWED_UPDATES in
    # bots.services.webhook_admin); another kind is an update too, that the bot
    # does not handle.
    message = payload.get("message")
    if message is None:
        return None
    chat = message.get("chat") if isinstance(message, dict) else None
    chat_id = chat.get("id") if isinstance(chat, dict) else None
    if not _is_int(chat_id):
        raise ApplicationError(
            f"Update {update_id} is not a Telegram update: its message has no chat "
            "with an integer id.",
            code="invalid_update",
        )
    allowed = settings.TELEGRAM_ALLOWED_CHAT_IDS
    if allowed and chat_id not in allowed:
        return None
    return IncomingUpdate(update_id, chat_id, payload)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def telegram_updates_store(*, updates: Sequence[IncomingUpdate]) -> list[bool]:
    """Store updates for the ``bots`` queue, each once, in one transaction (the
    webhook's group commit, see ``bots.webhook.writer``); for each, whether it is new.

    An ``update_id`` stored before, or twice in ``updates``, is a no-op: Telegram
    delivers an update again when our 200 did not reach it in time. The new rows'
    ids go to ``bots.process_updates`` after the commit (see ``bots.webhook.publisher``).
    """
    first: dict[int, IncomingUpdate] = {}
    for row in updates:
        first.setdefault(row.update_id, row)
    with transaction.atomic():
        new = _insert_new(list(first.values()))
        # Robust: a publishing failure must not turn a commit into a 5xx.
        transaction.on_commit(partial(_submit, list(new.values())), robust=True)
    stored = []
    taken: set[int] = set()
    for row in updates:
        is_new = row.update_id in new and row.update_id not in taken
        taken.add(row.update_id)
        if not is_new:
            with log_context(telegram_update_id=row.update_id):
                logger.info(
                    "update %s: already stored, repeated delivery ignored",
                    row.update_id,
                )
        stored.append(is_new)
    return stored


def _insert_new(rows: list[IncomingUpdate]) -> dict[int, int]:
    """Insert the rows whose update_id is not stored yet: {update_id: id} of those.

    One ``INSERT ... ON CONFLICT (update_id) DO NOTHING RETURNING``: the unique
    constraint decides, in the same statement, what a concurrent writer (another web
    process) or an earlier delivery already stored. Written out rather than through
    ``bulk_create(ignore_conflicts=True)``, which returns no ids for that case, and
    whose SQL building cost ~75 us a row (a third of the webhook's CPU in a burst).
    """
    meta = TelegramUpdate._meta
    quote = connection.ops.quote_name
    given = ("update_id", "chat_id", "payload")
    fields = [f for f in meta.concrete_fields if not f.primary_key]
    if not connection.features.can_return_rows_from_bulk_insert:
        # SQLite before 3.35: no RETURNING. Ask first (IMMEDIATE transactions keep
        # other writers out meanwhile on SQLite).
        stored = set(
            TelegramUpdate.objects.filter(
                update_id__in=[row.update_id for row in rows]
            ).values_list("update_id", flat=True)
        )
        fresh = [
            TelegramUpdate(**row._asdict())
            for row in rows
            if row.update_id not in stored
        ]
        TelegramUpdate.objects.bulk_create(fresh)
        return {row.update_id: row.pk for row in fresh}
    # The other columns' defaults (status, times), once for the whole batch.
    defaults = {
        f.attname: f.get_db_prep_save(f.get_default(), connection)
        for f in fields
        if f.attname not in given
    }
    params = []
    for row in rows:
        values = row._asdict()
        for f in fields:
            if f.attname in given:
                params.append(f.get_db_prep_save(values[f.attname], connection))
            else:
                params.append(defaults[f.attname])
    placeholders = "(" + ", ".join(["%s"] * len(fields)) + ")"
    columns = ", ".join(quote(str(f.column)) for f in fields)
    # Only names from the model and placeholders go into the SQL; values are params.
    sql = (
        f"INSERT INTO {quote(meta.db_table)} ({columns}) "  # noqa: S608
        f"VALUES {', '.join([placeholders] * len(rows))} "
        f"ON CONFLICT ({quote('update_id')}) DO NOTHING "
        f"RETURNING {quote(str(meta.pk.column))}, {quote('update_id')}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return {update_id: pk for pk, update_id in cursor.fetchall()}


def _submit(update_pks: list[int]) -> None:
    # Off the request's path: see bots.webhook.publisher.
    for pk in update_pks:
        publisher.submit(pk)


def telegram_update_receive(*, payload: Any) -> TelegramUpdate | None:
    """``telegram_update_accept`` then ``telegram_updates_store`` for one update,
    in this thread: what the webhook does, for the shell and the tests.

    Returns the stored row, or ``None`` for an update ignored or stored before.
    """
    row = telegram_update_accept(payload=payload)
    if row is None or not telegram_updates_store(updates=[row])[0]:
        return None
    return TelegramUpdate.objects.get(update_id=row.update_id)
