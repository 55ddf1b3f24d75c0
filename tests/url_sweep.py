"""The URL sweeps' shared parts: every clinic route, filled with one clinic's real ids.

Routes come from the URL configuration (the project's and the tenant admin's), not from
a list kept by hand, so a new page is swept the day it is added. A route whose id the
sweep cannot fill fails loudly (a KeyError), instead of being skipped or filled with a
placeholder no view would ever see.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

from django.urls import URLPattern, URLResolver
from django.utils import timezone
from pydicom.uid import generate_uid

from imaging.models import Instance
from imaging.services import study_grant
from sharing.invitations import invitation_accept, patient_invite
from sharing.services import share_create
from tenants.invitations import staff_invite
from tenants.models import ApiToken, Tenant, User
from tenants.services import membership_add
from tenants.urlconf import tenant_urlconf
from tests.helpers import TEST_ACTOR, make_member, membership_of, response_bytes, sharer
from tests.imaging_tests.dicomweb_support import token_for
from tests.imaging_tests.helpers import ingest_study, synthetic_ct

# Groups that name no object: the same value whoever's ids fill the rest.
FIXED = {"numbers": "1", "number": "1", "path": "7FE00010", "app_label": "tenants"}
UID_GROUPS = {"study", "series", "instance"}
# The tenant admin's object pages, by the model their route name carries.
ADMIN_MODELS = {"membership", "staffinvitation", "apitoken", "tenant"}


def walk_urls(
    patterns: list, namespace: str = "", route: str = "", groups: tuple[str, ...] = ()
) -> Iterator[tuple[str, str, tuple[str, ...]]]:
    for pattern in patterns:
        part = str(pattern.pattern)
        names = tuple(pattern.pattern.regex.groupindex)
        if isinstance(pattern, URLResolver):
            inner_ns = namespace
            if pattern.namespace:
                inner_ns = f"{namespace}:{pattern.namespace}" if namespace else pattern.namespace
            yield from walk_urls(pattern.url_patterns, inner_ns, route + part, groups + names)
        elif isinstance(pattern, URLPattern):
            name = f"{namespace}:{pattern.name}" if namespace and pattern.name else pattern.name
            yield name or "", route + part, groups + names


def clinic_patterns(slug: str) -> list[tuple[str, str, tuple[str, ...]]]:
    urlconf = tenant_urlconf(slug)
    return [e for e in walk_urls(urlconf.urlpatterns) if e[1].lstrip("^").startswith("t/")]


def build_url(route: str, kwargs: dict) -> str:
    """Substitute values into a route, whether it was written with path() or re_path()."""
    url = re.sub(r"\(\?P<(\w+)>[^)]*\)", lambda m: str(kwargs[m[1]]), route)
    url = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: str(kwargs[m[1]]), url)
    return "/" + url.replace("^", "").replace("$", "")


def admin_model(name: str) -> str | None:
    found = re.fullmatch(r"tenant_admin:tenants_(\w+?)_(?:change|delete|history)", name)
    return found[1] if found else None


def url_for(name: str, route: str, groups: tuple[str, ...], *, slug: str, ids: dict) -> str:
    kwargs = {}
    for group in groups:
        if group == "tenant_slug":
            kwargs[group] = slug
        elif group == "object_id":
            kwargs[group] = ids[admin_model(name)]
        elif group in FIXED:
            kwargs[group] = FIXED[group]
        else:
            kwargs[group] = ids[group]  # a KeyError: a new kind of id, teach it to the sweep
    return build_url(route, kwargs)


def clinic_urls(slug: str, *, ids: dict) -> list[str]:
    """Every route of clinic `slug`, its ids taken from `ids` (which may be another's)."""
    return sorted({url_for(*entry, slug=slug, ids=ids) for entry in clinic_patterns(slug)})


def id_routes(slug: str) -> list[tuple[str, str, tuple[str, ...]]]:
    """The clinic's routes that take at least one object id."""
    named = set(FIXED) | {"tenant_slug"}
    return [entry for entry in clinic_patterns(slug) if set(entry[2]) - named]


def made_up(ids: dict[str, str]) -> dict[str, str]:
    """Ids of the same shape as `ids` that name nothing anywhere."""
    return {k: generate_uid() if k in UID_GROUPS else str(uuid.uuid4()) for k in ids}


def seen(response, ids: dict[str, str]) -> tuple:
    """What a caller sees of an answer, the ids it asked with (echoed in links) blanked.

    Two answers to the same route, one for an object hidden from the caller and one for
    a made-up id, must be equal under this: anything else tells the caller it exists.
    """
    body = re.sub(rb'name="csrfmiddlewaretoken" value="[^"]+"', b"", response_bytes(response))
    location = response.get("Location", "")
    for group, value in ids.items():
        body = body.replace(value.encode(), f"<{group}>".encode())
        location = location.replace(value, f"<{group}>")
    return response.status_code, response.get("Content-Type"), location, body


def clinic_objects(clinic: Tenant, *, known: User) -> dict[str, str]:
    """One of each object a clinic URL can name, by URL group (and admin model).

    `known` is made the clinic's referring physician granted the study, and the patient
    linked to it, so that a sweep by them catches lookups that go by the person instead
    of the clinic.
    """
    radiologist = make_member(clinic, "radiologist", email="sweep.radiologist@example.org")
    front_desk = make_member(clinic, "front_desk", email="sweep.desk@example.org")
    tenant_admin = make_member(clinic, "tenant_admin", email="sweep.admin@example.org")
    now = timezone.now()
    study = ingest_study(
        clinic, synthetic_ct(slices=2, size=16, patient_name="Sweep^Jane", patient_id="SW-1")
    )
    instance = Instance.objects.for_tenant(clinic).filter(study=study).select_related("series")[0]
    share, _ = share_create(
        study=study, actor=TEST_ACTOR, now=now, **sharer(radiologist, clinic), pin="2468"
    )

    def invite(email: str):
        return patient_invite(
            tenant=clinic,
            patients=[study.patient],
            email=email,
            invited_by=front_desk,
            actor=TEST_ACTOR,
            now=now,
        )

    pending = invite("pending@example.org")
    membership_add(tenant=clinic, user=known, roles=["referring_physician"], actor=TEST_ACTOR)
    study_grant(study=study, grantee=known, download=True, actor=TEST_ACTOR)
    (link,) = invitation_accept(
        invitation=invite(known.email), user=known, actor=TEST_ACTOR, now=now
    )
    staff = staff_invite(
        tenant=clinic,
        email="new.tech@example.org",
        roles=["technologist"],
        invited_by=tenant_admin,
        actor=TEST_ACTOR,
        now=now,
    )
    token_for(clinic, "dicomweb:read")
    return {
        "study_id": str(study.pk),
        "patient_id": str(study.patient_id),
        "share_id": str(share.pk),
        "invitation_id": str(pending.pk),
        "link_id": str(link.pk),
        "user_id": str(known.pk),
        "study": study.study_uid,
        "series": instance.series.series_uid,
        "instance": instance.sop_instance_uid,
        "membership": str(membership_of(known, clinic).pk),
        "staffinvitation": str(staff.pk),
        "apitoken": str(ApiToken.objects.for_tenant(clinic).get().pk),
        "tenant": str(clinic.pk),
    }
