"""Reads of studies, always for one clinic and within what the member may see."""

from __future__ import annotations

from django.db.models import Q, QuerySet

from imaging.models import Series, Study
from tenants.grants import objects_granted
from tenants.models import Membership
from tenants.roles import Perm

STUDY_VIEW_PERM = "imaging.view_study"


def study_list(*, membership: Membership, query: str = "") -> QuerySet[Study]:
    """The studies a member may list: all of the clinic's, or only those granted to them."""
    tenant = membership.tenant
    studies = Study.objects.for_tenant(tenant).select_related("patient")
    if not membership.has_perm(Perm.WORKLIST_VIEW):
        if not membership.has_perm(Perm.STUDY_VIEW_GRANTED):
            return studies.none()
        studies = objects_granted(
            tenant=tenant, user=membership.user, perm=STUDY_VIEW_PERM, queryset=studies
        )
    query = query.strip()
    if query:
        studies = studies.filter(
            Q(patient__name__icontains=query)
            | Q(patient__patient_id__iexact=query)
            | Q(accession_number__iexact=query)
            | Q(description__icontains=query)
        )
    return studies.order_by("-study_date", "-created_at")


def series_for_study(*, study: Study) -> QuerySet[Series]:
    return Series.objects.for_tenant(study.tenant).filter(study=study).order_by("series_number")
