"""Second factor: who needs one, enrolment, verification, backup codes, step-up.

TOTP devices come from django-otp. Backup codes are a django-otp device of this app
whose codes are stored as keyed hashes (django-otp's static tokens are stored in
clear). A code is single-use even under concurrent requests: the device row is
locked while a TOTP code is checked, and a backup code is spent with a conditional
UPDATE that only one request can win.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import secrets
import time
from collections.abc import Callable
from functools import wraps
from typing import Any
from urllib.parse import urlencode

import qrcode
import qrcode.image.svg
from django.conf import settings
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils import timezone
from django_otp import login as otp_login
from django_otp.models import Device
from django_otp.plugins.otp_totp.models import TOTPDevice

import audit
from audit.actors import Actor
from audit.models import Action, Outcome
from portal.logredact import is_token_url
from tenants.models import BackupCode, BackupCodeDevice, User
from tenants.roles import STAFF_ROLES, RoleCode
from tenants.selectors import user_memberships
from tenants.throttle import ThrottleKey, attempt_allowed, attempt_succeeded

MFA_AT = "_mfa_verified_at"
# The pending authenticator this session started; only this session may confirm it.
PENDING_TOTP = "_mfa_pending_totp_device"
DEFAULT_STEP_UP_MINUTES = 10
BACKUP_CODE_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"


class SecondFactorError(Exception):
    """A code was refused; the message is safe to show."""


# --- Who needs a second factor ------------------------------------------------------


def mfa_required(user: User) -> bool:
    """Staff and operators always; patients when a clinic of theirs requires it."""
    if user.is_staff or user.is_superuser:
        return True
    memberships = list(user_memberships(user=user))
    if not memberships:
        return True  # fail closed: nothing to reach anyway
    for membership in memberships:
        codes = membership.role_codes
        if codes & {role.value for role in STAFF_ROLES}:
            return True
        if (
            RoleCode.PATIENT in codes
            and membership.tenant.mfa_required_roles.filter(code=RoleCode.PATIENT).exists()
        ):
            return True
    return False


def confirmed_devices(user: User) -> list[Device]:
    from django_otp_webauthn.models import WebAuthnCredential

    return [
        *TOTPDevice.objects.filter(user=user, confirmed=True),
        *WebAuthnCredential.objects.filter(user=user, confirmed=True),
        *BackupCodeDevice.objects.filter(user=user, confirmed=True),
    ]


def has_passkey(user: User) -> bool:
    from django_otp_webauthn.models import WebAuthnCredential

    return WebAuthnCredential.objects.filter(user=user, confirmed=True).exists()


def has_totp(user: User) -> bool:
    return TOTPDevice.objects.filter(user=user, confirmed=True).exists()


# --- Enrolment ----------------------------------------------------------------------


@transaction.atomic
def totp_device_start(*, user: User, actor: Actor) -> TOTPDevice:
    """A pending authenticator with a fresh secret; any earlier pending one is dropped.

    A secret is shown once. Showing the same pending secret again would let whoever saw
    it first (someone with only the password, before the user enrols) hold the second
    factor the user confirms later. Each start is audited: a second factor's secret was
    shown, and a start nobody confirms is what an investigation of a stolen password
    looks for.
    """
    dropped, _ = TOTPDevice.objects.filter(user=user, confirmed=False).delete()
    device = TOTPDevice.objects.create(user=user, name="Authenticator", confirmed=False)
    audit.record_for_user(
        user=user,
        actor=actor,
        action=Action.MFA_ENROLMENT_STARTED,
        detail={"device": "totp", "replaced_pending": bool(dropped)},
    )
    return device


def session_totp_start(request: HttpRequest, *, user: User) -> TOTPDevice:
    """Start enrolment and tie the pending authenticator to this session."""
    device = totp_device_start(user=user, actor=Actor.from_request(request))
    request.session[PENDING_TOTP] = device.pk
    return device


def session_totp_pending(request: HttpRequest, *, user: User) -> TOTPDevice | None:
    """The pending authenticator this session was shown, if it is still pending."""
    device_id = request.session.get(PENDING_TOTP)
    if device_id is None:
        return None
    return TOTPDevice.objects.filter(pk=device_id, user=user, confirmed=False).first()


def session_totp_confirm(
    request: HttpRequest, *, user: User, shown_device_id: int, token: str, actor: Actor
) -> list[str]:
    """Confirm the authenticator this session started (no other); returns backup codes.

    `shown_device_id` is the one the submitted page showed. The session is then verified
    with it, under a fresh session key.
    """
    device_id = request.session.get(PENDING_TOTP)
    if device_id is not None and device_id != shown_device_id:
        # The page was opened again in another tab: its code is for a secret since dropped.
        raise SecondFactorError(
            "This code was replaced by a newer one (the page was opened again in another "
            "tab or window). Scan the code shown now and enter the code it gives."
        )
    codes = totp_device_confirm(user=user, device_id=device_id, token=token, actor=actor)
    del request.session[PENDING_TOTP]
    session_mark_verified(request, TOTPDevice.objects.get(pk=device_id, user=user))
    return codes


def totp_secret_base32(device: TOTPDevice) -> str:
    return base64.b32encode(device.bin_key).decode("ascii").rstrip("=")


def qr_svg_data_uri(text: str) -> str:
    image = qrcode.make(text, image_factory=qrcode.image.svg.SvgPathImage, box_size=8)
    buffer = io.BytesIO()
    image.save(buffer)
    return "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


@transaction.atomic
def totp_device_confirm(
    *, user: User, device_id: int | None, token: str, actor: Actor
) -> list[str]:
    """Confirm a pending authenticator with a current code; returns fresh backup codes."""
    device = (
        TOTPDevice.objects.select_for_update()
        .filter(pk=device_id, user=user, confirmed=False)
        .first()
    )
    if device is None:
        raise SecondFactorError("This enrolment has expired. Reload the page to start again.")
    if not device.verify_token(_digits(token)):
        raise SecondFactorError("That code is not valid. Check the time on your phone and retry.")
    device.confirmed = True
    device.save(update_fields=["confirmed"])
    # Other pending devices were never confirmed; they would only confuse.
    TOTPDevice.objects.filter(user=user, confirmed=False).delete()
    audit.record_for_user(
        user=user, actor=actor, action=Action.MFA_DEVICE_CONFIRMED, detail={"device": "totp"}
    )
    return backup_codes_issue(user=user, actor=actor)


# --- Backup codes -------------------------------------------------------------------


def _code_hash(device_id: int, code: str) -> str:
    normalized = code.replace("-", "").replace(" ", "").strip().lower()
    key = hashlib.sha256(f"backup-code:{settings.SECRET_KEY}".encode()).digest()
    return hmac.new(key, f"{device_id}:{normalized}".encode(), hashlib.sha256).hexdigest()


def _new_code() -> str:
    raw = "".join(secrets.choice(BACKUP_CODE_ALPHABET) for _ in range(16))
    return "-".join(raw[i : i + 4] for i in range(0, 16, 4))


@transaction.atomic
def backup_codes_issue(*, user: User, actor: Actor) -> list[str]:
    """Replace the user's backup codes; the plaintext is returned once, never stored."""
    BackupCodeDevice.objects.filter(user=user).delete()
    device = BackupCodeDevice.objects.create(user=user, name="Backup codes", confirmed=True)
    codes = [_new_code() for _ in range(settings.BACKUP_CODE_COUNT)]
    BackupCode.objects.bulk_create(
        BackupCode(device=device, code_hash=_code_hash(device.pk, code)) for code in codes
    )
    audit.record_for_user(
        user=user, actor=actor, action=Action.BACKUP_CODES_ISSUED, detail={"count": len(codes)}
    )
    return codes


def backup_code_consume(*, device: BackupCodeDevice, code: str) -> bool:
    """Spend one code; the conditional UPDATE lets exactly one concurrent request win."""
    spent = BackupCode.objects.filter(
        device=device, code_hash=_code_hash(device.pk, code), used_at__isnull=True
    ).update(used_at=timezone.now())
    return spent == 1


def backup_codes_left(user: User) -> int:
    return BackupCode.objects.filter(device__user=user, used_at__isnull=True).count()


# --- Verification -------------------------------------------------------------------


def _digits(token: str) -> str:
    return "".join(ch for ch in token if not ch.isspace())


def second_factor_verify(*, user: User, token: str, actor: Actor, step_up: bool = False) -> Device:
    """Check a TOTP or backup code; audit the attempt; raise SecondFactorError if refused."""
    throttle = ThrottleKey(kind="otp", account=user.email, ip=actor.ip)
    if not attempt_allowed(throttle):
        audit.record_for_user(
            user=user,
            actor=actor,
            action=Action.MFA_FAILED,
            outcome=Outcome.DENIED,
            detail={"reason": "locked"},
        )
        raise SecondFactorError("Too many attempts. Wait 15 minutes, or ask your administrator.")
    token = _digits(token)
    device = _verify_totp(user, token) if token.isdigit() else _verify_backup(user, token)
    if device is None:
        audit.record_for_user(
            user=user,
            actor=actor,
            action=Action.MFA_FAILED,
            outcome=Outcome.FAILURE,
            detail={"reason": "invalid_code"},
        )
        raise SecondFactorError("That code is not valid, or it was already used.")
    attempt_succeeded(throttle)
    kind = "totp" if isinstance(device, TOTPDevice) else "backup_code"
    detail: dict[str, Any] = {"device": kind}
    if kind == "backup_code":
        detail["backup_codes_left"] = backup_codes_left(user)
    audit.record_for_user(
        user=user,
        actor=actor,
        action=Action.STEP_UP_VERIFIED if step_up else Action.MFA_VERIFIED,
        detail=detail,
    )
    return device


def _verify_totp(user: User, token: str) -> Device | None:
    for device_id in TOTPDevice.objects.filter(user=user, confirmed=True).values_list(
        "pk", flat=True
    ):
        with transaction.atomic():
            # The row lock makes a second request with the same code wait, then see the
            # advanced counter (last_t) and fail: a code works once, even in a race.
            device = TOTPDevice.objects.select_for_update().get(pk=device_id)
            allowed, _ = device.verify_is_allowed()
            if allowed and device.verify_token(token):
                return device
    return None


def _verify_backup(user: User, token: str) -> Device | None:
    device = BackupCodeDevice.objects.filter(user=user, confirmed=True).first()
    if device is not None and backup_code_consume(device=device, code=token):
        return device
    return None


def session_mark_verified(request: HttpRequest, device: Device) -> None:
    """Bind the second factor to the session under a fresh session key."""
    otp_login(request, device)
    request.session.cycle_key()
    request.session[MFA_AT] = int(time.time())


# --- Step-up ------------------------------------------------------------------------


def step_up_is_fresh(request: HttpRequest) -> bool:
    tenant = getattr(request, "tenant", None)
    minutes = tenant.step_up_minutes if tenant is not None else DEFAULT_STEP_UP_MINUTES
    verified_at = request.session.get(MFA_AT)
    return verified_at is not None and time.time() - verified_at <= minutes * 60


def step_up_redirect(request: HttpRequest, *, then: str | None = None) -> HttpResponse:
    """To the step-up page, and back to `then` (else this request's URL) once done."""
    query = urlencode({"next": then or request.get_full_path()})
    return HttpResponseRedirect(f"{reverse('step_up')}?{query}")


def require_step_up(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Demand a second-factor check within the clinic's step-up window."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not step_up_is_fresh(request):
            return step_up_redirect(request)
        return view(request, *args, **kwargs)

    wrapped.requires_step_up = True  # type: ignore[attr-defined]
    return wrapped


def require_step_up_if_enrolled(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Step-up for accounts with a second factor.

    Patients of clinics that do not require one may have none to re-verify; their own
    data stays reachable with the password session their clinic's policy accepts.
    """

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if confirmed_devices(request.user) and not step_up_is_fresh(request):  # type: ignore[arg-type]
            return step_up_redirect(request)
        return view(request, *args, **kwargs)

    wrapped.requires_step_up = True  # type: ignore[attr-defined]
    return wrapped


# --- Enforcement --------------------------------------------------------------------

OPEN_PATH_PREFIXES = (
    "/static/",
    "/healthz",
    "/readyz",
    "/accounts/password-reset/",
    "/accounts/webauthn/authentication/",
    "/accounts/webauthn/jsi18n/",
)
# Adding a passkey before any second factor exists is enrolment; after that it needs a
# verified session (the library refuses it too).
ENROLMENT_PATH_PREFIXES = ("/accounts/webauthn/registration/",)


class SecondFactorRequiredMiddleware:
    """A password alone reaches nothing but second-factor enrolment or verification."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        user = getattr(request, "user", None)
        # Whether the sign-in still waits for a second factor: the page header offers
        # account pages only once it does not (a patient without one is signed in).
        request.second_factor_pending = False
        if user is not None and user.is_authenticated and not user.is_verified():
            target = self._target(user)
            request.second_factor_pending = target is not None
            # A token URL only moves its token into the session and redirects to a page
            # without it, which is checked here in turn; redirecting now would copy the
            # token into `next=`.
            if request.path.startswith(OPEN_PATH_PREFIXES) or is_token_url(request.path):
                target = None
            if target == "mfa_enrol" and request.path.startswith(ENROLMENT_PATH_PREFIXES):
                target = None
            if target is not None and request.path not in self._open_paths():
                query = urlencode({"next": request.get_full_path()})
                return HttpResponseRedirect(f"{reverse(target)}?{query}")
        return self.get_response(request)

    @staticmethod
    def _open_paths() -> set[str]:
        return {reverse(name) for name in ("login", "logout", "mfa_verify", "mfa_enrol")}

    @staticmethod
    def _target(user: User) -> str | None:
        if confirmed_devices(user):
            return "mfa_verify"
        if mfa_required(user):
            return "mfa_enrol"
        return None
