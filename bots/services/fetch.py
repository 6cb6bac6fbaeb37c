"""Downloading a job's recording from Telegram and submitting it to the ASR pipeline
(``asr.services.transcription_create``, source telegram), once."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from django.conf import settings
from django.core.files import File
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from asr.models import Transcription
from asr.services import transcription_create
from bots.models import TelegramJob
from bots.services.answer import telegram_job_answer_error
from bots.services.retry import RetryLater
from bots.services.retry import backoff
from bots.transport import bot_api
from bots.transport import text as texts
from kikipounamu.errors import ApplicationError
from kikipounamu.logs import log_context

logger = logging.getLogger(__name__)

JobState = TelegramJob.State


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
    # Counted before the call, so that a process killed mid-download counts too.
    TelegramJob.objects.filter(pk=job_pk).update(fetch_attempts=F("fetch_attempts") + 1)
    attempt = job.fetch_attempts + 1
    age = (timezone.now() - job.created_at).total_seconds()
    if attempt > settings.TELEGRAM_FETCH_MAX_ATTEMPTS or (
        age > settings.TELEGRAM_GIVE_UP_SECONDS
    ):
        telegram_job_answer_error(
            job_pk,
            code="download_failed",
            message=(
                f"gave up after {attempt - 1} download attempts"
                if attempt > settings.TELEGRAM_FETCH_MAX_ATTEMPTS
                else f"not downloaded after {age / 3600:.1f} h"
            ),
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
            if failure.kind == "rate_limited":
                # Telegram pacing the bot, not a failed download: the attempt is
                # given back, as a reply part's 429 is not counted (delivery.py),
                # so a busy bot does not give up on voice notes it was only told
                # to fetch later. TELEGRAM_GIVE_UP_SECONDS bounds the waiting.
                TelegramJob.objects.filter(pk=job_pk).update(
                    fetch_attempts=F("fetch_attempts") - 1
                )
                logger.info(
                    "telegram job %s: download rate limited, retry after %.1f s",
                    job_pk,
                    failure.retry_after or 0,
                )
            elif failure.kind == "transient":
                logger.warning(
                    "telegram job %s: download attempt %d failed: %s",
                    job_pk,
                    attempt,
                    failure.message,
                )
            if failure.kind in ("rate_limited", "transient"):
                raise RetryLater(
                    failure.message, failure.retry_after or backoff(attempt)
                ) from exc
            too_big = bot_api.FILE_TOO_BIG in failure.message.lower()
            telegram_job_answer_error(
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
                if exc.status_code == 503:
                    # The audio store is down: nothing was stored; fetch again later.
                    raise RetryLater(
                        exc.message, exc.extra.get("retry_after") or backoff(attempt)
                    ) from exc
                telegram_job_answer_error(
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
