"""HEAD on DICOMweb and the health checks: the GET's status and headers, no body, no
object read for nothing, and audited as what it is (RFC 9110 9.3.2)."""

from __future__ import annotations

import io

import pydicom
import pytest
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from django.test import RequestFactory

from audit.models import Action, AuditEvent
from imaging.dicomweb.views import images, wado
from tests.imaging_tests.dicomweb_support import BASE, http, token_for
from tests.imaging_tests.helpers import ingest, sample_bytes, synthetic_ct
from tests.imaging_tests.test_viewer_dicomweb import FRAMES_ACCEPT, open_viewer

DICOM = 'multipart/related; type="application/dicom"'


@pytest.fixture
def series(clinic):
    slices = synthetic_ct(slices=3, size=64)
    for data in slices:
        ingest(clinic, data)
    return pydicom.dcmread(io.BytesIO(slices[0]), stop_before_pixels=True)


@pytest.fixture
def read_token(clinic):
    return token_for(clinic, "dicomweb:read")


def _series_path(ds) -> str:
    return f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"


def _routes(ds) -> dict[str, tuple[str, str]]:
    instance = f"{_series_path(ds)}/instances/{ds.SOPInstanceUID}"
    return {
        "search": ("/studies?PatientID=" + ds.PatientID, "application/dicom+json"),
        "series": (_series_path(ds), DICOM),
        "metadata": (f"{_series_path(ds)}/metadata", "application/dicom+json"),
        "frame": (f"{instance}/frames/1", FRAMES_ACCEPT),
        "rendered": (f"{instance}/rendered", "image/jpeg"),
        "thumbnail": (f"{_series_path(ds)}/thumbnail", "image/jpeg"),
    }


@pytest.mark.django_db
@pytest.mark.parametrize("route", ["search", "series", "metadata", "frame", "rendered"])
def test_head_answers_the_gets_status_and_headers_without_a_body(route, clinic, series, read_token):
    path, accept = _routes(series)[route]
    session = http(read_token)

    head = session.head(BASE + path, headers={"Accept": accept})
    get = session.get(BASE + path, headers={"Accept": accept})

    assert head.status_code == get.status_code == 200
    assert head.content == b""
    assert head.headers["Content-Type"].split(";")[0] == get.headers["Content-Type"].split(";")[0]
    if "Content-Length" in head.headers:  # where it is known without reading the objects
        assert head.headers["Content-Length"] == get.headers["Content-Length"]


@pytest.mark.django_db
def test_head_is_audited_as_headers_only(clinic, series, read_token):
    routes = _routes(series)
    session = http(read_token)

    session.head(BASE + routes["search"][0], headers={"Accept": routes["search"][1]})
    session.head(BASE + routes["frame"][0], headers={"Accept": routes["frame"][1]})

    search, read = (
        AuditEvent.objects.for_tenant(clinic)
        .filter(action__in=[Action.DICOMWEB_SEARCH, Action.DICOMWEB_RETRIEVE])
        .order_by("seq")
    )
    assert search.action == Action.DICOMWEB_SEARCH and search.detail["head"] is True
    assert read.action == Action.DICOMWEB_RETRIEVE and read.detail["head"] is True
    assert read.detail["frames"] == 1 and read.detail["instance"]


@pytest.mark.django_db
def test_head_for_another_clinics_series_is_the_404_of_a_missing_one(
    clinic, other_clinic, series, read_token
):
    outsider = token_for(other_clinic, "dicomweb:read")
    missing = f"/studies/{series.StudyInstanceUID}/series/1.2.3.4.5"

    theirs = http(outsider).head(BASE + _series_path(series), headers={"Accept": DICOM})
    absent = http(read_token).head(BASE + missing, headers={"Accept": DICOM})

    assert theirs.status_code == absent.status_code == 404
    assert theirs.content == absent.content == b""
    assert theirs.headers["Content-Type"] == absent.headers["Content-Type"]
    assert theirs.headers["Content-Length"] == absent.headers["Content-Length"]


def _as_a_wsgi_server(method: str, path: str, **headers: str) -> tuple[str, bytes]:
    """Call the app as a WSGI server does: it iterates the whole body, even for HEAD."""
    environ = RequestFactory().generic(method, path, **headers).environ
    started: list[str] = []
    # As Django's test client does: the test's transaction must outlive the request.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        body = WSGIHandler()(environ, lambda status, headers, exc=None: started.append(status))
        try:
            content = b"".join(body)
        finally:
            body.close()
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)
    return started[0], content


# Each read, and the view module and service function through which its GET reads
# stored objects.
READS = {
    "series as stored": ("series", DICOM, wado, "instances_chunks"),
    "metadata": ("metadata", "application/dicom+json", wado, "instance_header_json"),
    "frame": ("frame", FRAMES_ACCEPT, images, "instance_process_start"),
    "rendered": ("rendered", "image/jpeg", images, "instance_process_start"),
}


@pytest.mark.django_db
@pytest.mark.parametrize("read", READS)
def test_a_server_iterating_a_head_answer_reads_no_stored_object(
    read, clinic, series, read_token, monkeypatch
):
    route, accept, module, reader = READS[read]
    opened = []
    real = getattr(module, reader)

    def spy(*args, **kwargs):
        opened.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, reader, spy)
    path = "/dicomweb" + _routes(series)[route][0]
    auth = {"HTTP_AUTHORIZATION": f"Bearer {read_token}", "HTTP_ACCEPT": accept}

    head_status, head_body = _as_a_wsgi_server("HEAD", path, **auth)
    head_opened = len(opened)
    get_status, get_body = _as_a_wsgi_server("GET", path, **auth)

    assert head_status.startswith("200") and head_body == b"" and head_opened == 0
    assert get_status.startswith("200") and get_body and opened


@pytest.mark.django_db
def test_head_in_the_viewer_does_not_count_as_viewing_the_series(
    client_for, radiologist, clinic, series
):
    from imaging.models import Study

    client = client_for(radiologist)
    study = Study.objects.for_tenant(clinic).get()
    session_id = open_viewer(client, study)
    url = f"/t/north/dicomweb{_routes(series)['frame'][0]}"

    head = client.head(url, HTTP_ACCEPT=FRAMES_ACCEPT, HTTP_X_VIEWER_SESSION=session_id)
    get = client.get(url, HTTP_ACCEPT=FRAMES_ACCEPT, HTTP_X_VIEWER_SESSION=session_id)

    assert head.status_code == get.status_code == 200
    events = AuditEvent.objects.for_tenant(clinic).filter(
        action__in=[Action.DICOMWEB_RETRIEVE, Action.SERIES_VIEWED]
    )
    assert [(e.action, e.detail.get("head")) for e in events.order_by("seq")] == [
        (Action.DICOMWEB_RETRIEVE, True),
        (Action.SERIES_VIEWED, None),
    ]


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_monitors_may_use_head_on_the_health_checks(client, path):
    head = client.head(path)

    assert head.status_code in (200, 503) and head.content == b""


@pytest.mark.django_db
def test_other_methods_are_refused_naming_get_and_head(clinic, series, read_token):
    response = http(read_token).put(BASE + _series_path(series), data=b"")

    assert response.status_code == 405
    assert {m.strip() for m in response.headers["Allow"].split(",")} >= {"GET", "HEAD"}


@pytest.mark.django_db
def test_a_head_of_an_object_to_re_encode_decodes_nothing(clinic, read_token, monkeypatch):
    data = sample_bytes("SC_rgb_rle.dcm")  # stored RLE, asked for uncompressed
    ingest(clinic, data)
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    path = f"/dicomweb{_series_path(ds)}/instances/{ds.SOPInstanceUID}"
    opened = []
    real = wado.instance_bytes
    monkeypatch.setattr(wado, "instance_bytes", lambda **kw: opened.append(kw) or real(**kw))
    auth = {
        "HTTP_AUTHORIZATION": f"Bearer {read_token}",
        "HTTP_ACCEPT": f"{DICOM}; transfer-syntax=1.2.840.10008.1.2.1",
    }

    head_status, head_body = _as_a_wsgi_server("HEAD", path, **auth)
    head_opened = len(opened)
    get_status, get_body = _as_a_wsgi_server("GET", path, **auth)

    assert head_status.startswith("200") and head_body == b"" and head_opened == 0
    assert get_status.startswith("200") and b"1.2.840.10008.1.2.1" in get_body and opened


@pytest.mark.django_db
def test_a_head_on_a_thumbnail_reads_no_stored_object(
    clinic, read_token, monkeypatch, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):  # the thumbnail is rendered
        (data,) = synthetic_ct(slices=1)
        ingest(clinic, data)
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    opened = []
    real = images.thumbnail_bytes
    monkeypatch.setattr(images, "thumbnail_bytes", lambda **kw: opened.append(kw) or real(**kw))
    path = "/dicomweb" + _routes(ds)["thumbnail"][0]
    auth = {"HTTP_AUTHORIZATION": f"Bearer {read_token}", "HTTP_ACCEPT": "image/jpeg"}

    head_status, head_body = _as_a_wsgi_server("HEAD", path, **auth)
    head_opened = len(opened)
    get_status, get_body = _as_a_wsgi_server("GET", path, **auth)

    assert head_status.startswith("200") and head_body == b"" and head_opened == 0
    assert get_status.startswith("200") and get_body.startswith(b"\xff\xd8") and opened
    events = AuditEvent.objects.for_tenant(clinic).filter(action=Action.DICOMWEB_RETRIEVE)
    assert [e.detail.get("head", False) for e in events.order_by("seq")] == [True, False]
