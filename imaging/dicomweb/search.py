"""QIDO-RS searches: a level's index rows that match a parsed query, for one clinic.

Searches by a caller who may read the whole clinic (a partner's token) run from SQL
compiled once per query shape (`portal.statements`); callers limited to some studies or
series (viewer sessions, share links) run the ORM query with those limits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db.models import Q, QuerySet

from imaging.dicomweb.dicomjson import LEVELS
from imaging.dicomweb.query import Query
from imaging.models import Instance, Series, Study
from portal.statements import ShapeCache, q_shape, q_values, q_with
from tenants.models import Tenant

_ORDER = {
    "study": ("-study_date", "study_uid"),
    "series": ("study__study_uid", "series_number", "series_uid"),
    "instance": ("series__series_uid", "instance_number", "sop_instance_uid"),
}
_MODELS = {"study": Study, "series": Series, "instance": Instance}
_CONFIDENTIAL = {
    "study": "confidential",
    "series": "study__confidential",
    "instance": "study__confidential",
}


def level_queryset(
    level: str,
    *,
    tenant: Tenant,
    studies: QuerySet[Study] | None = None,
    series: QuerySet[Series] | None = None,
    confidential: bool = True,
) -> QuerySet:
    """The clinic's rows at `level` a caller limited to `studies` and `series` (and to
    studies not confidential, unless `confidential`) may see."""
    queryset = _MODELS[level].objects.for_tenant(tenant)
    if not confidential:
        queryset = queryset.filter(**{_CONFIDENTIAL[level]: False})
    if studies is not None:
        field = "pk" if level == "study" else "study"
        queryset = queryset.filter(**{f"{field}__in": studies.values("pk")})
    if series is not None and level != "study":
        field = "pk" if level == "series" else "series"
        queryset = queryset.filter(**{f"{field}__in": series.values("pk")})
    return queryset.order_by(*_ORDER[level])


def _matching(queryset: QuerySet, *, tenant: Tenant, query: Query, filters: Q, level: str):
    if query.patient is not None:
        # Naming the patient's clinic too lets PostgreSQL use the patient indexes
        # (tenant, patient_id) and (tenant, name) instead of scanning every patient row.
        queryset = queryset.filter(**{f"{query.patient}__tenant": tenant})
    queryset = queryset.filter(filters)
    if query.distinct:
        queryset = queryset.distinct()  # a series with two matching orders is one result
    # One row beyond the limit tells the caller whether the answer was cut.
    queryset = queryset[query.offset : query.offset + query.limit + 1]
    return queryset.values_list(*LEVELS[level].columns)  # results read columns, not rows


# Shapes are (level, filters' structure, patient path, offset, limit); values are the
# clinic's id, then the filters' values. A statement that does not bind the clinic's id
# is never used.
_CLINIC_WIDE = ShapeCache(required=[0])


def search_rows(
    *,
    tenant: Tenant,
    query: Query,
    level: str,
    scope: Q | None = None,
    studies: QuerySet[Study] | None = None,
    series: QuerySet[Series] | None = None,
    confidential: bool = True,
) -> list[tuple]:
    """The result rows (`LEVELS[level].columns`) of `query` among the clinic's rows at
    `level`, narrowed to `scope` (the study or series in the request's path) and to the
    `studies` and `series` a limited caller may see (and to studies not confidential,
    unless `confidential`): up to `query.limit` rows and one more when there are more."""
    filters = query.filters & scope if scope is not None else query.filters
    if studies is not None or series is not None:
        queryset = level_queryset(
            level, tenant=tenant, studies=studies, series=series, confidential=confidential
        )
        return list(_matching(queryset, tenant=tenant, query=query, filters=filters, level=level))

    def build(values: Sequence[Any]) -> QuerySet:
        clinic = Tenant(pk=values[0])
        queryset = level_queryset(level, tenant=clinic, confidential=confidential)
        return _matching(
            queryset, tenant=clinic, query=query, filters=q_with(filters, values[1:]), level=level
        )

    return _CLINIC_WIDE.rows(
        shape=(level, q_shape(filters), query.patient, query.offset, query.limit, confidential),
        values=[tenant.pk, *q_values(filters)],
        build=build,
    )
