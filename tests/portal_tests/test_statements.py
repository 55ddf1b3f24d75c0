"""Queries compiled once per shape: the same rows as the ORM's, each clinic its own."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from django.db.models import Q
from django.utils import timezone

from audit.actors import Actor
from portal.statements import ShapeCache, q_shape, q_values, q_with
from tenants.models import ApiToken, Tenant
from tenants.tokens import api_token_create

pytestmark = pytest.mark.django_db


def _tokens(clinic: Tenant, *names: str) -> None:
    for name in names:
        api_token_create(
            tenant=clinic,
            name=name,
            scopes=["dicomweb:read"],
            actor=Actor.system("tests"),
            now=timezone.now(),
        )


class Counted:
    """A token search by name; counts how often the ORM query is built."""

    def __init__(self, q: Q) -> None:
        self.q = q
        self.built = 0

    def __call__(self, values: Sequence[Any]):
        self.built += 1
        clinic = Tenant(pk=values[0])
        return (
            ApiToken.objects.for_tenant(clinic)
            .filter(q_with(self.q, values[1:]))
            .order_by("name")
            .values_list("name")
        )


def _names(cache: ShapeCache, clinic: Tenant, q: Q, build: Counted | None = None) -> list[str]:
    build = build or Counted(q)
    rows = cache.rows(shape=q_shape(q), values=[clinic.pk, *q_values(q)], build=build)
    return [name for (name,) in rows]


def test_a_shape_is_compiled_once_and_bound_with_each_requests_values(clinic):
    _tokens(clinic, "RIS", "PACS bridge", "AI vendor")
    cache = ShapeCache(required=[0])
    first, second = Counted(Q(name="RIS")), Counted(Q(name="AI vendor"))

    assert _names(cache, clinic, first.q, first) == ["RIS"]
    assert _names(cache, clinic, second.q, second) == ["AI vendor"]
    assert _names(cache, clinic, Q(name__in=["RIS", "PACS bridge"])) == ["PACS bridge", "RIS"]
    assert _names(cache, clinic, Q(name="nobody")) == []

    assert first.built == 2  # the two placeholder compilations, then never again
    assert second.built == 0
    assert cache.compiled(shape=q_shape(Q(name="x")))


def test_another_clinic_asking_the_same_shape_gets_only_its_own_rows(clinic, other_clinic):
    _tokens(clinic, "RIS")
    _tokens(other_clinic, "RIS", "outsider only")
    cache = ShapeCache(required=[0])

    ours = _names(cache, clinic, Q(name__in=["RIS", "outsider only"]))
    theirs = _names(cache, other_clinic, Q(name__in=["RIS", "outsider only"]))

    assert ours == ["RIS"]
    assert theirs == ["RIS", "outsider only"]
    assert cache.compiled(shape=q_shape(Q(name__in=["a", "b"])))


def test_values_django_rewrites_are_left_to_the_orm(clinic):
    # icontains wraps the value in % and escapes the % and _ inside it: a statement
    # binding the raw value would match "50%" as a wildcard.
    _tokens(clinic, "50% off", "500 off", "RIS_A", "RISXA")
    cache = ShapeCache(required=[0])

    assert _names(cache, clinic, Q(name__icontains="50%")) == ["50% off"]
    assert _names(cache, clinic, Q(name__icontains="s_a")) == ["RIS_A"]
    assert not cache.compiled(shape=q_shape(Q(name__icontains="x")))


def test_a_statement_that_loses_the_clinic_is_never_used(clinic, other_clinic):
    _tokens(clinic, "RIS")
    _tokens(other_clinic, "RIS")
    cache = ShapeCache(required=[0])

    def careless(values: Sequence[Any]):  # ignores values[0]: every clinic's tokens
        return (
            ApiToken.objects.unscoped(reason="test: a statement without the clinic")
            .filter(name=values[1])
            .values_list("name")
        )

    rows = cache.rows(shape="careless", values=[clinic.pk, "RIS"], build=careless)

    assert len(rows) == 2  # the ORM's answer, as the builder wrote it
    assert not cache.compiled(shape="careless")


def test_values_of_a_type_without_a_placeholder_are_left_to_the_orm(clinic):
    _tokens(clinic, "RIS")
    cache = ShapeCache(required=[0])
    q = Q(created_at__lte=timezone.now())

    assert _names(cache, clinic, q) == ["RIS"]
    assert not cache.compiled(shape=q_shape(q))


def test_q_values_and_q_with_walk_nested_filters_in_one_order():
    q = Q(a=1) & (Q(b__in=["x", "y"]) | ~Q(c="z"))

    values = q_values(q)
    rebuilt = q_with(q, ["one", "two", "three", "four"])

    assert values == [1, "x", "y", "z"]
    assert q_values(rebuilt) == ["one", "two", "three", "four"]
    assert q_shape(rebuilt) != q_shape(q)  # the value types differ (str for int)
    assert q_shape(q_with(q, [2, "p", "q", "r"])) == q_shape(q)
    assert str(q_with(q, values)) == str(q)
