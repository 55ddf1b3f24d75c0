"""What Django cannot build a request from is a 400 from the WSGI handler, not an error."""

from __future__ import annotations

import asyncio
import io
from wsgiref.util import setup_testing_defaults

import pytest
from asgiref.sync import async_to_sync

from portal.handlers import PortalASGIHandler, PortalWSGIHandler


def _call(path: str, content_type: str) -> tuple[str, dict[str, str], bytes]:
    environ: dict = {
        "PATH_INFO": path,
        "REQUEST_METHOD": "POST",
        "CONTENT_TYPE": content_type,
        "CONTENT_LENGTH": "0",
        "wsgi.input": io.BytesIO(),
    }
    setup_testing_defaults(environ)
    environ["HTTP_HOST"] = "testserver"
    answer: dict = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info=None):
        answer["status"], answer["headers"] = status, dict(headers)

    body = b"".join(PortalWSGIHandler()(environ, start_response))
    return answer["status"], answer["headers"], body


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/healthz", "/dicomweb/studies", "/api/v1/shares"])
@pytest.mark.parametrize(
    "content_type",
    [
        "multipart/related; type=\"application/dicom\"; boundary*=bogus''b0undary",
        "application/json; charset*=x-nope''utf-8",
    ],
)
def test_a_parameter_naming_an_unknown_charset_is_a_400_on_any_url(path, content_type):
    status, headers, body = _call(path, content_type)

    assert status == "400 Bad Request"
    assert headers["Content-Type"] == "text/plain; charset=utf-8"
    assert headers["Cache-Control"] == "no-store"
    assert b"Content-Type header is malformed" in body


@pytest.mark.django_db
def test_a_well_formed_rfc_2231_parameter_reaches_the_application():
    status, _, _ = _call("/dicomweb/studies", "application/json; charset*=utf-8''utf-8")

    assert status.startswith("401")  # the DICOMweb root's answer: no credential


def _post_scope(path: str, headers: list[tuple[bytes, bytes]]) -> dict:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), *headers],
        "client": ("127.0.0.1", 40000),
        "server": ("testserver", 80),
    }


def _call_asgi(path: str, content_type: str) -> tuple[int, dict[bytes, bytes], bytes]:
    scope = _post_scope(path, [(b"content-type", content_type.encode())])
    sent: list[dict] = []
    received: list[bool] = []

    async def receive():
        if received:  # the client stays connected until the answer is sent
            await asyncio.Event().wait()
        received.append(True)
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    async_to_sync(PortalASGIHandler())(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_the_asgi_handler_refuses_an_unknown_charset_parameter_as_well():
    status, headers, body = _call_asgi(
        "/dicomweb/studies", "multipart/related; boundary*=bogus''b0undary"
    )

    assert status == 400
    assert headers[b"Cache-Control"] == b"no-store"
    assert b"Content-Type header is malformed" in body


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_the_asgi_handler_passes_a_well_formed_request_on():
    status, _, _ = _call_asgi("/dicomweb/studies", "application/json; charset*=utf-8''utf-8")

    assert status == 401


def _asgi_post(path: str, headers: list[tuple[bytes, bytes]], body: bytes, *, chunk: int):
    scope = _post_scope(path, headers)
    pieces = [body[i : i + chunk] for i in range(0, len(body), chunk)]
    sent: list[dict] = []

    async def receive():
        if not pieces:  # the client stays connected until the answer is sent
            await asyncio.Event().wait()
        piece = pieces.pop(0)
        return {"type": "http.request", "body": piece, "more_body": bool(pieces)}

    async def send(message):
        sent.append(message)

    async_to_sync(PortalASGIHandler())(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], b"".join(m.get("body", b"") for m in sent if "body" in m)


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_large_body_over_asgi_never_reaches_the_disk_in_clear(settings, tmp_path, monkeypatch):
    import tempfile

    from imaging.models import Instance
    from tenants.models import Tenant
    from tests.helpers import make_clinic
    from tests.imaging_tests.dicomweb_support import token_for
    from tests.imaging_tests.helpers import synthetic_ct

    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 4096
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    # Every temporary file kept where it can be read afterwards (they are anonymous).
    monkeypatch.setattr(
        tempfile,
        "TemporaryFile",
        lambda *a, **k: tempfile.NamedTemporaryFile(dir=scratch, delete=False),  # noqa: SIM115
    )
    clinic = make_clinic("asgi")
    (data,) = synthetic_ct(slices=1, size=64, patient_name="Plaintext^Marker")
    body = b"--b0undary\r\nContent-Type: application/dicom\r\n\r\n" + data + b"\r\n--b0undary--\r\n"
    headers = [
        (b"authorization", f"Bearer {token_for(clinic, 'dicomweb:write')}".encode()),
        (b"content-type", b'multipart/related; type="application/dicom"; boundary=b0undary'),
    ]

    status, answer = _asgi_post("/dicomweb/studies", headers, body, chunk=1000)

    assert status == 200, answer[:300]
    assert Instance.objects.for_tenant(Tenant.objects.get(slug="asgi")).count() == 1
    written = [path.read_bytes() for path in scratch.iterdir()]
    assert written  # the body went to a file: the test saw it
    assert not any(b"Plaintext^Marker" in content for content in written)


def _asgi_post_counting(path: str, headers: list[tuple[bytes, bytes]], size: int, *, chunk: int):
    """POST `size` bytes in `chunk`s; how much of it the handler asked for."""
    scope = _post_scope(path, headers)
    sent: list[dict] = []
    given = 0

    async def receive():
        nonlocal given
        if given >= size:
            await asyncio.Event().wait()
        piece = min(chunk, size - given)
        given += piece
        return {"type": "http.request", "body": b"x" * piece, "more_body": given < size}

    async def send(message):
        sent.append(message)

    async_to_sync(PortalASGIHandler())(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], b"".join(m.get("body", b"") for m in sent if "body" in m), given


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@pytest.mark.parametrize("declared", [True, False], ids=["declared", "streamed"])
def test_an_oversized_body_over_asgi_is_refused_before_it_is_read(settings, declared):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 64 * 1024
    size = 4 * 1024 * 1024  # anonymous, to a page that takes forms
    headers = [(b"content-type", b"application/x-www-form-urlencoded")]
    if declared:
        headers.append((b"content-length", str(size).encode()))

    status, body, read = _asgi_post_counting("/accounts/login/", headers, size, chunk=16 * 1024)

    assert status == 413 and b"larger than this address accepts" in body
    assert read <= 64 * 1024 + 16 * 1024  # no more than the limit and one chunk


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_study_upload_may_be_larger_than_a_form(settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 64 * 1024
    settings.STOW_MAX_REQUEST_BYTES = 1024 * 1024
    multipart = [(b"content-type", b'multipart/related; type="application/dicom"; boundary=b')]

    allowed, _, _ = _asgi_post_counting("/dicomweb/studies", multipart, 512 * 1024, chunk=65536)
    refused, _, read = _asgi_post_counting(
        "/dicomweb/studies", multipart, 4 * 1024 * 1024, chunk=65536
    )

    assert allowed == 401  # read whole, then answered by the view: no credential
    assert refused == 413 and read <= 1024 * 1024 + 65536


def test_a_declared_oversized_body_over_wsgi_is_refused_before_django_reads_it(settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 64 * 1024
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/accounts/login/",
        "CONTENT_TYPE": "application/x-www-form-urlencoded",
        "CONTENT_LENGTH": str(4 * 1024 * 1024),
        "wsgi.input": io.BytesIO(b""),
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "wsgi.url_scheme": "http",
    }
    answered: list[str] = []

    body = b"".join(PortalWSGIHandler()(environ, lambda status, headers: answered.append(status)))

    assert answered == ["413 Content Too Large"]
    assert b"larger than this address accepts" in body
