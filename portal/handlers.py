"""Django's WSGI and ASGI handlers, with the one request they cannot build refused."""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.wsgi import WSGIHandler
from django.http import HttpResponse
from django.utils.http import parse_header_parameters

_MALFORMED = b"The Content-Type header is malformed: a parameter names an unknown charset.\n"
_TOO_LARGE = (
    "The request body is larger than this address accepts ({limit:,} bytes); nothing was stored.\n"
)
_PLAIN_HEADERS = [
    ("Content-Type", "text/plain; charset=utf-8"),
    ("X-Content-Type-Options", "nosniff"),
    ("Cache-Control", "no-store"),
]
# The addresses that take studies: STOW-RS and the web upload. Any other takes at most
# what Django reads into memory (DATA_UPLOAD_MAX_MEMORY_SIZE): a body of gigabytes sent
# to the sign-in page, or anywhere, is refused before it is read, let alone spooled.
_STUDY_UPLOADS = re.compile(r"/(?:dicomweb/studies(?:/[^/]+)?|t/[^/]+/upload/)")


def body_limit(path: str) -> int | None:
    """The most bytes a request body to `path` may hold (None: no limit)."""
    if _STUDY_UPLOADS.fullmatch(path):
        return settings.STOW_MAX_REQUEST_BYTES
    return settings.DATA_UPLOAD_MAX_MEMORY_SIZE


def _declared_length(value: str | bytes | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.limit = limit


def _content_type_unreadable(content_type: str) -> bool:
    # Django parses Content-Type while it builds the request, before any middleware,
    # and an RFC 2231 parameter naming an unknown charset (`boundary*=bogus''x`)
    # raises there: an unhandled error on any URL. Such parameters are rare, so the
    # header is parsed twice only when one may be present.
    if "*=" not in content_type:
        return False
    try:
        parse_header_parameters(content_type)
    except ValueError:
        return True
    return False


class PortalWSGIHandler(WSGIHandler):
    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        if _content_type_unreadable(environ.get("CONTENT_TYPE", "")):
            return _plain(start_response, "400 Bad Request", _MALFORMED)
        path = environ.get("PATH_INFO", "")
        limit = body_limit(path)
        declared = _declared_length(environ.get("CONTENT_LENGTH"))
        # STOW-RS reads its own body as a stream, and answers an oversized one in its own
        # protocol's terms; other addresses' bodies are read by Django.
        if (
            limit is not None
            and declared is not None
            and declared > limit
            and not _STUDY_UPLOADS.fullmatch(path)
        ):
            return _plain(
                start_response,
                "413 Content Too Large",
                _TOO_LARGE.format(limit=limit).encode(),
            )
        return super().__call__(environ, start_response)


def _plain(start_response: Callable, status: str, body: bytes) -> list[bytes]:
    start_response(status, [*_PLAIN_HEADERS, ("Content-Length", str(len(body)))])
    return [body]


class PortalASGIHandler(ASGIHandler):
    async def handle(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        """Refuse a body over the address's limit (declared, or as it arrives) with a
        413, before Django reads it: its own handler reads every body whole first."""
        limit = body_limit(scope.get("path", ""))
        if limit is None:
            return await super().handle(scope, receive, send)
        headers = dict(scope.get("headers", ()))
        declared = _declared_length(headers.get(b"content-length"))
        received = 0

        async def counted() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge(limit)
            return message

        try:
            if declared is not None and declared > limit:
                raise BodyTooLarge(limit)
            await super().handle(scope, counted, send)
        except BodyTooLarge:
            response = HttpResponse(
                _TOO_LARGE.format(limit=limit),
                status=413,
                content_type="text/plain; charset=utf-8",
            )
            for name, value in _PLAIN_HEADERS[1:]:
                response[name] = value
            await self.send_response(response, send)

    async def read_body(self, receive: Callable) -> Any:
        """The body, kept in memory or in an encrypted spool: Django's own handler
        writes one over FILE_UPLOAD_MAX_MEMORY_SIZE to a plaintext temporary file before
        any upload handler runs."""
        from imaging.uploads import EncryptedSpool, body_append, body_finished

        body: io.BytesIO | EncryptedSpool = io.BytesIO()
        try:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise RequestAborted()
                if message.get("body"):
                    body = body_append(body, message["body"])
                if not message.get("more_body", False):
                    return body_finished(body)
        except BaseException:
            body.close()
            raise

    def create_request(self, scope: dict[str, Any], body_file: Any) -> tuple[Any, Any]:
        for name, value in scope.get("headers", ()):
            if name == b"content-type" and _content_type_unreadable(value.decode("latin-1")):
                response = HttpResponse(
                    _MALFORMED, status=400, content_type="text/plain; charset=utf-8"
                )
                for name, value in _PLAIN_HEADERS[1:]:
                    response[name] = value
                return None, response
        return super().create_request(scope, body_file)
