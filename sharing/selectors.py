"""Reads of share links and of the patient portal, always for one clinic at a time."""

from __future__ import annotations

import datetime as dt
import uuid
from collections import defaultdict
from dataclasses import dataclass

from django.db.models import QuerySet

from audit.actors import Target
from audit.models import Action, ActorType, AuditEvent
from audit.selectors import events_for_targets
from imaging.models import Patient, Series, Study
from imaging.selectors import (
    masked_study_ids,
    series_for_study,
    series_with_identifying_pixels,
    studies_series_with_identifying_pixels,
    study_access,
    study_target,
)
from sharing.models import PatientInvitation, PatientLink, ShareLink
from tenants.models import ApiToken, BreakGlassGrant, Membership, Tenant, User
from tenants.roles import Perm, RoleCode
from tenants.selectors import user_memberships

PATIENT_HISTORY_SIZE = 100

# Who may see and revoke every link of the clinic, whoever made it (a partner's token, a
# member who left, a patient): the privacy officer, whose job is overseeing disclosures.
# Not `study.share` (a radiologist manages their own links, not colleagues'), not
# `clinic.manage` (administration sees no patient data). Revoking only takes access
# away, and the list shows no demographics unless the member's roles already do.
SHARE_OVERSIGHT_PERM = Perm.AUDIT_READ


def share_series(*, share: ShareLink) -> QuerySet[Series]:
    """The series a link shows: those chosen (or all the study's), less, on a
    de-identified link, those it withholds (`share_series_withheld`)."""
    series = series_for_study(study=share.study)
    chosen = share.series.values("pk")
    if chosen.exists():
        series = series.filter(pk__in=chosen)
    if share.deidentify:
        series = series.exclude(
            pk__in=series_with_identifying_pixels(study=share.study).values("pk")
        )
    return series


def share_series_withheld(*, share: ShareLink) -> QuerySet[Series]:
    """The series a de-identified link leaves out although chosen: their pixels may show
    who the patient is (burned-in text, a photograph, a scanned document), and the
    de-identification cleans headers, not images. None on other links."""
    if not share.deidentify:
        return Series.objects.for_tenant(share.tenant).none()
    withheld = series_with_identifying_pixels(study=share.study)
    chosen = share.series.values("pk")
    return withheld.filter(pk__in=chosen) if chosen.exists() else withheld


def shares_series_withheld_uids(
    *, tenant: Tenant, shares: list[ShareLink]
) -> dict[uuid.UUID, list[str]]:
    """`share_series_withheld` for a page of the clinic's links, as each withheld series'
    UID: two queries however long the page, where one link at a time took two each."""
    deidentified = [share for share in shares if share.deidentify]
    if not deidentified:
        return {}
    chosen: dict[uuid.UUID, set[uuid.UUID]] = defaultdict(set)
    picks = ShareLink.series.through.objects.filter(
        sharelink__tenant=tenant, sharelink__in=[share.pk for share in deidentified]
    ).values_list("sharelink_id", "series_id")
    for share_id, series_id in picks:
        chosen[share_id].add(series_id)
    flagged: dict[uuid.UUID, list[tuple[uuid.UUID, str]]] = defaultdict(list)
    identifying = studies_series_with_identifying_pixels(
        tenant=tenant, study_ids=list({share.study_id for share in deidentified})
    ).values_list("study_id", "pk", "series_uid")
    for study_id, series_id, series_uid in identifying:
        flagged[study_id].append((series_id, series_uid))
    return {
        share.pk: [
            uid
            for series_id, uid in flagged[share.study_id]
            if not chosen[share.pk] or series_id in chosen[share.pk]
        ]
        for share in deidentified
    }


def share_list(*, membership: Membership) -> QuerySet[ShareLink]:
    """The links this member made that they may still see, newest first.

    A member who may share sees every link they made; a patient only those to studies
    still theirs: a record unlinked (a mistaken match, say) takes its links' pages along.
    A study held for differing patient details keeps them: its links are paused, and
    the patient may still revoke them.
    """
    shares = ShareLink.objects.for_tenant(membership.tenant).filter(created_by=membership.user)
    if not membership.has_perm(Perm.STUDY_SHARE):
        shares = shares.filter(
            study__in=own_studies(membership=membership, held_too=True).values("pk")
        )
    return shares.select_related("study", "study__patient").order_by("-created_at")


def share_list_live(*, membership: Membership, now: dt.datetime) -> QuerySet[ShareLink]:
    """Every live link of the clinic, whoever made it, newest first; none for a member
    without oversight."""
    shares = ShareLink.objects.for_tenant(membership.tenant)
    if not membership.has_perm(SHARE_OVERSIGHT_PERM):
        return shares.none()
    return (
        shares.filter(revoked_at__isnull=True, expires_at__gt=now)
        .select_related("study", "study__patient", "created_by", "created_by_token")
        .order_by("-created_at")
    )


def share_get(*, membership: Membership, share_id: uuid.UUID) -> ShareLink | None:
    """One of `share_list`'s links; for a member with oversight, any link of the clinic."""
    if membership.has_perm(SHARE_OVERSIGHT_PERM):
        shares = ShareLink.objects.for_tenant(membership.tenant).select_related(
            "study", "study__patient", "created_by", "created_by_token"
        )
    else:
        shares = share_list(membership=membership)
    return shares.filter(pk=share_id).first()


def share_masked_study_ids(
    *, membership: Membership, shares: list[ShareLink], now: dt.datetime
) -> set[uuid.UUID]:
    """Studies of `shares` whose demographics this member may not see.

    Staff follow the worklist's rule (a study made confidential since, a grant withdrawn;
    every study for an overseer whose roles show no worklist); a patient's own links are
    to their own studies.
    """
    if not membership.has_perm(Perm.STUDY_SHARE):
        shares = [s for s in shares if s.created_by_id != membership.user_id]
    if not shares:
        return set()
    return masked_study_ids(membership=membership, studies=[s.study for s in shares], now=now)


def break_glass_sole_grant(
    *, membership: Membership, study: Study, now: dt.datetime
) -> BreakGlassGrant | None:
    """The break-glass grant this member's access to `study` rests on alone, or None.

    None too when the member cannot open the study at all, or also opens it by role or
    by an explicit grant. With several live grants, the one that ends last.
    """
    access = study_access(membership=membership, study=study, now=now)
    grant = access.break_glass
    if not access.details or grant is None:
        return None
    # The same rule asked again at the instant the last live grant ends: what still
    # opens the study then (a role on a study not confidential, a grant on it) does
    # not rest on break-glass. No other part of the rule depends on the clock.
    after = study_access(membership=membership, study=study, now=grant.expires_at)
    return None if after.details else grant


def study_patient_user_ids(*, study: Study) -> QuerySet:
    """The accounts that are this study's patient (a subquery of user ids).

    Linked to its Patient record through the portal and still holding the patient role
    in the clinic: front desk confirmed the person, so their links are their own.
    """
    tenant = study.tenant
    linked = (
        PatientLink.objects.for_tenant(tenant)
        .filter(patient_id=study.patient_id, revoked_at__isnull=True)
        .values("user_id")
    )
    return (
        Membership.objects.for_tenant(tenant)
        .filter(user_id__in=linked, is_active=True, roles__code=RoleCode.PATIENT)
        .values("user_id")
    )


def linked_patient_ids(*, tenant: Tenant, user: User) -> QuerySet:
    """The clinic's Patient records this account is linked to (a subquery)."""
    return (
        PatientLink.objects.for_tenant(tenant)
        .filter(user=user, revoked_at__isnull=True)
        .values("patient_id")
    )


def own_studies(*, membership: Membership, held_too: bool = False) -> QuerySet[Study]:
    """A patient's own studies at this clinic; none without the patient role, and none
    held for differing patient details (imaging.models.Study.patient_held)."""
    tenant = membership.tenant
    studies = Study.objects.for_tenant(tenant).select_related("patient", "tenant")
    if not membership.has_perm(Perm.OWN_STUDIES):
        return studies.none()
    studies = studies.filter(patient__in=linked_patient_ids(tenant=tenant, user=membership.user))
    if not held_too:
        # A study whose images may be another person's waits for staff to confirm it.
        studies = studies.filter(patient_held=False)
    return studies.order_by("-study_date", "-created_at")


def own_study_get(*, membership: Membership, study_id: uuid.UUID) -> Study | None:
    return own_studies(membership=membership).filter(pk=study_id).first()


def own_studies_everywhere(*, user: User) -> list[tuple[Membership, list[Study]]]:
    """A patient's studies at every clinic that linked them, clinic by clinic."""
    return [
        (membership, list(own_studies(membership=membership)))
        for membership in user_memberships(user=user)
        if membership.has_perm(Perm.OWN_STUDIES)
    ]


def patient_portal_access(
    *, tenant: Tenant, patient: Patient
) -> tuple[list[PatientInvitation], list[PatientLink]]:
    """Invitations sent for a record and the accounts linked to it, newest first."""
    invitations = list(
        PatientInvitation.objects.for_tenant(tenant)
        .filter(patients=patient)
        .select_related("invited_by")
        .order_by("-created_at")[:20]
    )
    links = list(
        PatientLink.objects.for_tenant(tenant)
        .filter(patient=patient, revoked_at__isnull=True)
        .select_related("user")
        .order_by("-created_at")
    )
    return invitations, links


def patient_link_get(*, tenant: Tenant, link_id: uuid.UUID) -> PatientLink | None:
    return (
        PatientLink.objects.for_tenant(tenant)
        .select_related("patient", "user", "tenant")
        .filter(pk=link_id)
        .first()
    )


def invitation_get(*, tenant: Tenant, invitation_id: uuid.UUID) -> PatientInvitation | None:
    return (
        PatientInvitation.objects.for_tenant(tenant)
        .select_related("tenant")
        .filter(pk=invitation_id)
        .first()
    )


@dataclass(frozen=True)
class AccessRow:
    """One line of a patient's view of who accessed their study: a role, never a name."""

    at: dt.datetime
    who: str
    organisation: str
    what: str
    outcome: str


# What the patient reads for the protocol-level names staff and auditors see.
PATIENT_ACTION_LABELS = {
    Action.DICOMWEB_RETRIEVE: "Images read by a connected system or viewer",
    Action.SERIES_VIEWED: "Images viewed",
    Action.INSTANCE_STORED: "Images stored",
    Action.GRANT_ADDED: "A doctor was given access",
    Action.GRANT_REVOKED: "A doctor's access was ended",
    Action.ACCESS_DENIED: "Access refused",
}


def study_access_history(
    *, membership: Membership, study: Study, limit: int = PATIENT_HISTORY_SIZE
) -> list[AccessRow]:
    """Who opened, read, downloaded or shared this study, by role and organisation."""
    tenant = membership.tenant
    targets = [study_target(study)] + [Target.of(s) for s in series_for_study(study=study)]
    events = list(events_for_targets(tenant=tenant, targets=targets)[:limit])
    user_ids = {e.actor_id for e in events if e.actor_type == ActorType.USER}
    roles = {
        str(m.user_id): ", ".join(sorted(role.name for role in m.roles.all()))
        for m in Membership.objects.for_tenant(tenant)
        .filter(user_id__in=user_ids)
        .prefetch_related("roles")
    }
    token_ids = {e.actor_id for e in events if e.actor_type == ActorType.API_TOKEN}
    tokens = {
        str(pk): name
        for pk, name in ApiToken.objects.for_tenant(tenant)
        .filter(pk__in=token_ids)
        .values_list("pk", "name")
    }
    mine = {
        str(pk)
        for pk in ShareLink.objects.for_tenant(tenant)
        .filter(study=study, created_by=membership.user)
        .values_list("pk", flat=True)
    }
    me = str(membership.user_id)

    def who(event: AuditEvent) -> str:
        if event.actor_type == ActorType.USER:
            return "You" if event.actor_id == me else roles.get(event.actor_id, "Clinic staff")
        if event.actor_type == ActorType.API_TOKEN:
            return f"Connected system “{tokens.get(event.actor_id, 'unnamed')}”"
        if event.actor_type == ActorType.SHARE_LINK:
            if event.actor_id in mine:
                return "Someone you shared a link with"
            return "Recipient of a link shared by the clinic"
        if event.actor_type == ActorType.SYSTEM:
            return "Automatic processing"
        return "Someone without an account"

    return [
        AccessRow(
            at=e.created_at,
            who=who(e),
            organisation=tenant.name,
            what=PATIENT_ACTION_LABELS.get(e.action, e.action_label),
            outcome=e.get_outcome_display(),
        )
        for e in events
    ]
