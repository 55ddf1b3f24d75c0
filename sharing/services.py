"""Share links: create, look up, challenge, count uses, revoke. Every step audited.

Tokens are 256 bits from `secrets` and only their SHA-256 is stored. Looking a token
up is one indexed equality on the digest whatever the token, and unknown, revoked and
expired tokens are refused after that same lookup, so their timing tells nothing.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
from collections.abc import Iterable

from django.conf import settings
from django.contrib.auth.hashers import check_password, make_password
from django.db import transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone

import audit
from audit.actors import Actor
from audit.models import Action, ActorType, Outcome
from imaging.crypto import wrap_key
from imaging.keyring import study_dek
from imaging.models import Series, Study
from imaging.selectors import study_access
from portal.tasks import task_send_on_commit
from sharing.models import PatientLink, ShareLink
from sharing.selectors import (
    break_glass_sole_grant,
    share_series_withheld,
    study_patient_user_ids,
)
from tenants.models import EMAIL_MAX_LENGTH, ApiToken, BreakGlassGrant, Membership, Tenant, User
from tenants.roles import Perm
from tenants.tokens import token_digest

TOKEN_BYTES = 32
MAX_SECRET_ATTEMPTS = 5
PIN_PATTERN = re.compile(r"[0-9]{4,12}")  # fullmatch: "\n" may not end a PIN
# A longer address would fail at the database (PostgreSQL) instead of being refused.
EMAIL_TOO_LONG = f"An email address has at most {EMAIL_MAX_LENGTH} characters."
DOWNLOAD_NOT_YOURS = "You may not download this study, so a link you make cannot allow it either."


class ShareInvalid(ValueError):
    """The link cannot be created as asked; the message says why, for a person."""


class ShareUnavailable(Exception):
    """The link cannot be used: 404 (unknown or revoked), 410 (expired, used up), 403 (locked)."""

    def __init__(self, *, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def share_actor(share: ShareLink, *, ip: str | None) -> Actor:
    return Actor(type=ActorType.SHARE_LINK, id=str(share.pk), ip=ip)


def invitation_context(share: ShareLink) -> bytes:
    return b"share-invitation|" + str(share.tenant_id).encode() + b"|" + str(share.pk).encode()


def _secret_for(*, challenge: str, pin: str | None, study: Study) -> str:
    if challenge == ShareLink.Challenge.NONE:
        return ""
    if challenge == ShareLink.Challenge.PIN:
        if not pin or not PIN_PATTERN.fullmatch(pin):
            raise ShareInvalid("Choose a PIN of 4 to 12 digits and give it to the recipient.")
        return make_password(pin)
    if study.patient.birth_date is None:
        raise ShareInvalid("This patient has no date of birth on file; use a PIN instead.")
    return make_password(study.patient.birth_date.isoformat())


@transaction.atomic
def share_create(
    *,
    study: Study,
    actor: Actor,
    now: dt.datetime,
    membership: Membership | None = None,
    created_by_token: ApiToken | None = None,
    series: Iterable[Series] = (),
    expires_at: dt.datetime | None = None,
    challenge: str = ShareLink.Challenge.PIN,
    pin: str | None = None,
    max_uses: int | None = None,
    allow_download: bool = False,
    deidentify: bool = False,
    recipient_email: str = "",
    message: str = "",
    notify_on_first_open: bool = False,
    as_patient: bool = False,
) -> tuple[ShareLink, str]:
    """Create a link; returns it and its token, which is shown once and never stored.

    A link is made by a member of the study's clinic (`membership`) or by a partner's
    token, one of the two, and allows no more than its maker may do: download only if the
    member may download the study, or the token may retrieve studies. The member's
    access is asked again once the study's row is locked, as withdrawing a grant locks it
    (`imaging.services.study_grant_revoke`): a grant withdrawn meanwhile makes no link
    rather than one nobody revokes. Access resting on break-glass alone
    (`sharing.selectors.break_glass_sole_grant`) ends the link no later than the grant,
    so emergency access does not outlive itself through a link; a later expiry asked for
    is shortened, and the audit event says so. A token's link ends no later than the
    token does, likewise.
    `as_patient`: the member is sharing their own study from the patient portal; their
    link to its record is locked and asked for instead, as unlinking the record revokes
    their links.
    """
    tenant = study.tenant
    expires_at = expires_at or now + dt.timedelta(days=tenant.share_link_default_days)
    if expires_at <= now:
        raise ShareInvalid("The expiry must be in the future.")
    if expires_at > now + dt.timedelta(days=tenant.share_link_max_days):
        raise ShareInvalid(f"Links of this clinic last at most {tenant.share_link_max_days} days.")
    if (membership is None) == (created_by_token is None):
        raise ValueError("A link is made by a member or by a partner's token, one of them.")
    if membership is not None and membership.tenant_id != tenant.pk:
        raise ValueError("The member belongs to another clinic than the study.")
    if max_uses is not None and not 1 <= max_uses <= ShareLink.MAX_USES:
        raise ShareInvalid(f"The number of uses must be from 1 to {ShareLink.MAX_USES:,}.")
    if tenant.share_link_max_uses is not None:
        if max_uses is not None and max_uses > tenant.share_link_max_uses:
            raise ShareInvalid(
                f"Links of this clinic allow at most {tenant.share_link_max_uses} uses."
            )
        max_uses = max_uses or tenant.share_link_max_uses
    chosen = list(series)
    if any(s.study_id != study.pk or s.tenant_id != tenant.pk for s in chosen):
        raise ShareInvalid("Choose series of this study only.")
    if challenge not in ShareLink.Challenge.values:
        raise ShareInvalid("Unknown challenge.")
    if deidentify and challenge == ShareLink.Challenge.BIRTH_DATE:
        # Its recipient would have to know whose images they are, and its challenge page
        # would answer whether a birth date is the patient's.
        raise ShareInvalid(
            "A de-identified link cannot ask for the patient's date of birth; use a PIN."
        )
    if len(recipient_email) > EMAIL_MAX_LENGTH:
        raise ShareInvalid(EMAIL_TOO_LONG)
    if study_confidential_locked(study) and not study.confidential:
        # Marked confidential since the caller read it: its links are being revoked, and
        # whether this one may exist is for the caller to decide again.
        raise ShareInvalid(
            "This study was just marked confidential. Open it again before sharing it."
        )
    if created_by_token is not None and not token_live_locked(created_by_token, now=now):
        # Revoked while this request was under way: its links are being revoked too.
        raise ShareInvalid("This token is no longer valid.")
    if created_by_token is not None and not created_by_token.has_scope(
        ApiToken.Scope.DICOMWEB_READ
    ):
        # A link shows its study's images and headers to whoever opens it, the token's
        # own system included: a token that may not read them must not make one.
        raise ShareInvalid(
            "This token may not read images (scope dicomweb:read), so it cannot make a "
            "link that shows them."
        )
    break_glass = None
    capped = False
    if membership is not None and as_patient:
        if not _own_study_locked(membership=membership, study=study) or _held_locked(study):
            raise ShareInvalid("This study is no longer in your portal, so it cannot be shared.")
    elif membership is not None:
        # Asked under the study's lock: the caller's earlier answer may be stale.
        access = study_access(membership=membership, study=study, now=now)
        if not access.details:
            raise ShareInvalid("You no longer have access to this study, so it cannot be shared.")
        if allow_download and not access.download:
            raise ShareInvalid(DOWNLOAD_NOT_YOURS)
        break_glass = break_glass_sole_grant(membership=membership, study=study, now=now)
        if break_glass is not None:
            capped = expires_at > break_glass.expires_at
            expires_at = min(expires_at, break_glass.expires_at)
    token_capped = (
        created_by_token is not None
        and created_by_token.expires_at is not None
        and expires_at > created_by_token.expires_at
    )
    if token_capped:
        # The token's access ends then; a link it made must not carry it further.
        expires_at = created_by_token.expires_at  # type: ignore[union-attr]
    raw = secrets.token_urlsafe(TOKEN_BYTES)
    share = ShareLink.objects.create(
        tenant=tenant,
        study=study,
        token_sha256=token_digest(raw),
        created_by_id=membership.user_id if membership is not None else None,
        created_by_token=created_by_token,
        created_at=now,
        expires_at=expires_at,
        challenge=challenge,
        secret_hash=_secret_for(challenge=challenge, pin=pin, study=study),
        max_uses=max_uses,
        allow_download=allow_download,
        deidentify=deidentify,
        recipient_email=recipient_email,
        message=message[:2000],
        notify_on_first_open=notify_on_first_open,
        made_as_patient=membership is not None and as_patient,
    )
    if chosen:
        share.series.set(chosen)
    if recipient_email:
        share.invitation_token_wrapped = wrap_key(
            kek=study_dek(study=study), key=raw.encode(), context=invitation_context(share)
        )
        share.save(update_fields=["invitation_token_wrapped"])
    audit.record(
        actor=actor,
        action=Action.SHARE_CREATED,
        target=study,
        tenant=tenant,
        detail={
            "share": str(share.pk),
            "series": [str(s.pk) for s in chosen],
            "expires_at": expires_at.isoformat(),
            "challenge": challenge,
            "max_uses": max_uses,
            "download": allow_download,
            "deidentified": deidentify,
            **({"withheld_series": _withheld(share)} if deidentify else {}),
            "emailed": bool(recipient_email),
            **({"break_glass": str(break_glass.pk)} if break_glass is not None else {}),
            **({"capped_by_break_glass": str(break_glass.pk)} if capped else {}),
            **({"capped_by_token_expiry": True} if token_capped else {}),
        },
    )
    if recipient_email:
        from sharing.tasks import share_invitation_send

        task_send_on_commit(task=share_invitation_send, kwargs={"share_id": str(share.pk)})
    return share, raw


def _withheld(share: ShareLink) -> list[str]:
    return [str(pk) for pk in share_series_withheld(share=share).values_list("pk", flat=True)]


def _own_study_locked(*, membership: Membership, study: Study) -> bool:
    """Whether the member is this study's patient in the portal, their link to its
    record locked until commit: unlinking it (`patient_link_revoke`) waits for this link
    and revokes it, or has committed and is seen here."""
    return (
        membership.has_perm(Perm.OWN_STUDIES)
        and PatientLink.objects.for_tenant(study.tenant)
        .select_for_update()
        .filter(user_id=membership.user_id, patient_id=study.patient_id, revoked_at__isnull=True)
        .values_list("pk", flat=True)
        .first()
        is not None
    )


def _held_locked(study: Study) -> bool:
    """Whether the study is held for differing patient details now (see study_confidential_locked:
    the study row is locked until commit by that check)."""
    return bool(
        Study.objects.for_tenant(study.tenant)
        .select_for_update()
        .filter(pk=study.pk, patient_held=True)
        .exists()
    )


def study_confidential_locked(study: Study) -> bool:
    """Whether the study is confidential now, its row locked until commit: marking it
    confidential waits for this link and revokes it, or has committed and is seen here
    (`study_set_confidential`)."""
    return bool(
        Study.objects.for_tenant(study.tenant)
        .select_for_update()
        .filter(pk=study.pk)
        .values_list("confidential", flat=True)
        .first()
    )


def token_live_locked(token: ApiToken, *, now: dt.datetime) -> bool:
    """Lock the token's row until commit, so its revocation waits for this link and
    revokes it, or has committed and this link is refused."""
    return (
        ApiToken.objects.for_tenant(token.tenant)
        .select_for_update()
        .filter(pk=token.pk, revoked_at__isnull=True)
        .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
        .values_list("pk", flat=True)
        .first()
        is not None
    )


@transaction.atomic
def share_revoke(*, share: ShareLink, actor: Actor, now: dt.datetime, reason: str = "") -> bool:
    """Revoke a link; False when it already was. `reason` goes into the audit detail."""
    revoked = (
        ShareLink.objects.for_tenant(share.tenant)
        .filter(pk=share.pk, revoked_at__isnull=True)
        # The invitation's token goes too: an email still queued must not carry it.
        .update(revoked_at=now, invitation_token_wrapped=None)
    )
    if revoked:
        share.revoked_at = now
        audit.record(
            actor=actor,
            action=Action.SHARE_REVOKED,
            target=share.study,
            tenant=share.tenant,
            detail={"share": str(share.pk), **({"reason": reason} if reason else {})},
        )
    return bool(revoked)


def shares_lock_live(
    *,
    tenant: Tenant,
    study: Study | None = None,
    created_by: User | None = None,
    created_by_token: ApiToken | None = None,
) -> None:
    """Lock the unrevoked links to `study` and/or made by `created_by` or
    `created_by_token`, in id order, until the transaction ends.

    A revocation calls this before its first audit write. A recipient's request locks
    its link and then appends to the clinic's audit chain (`share_use`,
    `share_check_secret`); a revocation that appended first and locked the links after
    would wait for that request while it waited for the chain, and PostgreSQL would
    end one of the two with a deadlock error. Links first, then the chain, everywhere.
    """
    if study is None and created_by is None and created_by_token is None:
        raise ValueError("Name the links to lock.")
    shares = ShareLink.objects.for_tenant(tenant).filter(revoked_at__isnull=True)
    if study is not None:
        shares = shares.filter(study=study)
    if created_by is not None:
        shares = shares.filter(created_by=created_by)
    if created_by_token is not None:
        shares = shares.filter(created_by_token=created_by_token)
    # NO KEY: a viewer session being opened on a link (its foreign key) need not wait.
    locked = shares.select_for_update(no_key=True, of=("self",)).order_by("pk")
    list(locked.values_list("pk", flat=True))


def _revoke_live(
    shares: QuerySet[ShareLink], *, actor: Actor, now: dt.datetime, reason: str
) -> int:
    live = shares.filter(revoked_at__isnull=True, expires_at__gt=now)
    # All locked before the first audit write, in id order (see shares_lock_live); then
    # revoked, and audited, oldest first.
    locked = list(
        live.select_for_update(no_key=True, of=("self",))
        .select_related("study", "tenant")
        .order_by("pk")
    )
    locked.sort(key=lambda share: share.created_at)
    return sum(share_revoke(share=share, actor=actor, now=now, reason=reason) for share in locked)


@transaction.atomic
def shares_revoke_created_by(*, tenant: Tenant, user: User, actor: Actor, now: dt.datetime) -> int:
    """Revoke every live link `user` made in `tenant` (a member who left); returns how many.

    Each revocation is audited on its study, as if revoked one by one.
    """
    shares = ShareLink.objects.for_tenant(tenant).filter(created_by=user)
    return _revoke_live(shares, actor=actor, now=now, reason="creator_deactivated")


@transaction.atomic
def shares_revoke_created_by_token(*, token: ApiToken, actor: Actor, now: dt.datetime) -> int:
    """Revoke every live link a partner token made (the token was revoked); returns how many."""
    shares = ShareLink.objects.for_tenant(token.tenant).filter(created_by_token=token)
    return _revoke_live(shares, actor=actor, now=now, reason="token_revoked")


def _patients_own(study: Study) -> Q:
    """Links the study's patient made of it from their portal, while they are its
    patient (their record still linked, the patient role still held)."""
    return Q(made_as_patient=True, created_by__in=study_patient_user_ids(study=study))


@transaction.atomic
def shares_revoke_for_confidential_study(*, study: Study, actor: Actor, now: dt.datetime) -> int:
    """Revoke the live links to a study just marked confidential; returns how many.

    The mark narrows who sees the study (a public figure, a colleague as the patient,
    a legal hold), so links made by staff or by partners' tokens, made under the wider
    access, go. Links the patient made of their own study in the patient portal stay:
    the mark restricts the clinic's staff, not the patient, who still sees the study
    in the portal and may share it again; revoking would only break what they chose
    to share of their own data. Each revocation is audited on the study.
    """
    shares = (
        ShareLink.objects.for_tenant(study.tenant).filter(study=study).exclude(_patients_own(study))
    )
    return _revoke_live(shares, actor=actor, now=now, reason="study_confidential")


@transaction.atomic
def shares_revoke_for_withdrawn_grant(
    *, study: Study, user: User, actor: Actor, now: dt.datetime
) -> int:
    """Revoke the live links `user` made of `study`, whose grant on it was withdrawn and
    who no longer sees it otherwise (`imaging.services.study_grant_revoke` decides);
    returns how many. Each revocation is audited on the study. The study's patient keeps
    their links: they still see it from their portal."""
    shares = (
        ShareLink.objects.for_tenant(study.tenant)
        .filter(study=study, created_by=user)
        .exclude(_patients_own(study))
    )
    return _revoke_live(shares, actor=actor, now=now, reason="grant_withdrawn")


@transaction.atomic
def shares_end_with_break_glass(
    *, study: Study, user: User, grant: BreakGlassGrant, actor: Actor, now: dt.datetime
) -> int:
    """End the live links `user` made of `study` no later than `grant`, the break-glass
    access their view of it now rests on alone (a grant was withdrawn); returns how
    many were shortened. Each is audited on the study."""
    shares = (
        ShareLink.objects.for_tenant(study.tenant)
        .select_for_update()
        .filter(
            study=study,
            created_by=user,
            revoked_at__isnull=True,
            expires_at__gt=max(now, grant.expires_at),
        )
        .order_by("created_at")
    )
    shortened = 0
    for share in shares:
        was = share.expires_at
        share.expires_at = grant.expires_at
        share.save(update_fields=["expires_at"])
        audit.record(
            actor=actor,
            action=Action.SHARE_SHORTENED,
            target=study,
            tenant=study.tenant,
            detail={
                "share": str(share.pk),
                "reason": "grant_withdrawn",
                "break_glass": str(grant.pk),
                "expires_at": grant.expires_at.isoformat(),
                "was": was.isoformat(),
            },
        )
        shortened += 1
    return shortened


# A link the patient made, paused while its study is held for differing patient details.
HELD = "held"


def _refuse(share: ShareLink, *, state: str, ip: str | None) -> ShareUnavailable:
    status = 404 if state == ShareLink.State.REVOKED else 410
    if state in (ShareLink.State.LOCKED, HELD):
        status = 403
    with transaction.atomic():
        audit.record(
            actor=share_actor(share, ip=ip),
            action=Action.SHARE_REFUSED,
            target=share.study,
            tenant=share.tenant,
            outcome=Outcome.DENIED,
            detail={"share": str(share.pk), "state": state},
        )
    return ShareUnavailable(status=status, reason=state)


def share_lookup(*, raw: str, now: dt.datetime, ip: str | None) -> ShareLink:
    """The usable link for a token; raises ShareUnavailable (404/410/403) otherwise."""
    share = (
        ShareLink.objects.unscoped(reason="a share token names its clinic")
        .select_related("tenant", "study", "study__patient")
        .filter(token_sha256=token_digest(raw))
        .first()
    )
    if share is None or share.tenant.status != share.tenant.Status.ACTIVE:
        raise ShareUnavailable(status=404, reason="unknown")
    return share_current(share=share, now=now, ip=ip)


def share_current(*, share: ShareLink, now: dt.datetime, ip: str | None) -> ShareLink:
    """Re-read the link: revocation and expiry apply on the very next request."""
    fresh = (
        ShareLink.objects.for_tenant(share.tenant)
        .select_related("tenant", "study", "study__patient")
        .get(pk=share.pk)
    )
    if fresh.tenant.status != fresh.tenant.Status.ACTIVE:  # suspended since it was opened
        raise ShareUnavailable(status=404, reason="unknown")
    state = fresh.state_at(now)
    # A used-up link still serves the recipient who used its last use (their session).
    if state not in (ShareLink.State.ACTIVE, ShareLink.State.USED_UP):
        raise _refuse(fresh, state=state, ip=ip)
    if fresh.made_as_patient and fresh.study.patient_held:
        # The patient shared what was theirs; images since may be another person's,
        # and the clinic has not confirmed them (imaging.models.Study.patient_held).
        raise _refuse(fresh, state=HELD, ip=ip)
    return fresh


def share_openable(*, share: ShareLink, now: dt.datetime, ip: str | None) -> None:
    """Raise ShareUnavailable (410) when no use is left for a browser yet to open the link.

    share_current lets a used-up link through for the session that spent its last use;
    anyone else is told at once, not after answering the challenge or pressing Open.
    """
    if share.state_at(now) == ShareLink.State.USED_UP:
        raise _refuse(share, state=ShareLink.State.USED_UP, ip=ip)


def share_check_secret(*, share: ShareLink, answer: str, now: dt.datetime, ip: str | None) -> bool:
    """Check the PIN or date of birth; the link locks after MAX_SECRET_ATTEMPTS misses."""
    with transaction.atomic():
        locked = ShareLink.objects.for_tenant(share.tenant).select_for_update().get(pk=share.pk)
        if locked.locked_at is not None:
            return False
        if check_password(answer.strip(), locked.secret_hash):
            return True
        locked.failed_attempts += 1
        actor = share_actor(locked, ip=ip)
        audit.record(
            actor=actor,
            action=Action.SHARE_PIN_FAILED,
            target=share.study,
            tenant=share.tenant,
            outcome=Outcome.FAILURE,
            detail={"share": str(share.pk), "attempt": locked.failed_attempts},
        )
        fields = ["failed_attempts"]
        if locked.failed_attempts >= MAX_SECRET_ATTEMPTS:
            locked.locked_at = now
            fields.append("locked_at")
            audit.record(
                actor=actor,
                action=Action.SHARE_LOCKED,
                target=share.study,
                tenant=share.tenant,
                outcome=Outcome.DENIED,
                detail={"share": str(share.pk)},
            )
            from sharing.tasks import share_locked_notify

            task_send_on_commit(task=share_locked_notify, kwargs={"share_id": str(share.pk)})
        locked.save(update_fields=fields)
    return False


def share_use(*, share: ShareLink, now: dt.datetime, ip: str | None) -> None:
    """Spend one use (a recipient session). Holds under concurrent requests."""
    with transaction.atomic():
        spent = (
            ShareLink.objects.for_tenant(share.tenant)
            .filter(pk=share.pk, revoked_at__isnull=True, locked_at__isnull=True)
            .filter(expires_at__gt=now)
            .filter(Q(max_uses__isnull=True) | Q(use_count__lt=F("max_uses")))
            .update(use_count=F("use_count") + 1, last_access_at=now)
        )
        if spent:
            _opened(share, now=now, ip=ip)
    if not spent:
        # Revoked, expired or locked since it was read, or its last use just spent: the
        # refusal (its status and its audit event) names which.
        share.refresh_from_db(fields=["revoked_at", "expires_at", "locked_at", "use_count"])
        state = share.state_at(now)
        raise _refuse(
            share,
            state=ShareLink.State.USED_UP if state == ShareLink.State.ACTIVE else state,
            ip=ip,
        )


def _opened(share: ShareLink, *, now: dt.datetime, ip: str | None) -> None:
    first = (
        ShareLink.objects.for_tenant(share.tenant)
        .filter(pk=share.pk, first_opened_at__isnull=True)
        .update(first_opened_at=now)
    )
    audit.record(
        actor=share_actor(share, ip=ip),
        action=Action.SHARE_OPENED,
        target=share.study,
        tenant=share.tenant,
        detail={"share": str(share.pk), "first": bool(first)},
    )
    if first and share.notify_on_first_open:
        from sharing.tasks import share_opened_notify

        task_send_on_commit(task=share_opened_notify, kwargs={"share_id": str(share.pk)})


def share_touch(*, share: ShareLink, now: dt.datetime) -> None:
    ShareLink.objects.for_tenant(share.tenant).filter(pk=share.pk).update(last_access_at=now)


NOTICE_MARKERS = frozenset({"invitation_sent_at", "opened_notice_sent_at", "lock_notice_sent_at"})


def share_claim_notice(*, share_id: str, marker: str) -> ShareLink | None:
    """Claim an email's marker; None when it was already sent (a retry or a duplicate)."""
    if marker not in NOTICE_MARKERS:
        raise ValueError(marker)
    links = ShareLink.objects.unscoped(reason="a task loads its own row by id").filter(pk=share_id)
    claimable = links.filter(**{f"{marker}__isnull": True})
    if marker == "invitation_sent_at":
        # A message that waited (or was sent again by the recovery job) sends nothing
        # for a share withdrawn or ended meanwhile, or of a suspended clinic.
        claimable = claimable.filter(
            revoked_at__isnull=True,
            expires_at__gt=timezone.now(),
            tenant__status=Tenant.Status.ACTIVE,
        )
    if not claimable.update(**{marker: timezone.now()}):
        return None
    return links.select_related("tenant", "study", "created_by").get()


def share_invitation_forget(*, share: ShareLink) -> None:
    ShareLink.objects.for_tenant(share.tenant).filter(pk=share.pk).update(
        invitation_token_wrapped=None
    )


def notices_unsent_requeue(*, now: dt.datetime) -> int:
    """Queue again, in every clinic, the share and patient-portal emails still unsent, and
    the privacy officers' notices of portal access to review.

    Those due more than TASK_RECOVER_AFTER_MINUTES ago and within TASK_RECOVER_WITHIN_DAYS:
    their message was lost (a broker that could not be reached at the commit) or the mail
    server's retries were spent. Each email claims its marker, so none goes twice. Link
    tokens kept for emails that will not be sent are forgotten.
    """
    from sharing.models import PatientInvitation
    from sharing.tasks import (
        patient_access_review_notify,
        patient_invitation_send,
        share_invitation_send,
        share_locked_notify,
        share_opened_notify,
    )
    from tenants.invitations import invitations_unsent

    due = now - dt.timedelta(minutes=settings.TASK_RECOVER_AFTER_MINUTES)
    since = now - dt.timedelta(days=settings.TASK_RECOVER_WITHIN_DAYS)
    links = ShareLink.objects.unscoped(
        reason="a platform job finds unsent emails everywhere"
    ).filter(tenant__status=Tenant.Status.ACTIVE)
    pending = [
        (
            share_invitation_send,
            "share_id",
            links.filter(
                invitation_sent_at__isnull=True,
                invitation_token_wrapped__isnull=False,
                revoked_at__isnull=True,
                expires_at__gt=now,
                created_at__range=(since, due),
            ),
        ),
        (
            share_opened_notify,
            "share_id",
            links.filter(
                notify_on_first_open=True,
                opened_notice_sent_at__isnull=True,
                first_opened_at__range=(since, due),
            ),
        ),
        (
            share_locked_notify,
            "share_id",
            links.filter(lock_notice_sent_at__isnull=True, locked_at__range=(since, due)),
        ),
        (
            patient_invitation_send,
            "invitation_id",
            invitations_unsent(PatientInvitation, now=now, since=since, due=due),
        ),
        (
            patient_access_review_notify,
            "invitation_id",
            PatientInvitation.objects.unscoped(reason="a platform job finds unsent notices")
            .filter(review_notified_at__isnull=True, accepted_at__range=(since, due))
            .exclude(review_reasons=[]),
        ),
    ]
    count = 0
    for task, argument, rows in pending:
        for pk in rows.values_list("pk", flat=True):
            task_send_on_commit(task=task, kwargs={argument: str(pk)})
            count += 1
    _invitation_tokens_forget(now=now, since=since, due=due)
    return count


def _invitation_tokens_forget(*, now: dt.datetime, since: dt.datetime, due: dt.datetime) -> int:
    """Forget, in every clinic, the wrapped link tokens no invitation email will send:
    of links revoked, expired or past the recovery window, and of emails claimed long
    enough ago to have been sent (a worker that died before forgetting). A token is kept
    only until its email is sent; a link whose email never goes should not keep it."""
    links = ShareLink.objects.unscoped(reason="a platform job forgets unsendable tokens")
    return (
        links.filter(invitation_token_wrapped__isnull=False)
        .filter(
            Q(revoked_at__isnull=False)
            | Q(expires_at__lte=now)
            | Q(created_at__lt=since)
            | Q(invitation_sent_at__lt=due)  # claimed just now: its task still reads it
        )
        .update(invitation_token_wrapped=None)
    )
