"""The REST API's JSON parser (REST_FRAMEWORK's DEFAULT_PARSER_CLASSES)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser as BaseJSONParser

from kikipounamu import json_input


class JSONParser(BaseJSONParser):
    """DRF's JSON parser with kikipounamu.json_input's bounds: DRF's own lets
    ``RecursionError`` through as a server error, and takes NaN."""

    def parse(
        self,
        stream: Any,
        media_type: str | None = None,
        parser_context: Mapping[str, Any] | None = None,
    ) -> Any:
        try:
            return json_input.loads(stream.read())
        except json_input.JSONInputError as exc:
            raise ParseError(str(exc)) from None
