"""dicomweb-client over Django's test client: the real client code, an in-process transport."""

from __future__ import annotations

import io
from urllib.parse import urlsplit

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from django.test import Client
from requests.structures import CaseInsensitiveDict

from audit.actors import Actor
from tenants.models import Tenant
from tenants.tokens import api_token_create

BASE = "http://testserver/dicomweb"


class DjangoTestAdapter(requests.adapters.BaseAdapter):
    """Sends requests to the Django app in-process, through the full middleware stack."""

    def __init__(self) -> None:
        super().__init__()
        # Enforce CSRF as a real server would: a partner's client has no CSRF token.
        self.client = Client(enforce_csrf_checks=True)
        self.sent: list[requests.PreparedRequest] = []

    def send(self, request: requests.PreparedRequest, **kwargs: object) -> requests.Response:
        self.sent.append(request)
        url = urlsplit(request.url)
        path = url.path + (f"?{url.query}" if url.query else "")
        body = request.body or b""
        chunked = False
        if hasattr(body, "read"):
            body = body.read()
        elif not isinstance(body, (bytes, str)):
            # A generator body goes out chunked (requests sets Transfer-Encoding), as
            # dicomweb-client sends large STOW-RS requests; gunicorn de-chunks such a body
            # and marks the input terminated instead of giving a Content-Length.
            body, chunked = b"".join(body), True
        if isinstance(body, str):
            body = body.encode()
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() not in {"content-type", "content-length", "host"}
        }
        extra = {}
        if chunked:
            extra = {
                "CONTENT_LENGTH": "",
                "HTTP_TRANSFER_ENCODING": "chunked",
                "wsgi.input": io.BytesIO(body),
                "wsgi.input_terminated": True,
            }
        answer = self.client.generic(
            request.method,
            path,
            data=body,
            content_type=request.headers.get("Content-Type", ""),
            headers=headers,
            **extra,
        )
        content = b"".join(answer.streaming_content) if answer.streaming else answer.content
        response = requests.Response()
        response.status_code = answer.status_code
        response.headers = CaseInsensitiveDict(answer.headers.items())
        response._content = content
        response._content_consumed = True
        response.raw = io.BytesIO(content)
        response.url = request.url
        response.request = request
        response.reason = answer.reason_phrase
        response.encoding = "utf-8"
        return response

    def close(self) -> None:
        pass


def token_for(tenant: Tenant, *scopes: str, expires_days: int | None = None) -> str:
    from django.utils import timezone

    _, plaintext = api_token_create(
        tenant=tenant,
        name="tests",
        scopes=list(scopes),
        actor=Actor.system("tests"),
        now=timezone.now(),
        expires_days=expires_days,
    )
    return plaintext


def http(token: str | None) -> requests.Session:
    session = requests.Session()
    session.mount("http://testserver", DjangoTestAdapter())
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    return session


def dicomweb(token: str) -> DICOMwebClient:
    return DICOMwebClient(
        url=BASE, session=http(token), headers={"Authorization": f"Bearer {token}"}
    )


def series_metadata_url(data: bytes) -> str:
    """The WADO-RS metadata URL of the series a Part 10 file belongs to."""
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return f"{BASE}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/metadata"


def instance_url(ds: pydicom.Dataset) -> str:
    """The WADO-RS URL of an instance."""
    return (
        f"{BASE}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )


def stow_files(client: Client, files: list[bytes]):
    """POST `files` to /dicomweb/studies as one STOW-RS request, one part each."""
    body = b"".join(
        b"--b0undary\r\nContent-Type: application/dicom\r\n\r\n" + data + b"\r\n" for data in files
    )
    return client.post(
        "/dicomweb/studies",
        data=body + b"--b0undary--\r\n",
        content_type='multipart/related; type="application/dicom"; boundary=b0undary',
    )
