"""Reads of studies, always for one clinic and within what the member may see.

Who may see what, in one place:

- Staff with `worklist.view` list every study of the clinic. A study marked
  confidential is listed with its demographics hidden; its details and images open
  only to members with an explicit grant on it or an active break-glass access.
- Members with `study.view_granted` (referring physicians) see only studies granted
  to them per object (django-guardian, through `tenants.grants`).
- Images need `images.view` on top; download needs `study.download` or a per-object
  download grant.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
import uuid
from dataclasses import dataclass

from django.db import connection
from django.db.models import Case, F, Prefetch, Q, QuerySet, Value, When
from django.db.models.expressions import OrderBy

from audit.actors import Target
from audit.selectors import STUDY_TARGET_TYPE
from imaging.models import Instance, Patient, Series, Study
from portal import rows
from tenants.breakglass import break_glass_active
from tenants.grants import object_granted, objects_granted
from tenants.models import ApiToken, BreakGlassGrant, Membership, Tenant
from tenants.roles import Perm

STUDY_VIEW_PERM = "imaging.view_study"
STUDY_DOWNLOAD_PERM = "imaging.download_study"


def _by_date(*, descending: bool) -> tuple[OrderBy, str, str]:
    # Undated studies (secondary captures, imports) last either way, as SQLite sorts
    # them and PostgreSQL would not; then the newest stored; then the id, so that rows
    # equal in every key keep one order from page to page.
    if descending:
        return F("study_date").desc(nulls_last=True), "-created_at", "-pk"
    return F("study_date").asc(nulls_last=True), "created_at", "pk"


SORTS: dict[str, tuple[str | OrderBy, ...]] = {
    "date": _by_date(descending=False),
    "-date": _by_date(descending=True),
    "patient": ("patient__name", *_by_date(descending=True)),
    "-patient": ("-patient__name", *_by_date(descending=True)),
    "modality": ("modalities", *_by_date(descending=True)),
    "-modality": ("-modalities", *_by_date(descending=True)),
    "accession": ("accession_number", *_by_date(descending=True)),
    "-accession": ("-accession_number", *_by_date(descending=True)),
}
DEFAULT_SORT = "-date"


@dataclass(frozen=True)
class WorklistQuery:
    """Worklist search criteria. Travels in the session, never in a URL."""

    text: str = ""
    date_from: dt.date | None = None
    date_to: dt.date | None = None
    modality: str = ""
    referring: str = ""

    @property
    def is_empty(self) -> bool:
        return not self.fields

    @property
    def fields(self) -> list[str]:
        """The criteria given, by name (what an audit event may say of a search)."""
        return [name for name, value in vars(self).items() if value]


@dataclass(frozen=True)
class StudyAccess:
    """What one member may do with one study. `visible` False means 404."""

    visible: bool = False
    details: bool = False
    images: bool = False
    download: bool = False
    break_glass: BreakGlassGrant | None = None
    may_break_glass: bool = False
    # The details are open through break-glass alone: enough to read the study in an
    # emergency, never to change who may read it afterwards (grants, the confidential mark).
    glass_only: bool = False


def _break_glass_study_ids(*, membership: Membership, now: dt.datetime) -> set[uuid.UUID]:
    if not membership.has_perm(Perm.BREAK_GLASS):  # a role taken away ends its grants' use
        return set()
    ids = (
        BreakGlassGrant.objects.for_tenant(membership.tenant)
        .filter(user=membership.user, target_type=STUDY_TARGET_TYPE, expires_at__gt=now)
        .values_list("target_id", flat=True)
    )
    result = set()
    for value in ids:
        try:
            result.add(uuid.UUID(value))
        except ValueError:
            continue
    return result


def _granted_ids(*, membership: Membership, perm: str) -> QuerySet[Study]:
    tenant = membership.tenant
    return objects_granted(
        tenant=tenant,
        user=membership.user,
        perm=perm,
        queryset=Study.objects.for_tenant(tenant),
    ).values("pk")


# Sorts by what a masked row hides: its place in the order would tell the hidden value.
_SORTS_BY_HIDDEN = {"patient": "patient__name", "accession": "accession_number"}


def study_list(
    *,
    membership: Membership,
    now: dt.datetime,
    query: WorklistQuery | None = None,
    sort: str = DEFAULT_SORT,
) -> QuerySet[Study]:
    """The studies a member may list: all of the clinic's, or only those granted to them.

    Confidential studies the member may not open are listed masked (`masked_study_ids`);
    neither a search nor a sort tells anything about what such a row hides.
    """
    tenant = membership.tenant
    # patient__tenant lets PostgreSQL search the clinic's patient indexes, not all rows.
    studies = (
        Study.objects.for_tenant(tenant).filter(patient__tenant=tenant).select_related("patient")
    )
    if not membership.has_perm(Perm.WORKLIST_VIEW):
        if not membership.has_perm(Perm.STUDY_VIEW_GRANTED):
            return studies.none()
        studies = studies.filter(pk__in=_granted_ids(membership=membership, perm=STUDY_VIEW_PERM))
    searched = query is not None and not query.is_empty
    hidden = _SORTS_BY_HIDDEN.get(sort.lstrip("-"))
    # Only a member who lists the whole clinic sees masked rows; only a search by what
    # they hide, or a sort by it, needs to know which they are (masked_study_ids' rule).
    masked = (
        Q(confidential=True)
        & ~(
            Q(pk__in=_granted_ids(membership=membership, perm=STUDY_VIEW_PERM))
            | Q(pk__in=_break_glass_study_ids(membership=membership, now=now))
        )
        if membership.has_perm(Perm.WORKLIST_VIEW)
        and (hidden is not None or (searched and (query.text or query.referring)))
        else None
    )
    if searched:
        studies = _filtered(studies, query, masked=masked)
    order = SORTS.get(sort, SORTS[DEFAULT_SORT])
    if hidden is not None and masked is not None:
        # Masked rows sort as if the value were empty, by date among themselves.
        key = Case(When(masked, then=Value("")), default=F(hidden))
        order = (key.desc() if sort.startswith("-") else key.asc(), *order[1:])
    return studies.order_by(*order)


def _filtered(
    studies: QuerySet[Study], query: WorklistQuery, *, masked: Q | None
) -> QuerySet[Study]:
    if query.text:
        text = query.text
        studies = studies.filter(
            # Ignoring case in any script (imaging.dicomweb.query), "müller" finds Müller.
            _each_word_in("patient__name", text)
            | Q(patient__patient_id__iexact=text)
            | Q(accession_number__iexact=text)
            | Q(description__dicom_icontains=text)
        )
    if masked is not None and (query.text or query.referring):
        # Searching by what a masked row hides (a confidential patient's name, its
        # referring physician) must not reveal the study.
        studies = studies.exclude(masked)
    if query.date_from:
        studies = studies.filter(study_date__gte=query.date_from)
    if query.date_to:
        studies = studies.filter(study_date__lte=query.date_to)
    if query.modality:
        # One of the study's modalities, whole: PT is not OPT, US is not IVUS.
        modality = query.modality.upper()
        studies = studies.filter(
            Q(modalities=modality)
            | Q(modalities__startswith=modality + "\\")
            | Q(modalities__endswith="\\" + modality)
            | Q(modalities__contains="\\" + modality + "\\")
        )
    if query.referring:
        studies = studies.filter(_each_word_in("referring_physician", query.referring))
    return studies


# A name is stored as DICOM writes it (Doe^Jane) and shown as "Doe, Jane": typed either
# way, or as "Jane Doe", each word must be found in it, in any order.
_NAME_WORDS = re.compile(r"[\s,^=]+")


def _each_word_in(field: str, text: str) -> Q:
    words = [word for word in _NAME_WORDS.split(text) if word] or [text]
    match = Q()
    for word in words[:8]:
        match &= Q(**{f"{field}__dicom_icontains": word})
    return match


def masked_study_ids(*, membership: Membership, studies: list[Study], now: dt.datetime) -> set:
    """Which of `studies` are shown without demographics to this member."""
    if not membership.has_perm(Perm.WORKLIST_VIEW):
        # A member who sees only what was granted (study_access's rule): whatever is no
        # longer granted to them, and everything once their role no longer allows it.
        ids = [s.pk for s in studies]
        if not membership.has_perm(Perm.STUDY_VIEW_GRANTED):
            return set(ids)
        granted = set(
            Study.objects.for_tenant(membership.tenant)
            .filter(pk__in=ids)
            .filter(
                Q(pk__in=_granted_ids(membership=membership, perm=STUDY_VIEW_PERM))
                | Q(pk__in=_granted_ids(membership=membership, perm=STUDY_DOWNLOAD_PERM))
            )
            .values_list("pk", flat=True)
        )
        return {pk for pk in ids if pk not in granted}
    confidential = [s.pk for s in studies if s.confidential]
    if not confidential:
        return set()
    granted = set(
        objects_granted(
            tenant=membership.tenant,
            user=membership.user,
            perm=STUDY_VIEW_PERM,
            queryset=Study.objects.for_tenant(membership.tenant).filter(pk__in=confidential),
        ).values_list("pk", flat=True)
    )
    opened = _break_glass_study_ids(membership=membership, now=now)
    return {pk for pk in confidential if pk not in granted and pk not in opened}


def study_access(*, membership: Membership, study: Study, now: dt.datetime) -> StudyAccess:
    tenant = membership.tenant
    if study.tenant_id != tenant.pk:
        return StudyAccess()
    user = membership.user
    granted = object_granted(tenant=tenant, user=user, perm=STUDY_VIEW_PERM, obj=study)
    download_granted = object_granted(tenant=tenant, user=user, perm=STUDY_DOWNLOAD_PERM, obj=study)
    glass = break_glass_active(membership=membership, target=study_target(study), now=now)
    lists_all = membership.has_perm(Perm.WORKLIST_VIEW)
    if lists_all:
        details = not study.confidential or granted or glass is not None
    else:
        details = membership.has_perm(Perm.STUDY_VIEW_GRANTED) and (granted or download_granted)
    visible = lists_all or details
    if not visible:
        return StudyAccess()
    images = details and membership.has_perm(Perm.IMAGES_VIEW)
    download = images and (membership.has_perm(Perm.STUDY_DOWNLOAD) or download_granted)
    return StudyAccess(
        visible=True,
        details=details,
        images=images,
        download=download,
        break_glass=glass,
        may_break_glass=not details and membership.has_perm(Perm.BREAK_GLASS),
        glass_only=details and lists_all and study.confidential and not granted,
    )


def study_target(study: Study) -> Target:
    """The audit and break-glass target naming a study."""
    return Target(type=STUDY_TARGET_TYPE, id=str(study.pk))


def studies_with_images(*, membership: Membership, now: dt.datetime) -> QuerySet[Study]:
    """Studies whose pixels the member may read (the DICOMweb scope of a signed-in member)."""
    tenant = membership.tenant
    studies = Study.objects.for_tenant(tenant)
    if not membership.has_perm(Perm.IMAGES_VIEW):
        return studies.none()
    granted = _granted_ids(membership=membership, perm=STUDY_VIEW_PERM)
    opened = _break_glass_study_ids(membership=membership, now=now)
    if membership.has_perm(Perm.WORKLIST_VIEW):
        return studies.filter(Q(confidential=False) | Q(pk__in=granted) | Q(pk__in=opened))
    if membership.has_perm(Perm.STUDY_VIEW_GRANTED):
        downloadable = _granted_ids(membership=membership, perm=STUDY_DOWNLOAD_PERM)
        return studies.filter(Q(pk__in=granted) | Q(pk__in=downloadable) | Q(pk__in=opened))
    return studies.none()


def studies_downloadable(*, membership: Membership, now: dt.datetime) -> QuerySet[Study]:
    """Studies whose original objects a staff member may take away: those whose images
    they may read, if their role downloads or the study is granted them for download
    (study_access's rule). A patient's own studies are the patient portal's to add."""
    studies = studies_with_images(membership=membership, now=now)
    if membership.has_perm(Perm.STUDY_DOWNLOAD):
        return studies
    return studies.filter(pk__in=_granted_ids(membership=membership, perm=STUDY_DOWNLOAD_PERM))


def token_studies(*, token: ApiToken) -> QuerySet[Study]:
    """The studies a partner's token may read: its clinic's, confidential ones only with
    `confidential:read` (staff see those masked until they break the glass; a system
    cannot, so it is granted them deliberately or not at all)."""
    studies = Study.objects.for_tenant(token.tenant)
    if not token.has_scope(ApiToken.Scope.CONFIDENTIAL_READ):
        studies = studies.filter(confidential=False)
    return studies


def tenant_holds_objects(*, tenant: Tenant) -> bool:
    """Whether anything of the clinic is in its object storage (thumbnails come with
    instances)."""
    return Instance.objects.for_tenant(tenant).exists()


def study_get(*, tenant: Tenant, study_id: uuid.UUID) -> Study | None:
    return Study.objects.for_tenant(tenant).select_related("patient").filter(pk=study_id).first()


def patient_get(*, tenant: Tenant, patient_id: uuid.UUID) -> Patient | None:
    return Patient.objects.for_tenant(tenant).select_related("tenant").filter(pk=patient_id).first()


def patient_records_alike(*, patient: Patient) -> list[Patient]:
    """The record itself and the clinic's other records with the same name and birth date.

    One person often has several records (another issuer, a re-registration); front
    desk links the ones the patient confirms at the desk.
    """
    alike = Patient.objects.for_tenant(patient.tenant).filter(pk=patient.pk)
    if patient.name and patient.birth_date:
        alike = Patient.objects.for_tenant(patient.tenant).filter(
            Q(pk=patient.pk) | Q(name__iexact=patient.name, birth_date=patient.birth_date)
        )
    return sorted(alike.select_related("tenant"), key=lambda p: (p.pk != patient.pk, p.patient_id))


def series_for_study(*, study: Study) -> QuerySet[Series]:
    return Series.objects.for_tenant(study.tenant).filter(study=study).order_by("series_number")


def series_with_identifying_pixels(*, study: Study) -> QuerySet[Series]:
    """The study's series with an instance whose pixels may show who the patient is, or
    not assessed yet (`Instance.pixels_may_identify`): what a de-identified copy leaves out."""
    return studies_series_with_identifying_pixels(tenant=study.tenant, study_ids=[study.pk])


def studies_series_with_identifying_pixels(
    *, tenant: Tenant, study_ids: list[uuid.UUID]
) -> QuerySet[Series]:
    """`series_with_identifying_pixels` for several of the clinic's studies in one query."""
    flagged = (
        Instance.objects.for_tenant(tenant)
        .filter(study__in=study_ids)
        .filter(Q(pixels_may_identify=True) | Q(pixels_may_identify__isnull=True))
        .values("series_id")
    )
    return (
        Series.objects.for_tenant(tenant)
        .filter(study__in=study_ids, pk__in=flagged)
        .order_by("series_number")
    )


def instances_for_reading(
    *, tenant: Tenant, instances: QuerySet[Instance], headers: bool = False
) -> list[Instance]:
    """The clinic's `instances`, ready to read: each study and series loaded once and
    shared by its instances, the clinic set on each.

    Joining them onto every row built a copy of the clinic, study, patient and series
    per instance: for a 300-instance series, 26 ms before the first byte went out,
    against 7 ms this way. The sealed headers come only with `headers`; the pixel
    layouts never.
    """
    # Scoped here too: each row's clinic is set from `tenant` below, so a row of another
    # clinic must never get this far.
    instances = instances.filter(tenant=tenant).select_related(None).defer(None)
    # The pixel layout is for single-frame reads: a JSON value per row that a series'
    # retrieve or metadata would parse for nothing (2 ms for 300 rows).
    instances = (
        instances.defer("pixel_layout") if headers else instances.defer("metadata", "pixel_layout")
    )
    rows = list(
        instances.prefetch_related(
            Prefetch("study", queryset=Study.objects.for_tenant(tenant)),
            Prefetch("series", queryset=Series.objects.for_tenant(tenant)),
        )
    )
    for row in rows:
        row.tenant = tenant
    return rows


def instances_for_download(*, study: Study, series_ids: list | None = None) -> list[Instance]:
    """The study's instances in series and instance order, optionally of some series only."""
    instances = Instance.objects.for_tenant(study.tenant).filter(study=study)
    if series_ids is not None:
        instances = instances.filter(series__in=series_ids)
    return instances_for_reading(
        tenant=study.tenant,
        instances=instances.order_by(
            "series__series_number", "series__created_at", "instance_number", "created_at"
        ),
    )


_INSTANCE_FIELDS = rows.fields(Instance, without=("metadata",))  # only metadata reads open it
_STUDY_FIELDS = rows.fields(Study)
_SERIES_FIELDS = rows.fields(Series)


@functools.cache
def _instance_by_uids_sql(vendor: str) -> str:
    # Every frame a partner loads starts here (the viewer and share links, limited to
    # some studies, use the ORM query): one precompiled statement (portal.rows says
    # why). Identifiers come from the models' metadata; every value is a parameter. The
    # clinic is the instance's; its study and series are the same clinic's by
    # construction, so naming it once lets the (tenant, UID) index lead.
    selected = [
        *rows.columns(Instance, _INSTANCE_FIELDS),
        *rows.columns(Study, _STUDY_FIELDS),
        *rows.columns(Series, _SERIES_FIELDS),
    ]
    return (
        f"SELECT {', '.join(selected)} FROM {rows.table(Instance)} "  # noqa: S608
        f"JOIN {rows.table(Study)} "
        f"ON {rows.column(Study, 'id')} = {rows.column(Instance, 'study')} "
        f"JOIN {rows.table(Series)} "
        f"ON {rows.column(Series, 'id')} = {rows.column(Instance, 'series')} "
        f"WHERE {rows.column(Instance, 'tenant')} = %s "
        f"AND {rows.column(Instance, 'sop_instance_uid')} = %s "
        f"AND {rows.column(Study, 'study_uid')} = %s AND {rows.column(Series, 'series_uid')} = %s"
    )


def instance_by_uids(
    *, tenant: Tenant, study_uid: str, series_uid: str, sop_instance_uid: str
) -> Instance | None:
    """The clinic's instance at these UIDs, with its study and series (clinic-wide: for
    callers who may read every study of the clinic), or None."""
    with rows.prepared_cursor() as cursor:
        cursor.execute(
            _instance_by_uids_sql(connection.vendor),
            [
                Instance._meta.get_field("tenant").get_db_prep_value(tenant.pk, connection),
                sop_instance_uid,
                study_uid,
                series_uid,
            ],
        )
        row = cursor.fetchone()
    if row is None:
        return None
    first, second = len(_INSTANCE_FIELDS), len(_INSTANCE_FIELDS) + len(_STUDY_FIELDS)
    instance = rows.from_row(Instance, _INSTANCE_FIELDS, row[:first])
    instance.study = rows.from_row(Study, _STUDY_FIELDS, row[first:second])
    instance.series = rows.from_row(Series, _SERIES_FIELDS, row[second:])
    instance.tenant = instance.study.tenant = instance.series.tenant = tenant
    return instance
