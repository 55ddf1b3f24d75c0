"""Clinics (tenants), people (users) and who may do what where (memberships, roles)."""

from __future__ import annotations

import datetime as dt
import re
import uuid
import zoneinfo
from typing import Any

from django.contrib.auth.base_user import AbstractBaseUser, BaseUserManager
from django.contrib.auth.models import PermissionsMixin
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone
from django.utils.functional import cached_property
from django_otp.models import Device

from tenants.roles import ROLE_NAMES, Perm, RoleCode, perms_for
from tenants.scoping import TenantOwnedModel
from tenants.timezones import DEFAULT_TIME_ZONE, validate_time_zone, zone_named

slug_validator = RegexValidator(
    r"^[a-z0-9](?:[a-z0-9-]{0,48}[a-z0-9])?\Z",
    "Use 1-50 lowercase letters, digits and hyphens, not starting or ending with a hyphen.",
)


# Every email column's length (RFC 5321's 256-octet path less its angle brackets).
EMAIL_MAX_LENGTH = 254


# The most uses any share link may allow (sharing.models.ShareLink.MAX_USES): a link
# opened more often is no longer a link for one recipient, and it keeps the figure
# inside a 32-bit column.
SHARE_LINK_MAX_USES = 100_000


# A clinic's name goes into email subjects and page titles: one line, no control codes.
one_line_validator = RegexValidator(
    r"[\x00-\x1f\x7f]", inverse_match=True, message="Use one line, without control characters."
)


class Tenant(models.Model):
    """A clinic. Everything clinical belongs to exactly one."""

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        SUSPENDED = "suspended", "Suspended"

    class StorageBackend(models.TextChoices):
        FILESYSTEM = "filesystem", "Local filesystem"
        S3 = "s3", "S3-compatible object storage"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    slug = models.CharField(max_length=50, unique=True, validators=[slug_validator])
    name = models.CharField(max_length=200, validators=[one_line_validator])
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)

    # Policy, edited by the clinic's tenant admins.
    mfa_required_roles = models.ManyToManyField(
        "tenants.Role",
        blank=True,
        related_name="+",
        help_text="Roles that must use a second factor. Staff roles always do.",
    )
    session_idle_minutes = models.PositiveSmallIntegerField(
        default=15, validators=[MinValueValidator(1), MaxValueValidator(480)]
    )
    session_absolute_hours = models.PositiveSmallIntegerField(
        default=12, validators=[MinValueValidator(1), MaxValueValidator(24)]
    )
    step_up_minutes = models.PositiveSmallIntegerField(
        default=10, validators=[MinValueValidator(1), MaxValueValidator(60)]
    )
    share_link_default_days = models.PositiveSmallIntegerField(
        default=7, validators=[MinValueValidator(1), MaxValueValidator(365)]
    )
    share_link_max_days = models.PositiveSmallIntegerField(
        default=30, validators=[MinValueValidator(1), MaxValueValidator(365)]
    )
    share_link_max_uses = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(SHARE_LINK_MAX_USES)],
        help_text="Upper bound on uses per link; empty for no bound.",
    )

    time_zone = models.CharField(
        max_length=64,
        default=DEFAULT_TIME_ZONE,
        validators=[validate_time_zone],
        help_text="The clinic's local time, by IANA name (e.g. Europe/Zurich): pages, emails "
        "and date filters use it. Records are kept in UTC whatever it is.",
    )

    cors_allowed_origins = models.TextField(
        blank=True,
        help_text="Browser viewers allowed to call DICOMweb with this clinic's tokens, one "
        "origin per line, e.g. https://viewer.example.org",
    )

    # Data residency, set by platform operators.
    storage_backend = models.CharField(
        max_length=16, choices=StorageBackend.choices, default=StorageBackend.FILESYSTEM
    )
    storage_bucket = models.CharField(max_length=63, blank=True)
    storage_region = models.CharField(max_length=32, blank=True)

    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(status__in=["active", "suspended"]), name="tenant_status_valid"
            ),
            models.CheckConstraint(
                condition=models.Q(share_link_default_days__lte=models.F("share_link_max_days")),
                name="tenant_share_default_within_max",
            ),
        ]

    def __str__(self) -> str:
        return f"Tenant {self.slug}"

    @property
    def is_active(self) -> bool:
        return self.status == self.Status.ACTIVE

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        return zone_named(self.time_zone)

    @property
    def cors_origins(self) -> set[str]:
        return cors_origins_in(self.cors_allowed_origins)

    def clean(self) -> None:
        super().clean()
        for origin in self.cors_origins:
            if not re.fullmatch(
                r"https://[a-z0-9.-]+(:\d{1,5})?|http://(localhost|127\.0\.0\.1)(:\d{1,5})?", origin
            ):
                raise ValidationError(
                    {
                        "cors_allowed_origins": f"{origin!r} is not an origin like https://viewer.example.org"
                    }
                )


def cors_origins_in(text: str) -> set[str]:
    """The origins of a `cors_allowed_origins` value: one a line, without a final slash."""
    return {line.strip().rstrip("/") for line in text.splitlines() if line.strip()}


class UserManager(BaseUserManager["User"]):
    use_in_migrations = True

    def _create_user(self, email: str, password: str | None, **extra: Any) -> User:
        if not email:
            raise ValueError("An email address is required")
        user = self.model(email=self.normalize_email(email).lower(), **extra)
        if password:
            user.set_password(password)
        else:
            user.set_unusable_password()
        user.save(using=self._db)
        return user

    def create_user(self, email: str, password: str | None = None, **extra: Any) -> User:
        extra.setdefault("is_staff", False)
        extra.setdefault("is_superuser", False)
        return self._create_user(email, password, **extra)

    def create_superuser(self, email: str, password: str | None = None, **extra: Any) -> User:
        extra.update(is_staff=True, is_superuser=True)
        return self._create_user(email, password, **extra)

    def get_by_natural_key(self, username: str | None) -> User:
        return self.get(email__iexact=username or "")


class User(AbstractBaseUser, PermissionsMixin):
    """A person: staff member, referring physician, patient or platform operator.

    Users are platform-wide because one person can work for several clinics; what they
    may do in a clinic comes only from their Membership there. `is_staff` and
    `is_superuser` are for platform operators and grant nothing inside a clinic.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    email = models.EmailField("email address", max_length=EMAIL_MAX_LENGTH, unique=True)
    full_name = models.CharField(max_length=150, blank=True)
    is_active = models.BooleanField(default=True)
    is_staff = models.BooleanField(
        default=False, help_text="Platform operator: may sign in to the platform admin."
    )
    date_joined = models.DateTimeField(default=timezone.now)

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []

    class Meta:
        constraints = [models.UniqueConstraint(Lower("email"), name="user_email_ci_unique")]

    def __str__(self) -> str:
        # Emails identify people; logs and admin breadcrumbs get the id only.
        return f"User {self.id}"

    def clean(self) -> None:
        super().clean()
        self.email = self.__class__.objects.normalize_email(self.email).lower()

    def get_full_name(self) -> str:
        return self.full_name or self.email

    def get_short_name(self) -> str:
        return self.full_name or self.email


class Role(models.Model):
    """A role as data. Rows mirror tenants.roles.RoleCode; the matrix lives in code."""

    code = models.CharField(
        max_length=32,
        primary_key=True,
        choices=[(code.value, ROLE_NAMES[code]) for code in RoleCode],
    )
    name = models.CharField(max_length=64)

    class Meta:
        ordering = ["code"]

    def __str__(self) -> str:
        return self.name


class Membership(TenantOwnedModel):
    """A user's place in one clinic, with one or more roles."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(User, on_delete=models.PROTECT, related_name="memberships")
    roles = models.ManyToManyField(Role, related_name="+")
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "user"], name="membership_unique_per_tenant")
        ]
        indexes = [models.Index(fields=["user", "is_active"])]

    def __str__(self) -> str:
        return f"Membership {self.id}"

    @cached_property
    def role_codes(self) -> frozenset[str]:
        return frozenset(role.code for role in self.roles.all())

    @cached_property
    def permissions(self) -> frozenset[Perm]:
        return perms_for(self.role_codes)

    def has_perm(self, perm: Perm) -> bool:
        return perm in self.permissions


class BackupCodeDevice(Device):
    """Ten single-use recovery codes, stored as keyed hashes, shown once at creation."""

    class Meta(Device.Meta):
        verbose_name = "backup codes"

    def __str__(self) -> str:
        return f"BackupCodeDevice {self.pk}"

    def verify_token(self, token: str) -> bool:
        from tenants.mfa import backup_code_consume

        return backup_code_consume(device=self, code=token)


class BackupCode(models.Model):
    device = models.ForeignKey(BackupCodeDevice, on_delete=models.CASCADE, related_name="codes")
    code_hash = models.CharField(max_length=64)
    used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["device", "code_hash"], name="backup_code_unique")
        ]

    def __str__(self) -> str:
        return f"BackupCode {self.pk}"


class BreakGlassGrant(TenantOwnedModel):
    """Time-limited access outside a clinician's normal scope, with the reason given."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(User, on_delete=models.PROTECT, related_name="+")
    target_type = models.CharField(max_length=64)
    target_id = models.CharField(max_length=64)
    reason = models.TextField()
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    notified_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["tenant", "user", "target_type", "target_id"])]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(expires_at__gt=models.F("created_at")),
                name="break_glass_expires_after_creation",
            )
        ]

    def __str__(self) -> str:
        return f"BreakGlassGrant {self.id}"


class ApiToken(TenantOwnedModel):
    """A partner's credential for one clinic. Only a hash of the secret is stored."""

    class Scope(models.TextChoices):
        DICOMWEB_READ = "dicomweb:read", "DICOMweb search and retrieve"
        DICOMWEB_WRITE = "dicomweb:write", "DICOMweb store"
        STUDIES_READ = "studies:read", "REST API: read studies"
        SHARES_WRITE = "shares:write", "REST API: create and revoke share links"
        # Staff see a confidential study masked until they break the glass; a system
        # cannot, so it sees none unless the clinic grants this deliberately.
        CONFIDENTIAL_READ = "confidential:read", "Also confidential studies (REST and DICOMweb)"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True, editable=False)
    secret_hash = models.CharField(max_length=64, editable=False)
    scopes = models.JSONField(default=list)
    created_by = models.ForeignKey(
        User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    # Set when a request presents the token: scopes its creator no longer holds the
    # permissions for (tenants.tokens), left out of `scopes` for that request.
    suspended_scopes: tuple[str, ...] = ()

    class Meta:
        indexes = [models.Index(fields=["tenant", "-created_at"])]

    def __str__(self) -> str:
        return f"ApiToken {self.prefix}"

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes


class Invitation(TenantOwnedModel):
    """What every emailed invitation holds: staff invitations here, patient portal ones in
    `sharing`. The token is stored as its SHA-256; the token itself only encrypted under
    the clinic key until the email is sent, since a Celery message must not carry it."""

    email = models.EmailField()
    token_sha256 = models.CharField(max_length=64, unique=True)
    invited_by = models.ForeignKey(User, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(
        User, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    sent_at = models.DateTimeField(null=True, blank=True)
    token_wrapped = models.BinaryField(null=True, blank=True)
    token_key_version = models.PositiveIntegerField(null=True, blank=True)

    # What the member who sent it must still be allowed to do for it to be accepted.
    inviter_perm: Perm

    class Meta:
        abstract = True

    def state_at(self, now: dt.datetime) -> str:
        if self.accepted_at is not None:
            return "accepted"
        if self.revoked_at is not None:
            return "revoked"
        if getattr(self, "locked_at", None) is not None:
            return "locked"
        if self.expires_at <= now:
            return "expired"
        return "pending"


class StaffInvitation(Invitation):
    """An invitation to join a clinic's staff, sent by a tenant admin to an email address.

    Membership begins only when the person holding that address accepts. The admin never
    learns whether an account exists for it, nor its name, before then: an account
    belongs to a person, not to whichever clinic types its email first.
    """

    class State(models.TextChoices):
        PENDING = "pending", "Waiting for the invitee"
        ACCEPTED = "accepted", "Accepted"
        EXPIRED = "expired", "Expired"
        REVOKED = "revoked", "Withdrawn"

    inviter_perm = Perm.CLINIC_MANAGE

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    roles = models.ManyToManyField(Role, related_name="+")

    class Meta:
        indexes = [models.Index(fields=["tenant", "-created_at"])]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(expires_at__gt=models.F("created_at")),
                name="staff_invitation_expires_after_creation",
            ),
        ]

    def __str__(self) -> str:
        return f"StaffInvitation {self.id}"

    def state_at(self, now: dt.datetime) -> State:
        return self.State(super().state_at(now))
