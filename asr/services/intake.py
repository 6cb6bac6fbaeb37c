"""Taking audio in: every door (API, upload page, Telegram, the CLI) submits through
``transcription_create``, which validates, stores and enqueues, or refuses with an
error a person can act on; ``admission_check`` is the queue's backpressure."""

from __future__ import annotations

import hashlib
import logging
import uuid
from typing import Any

from django.conf import settings
from django.core.files.base import File
from django.db import transaction

from asr import audio as audio_lib
from asr import selectors
from asr import storage
from asr.events import transcription_event_record
from asr.languages import normalise_language
from asr.models import Transcription
from asr.models import TranscriptionEvent
from asr.ops import stats
from asr.services import attempts
from asr.services import dispatch
from asr.services import job_options
from kikipounamu import outbound
from kikipounamu.errors import ApplicationError

logger = logging.getLogger(__name__)

Kind = TranscriptionEvent.Kind

# How long a client is asked to wait when the audio store is down: a restart or a
# failover of the store takes tens of seconds.
STORAGE_RETRY_AFTER_SECONDS = 30

# HTTP statuses for audio refused at upload.
_UPLOAD_ERROR_STATUS = {
    audio_lib.UNSUPPORTED_FORMAT: 415,
    audio_lib.NO_AUDIO_STREAM: 422,
    audio_lib.EMPTY_AUDIO: 400,
    audio_lib.TOO_LARGE: 413,
    audio_lib.TOO_LONG: 422,
}


def clean_filename(name: str | None) -> str:
    """The client's file name, for display only: last path part, printable, bounded."""
    name = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip()
    return name[:255] or "audio"


def transcription_create(
    *,
    owner: Any,
    audio: File,
    language: str | None = None,
    source: str = Transcription.Source.API,
    options: job_options.JobOptions | None = None,
    webhook_url: str = "",
) -> Transcription:
    """Validate and store the audio, create the job, and enqueue it on commit.

    Only container headers are read here (cheap); the real decoding, with its limits,
    is the worker's. Nothing is left behind when validation or the insert fails.
    API, web and OpenAI-door submissions are refused (503 ``busy``) while the queue
    is full; the Telegram door calls ``admission_check`` itself, before downloading
    anything. ``options``: what the job asks of the engine (``job_options``).
    ``webhook_url``: told when the job finishes (a 400 ``invalid_url`` if we would
    not send to it).
    """
    if source in _ADMITTED_HERE:
        admission_check()
    language_code = _language_code(language)
    if webhook_url:
        outbound.webhook_url_check(webhook_url, field="webhook_url")
    size = _checked_size(audio)
    digest, info = _inspect(audio)
    job = Transcription(
        id=uuid.uuid4(),
        owner=owner if owner is not None and owner.is_authenticated else None,
        source=source,
        original_filename=clean_filename(audio.name),
        audio_format=info.format_name,
        audio_codec=info.codec,
        audio_size=size,
        audio_sha256=digest,
        duration_hint=info.duration_hint,
        language=language_code or "",
        task_id=str(uuid.uuid4()),
        meta=_options_meta(options),
        webhook_url=webhook_url,
        # The ACCEPTED event below is the job's first.
        event_seq=1,
    )
    try:
        job.audio.name = storage.audio_save(f"{job.id}{info.extension}", audio)
    except storage.StorageUnavailable as exc:
        logger.warning("upload refused: %s", exc)
        raise storage_error(exc) from exc
    try:
        with transaction.atomic():
            job.save(force_insert=True)
            # Enqueue first: on_commit callbacks run in order, and the job should
            # not wait for the realtime push of its "accepted" event.
            transaction.on_commit(
                lambda: dispatch.transcription_enqueue(transcription=job)
            )
            transcription_event_record(
                transcription_id=job.id,
                kind=Kind.ACCEPTED,
                data={"source": source, "size": size, "format": info.format_name},
                job=job,
                seq=1,
            )
    except Exception:
        # The row did not make it: the stored audio must not outlive it.
        storage.audio_delete([job.audio.name])
        raise
    logger.info(
        "job %s accepted: %s %s, %d bytes, source %s",
        job.id,
        info.format_name,
        info.codec,
        size,
        source,
    )
    return job


# Doors whose submissions are checked against the queue's depth here.
_ADMITTED_HERE = (
    Transcription.Source.API,
    Transcription.Source.WEB,
    Transcription.Source.OPENAI,
)


def _options_meta(options: job_options.JobOptions | None) -> dict[str, Any]:
    stored = options.as_meta() if options is not None else {}
    return {job_options.KEY: stored} if stored else {}


def storage_error(exc: storage.StorageUnavailable) -> ApplicationError:
    """What a client is told when the audio store is down: come back later."""
    return ApplicationError(
        f"{exc} Nothing was stored; send the request again later.",
        code=attempts.STORAGE_UNAVAILABLE,
        status=503,
        extra={"retry_after": STORAGE_RETRY_AFTER_SECONDS},
    )


def _language_code(language: str | None) -> str | None:
    try:
        code = normalise_language(language)
    except ValueError:
        raise ApplicationError(
            f"'{language}' is not a language code we know. Use an ISO 639-1 code "
            "such as 'en' or 'de', or leave it empty to detect the language.",
            code="invalid_language",
        ) from None
    unserved = language_unserved(code)
    if unserved is not None:
        raise ApplicationError(unserved, code="unsupported_language")
    return code


def language_unserved(code: str | None, *, queue: str = "asr") -> str | None:
    """Why ``code`` cannot be transcribed here (no worker of ``queue`` serves it),
    or None. The one wording every door uses."""
    served = selectors.served_languages(queue)
    if code is None or served is None or code in served:
        return None
    return (
        f"The recognition engine on this server transcribes "
        f"{', '.join(sorted(served))} only; '{code}' was requested. Choose one of "
        "those, or leave the language empty to detect it."
    )


def _checked_size(audio: File) -> int:
    size = audio.size or 0
    if size == 0:
        raise ApplicationError(
            "The file is empty.", code=audio_lib.EMPTY_AUDIO, status=400
        )
    if size > settings.ASR_MAX_UPLOAD_BYTES:
        raise ApplicationError(
            f"The file is {size / 1e6:.1f} MB; the limit is "
            f"{settings.ASR_MAX_UPLOAD_BYTES / 1e6:.0f} MB.",
            code=audio_lib.TOO_LARGE,
            status=413,
        )
    return size


def _inspect(audio: File) -> tuple[str, audio_lib.ProbeInfo]:
    """The upload's SHA-256 and what its container's headers say; ApplicationError
    for what is not audio we take."""
    digest = hashlib.sha256()
    for chunk in audio.chunks():
        digest.update(chunk)
    audio.seek(0)
    try:
        info = audio_lib.probe(_local_source(audio))
    except audio_lib.AudioError as exc:
        raise ApplicationError(
            exc.message, code=exc.code, status=_UPLOAD_ERROR_STATUS.get(exc.code, 400)
        ) from exc
    finally:
        audio.seek(0)
    if (
        info.duration_hint is not None
        and info.duration_hint > settings.ASR_MAX_DURATION_SECONDS
    ):
        raise ApplicationError(
            f"This audio lasts {info.duration_hint / 3600:.1f} h; the limit is "
            f"{settings.ASR_MAX_DURATION_SECONDS / 3600:.1f} h. Split it into "
            "shorter files.",
            code=audio_lib.TOO_LONG,
            status=422,
        )
    return digest.hexdigest(), info


def _local_source(audio: File) -> Any:
    path = getattr(audio, "temporary_file_path", None)
    return path() if path else audio.file


def admission_check() -> None:
    """Refuse new work while the `asr` queue holds ASR_MAX_QUEUE_DEPTH messages or more.

    Raises ApplicationError(code="busy", status=503) with ``retry_after`` (seconds,
    estimated from how fast recent jobs ran) in ``extra``; the API sends it as the
    Retry-After header, a bot can tell its user how long to wait.
    """
    depth = stats.asr_queue_depth()
    if depth < settings.ASR_MAX_QUEUE_DEPTH:
        return
    retry_after = stats.busy_retry_after(depth=depth)
    logger.warning(
        "submission refused: asr queue %d deep (limit %d), retry after %d s",
        depth,
        settings.ASR_MAX_QUEUE_DEPTH,
        retry_after,
    )
    raise ApplicationError(
        f"The transcription queue is full ({depth} jobs waiting). Try again in "
        f"about {retry_after} seconds.",
        code="busy",
        status=503,
        extra={"retry_after": retry_after, "queue_depth": depth},
    )
