"""Sign-in and second-factor throttling, per account and per client IP.

Counts live in the cache (Redis in production, so every process sees them) under
hashed keys, so no email address is stored there. A lockout is time-based: it ends
by itself after SIGNIN_LOCKOUT_SECONDS, and a browser the account signed in from
before counts under its own key (`known_device`), so nobody can lock a colleague out,
and an operator, or a tenant admin for an account that is the clinic's alone, can
lift it earlier (`throttle_reset`). The account limit is low (guessing one password); the IP
limit is high, because a hospital's staff often share one outgoing address.

Written here rather than taken from django-axes: axes stores and logs the attempted
username in clear (people type passwords into that field) and applies one limit to
accounts and addresses alike.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import secrets
import unicodedata
from dataclasses import dataclass

from django.conf import settings
from django.core import signing
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from audit.actors import client_ip
from tenants.models import EMAIL_MAX_LENGTH


def account_identity(account: str) -> str:
    """The one spelling of an account that its lockout counts under.

    The sign-in form NFKC-normalises the username and the account is looked up
    ignoring case, so every spelling that reaches an account (fullwidth letters,
    capitals, spaces around it) must count against the same lockout. NFKC, then
    upper-cased and case-folded, then NFKC again: PostgreSQL's case-insensitive match
    compares UPPER() of both sides, which maps a dotless i (U+0131) to I where case-folding
    alone leaves it, so both mappings are applied. Spellings merged beyond what the
    lookup merges only share a lockout.

    Cut to a little past the longest address first: normalising is the expensive part,
    and NFKC expands some characters eighteenfold (Django's own username field skips
    it past its maximum length for that reason, CVE-2023-46695). Overlong names reach
    no account, so sharing one lockout costs nobody anything.
    """
    # Stripped first, as the sign-in form strips it: spaces before the cut would make
    # one account many.
    account = account.strip()[: EMAIL_MAX_LENGTH + 1]
    folded = unicodedata.normalize("NFKC", account).strip().upper().casefold()
    return unicodedata.normalize("NFKC", folded)


def _digest(value: str) -> str:
    return hashlib.sha256(f"{settings.SECRET_KEY}:{value}".encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class ThrottleKey:
    kind: str  # "signin" or "otp"
    account: str
    ip: str | None
    # A browser that signed in to this account before (`known_device`): its attempts
    # count under their own key, so others' failures cannot lock it out.
    device: str = ""

    def _digest(self, value: str) -> str:
        return _digest(value)

    @property
    def account_wide_key(self) -> str:
        return f"throttle:{self.kind}:acct:{self._digest(account_identity(self.account))}"

    @property
    def generation_key(self) -> str:
        return f"throttle:{self.kind}:gen:{self._digest(account_identity(self.account))}"

    @property
    def account_key(self) -> str:
        if self.device:
            # The account's lockout generation is part of every browser's key, so
            # lifting the lockout (`throttle_reset`) releases the account's own known
            # browsers too, without having to find their counters.
            identity = account_identity(self.account)
            generation = cache.get(self.generation_key, "")
            name = f"{identity}:{self.device}:{generation}"
            return f"throttle:{self.kind}:dev:{self._digest(name)}"
        return self.account_wide_key

    @property
    def ip_key(self) -> str | None:
        return f"throttle:{self.kind}:ip:{self._digest(self.ip)}" if self.ip else None


def _keys(key: ThrottleKey) -> list[tuple[str, int]]:
    keys = [(key.account_key, settings.SIGNIN_ACCOUNT_FAILURE_LIMIT)]
    if key.ip_key is not None:
        keys.append((key.ip_key, settings.SIGNIN_IP_FAILURE_LIMIT))
    return keys


def _incr(cache_key: str) -> int:
    # add() then incr() keeps the window fixed from the first attempt.
    cache.add(cache_key, 0, timeout=settings.SIGNIN_LOCKOUT_SECONDS)
    try:
        return cache.incr(cache_key)
    except ValueError:  # expired between the two calls
        cache.set(cache_key, 1, timeout=settings.SIGNIN_LOCKOUT_SECONDS)
        return 1


def attempt_allowed(key: ThrottleKey) -> bool:
    """Count an attempt before it is checked; False past either limit.

    Counting first, with the cache's atomic increment, is what bounds guesses made at
    once: had the count been read, the guess checked and only then a failure counted,
    twenty requests sent together would all be checked against a limit of five.
    An attempt that then succeeds or turns out not to be a guess is given back
    (`attempt_succeeded`, `attempt_uncounted`), and so is one refused.
    """
    counts = [(_incr(cache_key), limit) for cache_key, limit in _keys(key)]
    if all(count <= limit for count, limit in counts):
        return True
    # Refused, not checked: not a guess, so the other count does not grow by it.
    attempt_uncounted(key)
    return False


def attempt_uncounted(key: ThrottleKey) -> None:
    """Give back an attempt that was not a guess (a form refused for another reason)."""
    for cache_key, _ in _keys(key):
        with contextlib.suppress(ValueError):  # the window has ended meanwhile
            cache.decr(cache_key)


def attempt_succeeded(key: ThrottleKey) -> None:
    """The account's failures are forgotten; the address's count gets the attempt back
    (colleagues share a hospital's outgoing address: their sign-ins are not guesses)."""
    cache.delete_many([key.account_key, key.account_wide_key])
    if key.ip_key is not None:
        with contextlib.suppress(ValueError):
            cache.decr(key.ip_key)


def register_failure(key: ThrottleKey) -> None:
    """Count a failure that no `attempt_allowed` counted (a failed passkey ceremony)."""
    for cache_key, _ in _keys(key):
        _incr(cache_key)


def throttle_reset(*, account: str, kinds: tuple[str, ...] = ("signin", "otp")) -> None:
    """Lift an account's sign-in and second-factor lockouts (admin unlock), or only
    those of `kinds`: the count every browser shares, and each known browser's own."""
    for kind in kinds:
        key = ThrottleKey(kind=kind, account=account, ip=None)
        cache.delete(key.account_wide_key)
        # A new generation orphans every known browser's counter. It outlives them:
        # had it expired, counters made under it would be forgotten early.
        cache.set(key.generation_key, secrets.token_hex(8), timeout=None)


# Known devices (OWASP's device cookies): a browser that signed in to an account keeps a
# signed cookie naming it (by a keyed digest, never the address). Its later attempts
# count under a key of their own, with the same limit, so failures sent by anyone else
# (five a quarter of an hour keep a named colleague out for good) do not lock it out.
KNOWN_DEVICE_COOKIE = "portal_device"
KNOWN_DEVICE_SALT = "tenants.throttle.known_device"
KNOWN_DEVICE_DAYS = 90
KNOWN_DEVICE_ACCOUNTS = 20  # a shared workstation's staff


def _known_device_data(request: HttpRequest) -> dict | None:
    raw = request.COOKIES.get(KNOWN_DEVICE_COOKIE)
    if not raw:
        return None
    try:
        data = signing.loads(
            raw, salt=KNOWN_DEVICE_SALT, max_age=dt.timedelta(days=KNOWN_DEVICE_DAYS)
        )
    except signing.BadSignature:  # altered, another deployment's, or too old
        return None
    valid = (
        isinstance(data, dict)
        and isinstance(data.get("d"), str)
        and isinstance(data.get("a"), list)
    )
    return data if valid else None


def known_device(request: HttpRequest, *, account: str) -> str:
    """This browser's device id if it signed in to `account` before, else ""."""
    data = _known_device_data(request)
    if data is None or _digest(account_identity(account)) not in data["a"]:
        return ""
    return data["d"]


def known_device_remember(request: HttpRequest, response: HttpResponse, *, account: str) -> None:
    """Set (or renew) the cookie that makes this browser known for `account`."""
    data = _known_device_data(request) or {"d": secrets.token_urlsafe(16), "a": []}
    digest = _digest(account_identity(account))
    accounts = [a for a in data["a"] if a != digest][-(KNOWN_DEVICE_ACCOUNTS - 1) :]
    value = signing.dumps({"d": data["d"], "a": [*accounts, digest]}, salt=KNOWN_DEVICE_SALT)
    response.set_cookie(
        KNOWN_DEVICE_COOKIE,
        value,
        max_age=KNOWN_DEVICE_DAYS * 24 * 3600,
        secure=settings.SESSION_COOKIE_SECURE,
        httponly=True,
        samesite="Lax",
    )


TOKEN_LOOKUPS_PER_MINUTE = 20


def past_minute_limit(*, name: str, limit: int, now: dt.datetime) -> bool:
    """Count one more under `name` in this clock minute; whether that passes `limit`.

    A counter that has gone missing meanwhile (evicted) lets the request pass.
    """
    key = f"{name}:{int(now.timestamp() // 60)}"
    cache.add(key, 0, timeout=120)
    try:
        return cache.incr(key) > limit
    except ValueError:
        return False


def too_many_lookups(request: HttpRequest) -> bool:
    """Token guessing (share links, patient and staff invitations alike) is limited per
    client address."""
    return past_minute_limit(
        name=f"share-lookups:{client_ip(request)}",
        limit=TOKEN_LOOKUPS_PER_MINUTE,
        now=timezone.now(),
    )


# Password reset requests an hour: an account gets a few mails however often its address
# is typed (nobody's mailbox is flooded), an address a great many (a clinic's staff
# share one).
RESET_REQUESTS_PER_ACCOUNT = 3
RESET_REQUESTS_PER_IP = 30
RESET_WINDOW_SECONDS = 3600


def _within(key: str, limit: int) -> bool:
    cache.add(key, 0, timeout=RESET_WINDOW_SECONDS)
    try:
        return cache.incr(key) <= limit
    except ValueError:  # expired between the two calls
        cache.set(key, 1, timeout=RESET_WINDOW_SECONDS)
        return True


def password_reset_allowed(*, account: str, ip: str | None) -> bool:
    """Count a password reset request; False past the hourly limits."""
    key = ThrottleKey(kind="reset", account=account, ip=ip)
    by_ip = key.ip_key is None or _within(key.ip_key, RESET_REQUESTS_PER_IP)
    return _within(key.account_key, RESET_REQUESTS_PER_ACCOUNT) and by_ip
