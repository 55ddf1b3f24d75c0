"""The append-only, hash-chained audit log.

Each clinic has its own chain (and the platform one more, for events that belong to
no clinic, such as a failed sign-in with an unknown email). Every event stores the
hash of its predecessor and a SHA-256 over a canonical encoding of itself, so an
edited, deleted or reordered row breaks the chain and `manage.py verify_audit`
names the first broken `seq`.
"""

from __future__ import annotations

from typing import Any

from django.db import models

from tenants.scoping import TenantQuerySet

PLATFORM_CHAIN_KEY = "platform"


class AppendOnlyError(RuntimeError):
    """Audit events are never updated or deleted."""


class ActorType(models.TextChoices):
    USER = "user", "User"
    API_TOKEN = "api_token", "API token"
    SHARE_LINK = "share_link", "Share link"
    SYSTEM = "system", "System"
    ANONYMOUS = "anonymous", "Anonymous"


class Outcome(models.TextChoices):
    SUCCESS = "success", "Success"
    FAILURE = "failure", "Failure"
    DENIED = "denied", "Denied"


class Action(models.TextChoices):
    LOGIN_SUCCEEDED = "auth.login_succeeded", "Signed in"
    LOGIN_FAILED = "auth.login_failed", "Sign-in failed"
    LOGOUT = "auth.logout", "Signed out"
    SIGNIN_LOCKED = "auth.locked_out", "Sign-in locked after repeated failures"
    THROTTLE_RESET = "auth.unlocked", "Sign-in lockout lifted"
    SESSION_EXPIRED = "auth.session_expired", "Session expired"
    SESSION_REVOKED = "auth.session_revoked", "Session ended by access change"
    PASSWORD_CHANGED = "auth.password_changed", "Password changed"
    PASSWORD_RESET_REQUESTED = "auth.password_reset_requested", "Password reset requested"
    PASSWORD_RESET_COMPLETED = "auth.password_reset_completed", "Password reset completed"
    MFA_VERIFIED = "mfa.verified", "Second factor verified"
    MFA_FAILED = "mfa.failed", "Second factor rejected"
    STEP_UP_VERIFIED = "mfa.step_up", "Second factor re-verified for a sensitive action"
    BACKUP_CODES_ISSUED = "mfa.backup_codes_issued", "Backup codes issued"
    BREAK_GLASS_OPENED = "access.break_glass", "Break-glass access opened"
    ACCESS_DENIED = "access.denied", "Access refused"
    TENANT_CREATED = "tenant.created", "Clinic created"
    TENANT_UPDATED = "tenant.updated", "Clinic settings changed"
    USER_CREATED = "user.created", "User created"
    MFA_DEVICE_CONFIRMED = "mfa.device_confirmed", "Second-factor device confirmed"
    MFA_ENROLMENT_STARTED = "mfa.enrolment_started", "Second-factor enrolment started"
    MEMBERSHIP_CREATED = "membership.created", "Member added"
    MEMBERSHIP_ROLES_CHANGED = "membership.roles_changed", "Member roles changed"
    MEMBERSHIP_DEACTIVATED = "membership.deactivated", "Member deactivated"
    MEMBERSHIP_REACTIVATED = "membership.reactivated", "Member reactivated"
    STAFF_INVITED = "staff.invited", "Staff member invited"
    STAFF_INVITATION_REVOKED = "staff.invitation_revoked", "Staff invitation withdrawn"
    STAFF_INVITATION_ACCEPTED = "staff.invitation_accepted", "Staff invitation accepted"
    STAFF_INVITATION_REFUSED = "staff.invitation_refused", "Staff invitation link refused"
    INSTANCE_STORED = "instance.stored", "Instance stored"
    HEADERS_INDEXED = "instance.headers_indexed", "Instance headers kept for metadata requests"
    THUMBNAILS_REBUILT = "series.thumbnails_rebuilt", "Series thumbnails queued to render again"
    INSTANCE_DUPLICATE = "instance.duplicate", "Identical instance received again"
    INSTANCE_RESTORED = "instance.restored", "Missing stored object restored from an identical copy"
    INSTANCE_REJECTED = "instance.rejected", "Instance rejected"
    PREAMBLE_NEUTRALISED = "security.preamble_neutralised", "Hostile preamble neutralised"
    INTEGRITY_FAILED = "security.integrity_failed", "Stored object failed its integrity check"
    INSTANCE_READ = "instance.read", "Instance read"
    API_TOKEN_CREATED = "api_token.created", "API token created"
    API_TOKEN_REVOKED = "api_token.revoked", "API token revoked"
    API_TOKEN_REFUSED = "api_token.refused", "Revoked or expired API token refused"
    API_READ = "api.read", "REST API read"
    WORKLIST_VIEWED = "worklist.viewed", "Worklist viewed"
    STUDY_VIEWED = "study.viewed", "Study details viewed"
    VIEWER_OPENED = "study.viewer_opened", "Study opened in the viewer"
    SERIES_VIEWED = "series.viewed", "Series viewed"
    STUDY_DOWNLOADED = "study.downloaded", "Study downloaded"
    STUDY_CONFIDENTIALITY_CHANGED = "study.confidentiality_changed", "Study confidentiality changed"
    STUDY_PATIENT_DIFFERS = "study.patient_differs", "Study images give other patient details"
    STUDY_PATIENT_CONFIRMED = "study.patient_confirmed", "Study confirmed as its patient's"
    DICOMWEB_SEARCH = "dicomweb.search", "DICOMweb search"
    DICOMWEB_RETRIEVE = "dicomweb.retrieve", "DICOMweb retrieve"
    DICOMWEB_STORE = "dicomweb.store", "DICOMweb store"
    SHARE_CREATED = "share.created", "Share link created"
    SHARE_REVOKED = "share.revoked", "Share link revoked"
    SHARE_SHORTENED = "share.shortened", "Share link shortened"
    SHARES_LISTED = "share.listed", "Share links listed"
    SHARE_VIEWED = "share.viewed", "Share link details viewed"
    SHARE_OPENED = "share.opened", "Share link opened"
    SHARE_REFUSED = "share.refused", "Share link refused"
    SHARE_PIN_FAILED = "share.pin_failed", "Share link PIN wrong"
    SHARE_LOCKED = "share.locked", "Share link locked after wrong PINs"
    SHARE_DOWNLOADED = "share.downloaded", "Shared study downloaded"
    SHARE_EMAILED = "share.emailed", "Share link emailed to its recipient"
    PATIENT_VIEWED = "patient.viewed", "Patient record viewed"
    PATIENT_INVITED = "patient.invited", "Patient invited to the portal"
    PATIENT_INVITATION_REVOKED = "patient.invitation_revoked", "Portal invitation withdrawn"
    PATIENT_INVITATION_FAILED = "patient.invitation_failed", "Portal invitation: wrong birth date"
    PATIENT_INVITATION_LOCKED = "patient.invitation_locked", "Portal invitation locked"
    PATIENT_INVITATION_REFUSED = "patient.invitation_refused", "Portal invitation link refused"
    PATIENT_INVITATION_EMAILED = "patient.invitation_emailed", "Portal invitation emailed"
    PATIENT_LINKED = "patient.linked", "Portal account linked to patient record"
    PATIENT_UNLINKED = "patient.unlinked", "Portal account unlinked from patient record"
    PATIENT_ACCESS_FLAGGED = "patient.access_flagged", "Portal access flagged for review"
    GRANT_ADDED = "grant.added", "Access granted"
    GRANT_REVOKED = "grant.revoked", "Access revoked"
    ADMIN_ACTION = "admin.action", "Tenant admin action"
    AUDIT_VIEWED = "audit.viewed", "Audit log viewed"
    AUDIT_VERIFIED = "audit.verified", "Audit chain verified"


class AuditKey(models.Model):
    """The chain's HMAC key, wrapped by the key provider (never stored in clear)."""

    version = models.PositiveSmallIntegerField(unique=True)
    wrapped_key = models.BinaryField()

    def __str__(self) -> str:
        return f"AuditKey v{self.version}"


class AuditChain(models.Model):
    """Head of one chain: the last seq and hash, so a deleted tail is detected too."""

    key = models.CharField(max_length=64, unique=True)
    tenant = models.OneToOneField(
        "tenants.Tenant", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    last_seq = models.BigIntegerField(default=0)
    last_hash = models.CharField(max_length=64, default="")

    def __str__(self) -> str:
        return f"AuditChain {self.key}"


class AuditEventQuerySet(TenantQuerySet):
    def update(self, **kwargs: Any) -> int:
        raise AppendOnlyError("Audit events cannot be updated")

    def delete(self) -> tuple[int, dict[str, int]]:
        raise AppendOnlyError("Audit events cannot be deleted")


class AuditEvent(models.Model):
    # Every audited request inserts here, so the table has no index it does not need:
    # (chain, seq) and the three (tenant, ...) indexes below lead with these columns, and
    # serve their lookups, so the foreign keys get no single-column index of their own.
    chain = models.ForeignKey(
        AuditChain, on_delete=models.PROTECT, related_name="+", db_index=False
    )
    seq = models.BigIntegerField()
    tenant = models.ForeignKey(
        "tenants.Tenant",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        db_index=False,
    )
    created_at = models.DateTimeField()
    actor_type = models.CharField(max_length=16, choices=ActorType.choices)
    actor_id = models.CharField(max_length=64, blank=True)
    actor_ip = models.GenericIPAddressField(null=True, blank=True)
    # Validated against Action in audit.record(); no DB-level choices, so adding an
    # action needs no migration.
    action = models.CharField(max_length=64)
    target_type = models.CharField(max_length=64, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    detail = models.JSONField(default=dict, blank=True)
    prev_hash = models.CharField(max_length=64, blank=True)
    hash = models.CharField(max_length=64)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        default_permissions = ("view",)
        constraints = [
            models.UniqueConstraint(fields=["chain", "seq"], name="audit_event_chain_seq_unique"),
            models.CheckConstraint(
                condition=models.Q(outcome__in=["success", "failure", "denied"]),
                name="audit_event_outcome_valid",
            ),
        ]
        indexes = [
            models.Index(fields=["tenant", "-created_at"]),
            models.Index(fields=["tenant", "target_type", "target_id"]),
            models.Index(fields=["tenant", "actor_type", "actor_id"]),
        ]

    def __str__(self) -> str:
        return f"AuditEvent {self.chain_id}#{self.seq}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise AppendOnlyError("Audit events cannot be changed once written")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        raise AppendOnlyError("Audit events cannot be deleted")

    @property
    def action_label(self) -> str:
        try:
            return str(Action(self.action).label)
        except ValueError:
            return self.action
