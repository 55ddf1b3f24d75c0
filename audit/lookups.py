"""`detail__mentions`: events whose detail holds a value, at any depth, exactly.

A study is named in many places of a detail (a search's `studies`, a viewer session's
`study`, a worklist page's `masked`); the privacy officer's study filter and a study
page's history look for its id in all of them. On PostgreSQL the match is a JSON path
over the document, which the detail's GIN index (migration audit/0004) answers without
reading the clinic's events one by one; elsewhere (the embedded SQLite) it is the
value's JSON text within the document's.
"""

from __future__ import annotations

import json
from typing import Any

from django.db.models import Lookup


def _like_escaped(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class Mentions(Lookup):
    lookup_name = "mentions"
    prepare_rhs = False

    def _value(self) -> str:
        if not isinstance(self.rhs, str):
            raise TypeError("detail__mentions takes a string")
        return json.dumps(self.rhs)

    def as_postgresql(self, compiler: Any, connection: Any) -> tuple[str, list[Any]]:
        lhs, lhs_params = self.process_lhs(compiler, connection)
        # `@?` takes no variables and the index only serves the operator, so the value
        # is written into the path as a JSON string literal (json.dumps escapes it).
        return f"{lhs} @? %s::jsonpath", [*lhs_params, f"$.** ? (@ == {self._value()})"]

    def as_sql(self, compiler: Any, connection: Any) -> tuple[str, list[Any]]:
        lhs, lhs_params = self.process_lhs(compiler, connection)
        # The document is stored as json.dumps writes it, a string value with its quotes.
        return f"{lhs} LIKE %s ESCAPE '\\'", [*lhs_params, f"%{_like_escaped(self._value())}%"]
