"""Processing a stored update: what a message asks for (a command, a recording, chatter),
answered with reply rows (the "Recognizing…" acknowledgement, or a polite refusal) and,
for a recording, a ``TelegramJob``, in one transaction; then delivery and the download
are enqueued.

Every step of the bot is idempotent: it starts with a conditional UPDATE (or a unique
insert) that only one attempt can win.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone
from telegram import Message

from asr.languages import normalise_language
from asr.selectors import queue_eta_seconds
from asr.selectors import served_languages
from asr.selectors import transcription_queue_length
from asr.services import admission_check
from bots.models import TelegramChat
from bots.models import TelegramJob
from bots.models import TelegramReply
from bots.models import TelegramUpdate
from bots.services import dispatch
from bots.services.retry import RetryLater
from bots.services.retry import backoff
from bots.transport import bot_api
from bots.transport import parsing
from bots.transport import text as texts
from kikipounamu.errors import ApplicationError
from kikipounamu.logs import log_context

logger = logging.getLogger(__name__)

Reply = TelegramReply
Method = TelegramReply.Method

# A processing task that failed this often (a bug, not Telegram) stops being retried.
MAX_UPDATE_ATTEMPTS = 5

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
                transaction.on_commit(lambda: dispatch.enqueue_delivery(chat_id))
            if job is not None:
                job_pk = job.pk
                transaction.on_commit(lambda: dispatch.enqueue("fetch_audio", job_pk))
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
    # What the workers' engines serve now: only those are offered and taken.
    served = served_languages("asr")
    offered = sorted(served) if served is not None else None
    if not args:
        return texts.language_current(chat.language, offered)
    value = args.split()[0]
    try:
        code = normalise_language(value)
    except ValueError:
        return texts.language_unknown(value[:32])
    if code is not None and offered is not None and code not in offered:
        return texts.language_unsupported(code, offered)
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
