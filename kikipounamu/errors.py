"""The one domain error type, rendered by the API's exception handler."""

from __future__ import annotations

from typing import Any


class ApplicationError(Exception):
    """A failure a person can act on: a code, a message, and the HTTP status to use."""

    status_code = 400

    def __init__(
        self,
        message: str,
        *,
        code: str = "invalid",
        status: int | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        if status is not None:
            self.status_code = status
        self.extra = extra or {}
