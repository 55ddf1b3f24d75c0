"""REST API /api/v1/ for partners: studies and their series, one clinic per token."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from django.db.models import QuerySet
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

import audit
from audit.actors import Actor, client_ip
from audit.models import Action
from imaging.api.serializers import SeriesSerializer, StudySerializer
from imaging.models import Series, Study
from imaging.selectors import token_studies
from tenants.roles import Perm


def _actor(request: Any) -> Actor:
    token = getattr(request, "api_token", None)
    if token is not None:
        return Actor.for_token(token, ip=client_ip(request))
    return Actor.from_request(request)


def _date(value: str | None, name: str) -> dt.date | None:
    if not value:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise ValidationError({name: f"{value!r} is not a date (YYYY-MM-DD)."}) from None


# A Code String (PS3.5 6.2): the modality filter is matched inside the stored list.
_MODALITY = re.compile(r"[A-Z0-9_ ]{1,16}")


def _text(value: str | None, name: str, *, max_length: int = 64) -> str | None:
    # PostgreSQL text holds no NUL, and no index column is longer than this: both would
    # otherwise fail in the database.
    if not value:
        return None
    if "\x00" in value or len(value) > max_length:
        raise ValidationError({name: f"At most {max_length} characters, without NUL."})
    return value


FILTERS = [
    OpenApiParameter("patient_id", OpenApiTypes.STR, description="Exact patient ID"),
    OpenApiParameter("patient_name", OpenApiTypes.STR, description="Part of the name"),
    OpenApiParameter("accession_number", OpenApiTypes.STR),
    OpenApiParameter("modality", OpenApiTypes.STR, description="e.g. CT"),
    OpenApiParameter("study_uid", OpenApiTypes.STR),
    OpenApiParameter("date_from", OpenApiTypes.DATE),
    OpenApiParameter("date_to", OpenApiTypes.DATE),
]
FILTER_NAMES = [parameter.name for parameter in FILTERS]


class StudyList(generics.ListAPIView):
    """The clinic's studies, newest first, with filters and pagination."""

    serializer_class = StudySerializer
    required_scope = "studies:read"
    required_perms = (Perm.WORKLIST_VIEW,)

    def get_queryset(self) -> QuerySet[Study]:
        params = self.request.query_params
        studies = (
            token_studies(token=self.request.api_token)
            .filter(patient__tenant=self.request.tenant)  # uses the clinic's patient indexes
            .select_related("patient")
            .order_by("-study_date", "-created_at")
        )
        if value := _text(params.get("patient_id"), "patient_id"):
            studies = studies.filter(patient__patient_id=value)
        if value := _text(params.get("patient_name"), "patient_name"):
            studies = studies.filter(patient__name__icontains=value)
        if value := _text(params.get("accession_number"), "accession_number"):
            studies = studies.filter(accession_number=value)
        if value := _text(params.get("modality"), "modality", max_length=16):
            if not _MODALITY.fullmatch(value.upper()):
                raise ValidationError({"modality": "A modality code such as CT or MR."})
            studies = studies.filter(modalities__regex=rf"(^|\\){value.upper()}($|\\)")
        if value := _text(params.get("study_uid"), "study_uid"):
            studies = studies.filter(study_uid=value)
        if value := _date(params.get("date_from"), "date_from"):
            studies = studies.filter(study_date__gte=value)
        if value := _date(params.get("date_to"), "date_to"):
            studies = studies.filter(study_date__lte=value)
        return studies

    @extend_schema(parameters=FILTERS)
    def get(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        response = super().get(request, *args, **kwargs)
        audit.record(
            actor=_actor(request),
            action=Action.API_READ,
            target=None,
            tenant=request.tenant,
            # Names and birth dates went out: which studies', as the worklist records.
            detail={
                "resource": "studies",
                "studies": [str(study["id"]) for study in response.data.get("results", [])],
                # Which filters, never their values: a search that found nothing differs
                # from an empty listing.
                "filters": sorted(name for name in FILTER_NAMES if request.query_params.get(name)),
            },
        )
        return response


class StudyDetail(generics.RetrieveAPIView):
    serializer_class = StudySerializer
    required_scope = "studies:read"
    required_perms = (Perm.WORKLIST_VIEW,)
    lookup_field = "id"

    def get_queryset(self) -> QuerySet[Study]:
        return token_studies(token=self.request.api_token).select_related("patient")

    def retrieve(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        study = self.get_object()
        response = Response(self.get_serializer(study).data)
        audit.record(
            actor=_actor(request),
            action=Action.API_READ,
            target=study,  # so the study's access history shows it
            tenant=request.tenant,
            detail={"resource": "study"},
        )
        return response


class SeriesList(generics.ListAPIView):
    serializer_class = SeriesSerializer
    required_scope = "studies:read"
    required_perms = (Perm.WORKLIST_VIEW,)

    def get_queryset(self) -> QuerySet[Series]:
        self.study = get_object_or_404(
            token_studies(token=self.request.api_token), id=self.kwargs["id"]
        )
        return (
            Series.objects.for_tenant(self.request.tenant)
            .filter(study=self.study)
            .order_by("series_number", "series_uid")
        )

    def get(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        response = super().get(request, *args, **kwargs)
        audit.record(
            actor=_actor(request),
            action=Action.API_READ,
            target=self.study,
            tenant=request.tenant,
            detail={"resource": "series", "results": len(response.data.get("results", []))},
        )
        return response
