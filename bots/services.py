"""Business logic of the Telegram bot: the webhook's, the tasks' and the commands'.

The path of one voice message, and where each step's state lives:

1. ``telegram_update_read`` (webhook request, ``bots.webhook``) says whether to store
   the update; ``telegram_updates_store`` (the process's writer thread,
   ``bots.writer``) stores it with the others that arrived meanwhile, in one
   transaction, under its unique ``update_id``, and the request is answered once that
   commits. After commit its id goes to ``bots.process_updates`` (batched by
   ``bots.publisher``). A repeated delivery is a no-op.
2. ``telegram_update_process``: write the chat's replies as rows (the "Recognizing…"
   acknowledgement, or a polite refusal) and a ``TelegramJob``, in one transaction,
   then enqueue delivery and the download.
3. ``telegram_job_fetch``: getFile, download, and ``asr.services.transcription_create``
   (source telegram), the job linked to it in the same transaction.
4. ``telegram_job_answer`` (enqueued by the ``transcription_event`` receiver): read the
   result from the job's row and write the reply parts: the acknowledgement edited into
   the transcript's first part, then the rest, then .txt/.srt documents.
5. ``telegram_chat_deliver``: send a chat's parts one at a time, in order, under a
   per-chat lease; each part is marked before its call and recorded after.
6. ``telegram_reconcile`` (beat): re-enqueue whatever step's task was lost.

Every step is idempotent: it starts with a conditional UPDATE (or a unique insert)
that only one attempt can win.
"""

from __future__ import annotations

import hmac
import json
import logging
import random
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any
from typing import NamedTuple
from typing import TypeGuard

from django.conf import settings
from django.core.files import File
from django.db import connection
from django.db import transaction
from django.db.models import F
from django.db.models import Q
from django.utils import timezone
from telegram import Message
from telegram import User
from telegram import WebhookInfo

from asr import formats
from asr.languages import normalise_language
from asr.models import Transcription
from asr.ops.logs import log_context
from asr.selectors import queue_eta_seconds
from asr.selectors import transcription_queue_length
from asr.services import admission_check
from asr.services import transcription_create
from bots import bot_api
from bots import parsing
from bots import publisher
from bots import selectors
from bots import text as texts
from bots.models import TelegramChat
from bots.models import TelegramJob
from bots.models import TelegramReply
from bots.models import TelegramUpdate
from kikipounamu.errors import ApplicationError

logger = logging.getLogger(__name__)

Reply = TelegramReply
Method = TelegramReply.Method
PartState = TelegramReply.State
JobState = TelegramJob.State

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"  # noqa: S105 (a header's name)
# The update kinds the webhook is registered for; Telegram drops the others.
ALLOWED_UPDATES = ["message"]
# A processing task that failed this often (a bug, not Telegram) stops being retried.
MAX_UPDATE_ATTEMPTS = 5


class RetryLater(Exception):
    """A transient failure; the task should run again after ``countdown`` seconds."""

    def __init__(self, message: str, countdown: float) -> None:
        super().__init__(message)
        self.countdown = countdown


def backoff(errors: int) -> float:
    """Seconds to wait after the n-th consecutive failure: exponential, capped,
    with jitter so that chats that failed together do not retry together."""
    base = settings.TELEGRAM_RETRY_BACKOFF_BASE * 2 ** max(errors - 1, 0)
    return min(base, settings.TELEGRAM_RETRY_BACKOFF_MAX) * random.uniform(0.75, 1.0)  # noqa: S311


# Enqueueing ------------------------------------------------------------------------------
# Called after commit. A broker outage must not fail the request or the task that
# committed: the rows are there, and the reconciler re-enqueues what they still need.


def _enqueue(task_name: str, *args: Any) -> None:
    from bots import tasks

    try:
        getattr(tasks, task_name).delay(*args)
    except Exception:
        logger.warning(
            "%s%r: enqueue failed, left for the reconciler",
            task_name,
            args,
            exc_info=True,
        )


def enqueue_delivery(chat_id: int) -> None:
    TelegramChat.objects.filter(pk=chat_id).update(delivery_enqueued_at=timezone.now())
    _enqueue("deliver", chat_id)


def enqueue_answer(transcription_id: str) -> None:
    _enqueue("answer", transcription_id)


# Webhook ------------------------------------------------------------------------------
# bots.webhook serves the path and bots.writer commits the rows; the rules are here.


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
        payload = json.loads(body)
    except ValueError as exc:  # UnicodeDecodeError is one too
        raise ApplicationError("The body is not JSON.", code="invalid_json") from exc
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
    # The one kind the webhook is registered for (ALLOWED_UPDATES); another kind
    # is an update too, that the bot does not handle.
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
    webhook's group commit, see ``bots.writer``); for each, whether it is new.

    An ``update_id`` stored before, or twice in ``updates``, is a no-op: Telegram
    delivers an update again when our 200 did not reach it in time. The new rows'
    ids go to ``bots.process_updates`` after the commit (see ``bots.publisher``).
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
    # Off the request's path: see bots.publisher.
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


# Processing an update -------------------------------------------------------------------

_bot_username: str | None = None


def _bot_username_get() -> str:
    global _bot_username
    if settings.TELEGRAM_BOT_USERNAME:
        return str(settings.TELEGRAM_BOT_USERNAME)
    if _bot_username is None:
        try:
            _bot_username = bot_api.get_me().username or ""
        except Exception as exc:
            failure = bot_api.classify(exc)
            raise RetryLater(
                f"getMe failed: {failure.message}",
                failure.retry_after or backoff(1),
            ) from exc
    return _bot_username


def telegram_update_process(*, update_pk: int) -> None:
    """Turn a stored update into replies (and a job) in one transaction.

    Only the attempt that moves the row from ``received`` to ``processed`` writes
    anything, so a redelivered task does nothing. The chat's earlier updates still
    waiting are handled first, here: two tasks running side by side must not answer
    a chat's messages out of order.
    """
    this = (
        TelegramUpdate.objects.filter(pk=update_pk)
        .values_list("chat_id", "update_id")
        .first()
    )
    if this is None:
        return
    chat_id, update_id = this
    waiting = TelegramUpdate.objects.filter(
        chat_id=chat_id,
        status=TelegramUpdate.Status.RECEIVED,
        update_id__lte=update_id,
    ).order_by("update_id")
    for pk in list(waiting.values_list("pk", flat=True)):
        _update_process_one(pk)


def _update_process_one(update_pk: int) -> None:
    if not TelegramUpdate.objects.filter(
        pk=update_pk, status=TelegramUpdate.Status.RECEIVED
    ).update(attempts=F("attempts") + 1):
        return  # done meanwhile, by the task for a later update of the chat
    stored = TelegramUpdate.objects.get(pk=update_pk)
    with log_context(telegram_update_id=stored.update_id):
        _update_process(stored)


def _update_process(stored: TelegramUpdate) -> None:
    update_pk = stored.pk
    if stored.attempts > MAX_UPDATE_ATTEMPTS:
        TelegramUpdate.objects.filter(pk=update_pk).update(
            status=TelegramUpdate.Status.FAILED,
            error=f"processing failed {MAX_UPDATE_ATTEMPTS} times",
        )
        logger.error(
            "update %s: given up after %d attempts",
            stored.update_id,
            MAX_UPDATE_ATTEMPTS,
        )
        return
    try:
        message = parsing.parse_update(stored.payload).message
    except Exception as exc:
        # The webhook stores updates unread (see telegram_update_accept). What the
        # library cannot read now it never will: failed at once, not retried.
        TelegramUpdate.objects.filter(
            pk=update_pk, status=TelegramUpdate.Status.RECEIVED
        ).update(
            status=TelegramUpdate.Status.FAILED,
            error=f"not a Telegram update python-telegram-bot can read: {exc!r}",
        )
        logger.warning("update %s: unreadable, ignored (%r)", stored.update_id, exc)
        return
    if message is not None and not parsing.for_the_bot(message):
        message = None  # stored by the webhook, and ignored: chatter in a group
    command = parsing.command_of(message)
    # /help@otherbot in a group is not for us. Asked before the transaction: no
    # network call while holding the database's write lock.
    if (
        command is not None
        and command.addressee is not None
        and command.addressee.lower() != _bot_username_get().lower()
    ):
        command = None
        message = None
    busy = _admission(message, command)

    job: TelegramJob | None = None
    replied = False
    with transaction.atomic():
        if not TelegramUpdate.objects.filter(
            pk=update_pk, status=TelegramUpdate.Status.RECEIVED
        ).update(status=TelegramUpdate.Status.PROCESSED, processed_at=timezone.now()):
            return  # another attempt got there first
        if message is not None:
            chat = _chat_upsert(message)
            job, replied = _handle(stored, chat, message, command, busy)
            if replied:
                chat_id = chat.chat_id
                transaction.on_commit(lambda: enqueue_delivery(chat_id))
            if job is not None:
                job_pk = job.pk
                transaction.on_commit(lambda: _enqueue("fetch_audio", job_pk))
    logger.info(
        "update %s processed: %s",
        stored.update_id,
        f"telegram job {job.pk}"
        if job
        else ("replied" if replied else "nothing to do"),
    )


def _chat_upsert(message: Message) -> TelegramChat:
    chat, _ = TelegramChat.objects.get_or_create(
        chat_id=message.chat.id,
        defaults={
            "type": message.chat.type,
            "title": (message.chat.title or message.chat.username or "")[:255],
        },
    )
    return chat


def _reply(
    stored: TelegramUpdate,
    chat: TelegramChat,
    body: str,
    *,
    reply_to: int | None,
    key: str = "reply",
) -> TelegramReply:
    return Reply.objects.create(
        chat=chat,
        update=stored,
        key=key,
        method=Method.SEND,
        text=body,
        reply_to_message_id=reply_to,
    )


def _admission(
    message: Message | None, command: parsing.Command | None
) -> ApplicationError | None:
    """The pipeline's backpressure (the API's 503 busy), asked before anything is
    downloaded, and before the transaction: it reads the queue's depth in Redis."""
    if message is None:
        return None
    if command is None:
        target: Message | None = message
    elif command.name == "transcribe":
        target = message.reply_to_message
    else:
        return None
    if parsing.media_of(target) is None:
        return None
    try:
        admission_check()
    except ApplicationError as exc:
        if exc.code != "busy":
            raise
        return exc
    return None


def _handle(
    stored: TelegramUpdate,
    chat: TelegramChat,
    message: Message,
    command: parsing.Command | None,
    busy: ApplicationError | None = None,
) -> tuple[TelegramJob | None, bool]:
    """Decide what the message asks for; write the replies. (job, replied)."""
    group = parsing.is_group(message)
    here = message.message_id
    if command is not None:
        if command.name in ("start", "help"):
            _reply(
                stored,
                chat,
                texts.START if command.name == "start" else texts.HELP,
                reply_to=here,
            )
            return None, True
        if command.name == "lang":
            _reply(stored, chat, _language_command(chat, command.args), reply_to=here)
            return None, True
        if command.name == "transcribe":
            target = message.reply_to_message
            media = parsing.media_of(target)
            if target is None or media is None:
                _reply(stored, chat, texts.TRANSCRIBE_USAGE, reply_to=here)
                return None, True
            return _job_start(stored, chat, target, media, busy), True
        if group:
            return None, False  # another bot's command
        _reply(stored, chat, texts.NOT_MEDIA_HINT, reply_to=here)
        return None, True
    if group:
        return None, False
    media = parsing.media_of(message)
    if media is None:
        _reply(stored, chat, texts.NOT_MEDIA_HINT, reply_to=here)
        return None, True
    return _job_start(stored, chat, message, media, busy), True


def _language_command(chat: TelegramChat, args: str) -> str:
    if not args:
        return texts.language_current(chat.language)
    value = args.split()[0]
    try:
        code = normalise_language(value)
    except ValueError:
        return texts.language_unknown(value[:32])
    chat_language_set(chat=chat, language=code)
    return texts.language_set(code)


def chat_language_set(*, chat: TelegramChat, language: str | None) -> None:
    """Store the chat's language; ``None`` means detect it per recording."""
    chat.language = language or ""
    chat.save(update_fields=["language", "updated_at"])


def _job_start(
    stored: TelegramUpdate,
    chat: TelegramChat,
    message: Message,
    media: parsing.Media,
    busy: ApplicationError | None = None,
) -> TelegramJob | None:
    """A job and its acknowledgement, or a polite refusal (not audio, too big, the
    pipeline too busy)."""
    here = message.message_id
    if not media.is_audio:
        _reply(stored, chat, texts.not_audio(media.mime_type), reply_to=here)
        return None
    if media.file_size and media.file_size > texts.MAX_DOWNLOAD_BYTES:
        # Telegram would refuse the download: do not even ask.
        _reply(stored, chat, texts.too_big(media.file_size), reply_to=here)
        return None
    if media.duration and media.duration > settings.ASR_MAX_DURATION_SECONDS:
        _reply(
            stored,
            chat,
            texts.too_long(media.duration, settings.ASR_MAX_DURATION_SECONDS),
            reply_to=here,
        )
        return None
    if busy is not None:
        _reply(
            stored,
            chat,
            texts.busy(int(busy.extra.get("retry_after") or 60)),
            reply_to=here,
        )
        return None
    job = TelegramJob.objects.create(
        update=stored,
        chat=chat,
        message_id=here,
        media_kind=media.kind,
        file_id=media.file_id,
        file_unique_id=media.file_unique_id[:64],
        file_name=media.upload_name[:255],
        mime_type=media.mime_type[:128],
        file_size=media.file_size,
        duration=media.duration,
        language=chat.language,
    )
    position = transcription_queue_length() + 1
    Reply.objects.create(
        chat=chat,
        update=stored,
        job=job,
        key="ack",
        method=Method.SEND,
        text=texts.ack_text(position, queue_eta_seconds(position=position)),
        reply_to_message_id=here,
    )
    return job


# Download and submit --------------------------------------------------------------------


def telegram_job_fetch(*, job_pk: int) -> None:
    """Download the job's file and submit it to the ASR pipeline, once.

    Raises ``RetryLater`` on a transient Bot API failure. A file Telegram refuses
    (too big) or the pipeline refuses (not audio) answers the chat with the reason.
    """
    job = (
        TelegramJob.objects.filter(pk=job_pk, state=JobState.FETCHING)
        .select_related("update")
        .first()
    )
    if job is None:
        return
    with log_context(telegram_update_id=job.update.update_id):
        _job_fetch(job)


def _job_fetch(job: TelegramJob) -> None:
    job_pk = job.pk
    TelegramJob.objects.filter(pk=job_pk).update(fetch_attempts=F("fetch_attempts") + 1)
    attempt = job.fetch_attempts + 1
    if attempt > settings.TELEGRAM_FETCH_MAX_ATTEMPTS:
        _job_answer_error(
            job_pk,
            code="download_failed",
            message=f"gave up after {attempt - 1} download attempts",
            body=texts.DOWNLOAD_FAILED,
        )
        return
    with tempfile.TemporaryDirectory(prefix="kiki-telegram-") as tmp:
        path = Path(tmp) / (Path(job.file_name).suffix.lower() or ".bin")
        try:
            size = bot_api.download(
                file_id=job.file_id,
                destination=path,
                max_bytes=texts.MAX_DOWNLOAD_BYTES,
            )
        except Exception as exc:
            failure = bot_api.classify(exc)
            if failure.kind == "rate_limited" or failure.kind == "transient":
                logger.warning(
                    "telegram job %s: download attempt %d failed: %s",
                    job_pk,
                    attempt,
                    failure.message,
                )
                raise RetryLater(
                    failure.message, failure.retry_after or backoff(attempt)
                ) from exc
            too_big = bot_api.FILE_TOO_BIG in failure.message.lower()
            _job_answer_error(
                job_pk,
                code="too_large" if too_big else "download_failed",
                message=failure.message,
                body=texts.TOO_BIG_UNKNOWN_SIZE if too_big else texts.DOWNLOAD_FAILED,
            )
            return
        with path.open("rb") as fh, transaction.atomic():
            # The download ran outside any transaction; only one attempt submits.
            locked = (
                TelegramJob.objects.select_for_update()
                .filter(pk=job_pk, state=JobState.FETCHING)
                .first()
            )
            if locked is None:
                return
            try:
                transcription = transcription_create(
                    owner=None,
                    audio=File(fh, name=job.file_name),
                    language=job.language or None,
                    source=Transcription.Source.TELEGRAM,
                )
            except ApplicationError as exc:
                _job_answer_error(
                    job_pk,
                    code=exc.code,
                    message=exc.message,
                    body=texts.failed(exc.message),
                )
                return
            locked.transcription = transcription
            locked.state = JobState.TRANSCRIBING
            locked.save(update_fields=["transcription", "state"])
    logger.info(
        "telegram job %s: %d bytes downloaded, job %s queued",
        job_pk,
        size,
        transcription.id,
    )


# Answering ---------------------------------------------------------------------------


def _ack_of(job: TelegramJob) -> TelegramReply | None:
    return Reply.objects.filter(update_id=job.update_id, key="ack").first()


def _job_answer_error(job_pk: int, *, code: str, message: str, body: str) -> None:
    """Answer a job that will not be transcribed: the acknowledgement becomes why."""
    with transaction.atomic():
        if not TelegramJob.objects.filter(
            pk=job_pk, state__in=[JobState.FETCHING, JobState.TRANSCRIBING]
        ).update(
            state=JobState.ANSWERED,
            answered_at=timezone.now(),
            error_code=code[:64],
            error_message=message,
        ):
            return
        job = TelegramJob.objects.select_related("chat").get(pk=job_pk)
        Reply.objects.create(
            chat=job.chat,
            update_id=job.update_id,
            job=job,
            key="text:1",
            method=Method.EDIT,
            text=body,
            edit_of=_ack_of(job),
            reply_to_message_id=job.message_id,
        )
        chat_id = job.chat_id
        transaction.on_commit(lambda: enqueue_delivery(chat_id))
    logger.info("telegram job %s answered with an error: %s", job_pk, code)


def telegram_job_answer(*, transcription_id: str) -> None:
    """Write the reply parts of a finished transcription, once.

    The result is read from the job's row, never from the event that announced it.
    """
    job = (
        TelegramJob.objects.filter(
            transcription_id=transcription_id, state=JobState.TRANSCRIBING
        )
        .select_related("transcription", "update")
        .first()
    )
    if job is None or job.transcription is None or not job.transcription.is_finished:
        return  # not a Telegram job, already answered, or not finished yet
    with log_context(
        telegram_update_id=job.update.update_id, job_id=job.transcription_id
    ):
        _job_answer(job, job.transcription)


def _job_answer(job: TelegramJob, result: Transcription) -> None:
    if result.status == Transcription.Status.FAILED:
        _job_answer_error(
            job.pk,
            code=result.error_code or "failed",
            message=result.error_message,
            body=texts.failed(result.error_message),
        )
        return
    if result.status == Transcription.Status.CANCELLED:
        _job_answer_error(
            job.pk, code="cancelled", message="cancelled", body=texts.CANCELLED
        )
        return

    chunks = texts.split_message(result.text) or [texts.NO_SPEECH]
    shown = chunks[: max(settings.TELEGRAM_MAX_TEXT_MESSAGES, 1)]
    with transaction.atomic():
        if not TelegramJob.objects.filter(
            pk=job.pk, state=JobState.TRANSCRIBING
        ).update(state=JobState.ANSWERED, answered_at=timezone.now()):
            return
        common = {"chat_id": job.chat_id, "update_id": job.update_id, "job": job}
        parts = [
            Reply(
                **common,
                key="text:1",
                method=Method.EDIT,
                text=shown[0],
                edit_of=_ack_of(job),
                reply_to_message_id=job.message_id,
            )
        ]
        parts += [
            Reply(**common, key=f"text:{n}", method=Method.SEND, text=chunk)
            for n, chunk in enumerate(shown[1:], start=2)
        ]
        if len(chunks) > len(shown):
            parts.append(
                Reply(
                    **common,
                    key="text:more",
                    method=Method.SEND,
                    text=texts.TRANSCRIPT_CONTINUES,
                )
            )
        if len(chunks) > 1:
            formats_ = ["txt"] + (["srt"] if result.segments else [])
            parts += [
                Reply(
                    **common,
                    key=f"doc:{fmt}",
                    method=Method.DOCUMENT,
                    document_format=fmt,
                    text=texts.DOCUMENT_CAPTION,
                    reply_to_message_id=job.message_id,
                )
                for fmt in formats_
            ]
        # One by one, so that ids (the delivery order) follow the list's order.
        for part in parts:
            part.save(force_insert=True)
        chat_id = job.chat_id
        transaction.on_commit(lambda: enqueue_delivery(chat_id))
    logger.info(
        "telegram job %s: job %s answered in %d part(s)",
        job.pk,
        result.id,
        len(parts),
    )


# Delivery ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DeliveryOutcome:
    """What one delivery run did, and whether its task should run again."""

    delivered: int = 0
    retry_in: float | None = None
    busy: bool = False  # another task holds the chat's lease


def _lease_claim(chat_id: int, owner: str) -> bool:
    """Take (or renew) the chat's delivery lease: free, expired, or already ours.

    The owner is the Celery task id, which a retry or a redelivered message keeps:
    the same task picks up where a killed process left off without waiting.
    """
    now = timezone.now()
    lease = timedelta(seconds=settings.TELEGRAM_DELIVERY_LEASE_SECONDS)
    return bool(
        TelegramChat.objects.filter(pk=chat_id)
        .filter(
            Q(delivery_owner=owner)
            | Q(delivery_lease_until__isnull=True)
            | Q(delivery_lease_until__lt=now)
        )
        .update(delivery_owner=owner, delivery_lease_until=now + lease)
    )


def _lease_release(chat_id: int, owner: str) -> None:
    TelegramChat.objects.filter(pk=chat_id, delivery_owner=owner).update(
        delivery_owner="", delivery_lease_until=None
    )


def _lease_hold_until_retry(chat_id: int, owner: str, delay: float) -> None:
    """Keep the lease through a back-off, so that parts stay in order and other
    tasks do not hammer a chat that Telegram asked us to leave alone."""
    now = timezone.now()
    TelegramChat.objects.filter(pk=chat_id, delivery_owner=owner).update(
        delivery_not_before=now + timedelta(seconds=delay),
        delivery_lease_until=now
        + timedelta(seconds=delay + settings.TELEGRAM_DELIVERY_LEASE_SECONDS),
    )


def telegram_chat_deliver(*, chat_id: int, owner: str) -> DeliveryOutcome:
    """Send the chat's undelivered parts in order, each exactly once where the Bot
    API allows it (see ``_deliver_part``). Returns when none is left, when another
    task holds the chat, or when the caller should retry after a delay."""
    delivered = 0
    while True:
        if not _lease_claim(chat_id, owner):
            return DeliveryOutcome(delivered, busy=True)
        not_before = (
            TelegramChat.objects.filter(pk=chat_id)
            .values_list("delivery_not_before", flat=True)
            .first()
        )
        wait = (not_before - timezone.now()).total_seconds() if not_before else 0
        if wait > 0:
            return DeliveryOutcome(delivered, retry_in=wait)
        part = selectors.reply_next(chat_id=chat_id)
        if part is None:
            _lease_release(chat_id, owner)
            # A part committed while we held the lease found it taken and left:
            # look once more now that the lease is free.
            if selectors.reply_undelivered_exists(chat_id=chat_id):
                continue
            return DeliveryOutcome(delivered)
        with log_context(telegram_update_id=part.update.update_id):
            retry_in, sent = _deliver_part(part)
        delivered += sent
        if retry_in is not None:
            _lease_hold_until_retry(chat_id, owner, retry_in)
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
    _lease_release(chat_id, owner)


# Reconciling -------------------------------------------------------------------------


def telegram_reconcile(*, min_age: float | None = None) -> dict[str, int]:
    """Re-enqueue every step whose task was lost; give up parts past their time.

    Only what is older than ``min_age`` is touched, so that work in flight is left
    to its own task. Re-enqueueing something still queued is harmless: every task
    is idempotent.
    """
    now = timezone.now()
    age = settings.TELEGRAM_RECONCILE_MIN_AGE if min_age is None else min_age
    before = now - timedelta(seconds=age)
    counts = {"updates": 0, "fetches": 0, "answers": 0, "orphans": 0}
    counts["given_up"] = selectors.replies_expired(
        before=now - timedelta(seconds=settings.TELEGRAM_GIVE_UP_SECONDS)
    ).update(state=PartState.FAILED, last_error="given up by the reconciler")
    for update_pk in selectors.updates_unprocessed(before=before).values_list(
        "pk", flat=True
    )[:500]:
        _enqueue("process_update", update_pk)
        counts["updates"] += 1
    for job_pk in selectors.jobs_not_fetched(before=before).values_list(
        "pk", flat=True
    )[:500]:
        _enqueue("fetch_audio", job_pk)
        counts["fetches"] += 1
    for transcription_id in selectors.jobs_finished_unanswered(
        before=before
    ).values_list("transcription_id", flat=True)[:500]:
        enqueue_answer(str(transcription_id))
        counts["answers"] += 1
    for job_pk in selectors.jobs_orphaned(before=before).values_list("pk", flat=True)[
        :500
    ]:
        _job_answer_error(
            job_pk,
            code="deleted",
            message="the transcription was deleted",
            body=texts.failed("The job was deleted before it finished."),
        )
        counts["orphans"] += 1
    chats = selectors.chats_with_stalled_replies(before=before, now=now)
    for chat_id in chats:
        enqueue_delivery(chat_id)
    counts["deliveries"] = len(chats)
    return counts


# Operations (management commands) ----------------------------------------------------


def webhook_set(
    *,
    url: str,
    max_connections: int,
    drop_pending_updates: bool = False,
    allowed_updates: list[str] | None = None,
) -> bool:
    """Register the webhook with its secret token, update kinds and connections."""
    secret = settings.TELEGRAM_WEBHOOK_SECRET
    if not secret or not all(c.isalnum() or c in "_-" for c in secret):
        raise ApplicationError(
            "Set TELEGRAM_WEBHOOK_SECRET to 1-256 characters of A-Z, a-z, 0-9, _ "
            "and - first: the webhook refuses every call without it.",
            code="no_secret",
        )
    if len(secret) > 256:
        raise ApplicationError(
            "TELEGRAM_WEBHOOK_SECRET is longer than Telegram's 256 characters.",
            code="bad_secret",
        )
    if not url.startswith("https://"):
        raise ApplicationError(
            f"Telegram only calls https webhooks; {url!r} is not one.",
            code="bad_url",
        )
    if not 1 <= max_connections <= 100:
        raise ApplicationError(
            "max_connections must be between 1 and 100.", code="bad_max_connections"
        )
    return bot_api.set_webhook(
        url=url,
        secret_token=secret,
        allowed_updates=allowed_updates or ALLOWED_UPDATES,
        max_connections=max_connections,
        drop_pending_updates=drop_pending_updates,
    )


def webhook_delete(*, drop_pending_updates: bool = False) -> bool:
    return bot_api.delete_webhook(drop_pending_updates=drop_pending_updates)


def bot_check() -> tuple[User, WebhookInfo]:
    """The bot's own account (getMe: is the token good?) and its webhook's state."""
    return bot_api.get_me(), bot_api.get_webhook_info()
