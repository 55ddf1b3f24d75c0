"""Model instances from the rows of precompiled statements, converted as the ORM would.

For the few lookups every request makes (a partner's token, the instance a frame comes
from), compiling an ORM query and building its objects costs several times the
database's 0.1 ms. Those lookups are written once as SQL from the models' metadata,
and their rows become model instances here.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from django.db import connection, models
from django.db.backends.utils import CursorWrapper


def column(model: type[models.Model], name: str) -> str:
    """`"table"."column"` for a field of `model`, quoted for the connection's database."""
    quote = connection.ops.quote_name
    return f"{quote(model._meta.db_table)}.{quote(model._meta.get_field(name).column)}"


def table(model: type[models.Model]) -> str:
    return connection.ops.quote_name(model._meta.db_table)


def fields(model: type[models.Model], *, without: tuple[str, ...] = ()) -> list[models.Field]:
    return [f for f in model._meta.concrete_fields if f.name not in without]


def columns(model: type[models.Model], selected: list[models.Field]) -> list[str]:
    return [column(model, f.name) for f in selected]


@functools.cache
def _converters(
    vendor: str, model: type[models.Model], names: tuple[str, ...]
) -> list[tuple[Any, list[Callable[..., Any]]]]:
    """(column expression, conversions) per field: the backend's, then the field's own."""
    result = []
    for name in names:
        field = model._meta.get_field(name)
        expression = field.get_col(model._meta.db_table)
        backend = connection.ops.get_db_converters(expression)
        result.append((expression, [*backend, *field.get_db_converters(connection)]))
    return result


def from_row(model: type[models.Model], selected: list[models.Field], values: Sequence[Any]) -> Any:
    """An instance of `model` loaded from `values` of the `selected` fields, in order.

    Fields not selected are deferred, as with `.defer()`.
    """
    names = tuple(f.name for f in selected)
    converted = []
    for (expression, converters), value in zip(
        _converters(connection.vendor, model, names), values, strict=True
    ):
        for convert in converters:
            value = convert(value, expression, connection)
        converted.append(value)
    return model.from_db(connection.alias, [f.attname for f in selected], converted)


@contextlib.contextmanager
def prepared_cursor() -> Iterator[CursorWrapper]:
    """A cursor whose statements PostgreSQL keeps parsed and planned for the connection.

    For statements every request runs (the lookups above, the searches compiled by
    portal.statements), where planning costs as much as running: an indexed lookup runs
    in 0.1 ms prepared, 0.2 ms not. PostgreSQL plans a prepared statement afresh for its
    first five runs, then keeps a generic plan only if it costs no more than those did.
    Django's own cursors bind parameters on the client and are never prepared; this one
    binds them on the server, and the connection prepares what it runs (settings:
    `DB_PREPARED_STATEMENTS`). Elsewhere, or with preparing off, it is an ordinary
    cursor.
    """
    with connection.cursor() as cursor:
        if (
            connection.vendor != "postgresql"
            or connection.connection.prepare_threshold is None
            # psycopg keeps no text of a server-bound statement for the query log
            # (DEBUG, or a test capturing queries), which then gets the ordinary cursor.
            or connection.queries_logged
        ):
            yield cursor
            return
        from django.db.backends.postgresql.base import ServerBindingCursor

        # Wrapped as Django wraps its own (execute wrappers, database errors).
        with type(cursor)(ServerBindingCursor(connection.connection), connection) as prepared:
            yield prepared
