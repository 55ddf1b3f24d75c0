"""ORM queries compiled once per shape, their values bound on each use.

A search rebuilds and compiles its queryset on every request though only the values
change: for a QIDO-RS search that is about 0.6 ms of the 2.4 ms the request costs in
process, more than the query itself. `ShapeCache` compiles a query once per shape (its
structure: which filters, which lookups, how many values) and afterwards binds each
request's values into the stored SQL.

Where each value lands among the SQL's parameters is found by compiling the query twice,
with two different sets of placeholder values. A parameter the same in both is a
constant. A parameter that is the placeholder (as is, or in the form the database
stores it: a UUID's hex, a date's text) is bound from that value. Anything else, a value
Django rewrote on the way (`icontains` wraps it in %, SQLite's `iexact` escapes it; the
placeholders hold those characters so that a rewrite shows), makes the shape fall back to
the ORM on every use; so does SQL that differs between the two compilations or a
compilation that fails.

Compiled statements run prepared on PostgreSQL (`portal.rows.prepared_cursor`).
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import EmptyResultSet, FullResultSet
from django.db import connection
from django.db.models import Q, QuerySet

from portal import rows

# How a bound value becomes the parameter Django would have passed: as is, as text (a
# date on SQLite), or as hex (a UUID where the database has no uuid type).
_FORMS: tuple[Callable[[Any], Any], ...] = (lambda value: value, str, lambda value: value.hex)


def _placeholder(value: Any, index: int, compilation: int) -> Any:
    """A stand-in for `value`, of its type, unlike any value a request sends."""
    kind = type(value)
    if kind is str:
        # Characters escaping, case folding or wrapping would change, so a rewrite shows.
        return f"\ue000{compilation}.{index}%_\\'Aa\ue000"
    if kind is int:
        return 20_000 + 100 * compilation + index  # fits even a small integer column
    if kind is dt.date:
        # Distinct days, valid however many values come first (a year would overflow).
        return dt.date(1000, 1, 1) + dt.timedelta(days=1_000_000 * compilation + index)
    if kind is uuid.UUID:
        return uuid.UUID(int=(compilation << 64) | index)
    return None  # no placeholder for this type: the shape is not compiled


# Per parameter: (index of the value, how it becomes the parameter), or (None, constant).
_Bind = tuple[int, Callable[[Any], Any]] | tuple[None, Any]


@dataclass(frozen=True)
class _Statement:
    sql: str
    binds: tuple[_Bind, ...]
    # Per selected column that needs them: (position, the database's and the field's
    # conversions, the column expression they take).
    converters: tuple[tuple[int, tuple[Callable[..., Any], ...], Any], ...]

    def rows(self, values: Sequence[Any]) -> list[tuple]:
        params = [
            second if index is None else second(values[index]) for index, second in self.binds
        ]
        with rows.prepared_cursor() as cursor:
            cursor.execute(self.sql, params)
            fetched = cursor.fetchall()
        if not self.converters:
            return [tuple(row) for row in fetched]
        converted = []
        for row in fetched:
            cells = list(row)
            for position, converts, expression in self.converters:
                for convert in converts:
                    cells[position] = convert(cells[position], expression, connection)
            converted.append(tuple(cells))
        return converted


_UNSEEN: Any = object()


class ShapeCache:
    """Queries compiled once per shape; `rows()` runs one with the values given.

    `required` names the values every compiled statement must bind (a clinic's id: a
    statement that lost it is never used).
    """

    def __init__(self, *, required: Sequence[int] = (), size: int = 512) -> None:
        self._required = set(required)
        self._size = size
        # Least recently used first: a flood of odd shapes (a partner's unusual searches)
        # evicts them, never the everyday shapes in use.
        self._statements: OrderedDict[Hashable, _Statement | None] = OrderedDict()
        self._lock = threading.Lock()

    def rows(
        self,
        *,
        shape: Hashable,
        values: Sequence[Any],
        build: Callable[[Sequence[Any]], QuerySet],
    ) -> list[tuple]:
        """The rows of `build(values)`.

        `shape` must determine everything `build` does apart from the values: every
        value list of one shape makes the same query.
        """
        key = (connection.vendor, shape)
        with self._lock:
            statement = self._statements.get(key, _UNSEEN)
            if statement is not _UNSEEN:
                self._statements.move_to_end(key)
        if statement is _UNSEEN:
            statement = self._compile(build, values)
            with self._lock:
                self._statements[key] = statement
                self._statements.move_to_end(key)
                while len(self._statements) > self._size:
                    self._statements.popitem(last=False)
        if statement is None:
            return list(build(values))
        return statement.rows(values)

    def compiled(self, *, shape: Hashable) -> bool:
        """Whether `shape` runs from stored SQL (False: not seen yet, or the ORM's)."""
        return self._statements.get((connection.vendor, shape)) is not None

    def _compile(
        self, build: Callable[[Sequence[Any]], QuerySet], values: Sequence[Any]
    ) -> _Statement | None:
        compilations = []
        for number in (1, 2):
            placeholders = [_placeholder(v, i, number) for i, v in enumerate(values)]
            if any(p is None for p in placeholders):
                return None
            try:
                compiler = build(placeholders).query.get_compiler(connection=connection)
                sql, params = compiler.as_sql()
            except (EmptyResultSet, FullResultSet):  # the ORM answers these itself
                return None
            compilations.append((placeholders, sql, list(params), compiler))
        (first, sql, params, compiler), (second, other_sql, other_params, _) = compilations
        if sql != other_sql or len(params) != len(other_params):
            return None
        in_first, in_second = _locations(first), _locations(second)
        binds: list[_Bind] = []
        for one, two in zip(params, other_params, strict=True):
            if type(one) is type(two) and one == two:
                binds.append((None, one))
                continue
            found = _where(in_first, one)
            if found is None or found != _where(in_second, two):
                return None
            binds.append(found)
        bound = {index for index, _ in binds if index is not None}
        if not self._required <= bound:
            return None
        return _Statement(sql=sql, binds=tuple(binds), converters=_converters(compiler))


def _converters(compiler: Any) -> tuple[tuple[int, tuple[Callable[..., Any], ...], Any], ...]:
    # Found once per shape rather than on every search (statements are kept per vendor).
    found = []
    for position, (expression, _, _) in enumerate(compiler.select):
        converts = (
            *connection.ops.get_db_converters(expression),
            *expression.get_db_converters(connection),
        )
        if converts:
            found.append((position, converts, expression))
    return tuple(found)


def _locations(placeholders: list[Any]) -> dict[tuple[type, Any], _Bind]:
    """Each form of each placeholder, by (type, value): where a parameter came from.

    A dictionary, so that classifying a search's parameters stays linear in their
    number (a UID list may hold thousands).
    """
    found: dict[tuple[type, Any], _Bind] = {}
    for index, placeholder in enumerate(placeholders):
        for form in _FORMS:
            try:
                formed = form(placeholder)
            except AttributeError:
                continue
            found.setdefault((type(formed), formed), (index, form))
    return found


def _where(locations: dict[tuple[type, Any], _Bind], param: Any) -> _Bind | None:
    try:
        return locations.get((type(param), param))
    except TypeError:  # unhashable (a list, a JSON wrapper): not a placeholder
        return None


# --- Q objects: their shape, their values, and the same Q with other values ----------


def q_shape(q: Q) -> Hashable:
    """The structure of `q`: connectors, negations, lookups, value types and counts."""
    return (
        q.connector,
        q.negated,
        tuple(
            q_shape(child)
            if isinstance(child, Q)
            else (
                child[0],
                tuple(type(v) for v in child[1])
                if isinstance(child[1], list | tuple)
                else type(child[1]),
            )
            for child in q.children
        ),
    )


def q_values(q: Q) -> list[Any]:
    """The values in `q`, in the order `q_with` takes them."""
    values: list[Any] = []
    for child in q.children:
        if isinstance(child, Q):
            values += q_values(child)
        elif isinstance(child[1], list | tuple):
            values += list(child[1])
        else:
            values.append(child[1])
    return values


def q_with(q: Q, values: Sequence[Any]) -> Q:
    """`q` with its values replaced, in `q_values` order."""
    remaining = iter(values)

    def rebuilt(node: Q) -> Q:
        clone = Q()
        clone.connector, clone.negated = node.connector, node.negated
        for child in node.children:
            if isinstance(child, Q):
                clone.children.append(rebuilt(child))
            elif isinstance(child[1], list | tuple):
                clone.children.append((child[0], [next(remaining) for _ in child[1]]))
            else:
                clone.children.append((child[0], next(remaining)))
        return clone

    return rebuilt(q)
