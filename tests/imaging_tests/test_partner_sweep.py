"""Sweep every DICOMweb and REST route with another clinic's token: nothing leaks.

Routes are enumerated from the URL configuration, so a new one is covered the day it
is added.
"""

from __future__ import annotations

import datetime as dt
import io
import re

import pydicom
import pytest
from django.test import Client
from django.utils import timezone

from imaging.api.urls import urlpatterns as api_patterns
from imaging.dicomweb.auth import SHARE_DOWNLOAD_ROUTES, SHARE_VIEW_ROUTES
from imaging.dicomweb.urls import urlpatterns as dicomweb_patterns
from imaging.models import Study
from imaging.services import study_set_confidential
from portal import urls
from sharing.api.urls import urlpatterns as share_patterns
from tenants.models import ApiToken
from tests.helpers import TEST_ACTOR, make_member
from tests.imaging_tests.dicomweb_support import token_for
from tests.imaging_tests.helpers import ingest, ingest_study, synthetic_ct
from tests.sharing_tests.test_share_links import make_share, open_link
from tests.url_sweep import UID_GROUPS, made_up, seen, walk_urls

SCOPE = ApiToken.Scope.CONFIDENTIAL_READ


def _fill(route: str, values: dict[str, str]) -> str:
    return re.sub(r"<(?:\w+:)?(\w+)>", lambda m: values[m[1]], route)


@pytest.fixture
def victim(clinic, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        (data,) = synthetic_ct(slices=1)
        ingest(clinic, data)
    ds = pydicom.dcmread(io.BytesIO(data))
    study = Study.objects.for_tenant(clinic).get()
    return {
        "study": ds.StudyInstanceUID,
        "series": ds.SeriesInstanceUID,
        "instance": ds.SOPInstanceUID,
        "numbers": "1",
        "number": "1",
        "path": "7FE00010",
        "id": str(study.pk),
    }


def _bearer(tenant, *scopes: str) -> Client:
    return Client(headers={"Authorization": f"Bearer {token_for(tenant, *scopes)}"})


def _dicomweb_sweep(
    values: dict[str, str],
    hidden: Client,
    visible: Client,
    *,
    routes: list[str] | None = None,
    root: str = "/dicomweb/",
) -> int:
    """Each route for a caller it must stay hidden from, then for one who may see it.

    The hidden caller's answer, to GET and HEAD, must be the one a made-up UID gets,
    status, type and body alike; a search filtered by the hidden study finds nothing.
    """
    uids = {level: values[level] for level in UID_GROUPS}
    missing_uids = made_up(uids)
    missing = {**values, **missing_uids}
    swept = 0
    for route in routes or [str(p.pattern) for p in dicomweb_patterns]:
        url, missing_url = root + _fill(route, values), root + _fill(route, missing)
        search = "<" not in route
        if search:
            url += f"?StudyInstanceUID={values['study']}"
            missing_url += f"?StudyInstanceUID={missing['study']}"
        for method in ("get", "head"):
            answer = getattr(hidden, method)(url)
            expected = getattr(hidden, method)(missing_url)

            assert answer.status_code == (204 if search else 404), (method, url)
            assert seen(answer, uids) == seen(expected, missing_uids), (method, url)
        # The same URL works for a caller who may see it (an access check answers 204).
        assert visible.get(url).status_code == 200 or url.endswith("/access"), url
        swept += 1
    return swept


@pytest.mark.django_db
def test_every_dicomweb_route_is_404_or_empty_for_another_clinic(victim, other_clinic):
    outsider = _bearer(other_clinic, "dicomweb:read")
    own = _bearer(victim_clinic(victim), "dicomweb:read")

    swept = _dicomweb_sweep(victim, outsider, own)

    assert swept == len(dicomweb_patterns) >= 17


def _recipient(study, radiologist) -> Client:
    """A browser that opened a link to `study` (its PIN answered), download allowed."""
    _, token = make_share(study, radiologist, allow_download=True)
    client = Client()
    open_link(client, token)
    return client


@pytest.mark.django_db
@pytest.mark.parametrize("other", ["another clinic's study", "another study of the clinic"])
def test_every_share_dicomweb_route_is_404_or_empty_for_another_links_recipient(
    other, victim, other_clinic, radiologist
):
    clinic = victim_clinic(victim)
    if other == "another clinic's study":
        holder = make_member(other_clinic, "radiologist", email="sharer@south.example")
        elsewhere = ingest_study(other_clinic, synthetic_ct(slices=1, size=16))
    else:
        holder, elsewhere = radiologist, ingest_study(clinic, synthetic_ct(slices=1, size=16))
    study = Study.objects.for_tenant(clinic).get(pk=victim["id"])
    served = {f"share_dicomweb_{name}" for name in SHARE_VIEW_ROUTES | SHARE_DOWNLOAD_ROUTES}
    routes = [route[2:] for name, route, _ in walk_urls(urls.urlpatterns) if name in served]

    swept = _dicomweb_sweep(
        victim,
        _recipient(elsewhere, holder),
        _recipient(study, radiologist),
        routes=routes,
        root="/s/",
    )

    assert swept == len(routes) == len(served)


def _confidential(victim, radiologist) -> None:
    study = Study.objects.for_tenant(victim_clinic(victim)).get(pk=victim["id"])
    study_set_confidential(study=study, confidential=True, by=radiologist, actor=TEST_ACTOR)


@pytest.mark.django_db
def test_a_confidential_study_is_missing_for_a_token_without_confidential_read(victim, radiologist):
    clinic = victim_clinic(victim)
    _confidential(victim, radiologist)

    swept = _dicomweb_sweep(
        victim, _bearer(clinic, "dicomweb:read"), _bearer(clinic, "dicomweb:read", SCOPE)
    )

    assert swept == len(dicomweb_patterns)


def victim_clinic(victim):
    return Study.objects.unscoped(reason="test helper").get(pk=victim["id"]).tenant


def _rest_sweep(patterns, values: dict[str, str], outsider: Client, owner: Client) -> int:
    """Each route as the outsider, then as the owner: (outsider, owner) status per URL."""
    swept = 0
    for pattern in patterns:
        url = "/api/v1/" + _fill(str(pattern.pattern), values)
        methods = [m for m in ("get", "delete") if hasattr(pattern.callback.view_class, m)]
        for method in methods:
            response = getattr(outsider, method)(url)
            if "<" not in str(pattern.pattern) and method == "get":
                assert response.json()["count"] == 0, url  # lists: nothing of theirs
            else:
                assert response.status_code == 404, (method, url)
            assert getattr(owner, method)(url).status_code in (200, 204), (method, url)
            swept += 1
    return swept


@pytest.mark.django_db
def test_every_rest_route_is_404_or_empty_for_another_clinic(victim, other_clinic):
    scopes = "studies:read", "shares:write", "dicomweb:read"
    outsider = Client(headers={"Authorization": f"Bearer {token_for(other_clinic, *scopes)}"})
    owner = Client(headers={"Authorization": f"Bearer {token_for(victim_clinic(victim), *scopes)}"})
    expires_at = (timezone.now() + dt.timedelta(days=1)).isoformat()
    study = {"study_instance_uid": victim["study"], "expires_at": expires_at}
    share_id = owner.post("/api/v1/shares", study, "application/json").json()["id"]

    swept = _rest_sweep(api_patterns, victim, outsider, owner)
    swept += _rest_sweep(share_patterns, {**victim, "id": share_id}, outsider, owner)

    assert swept == len(api_patterns) + len(share_patterns) >= 5


@pytest.mark.django_db
def test_a_confidential_study_is_missing_from_the_rest_api_without_confidential_read(
    victim, radiologist
):
    clinic = victim_clinic(victim)
    scopes = "studies:read", "shares:write", "dicomweb:read"
    hidden, visible = _bearer(clinic, *scopes), _bearer(clinic, *scopes, SCOPE)
    expires_at = (timezone.now() + dt.timedelta(days=1)).isoformat()
    share = {"study_instance_uid": victim["study"], "expires_at": expires_at}
    _confidential(victim, radiologist)

    refused = hidden.post("/api/v1/shares", share, "application/json")
    share_id = visible.post("/api/v1/shares", share, "application/json").json()["id"]
    swept = _rest_sweep(api_patterns, victim, hidden, visible)
    swept += _rest_sweep(share_patterns, {**victim, "id": share_id}, hidden, visible)

    assert refused.status_code == 404
    assert swept == len(api_patterns) + len(share_patterns)


@pytest.mark.django_db
@pytest.mark.parametrize("bad", ["%00", "%0A", "x"])
def test_every_dicomweb_route_refuses_a_malformed_uid_in_its_url(victim, bad):
    own = _bearer(victim_clinic(victim), "dicomweb:read")
    routes = [str(p.pattern) for p in dicomweb_patterns if "<str:" in str(p.pattern)]

    for level in ("study", "series", "instance"):
        for route in (r for r in routes if f"<str:{level}>" in r):
            url = "/dicomweb/" + _fill(route, {**victim, level: victim[level] + bad})
            response = own.get(url)

            assert response.status_code == 400, url
            assert response.json() == {"error": f"The {level} in the URL is not a valid UID."}
