"""Share links: a study (or chosen series) reachable without an account, under control.

The link's token is not stored in clear: only its SHA-256, looked up by an indexed
equality on the digest, so a lookup takes the same path whatever the token. It is kept
encrypted under the study's key only while something must show it again (the
recipient's email, a partner's retried request). A PIN (or the
patient's date of birth) is stored as a Django password hash.
"""

from __future__ import annotations

import datetime as dt
import uuid

from django.db import models
from django.utils import timezone

from tenants.models import SHARE_LINK_MAX_USES, Invitation
from tenants.roles import Perm
from tenants.scoping import TenantOwnedModel


class ShareLink(TenantOwnedModel):
    class Challenge(models.TextChoices):
        NONE = "none", "None"
        PIN = "pin", "PIN"
        BIRTH_DATE = "birth_date", "Patient's date of birth"

    class State(models.TextChoices):
        ACTIVE = "active", "Active"
        EXPIRED = "expired", "Expired"
        REVOKED = "revoked", "Revoked"
        USED_UP = "used_up", "Used up"
        LOCKED = "locked", "Locked (wrong PIN)"

    MAX_USES = SHARE_LINK_MAX_USES

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    study = models.ForeignKey("imaging.Study", on_delete=models.PROTECT, related_name="+")
    series = models.ManyToManyField(
        "imaging.Series", blank=True, related_name="+", help_text="Empty: the whole study"
    )
    token_sha256 = models.CharField(max_length=64, unique=True)
    created_by = models.ForeignKey(
        "tenants.User", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created_by_token = models.ForeignKey(
        "tenants.ApiToken", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)
    challenge = models.CharField(max_length=16, choices=Challenge.choices, default=Challenge.PIN)
    secret_hash = models.CharField(max_length=256, blank=True)
    failed_attempts = models.PositiveSmallIntegerField(default=0)
    locked_at = models.DateTimeField(null=True, blank=True)
    max_uses = models.PositiveIntegerField(null=True, blank=True)
    use_count = models.PositiveIntegerField(default=0)
    allow_download = models.BooleanField(default=False)
    deidentify = models.BooleanField(default=False)
    recipient_email = models.EmailField(blank=True)
    message = models.TextField(blank=True, max_length=2000)
    notify_on_first_open = models.BooleanField(default=False)
    # Made by the study's patient from their portal: such a link outlives the study's
    # confidential mark and its maker's grants (sharing.services), since it is the
    # patient's own choice about their own data. How it was made, not who made it: a
    # member who later becomes the study's patient does not turn staff links into theirs.
    made_as_patient = models.BooleanField(default=False)
    first_opened_at = models.DateTimeField(null=True, blank=True)
    last_access_at = models.DateTimeField(null=True, blank=True)
    # Markers claimed by a conditional UPDATE so each email goes out at most once.
    invitation_sent_at = models.DateTimeField(null=True, blank=True)
    # The token, encrypted under the study's key, only until the invitation is sent:
    # the email needs the link, and a Celery message must not carry it.
    invitation_token_wrapped = models.BinaryField(null=True, blank=True)
    opened_notice_sent_at = models.DateTimeField(null=True, blank=True)
    lock_notice_sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["tenant", "created_by", "-created_at"])]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(expires_at__gt=models.F("created_at")),
                name="share_expires_after_creation",
            ),
            models.CheckConstraint(
                condition=models.Q(max_uses__isnull=True)
                | models.Q(use_count__lte=models.F("max_uses")),
                name="share_uses_within_limit",
            ),
            models.CheckConstraint(
                condition=models.Q(challenge__in=["none", "pin", "birth_date"]),
                name="share_challenge_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"ShareLink {self.id}"

    @property
    def pseudonym(self) -> str | None:
        """The patient ID a de-identified link shows instead of the real one."""
        return f"SHARE-{self.pk.hex[:12].upper()}" if self.deidentify else None

    def state_at(self, now: dt.datetime) -> State:
        if self.revoked_at is not None:
            return self.State.REVOKED
        if self.expires_at <= now:
            return self.State.EXPIRED
        if self.locked_at is not None:
            return self.State.LOCKED
        if self.max_uses is not None and self.use_count >= self.max_uses:
            return self.State.USED_UP
        return self.State.ACTIVE


class ShareRequest(TenantOwnedModel):
    """A partner's `POST /api/v1/shares` sent with an Idempotency-Key.

    The same request sent again under the same key (a retry after an answer lost on the
    way) is answered with the link it made, not a second link and a second email. Kept
    for `sharing.idempotency.SHARE_REQUEST_HOURS`, then deleted by a periodic job.
    Neither the key nor the request is stored as sent: the key as its SHA-256, the
    request as an HMAC under the study's key, so the row reveals no PIN.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    api_token = models.ForeignKey("tenants.ApiToken", on_delete=models.PROTECT, related_name="+")
    key_sha256 = models.CharField(max_length=64)
    request_mac = models.CharField(max_length=64)
    share = models.ForeignKey(ShareLink, on_delete=models.CASCADE, related_name="+")
    # The link's token, encrypted under the study's key: the first answer's URL.
    token_wrapped = models.BinaryField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["created_at"])]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "api_token", "key_sha256"], name="share_request_key_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"ShareRequest {self.id}"


class PatientInvitation(Invitation):
    """An invitation to the patient portal for one person's Patient record(s) at a clinic.

    Front desk creates it with the patient's email; the token travels only in that
    email. Accepting it needs the token and, where the clinic holds one, the patient's
    date of birth, so an intercepted email alone does not open the records.
    """

    class State(models.TextChoices):
        PENDING = "pending", "Waiting for the patient"
        ACCEPTED = "accepted", "Accepted"
        EXPIRED = "expired", "Expired"
        REVOKED = "revoked", "Withdrawn"
        LOCKED = "locked", "Locked (wrong date of birth)"

    class Review(models.TextChoices):
        """Why an accepted invitation is put before the clinic's privacy officers: each is
        how front desk could give themselves a patient's images, or how a mistake looks."""

        STAFF_ACCOUNT = "staff_account", "The account belongs to a member of the clinic's staff"
        SEVERAL_PEOPLE = (
            "several_people",
            "The account now holds the records of more than one person at the clinic",
        )
        INVITER_NETWORK = (
            "inviter_network",
            "Accepted from the network address the invitation was sent from",
        )

    inviter_perm = Perm.PATIENT_INVITE

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    patients = models.ManyToManyField("imaging.Patient", related_name="+")
    failed_attempts = models.PositiveSmallIntegerField(default=0)
    locked_at = models.DateTimeField(null=True, blank=True)
    # Where the invitation was sent from, to compare with where it is accepted.
    created_ip = models.GenericIPAddressField(null=True, blank=True)
    review_reasons = models.JSONField(default=list, blank=True)
    review_notified_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["tenant", "-created_at"])]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(expires_at__gt=models.F("created_at")),
                name="invitation_expires_after_creation",
            ),
        ]

    def __str__(self) -> str:
        return f"PatientInvitation {self.id}"

    def state_at(self, now: dt.datetime) -> State:
        return self.State(super().state_at(now))


class PatientLink(TenantOwnedModel):
    """A portal account linked to one of the clinic's Patient records: "these are mine"."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey("tenants.User", on_delete=models.PROTECT, related_name="+")
    patient = models.ForeignKey("imaging.Patient", on_delete=models.PROTECT, related_name="+")
    invitation = models.ForeignKey(
        PatientInvitation, null=True, blank=True, on_delete=models.PROTECT, related_name="links"
    )
    created_at = models.DateTimeField(default=timezone.now)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["tenant", "user", "revoked_at"])]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "patient", "user"],
                condition=models.Q(revoked_at__isnull=True),
                name="patient_link_one_active",
            ),
        ]

    def __str__(self) -> str:
        return f"PatientLink {self.id}"
