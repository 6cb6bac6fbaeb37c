"""Answering a finished job: the reply parts written from the job's row (the
acknowledgement edited into the transcript's first part, then the rest, then .txt and
.srt documents), or the acknowledgement turned into the reason it failed."""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from asr.models import Transcription
from bots.models import TelegramJob
from bots.models import TelegramReply
from bots.services import dispatch
from bots.transport import text as texts
from kikipounamu.logs import log_context

logger = logging.getLogger(__name__)

Reply = TelegramReply
Method = TelegramReply.Method
JobState = TelegramJob.State


def _ack_of(job: TelegramJob) -> TelegramReply | None:
    return Reply.objects.filter(update_id=job.update_id, key="ack").first()


def telegram_job_answer_error(
    job_pk: int, *, code: str, message: str, body: str
) -> None:
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
        transaction.on_commit(lambda: dispatch.enqueue_delivery(chat_id))
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
        telegram_job_answer_error(
            job.pk,
            code=result.error_code or "failed",
            message=result.error_message,
            body=texts.failed(result.error_message),
        )
        return
    if result.status == Transcription.Status.CANCELLED:
        telegram_job_answer_error(
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
        transaction.on_commit(lambda: dispatch.enqueue_delivery(chat_id))
    logger.info(
        "telegram job %s: job %s answered in %d part(s)",
        job.pk,
        result.id,
        len(parts),
    )
