"""Sweep every clinic URL pattern: outsiders get the 404 a missing clinic gets.

The patterns are enumerated from the URL configuration (the project's and the tenant
admin's), not picked by hand, so a new page is covered the day it is added.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from django.contrib.contenttypes.models import ContentType
from django.test import Client
from django.urls import URLPattern, URLResolver

from tenants.models import Membership
from tenants.urlconf import tenant_urlconf
from tests.helpers import make_member, membership_of, page_body

MISSING_SLUG = "no-such-clinic"


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


def fill_kwargs(name: str, groups: tuple[str, ...], *, slug: str, victim: Membership) -> dict:
    values = {
        "tenant_slug": slug,
        "app_label": "tenants",
        "content_type_id": ContentType.objects.get_for_model(Membership).pk,
        "url": "anything/",
    }
    kwargs = {}
    for group in groups:
        if group == "object_id":
            is_tenant_row = "tenants_tenant_" in name.rsplit(":", 1)[-1]
            kwargs[group] = str(victim.tenant_id if is_tenant_row else victim.pk)
        else:
            kwargs[group] = values.get(group, "x")
    return kwargs


def build_url(route: str, kwargs: dict) -> str:
    """Substitute values into a route, whether it was written with path() or re_path()."""
    url = re.sub(r"\(\?P<(\w+)>[^)]*\)", lambda m: str(kwargs[m[1]]), route)
    url = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: str(kwargs[m[1]]), url)
    return "/" + url.replace("^", "").replace("$", "")


def concrete_urls(*, urlconf_slug: str, slug: str, victim: Membership) -> list[str]:
    urls = []
    for name, route, groups in clinic_patterns(urlconf_slug):
        kwargs = fill_kwargs(name, groups, slug=slug, victim=victim)
        urls.append(build_url(route, kwargs))
    return sorted(set(urls))


@pytest.fixture
def victim(clinic, tenant_admin) -> Membership:
    make_member(clinic, "radiologist", "privacy_officer", "patient", email="staff@north.example")
    return membership_of(tenant_admin, clinic)


_body = page_body


def _missing_clinic_body(client: Client) -> bytes:
    response = client.get(f"/t/{MISSING_SLUG}/")
    assert response.status_code == 404
    return _body(response)


@pytest.mark.django_db
def test_sweep_covers_pages_and_tenant_admin(clinic, victim):
    urls = concrete_urls(urlconf_slug=clinic.slug, slug=clinic.slug, victim=victim)

    assert "/t/north/" in urls
    assert "/t/north/audit/" in urls
    assert "/t/north/admin/" in urls
    assert f"/t/north/admin/tenants/membership/{victim.pk}/change/" in urls
    assert len(urls) >= 15


@pytest.mark.django_db
@pytest.mark.parametrize("method", ["get", "post"])
def test_member_of_another_clinic_gets_404_on_every_clinic_url(
    method, clinic, victim, other_tenant_all_roles, client_for
):
    client = client_for(other_tenant_all_roles)
    missing_body = _missing_clinic_body(client)
    urls = concrete_urls(urlconf_slug=clinic.slug, slug=clinic.slug, victim=victim)

    answers = {url: getattr(client, method)(url) for url in urls}

    wrong = {url: r.status_code for url, r in answers.items() if r.status_code != 404}
    assert wrong == {}
    leaked = [url for url, r in answers.items() if _body(r) != missing_body]
    assert leaked == []


@pytest.mark.django_db
def test_platform_operator_without_membership_gets_404_in_a_clinic(
    clinic, victim, platform_operator, client_for
):
    client = client_for(platform_operator)
    urls = concrete_urls(urlconf_slug=clinic.slug, slug=clinic.slug, victim=victim)

    statuses = {url: client.get(url).status_code for url in urls}

    assert set(statuses.values()) == {404}


@pytest.mark.django_db
def test_other_clinics_ids_in_own_clinic_urls_are_404(
    clinic, other_clinic, victim, other_tenant_all_roles, client_for
):
    client = client_for(other_tenant_all_roles)
    urls = [
        url
        for url in concrete_urls(
            urlconf_slug=other_clinic.slug, slug=other_clinic.slug, victim=victim
        )
        if str(victim.pk) in url or str(victim.tenant_id) in url
    ]

    statuses = {url: client.get(url).status_code for url in urls}

    assert urls, "no URL takes an object id; the sweep is not exercising ids"
    assert set(statuses.values()) == {404}


@pytest.mark.django_db
def test_anonymous_visitor_is_sent_to_sign_in_whether_or_not_the_clinic_exists(clinic):
    client = Client()

    real = client.get("/t/north/audit/")
    missing = client.get(f"/t/{MISSING_SLUG}/audit/")

    assert real.status_code == missing.status_code == 302
    assert real["Location"] == "/accounts/login/?next=/t/north/audit/"
    assert missing["Location"] == f"/accounts/login/?next=/t/{MISSING_SLUG}/audit/"


@pytest.mark.django_db
def test_suspended_clinic_is_404_for_its_own_members(clinic, radiologist, client_for):
    clinic.status = clinic.Status.SUSPENDED
    clinic.save()

    response = client_for(radiologist).get("/t/north/")

    assert response.status_code == 404


@pytest.mark.django_db
def test_deactivated_membership_is_404(clinic, radiologist, tenant_admin, client_for):
    from audit.actors import Actor
    from tenants.services import membership_update

    membership_update(
        membership=membership_of(radiologist, clinic),
        roles={"radiologist"},
        is_active=False,
        actor=Actor.for_user(tenant_admin),
    )

    assert client_for(radiologist).get("/t/north/").status_code == 404


def test_route_regexes_match_their_reversals():
    # Guard for the sweep itself: literal clinic prefix in the tenant URLconf.
    assert re.match(r"^t/north/admin/", str(tenant_urlconf("north").urlpatterns[0].pattern))
