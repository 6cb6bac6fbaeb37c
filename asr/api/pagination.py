from __future__ import annotations

from typing import Any

from django.core.paginator import Paginator
from rest_framework.exceptions import ValidationError
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request


class TranscriptionPagination(PageNumberPagination):
    """``page`` from 1 (past the last: 404); ``page_size`` from 1, more than 200
    giving 200.

    Stricter than DRF's, which takes ``page=last``, reads an empty ``page`` as 1 and
    quietly uses the default for a ``page_size`` it cannot read: here a parameter
    that is not one whole number from 1 is a 400 that names it, as the schema says.
    """

    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200
    last_page_strings = ()

    def get_page_size(self, request: Request) -> int:
        size = _whole_number(request, self.page_size_query_param)
        return self.page_size if size is None else min(size, self.max_page_size)

    def get_page_number(self, request: Request, paginator: Paginator) -> int:
        number = _whole_number(request, self.page_query_param)
        return 1 if number is None else number

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            parameter["schema"]["minimum"] = 1
            if parameter["name"] == self.page_query_param:
                parameter["description"] = "A page number, from 1."
            else:
                parameter["description"] = (
                    f"Jobs per page (default {self.page_size}); more than "
                    f"{self.max_page_size} gives {self.max_page_size}."
                )
        return parameters


def _whole_number(request: Request, name: str) -> int | None:
    """The query parameter ``name`` as a number from 1, None when absent."""
    values = request.query_params.getlist(name)
    if not values:
        return None
    # ASCII digits only: int() also takes " 5", "+5" and "1_0".
    text = values[0]
    if len(values) != 1 or not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise ValidationError({name: ["Send one whole number, from 1."]})
    return int(text)
