"""Script and HTML in DICOM tags are shown as text on every page that shows them."""

from __future__ import annotations

import pytest

from tests.helpers import make_member
from tests.imaging_tests.helpers import ingest_study, synthetic_ct

SCRIPT = "<script>alert(1)</script>"
IMG = '<img src=x onerror="alert(2)">'


@pytest.fixture
def hostile_study(clinic, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        return ingest_study(
            clinic,
            synthetic_ct(
                slices=1,
                size=16,
                patient_name=f"{SCRIPT}^{IMG}",
                patient_id="<b>PID</b>",
                tags={
                    "StudyDescription": IMG,
                    "SeriesDescription": SCRIPT,
                    "ReferringPhysicianName": f"{SCRIPT}^Evil",
                    "AccessionNumber": "<i>ACC</i>",
                },
            ),
        )


def test_hostile_tags_are_escaped_on_every_page(client_for, clinic, hostile_study):
    staff = make_member(
        clinic, "radiologist", "privacy_officer", "tenant_admin", email="all@north.example"
    )
    client = client_for(staff)
    slug = clinic.slug
    study = f"/t/{slug}/studies/{hostile_study.pk}/"
    pages = [
        f"/t/{slug}/",
        study,
        f"{study}viewer/",
        f"/t/{slug}/audit/",
        f"/t/{slug}/admin/",
        f"/t/{slug}/admin/tenants/membership/",
    ]

    bodies = {}
    for page in pages:
        response = client.get(page)
        assert response.status_code == 200, page
        bodies[page] = response.content.decode()

    for page, html in bodies.items():
        assert SCRIPT not in html, page
        assert "<img src=x" not in html, page
        assert "<b>PID</b>" not in html and "<i>ACC</i>" not in html, page
    for page in (f"/t/{slug}/", study, f"{study}viewer/"):
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in bodies[page], page
        assert "&lt;b&gt;PID&lt;/b&gt;" in bodies[page], page
    assert "&lt;img src=x onerror=&quot;alert(2)&quot;&gt;" in bodies[study]
