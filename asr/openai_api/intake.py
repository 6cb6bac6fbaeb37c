"""The door's synchronous parts, each run on one of the web process's request threads
(``app`` hands them to ``PooledThreadsASGIHandler.run_sync``): who is calling, the
upload as a job, and the job's state.

The rules are the REST API's: the same tokens (DRF's ``TokenAuthentication``), the
same rate limits (the API's throttle classes, counted in the same Redis counters),
Django's multipart parser with its limits, and ``asr.services.transcription_create``
with its size, duration and format checks and its backpressure.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import IO
from typing import Any

from django.core.exceptions import DisallowedHost
from django.core.exceptions import SuspiciousOperation
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest
from django.http.multipartparser import MultiPartParserError
from rest_framework import exceptions
from rest_framework.authentication import TokenAuthentication
from rest_framework.settings import api_settings

from asr import services
from asr.api.serializers import job_links
from asr.models import Transcription
from asr.openai_api import shapes
from asr.services.job_options import JobOptions
from kikipounamu.errors import ApplicationError

logger = logging.getLogger(__name__)

Status = Transcription.Status
FINISHED = {str(status) for status in Transcription.FINISHED}
_LANGUAGE_CODES = ("invalid_language", "unsupported_language")


@dataclass(frozen=True)
class Caller:
    user: Any
    # This server as the client reached it: "https://host" (for links in answers).
    base_url: str


@dataclass(frozen=True)
class Submitted:
    """A job made from a request, and how the request wants its answer."""

    job_id: str
    job_url: str
    response_format: str
    granularities: tuple[str, ...]
    temperature: float | None
    stream: bool


def caller_check(*, scope: dict[str, Any]) -> Caller:
    """The caller of a request by its ``Authorization: Bearer <API token>``, once its
    call is counted against the API's rate limits. ``ApplicationError``: 400 for a
    Host not allowed, 401 for no or a wrong token, 429 (``retry_after``) past a limit.
    """
    request = ASGIRequest(scope, io.BytesIO())
    try:
        base_url = request.build_absolute_uri("/").rstrip("/")
    except DisallowedHost as exc:
        raise ApplicationError(str(exc), code="disallowed_host") from None
    user = _token_user(request.META.get("HTTP_AUTHORIZATION", ""))
    request.user = user
    _throttle(request)
    return Caller(user=user, base_url=base_url)


def _token_user(header: str) -> Any:
    scheme, _, key = header.strip().partition(" ")
    # OpenAI's clients send "Bearer"; the REST API's "Token" works too.
    if scheme.lower() not in ("bearer", "token") or not key.strip():
        raise ApplicationError(
            "Send your API token as 'Authorization: Bearer <token>' (the token of "
            "the REST API: POST /api/v1/... with 'Token <token>' takes the same).",
            code="not_authenticated",
            status=401,
        )
    try:
        user, _ = TokenAuthentication().authenticate_credentials(key.strip())
    except exceptions.AuthenticationFailed as exc:
        raise ApplicationError(
            f"{exc.detail} Check the API token.", code="invalid_api_key", status=401
        ) from None
    return user


def _throttle(request: HttpRequest) -> None:
    # What DRF's APIView.check_throttles does with the API's own throttles: every one
    # counts the call; the longest wait wins.
    waits = []
    # Classes by now (DRF imports the dotted paths of the settings).
    throttle_classes: list[Any] = list(api_settings.DEFAULT_THROTTLE_CLASSES)
    for throttle_class in throttle_classes:
        throttle = throttle_class()
        if not throttle.allow_request(request, None):
            waits.append(throttle.wait() or 1)
    if waits:
        wait = int(max(waits))
        raise ApplicationError(
            f"Too many requests: try again in {wait} seconds.",
            code="throttled",
            status=429,
            extra={"retry_after": wait},
        )


def transcription_submit(
    *, scope: dict[str, Any], body_file: IO[bytes], caller: Caller
) -> Submitted:
    """The request's multipart form as a job of the ``asr`` queue (source ``openai``),
    through the intake service. Closes ``body_file``. ``ApplicationError`` for what
    is refused, with ``param`` naming the form field where one is to blame."""
    request = ASGIRequest(scope, body_file)
    try:
        if request.content_type != "multipart/form-data":
            raise ApplicationError(
                "Send the audio as multipart/form-data, the file in the field 'file'.",
                code="unsupported_media_type",
                status=415,
            )
        try:
            form, files = request.POST, request.FILES
        except (MultiPartParserError, SuspiciousOperation) as exc:
            raise ApplicationError(
                f"The multipart body could not be read: {exc}", code="parse_error"
            ) from None
        params = _params(form)
        audio = files.get("file")
        if audio is None:
            raise ApplicationError(
                "Send the audio as a multipart form field named 'file'.",
                code="file_missing",
                extra={"param": "file"},
            )
        try:
            job = services.transcription_create(
                owner=caller.user,
                audio=audio,
                language=params.language,
                source=Transcription.Source.OPENAI,
                options=params.options,
            )
        except ApplicationError as exc:
            if exc.code in _LANGUAGE_CODES:
                exc.extra.setdefault("param", "language")
            elif exc.status_code in (400, 413, 415, 422):
                exc.extra.setdefault("param", "file")
            raise
    finally:
        # The upload's temporary file, if it spilled to one, and the body.
        request.close()
        body_file.close()
    return Submitted(
        job_id=str(job.id),
        job_url=caller.base_url + job_links(job)["self"],
        response_format=params.response_format,
        granularities=params.granularities,
        temperature=params.options.temperature,
        stream=params.stream,
    )


@dataclass(frozen=True)
class _Params:
    language: str | None
    response_format: str
    granularities: tuple[str, ...]
    stream: bool
    options: JobOptions


def _params(form: Any) -> _Params:
    shapes.model_check(form.get("model", "").strip())
    response_format = form.get("response_format", "").strip() or "json"
    if response_format not in shapes.RESPONSE_FORMATS:
        raise ApplicationError(
            f"response_format {response_format!r} is not one of "
            f"{', '.join(shapes.RESPONSE_FORMATS)}.",
            code="invalid_response_format",
            extra={"param": "response_format"},
        )
    granularities = tuple(
        dict.fromkeys(
            value.strip()
            for value in form.getlist("timestamp_granularities[]")
            + form.getlist("timestamp_granularities")
            if value.strip()
        )
    )
    for value in granularities:
        if value not in shapes.GRANULARITIES:
            raise ApplicationError(
                f"timestamp_granularities[] takes 'word' and 'segment', not {value!r}.",
                code="invalid_timestamp_granularities",
                extra={"param": "timestamp_granularities[]"},
            )
    verbose = response_format == "verbose_json"
    try:
        options = JobOptions(
            # Only verbose_json shows them, and words cost the engine time.
            word_timestamps=verbose and "word" in granularities,
            segment_details=verbose,
            prompt=form.get("prompt", ""),
            temperature=_temperature(form.get("temperature", "")),
        )
    except ApplicationError as exc:
        exc.extra.setdefault(
            "param", "prompt" if exc.code == "invalid_prompt" else "temperature"
        )
        raise
    return _Params(
        language=form.get("language", "").strip() or None,
        response_format=response_format,
        granularities=granularities,
        stream=_flag(form.get("stream", "")),
        options=options,
    )


def _temperature(value: str) -> float | None:
    if not value.strip():
        return None
    try:
        return float(value)
    except ValueError:
        raise ApplicationError(
            f"temperature must be a number between 0 and 1, not {value!r}.",
            code="invalid_temperature",
            extra={"param": "temperature"},
        ) from None


def _flag(value: str) -> bool:
    value = value.strip().lower()
    if value in ("", "false", "0"):
        return False
    if value in ("true", "1"):
        return True
    raise ApplicationError(
        f"stream must be true or false, not {value!r}.",
        code="invalid_stream",
        extra={"param": "stream"},
    )


def _state(job: Transcription) -> dict[str, Any]:
    """The fields of a job that the door's answers use (``shapes``), as the job's
    pushed events carry them."""
    return {
        "id": str(job.id),
        "status": job.status,
        "seq": job.event_seq,
        "text": job.text,
        "segments": job.segments,
        "duration": job.duration,
        "language": job.language,
        "detected_language": job.detected_language,
        "error": job.error(),
    }


_STATE_FIELDS = (
    "id",
    "status",
    "event_seq",
    "text",
    "segments",
    "duration",
    "language",
    "detected_language",
    "error_code",
    "error_message",
)


def transcription_state(*, transcription_id: str) -> dict[str, Any]:
    """The job's state now; 404 if it is gone (deleted through the REST API)."""
    job = Transcription.objects.filter(pk=transcription_id).only(*_STATE_FIELDS).first()
    if job is None:
        raise ApplicationError(
            f"Transcription job {transcription_id} no longer exists.",
            code="not_found",
            status=404,
        )
    return _state(job)


def transcription_finished(*, transcription_id: str) -> dict[str, Any] | None:
    """The job's state if it has finished, else None: one indexed read of its status
    while it has not (a waiting request asks every few seconds)."""
    status = (
        Transcription.objects.filter(pk=transcription_id)
        .values_list("status", flat=True)
        .first()
    )
    if status is not None and status not in FINISHED:
        return None
    return transcription_state(transcription_id=transcription_id)
