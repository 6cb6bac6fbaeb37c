"""One rendering for every API error: {"error": {"code", "message", "detail"}}, and
its description in the OpenAPI schema (``api_schema``)."""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from django.http import JsonResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter
from drf_spectacular.utils import OpenApiResponse
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from kikipounamu.errors import ApplicationError


def error_body(code: str, message: str, detail: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if detail:
        error["detail"] = detail
    return {"error": error}


def _first_message(detail: Any) -> str:
    if isinstance(detail, dict):
        for field, value in detail.items():
            text = _first_message(value)
            return text if field == "non_field_errors" else f"{field}: {text}"
    if isinstance(detail, list) and detail:
        return _first_message(detail[0])
    return str(detail)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, ApplicationError):
        rendered = Response(
            error_body(exc.code, exc.message, exc.extra or None), status=exc.status_code
        )
        # "busy" (503) and the like: tell clients when to come back (RFC 9110 10.2.3).
        if exc.extra.get("retry_after") is not None:
            rendered["Retry-After"] = str(int(exc.extra["retry_after"]))
        return rendered
    if isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(detail=exc.messages)
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()

    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    assert isinstance(exc, exceptions.APIException)
    if isinstance(exc, exceptions.ValidationError):
        code, message, detail = "invalid", _first_message(exc.detail), exc.detail
    else:
        codes = exc.get_codes()
        code = codes if isinstance(codes, str) else "error"
        message, detail = _first_message(exc.detail), None
    response.data = error_body(code, message, detail)
    return response


def json_error(code: str, message: str, status: int) -> JsonResponse:
    return JsonResponse(error_body(code, message), status=status)


def handler404(request: Any, exception: Exception | None = None) -> JsonResponse:
    return json_error("not_found", "Nothing is at this address.", 404)


def handler500(request: Any) -> JsonResponse:
    return json_error("server_error", "Something went wrong on our side.", 500)


class StrictQuerySerializer(serializers.Serializer):
    """Query parameters read as the client meant them: DRF reads an optional one sent
    empty as absent (``?status=`` would list everything) and a repeated one as its
    last value; here both are a 400 naming the parameter."""

    def to_internal_value(self, data: Any) -> Any:
        for name, field in self.fields.items():
            values = data.getlist(name) if hasattr(data, "getlist") else []
            if len(values) > 1:
                raise exceptions.ValidationError({name: [f"Send one {name}."]})
            if values == [""]:
                if isinstance(field, serializers.ChoiceField):
                    message = field.error_messages["invalid_choice"].format(input="")
                else:
                    message = "This parameter may not be empty."
                raise exceptions.ValidationError({name: [message]})
        return super().to_internal_value(data)


# The schema ---------------------------------------------------------------------------


class ApiErrorBodySerializer(serializers.Serializer):
    code = serializers.CharField(
        help_text="Stable, machine-readable: what went wrong (e.g. `not_found`)."
    )
    message = serializers.CharField(help_text="For a person: what to do about it.")
    detail = serializers.JSONField(
        required=False,
        help_text="Only where there is more: per-field messages of a validation "
        "error, or facts such as `retry_after` and `queue_depth` of `busy`.",
    )


class ApiErrorSerializer(serializers.Serializer):
    """What every error answer of the API carries (``error_body``)."""

    error = ApiErrorBodySerializer()


# What each status means, in any operation that can answer it; an operation may say
# more (which 409s it gives) with a (status, description) pair.
ERROR_DESCRIPTIONS = {
    400: "`invalid`: a field or query parameter is wrong; `detail` names each one.",
    401: "`not_authenticated` / `authentication_failed`: send "
    "`Authorization: Token <key>` (or use a staff session).",
    403: "`permission_denied`: a session request without its CSRF token.",
    404: "`not_found`: no such job, or not one of yours.",
    409: "The job is not in a state that allows this.",
    413: "`too_large`: over the upload limit.",
    415: "`unsupported_format`: not an audio or video file we can read "
    "(or `unsupported_media_type`: the body is not multipart/form-data).",
    422: "`no_audio_stream`: the file has no audio track; `too_long`: over the "
    "duration limit.",
    429: "`throttled`: too many requests; wait `Retry-After` seconds.",
    503: "`busy`: the transcription queue is full (`detail`: `retry_after`, "
    "`queue_depth`); `storage_unavailable`: the audio store could not be reached "
    "and nothing was stored. Wait `Retry-After` seconds.",
}
# Every API operation is authenticated and rate-limited (settings.REST_FRAMEWORK).
ALWAYS = (401, 429)


def response_header(
    name: str, kind: OpenApiTypes, description: str, *, statuses: list[int]
) -> OpenApiParameter:
    """A header that the answers with these statuses always carry."""
    return OpenApiParameter(
        name,
        kind,
        OpenApiParameter.HEADER,
        description=description,
        response=statuses,
        required=True,
    )


ERROR_HEADERS = [
    response_header(
        "Retry-After",
        OpenApiTypes.INT,
        "Seconds to wait before trying again.",
        statuses=[429, 503],
    ),
    response_header(
        "WWW-Authenticate",
        OpenApiTypes.STR,
        "The scheme to authenticate with: `Token`.",
        statuses=[401],
    ),
]


def error_responses(
    *errors: int | tuple[int, str],
) -> dict[int, OpenApiResponse]:
    """The error answers of an operation: 401 and 429, and those named, each in the
    one error shape. An item is a status, or (status, description)."""
    described = {status: ERROR_DESCRIPTIONS[status] for status in ALWAYS}
    for item in errors:
        status, text = item if isinstance(item, tuple) else (item, None)
        described[status] = text or ERROR_DESCRIPTIONS[status]
    return {
        status: OpenApiResponse(ApiErrorSerializer, description=text)
        for status, text in sorted(described.items())
    }


def api_schema(
    *,
    responses: dict[Any, Any],
    errors: Sequence[int | tuple[int, str]] = (),
    parameters: Sequence[Any] = (),
    **kwargs: Any,
) -> Callable[[Any], Any]:
    """``extend_schema`` for an API operation: its answers, plus its error answers
    (``error_responses``) with the headers they carry (Retry-After, WWW-Authenticate).
    """
    return extend_schema(
        responses={**responses, **error_responses(*errors)},
        parameters=[*parameters, *ERROR_HEADERS],
        **kwargs,
    )
