"""Request body parsers for the REST API."""

from __future__ import annotations

from typing import Any

from rest_framework import parsers
from rest_framework.exceptions import ParseError


class JSONParser(parsers.JSONParser):
    """DRF's, with a document nested past Python's recursion limit a parse error.

    Python's JSON decoder recurses once per level; DRF turns only ValueError into a 400,
    so `[` a hundred thousand times (a few hundred kilobytes) was a server error.
    """

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            return super().parse(stream, media_type=media_type, parser_context=parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - the document is nested too deeply.") from None
