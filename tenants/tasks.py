"""Clinic notifications sent in the background, after commit, once (as share emails are,
see sharing.tasks)."""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from portal.mail import MAIL_TASK, mail_send
from portal.tasks import portal_task
from tenants.models import BreakGlassGrant
from tenants.selectors import oversight_emails
from tenants.timezones import local_time_text

logger = logging.getLogger(__name__)


@portal_task(**MAIL_TASK)
def break_glass_notify(*, tenant_id: str, grant_id: str) -> int:
    """Email the clinic's privacy officers (else its tenant admins) about a break-glass
    access; returns recipients."""
    with transaction.atomic():
        # Claim the row: a retried or duplicated message finds it claimed and stops.
        grants = BreakGlassGrant.objects.filter(tenant_id=tenant_id, pk=grant_id)
        claimed = grants.filter(notified_at__isnull=True).update(notified_at=timezone.now())
        if not claimed:
            return 0
        grant = grants.select_related("tenant", "user").get()
        recipients = oversight_emails(tenant=grant.tenant)
        if not recipients:
            # Left unclaimed: the recovery job sends it once the clinic has someone.
            transaction.set_rollback(True)
            logger.warning("break-glass %s: the clinic has nobody to notify", grant_id)
            return 0
        audit_url = f"{settings.PORTAL_BASE_URL}/t/{grant.tenant.slug}/audit/"
        # Names and reasons stay in the portal: the email carries ids and a link.
        mail_send(
            subject=f"[{grant.tenant.name}] Break-glass access to review",
            message=(
                f"A clinician opened a record outside their normal access in "
                f"{grant.tenant.name}.\n\nAccess id: {grant.pk}\nUser id: {grant.user_id}\n"
                f"Opened: {local_time_text(at=grant.created_at, zone=grant.tenant.zone)}, "
                f"expires {local_time_text(at=grant.expires_at, zone=grant.tenant.zone)}"
                f"\n\nReview it in the audit log: {audit_url}\n"
            ),
            recipient_list=recipients,
        )
    logger.info("break-glass %s notified %s member(s)", grant_id, len(recipients))
    return len(recipients)


@portal_task(**MAIL_TASK)
def staff_invitation_send(*, invitation_id: str) -> bool:
    from tenants.invitations import staff_invitation_claim_send, staff_invitation_roles

    with transaction.atomic():
        claimed = staff_invitation_claim_send(invitation_id=invitation_id)
        if claimed is None:
            return False
        invitation, token = claimed
        clinic = invitation.tenant.name
        mail_send(
            subject=f"[{clinic}] An invitation to join the clinic's staff",
            message=(
                f"{clinic} invites you to join its staff on the imaging portal, as "
                f"{', '.join(staff_invitation_roles(invitation))}.\n\n"
                "Accept the invitation here: "
                f"{settings.PORTAL_BASE_URL}/accounts/invitation/{token}\n"
                "You will sign in, or create an account if you have none, then set up a "
                "second factor.\n"
                "The invitation expires on "
                f"{local_time_text(at=invitation.expires_at, zone=invitation.tenant.zone)}.\n\n"
                "If you did not expect this, ignore this email: nothing happens unless you "
                "accept.\n"
            ),
            recipient_list=[invitation.email],
        )
    logger.info("staff invitation %s sent", invitation_id)
    return True


@portal_task(max_retries=0)
def notices_unsent_requeue() -> int:
    """Beat entry point: queue again the break-glass notices and invitations whose message
    was lost."""
    from tenants.services import notices_unsent_requeue as requeue

    return requeue(now=timezone.now())


@portal_task(**MAIL_TASK)
def password_reset_send(*, user_id: str, domain: str, use_https: bool) -> bool:
    """Mail an account its password reset link; False if it is gone or disabled since."""
    from tenants.forms import password_reset_mail
    from tenants.models import User

    user = User.objects.filter(pk=user_id, is_active=True).first()
    if user is None:
        return False
    password_reset_mail(user=user, domain=domain, use_https=use_https)
    logger.info("password reset mailed to user %s", user_id)
    return True
