"""What Django cannot build a request from is a 400 from the WSGI handler, not an error."""

from __future__ import annotations

import io
from wsgiref.util import setup_testing_defaults

import pytest

from portal.handlers import PortalWSGIHandler


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
