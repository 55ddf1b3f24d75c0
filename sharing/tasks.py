"""Share-link emails: sent after commit, retried on mail errors, once.

Each email claims its marker column with a conditional UPDATE inside the transaction
that sends it, so a retried or duplicated message finds it claimed and stops. Only a
crash after the mail server took the message and before that commit sends it again
(the mail server's wait is bounded by EMAIL_TIMEOUT, and so is the claim's lock).
Messages carry ids only; the invitation's token is read from the row, encrypted under
the study key, and erased once sent.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import transaction
from django.utils import timezone

import audit
from audit.actors import Actor
from audit.models import Action
from imaging.crypto import unwrap_key
from imaging.keyring import study_dek
from portal.mail import MAIL_TASK, mail_send
from portal.tasks import portal_task
from sharing.idempotency import share_requests_purge as _share_requests_purge
from sharing.models import ShareLink
from sharing.services import (
    invitation_context,
    share_claim_notice,
    share_invitation_forget,
)
from sharing.services import (
    notices_unsent_requeue as _notices_unsent_requeue,
)
from tenants.selectors import oversight_emails
from tenants.timezones import local_time_text

logger = logging.getLogger(__name__)
SYSTEM = Actor.system("sharing.tasks")


def share_url(token: str) -> str:
    return f"{settings.PORTAL_BASE_URL}/s/{token}"


@portal_task(**MAIL_TASK)
def share_invitation_send(*, share_id: str) -> bool:
    with transaction.atomic():
        share = share_claim_notice(share_id=share_id, marker="invitation_sent_at")
        if share is None or not share.recipient_email or not share.invitation_token_wrapped:
            return False
        token = unwrap_key(
            kek=study_dek(study=share.study),
            wrapped=bytes(share.invitation_token_wrapped),
            context=invitation_context(share),
        ).decode()
        challenge = {
            ShareLink.Challenge.PIN: "You will need the PIN the sender gives you separately.",
            ShareLink.Challenge.BIRTH_DATE: "You will be asked for the patient's date of birth.",
        }.get(share.challenge, "")
        note = f"\nMessage from the sender:\n{share.message}\n" if share.message else ""
        expires = local_time_text(at=share.expires_at, zone=share.tenant.zone)
        mail_send(
            subject=f"[{share.tenant.name}] Medical images shared with you",
            message=(
                f"{share.tenant.name} has shared medical images with you.\n\n"
                f"Open them here (no account needed): {share_url(token)}\n{challenge}\n"
                f"The link expires on {expires}.\n{note}\n"
                "If you did not expect this email, do not open the link and delete it.\n"
            ),
            recipient_list=[share.recipient_email],
        )
        share_invitation_forget(share=share)
        # The link and the sender's message left the portal: when, and to whom (the
        # address is on the link's row), is part of who could see what.
        audit.record(
            actor=SYSTEM,
            action=Action.SHARE_EMAILED,
            target=share,
            tenant=share.tenant,
            detail={"share": str(share.pk), "study": str(share.study_id)},
        )
    logger.info("share %s invitation sent", share_id)
    return True


def _notify_sharer(share_id: str, marker: str, subject: str, body: str) -> bool:
    with transaction.atomic():
        share = share_claim_notice(share_id=share_id, marker=marker)
        if share is None or share.created_by is None:
            return False
        link = f"{settings.PORTAL_BASE_URL}/t/{share.tenant.slug}/shares/{share.pk}/"
        mail_send(
            subject=f"[{share.tenant.name}] {subject}",
            message=f"{body}\n\nShare link id: {share.pk}\nDetails and access log: {link}\n",
            recipient_list=[share.created_by.email],
        )
    return True


@portal_task(**MAIL_TASK)
def share_opened_notify(*, share_id: str) -> bool:
    return _notify_sharer(
        share_id,
        "opened_notice_sent_at",
        "Your share link was opened",
        "The study you shared was opened for the first time.",
    )


@portal_task(**MAIL_TASK)
def share_locked_notify(*, share_id: str) -> bool:
    return _notify_sharer(
        share_id,
        "lock_notice_sent_at",
        "Your share link was locked",
        "Someone entered a wrong PIN or date of birth too many times; the link is locked. "
        "Create a new link if the recipient still needs the images.",
    )


@portal_task(**MAIL_TASK)
def patient_invitation_send(*, invitation_id: str) -> bool:
    from sharing.invitations import invitation_claim_send

    with transaction.atomic():
        claimed = invitation_claim_send(invitation_id=invitation_id)
        if claimed is None:
            return False
        invitation, token = claimed
        clinic = invitation.tenant.name
        mail_send(
            subject=f"[{clinic}] Your images online: an invitation to the patient portal",
            message=(
                f"{clinic} invites you to see your medical images online.\n\n"
                "Accept the invitation here: "
                f"{settings.PORTAL_BASE_URL}/portal/invitation/{token}\n"
                "You will be asked for your date of birth, then to choose a password.\n"
                "The invitation expires on "
                f"{local_time_text(at=invitation.expires_at, zone=invitation.tenant.zone)}.\n\n"
                "If you did not ask the clinic for this, ignore this email and tell the clinic.\n"
            ),
            recipient_list=[invitation.email],
        )
        audit.record(
            actor=SYSTEM,
            action=Action.PATIENT_INVITATION_EMAILED,
            target=invitation,
            tenant=invitation.tenant,
            detail={"invitation": str(invitation.pk)},
        )
    logger.info("patient invitation %s sent", invitation_id)
    return True


@portal_task(**MAIL_TASK)
def patient_access_review_notify(*, invitation_id: str) -> int:
    """Email the clinic's privacy officers (else its tenant admins) about a flagged portal
    acceptance; returns recipients. Like a break-glass notice: ids, reasons and a link,
    never a name."""
    from sharing.invitations import invitation_claim_review_notice
    from sharing.models import PatientInvitation

    with transaction.atomic():
        invitation = invitation_claim_review_notice(invitation_id=invitation_id, now=timezone.now())
        if invitation is None:
            return 0
        tenant = invitation.tenant
        recipients = oversight_emails(tenant=tenant)
        if not recipients:
            # Left unclaimed: the recovery job sends it once the clinic has someone.
            transaction.set_rollback(True)
            logger.warning("portal invitation %s: the clinic has nobody to notify", invitation_id)
            return 0
        reasons = "".join(
            f"- {PatientInvitation.Review(code).label}\n" for code in invitation.review_reasons
        )
        audit_url = (
            f"{settings.PORTAL_BASE_URL}/t/{tenant.slug}/audit/"
            f"?action={Action.PATIENT_ACCESS_FLAGGED.value}"
        )
        accepted = local_time_text(at=invitation.accepted_at, zone=tenant.zone)
        mail_send(
            subject=f"[{tenant.name}] Patient portal access to review",
            message=(
                f"A patient portal invitation of {tenant.name} was accepted in a way "
                "that needs review:\n\n"
                f"{reasons}\nInvitation id: {invitation.pk}\n"
                f"Invited by user id: {invitation.invited_by_id}\n"
                f"Accepted by user id: {invitation.accepted_by_id}\n"
                f"Accepted: {accepted}\n\n"
                f"Review it in the audit log: {audit_url}\n"
                "Front desk ends the access on the patient's portal page if it is wrong.\n"
            ),
            recipient_list=recipients,
        )
    logger.info("portal invitation %s review notified %s", invitation_id, len(recipients))
    return len(recipients)


@portal_task(max_retries=0)
def notices_unsent_requeue() -> int:
    """Beat entry point: queue again the share and patient emails whose message was lost."""
    return _notices_unsent_requeue(now=timezone.now())


@portal_task(max_retries=0)
def share_requests_purge() -> int:
    """Beat entry point: forget partners' share requests past their retry window."""
    return _share_requests_purge(now=timezone.now())
