"""One rendering for every API error: {"error": {"code", "message", "detail"}}."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from django.http import JsonResponse
from rest_framework import exceptions
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
