"""Django's WSGI and ASGI handlers, with the one request they cannot build refused."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from typing import Any

from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.wsgi import WSGIHandler
from django.http import HttpResponse
from django.utils.http import parse_header_parameters

_MALFORMED = b"The Content-Type header is malformed: a parameter names an unknown charset.\n"


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
            start_response(
                "400 Bad Request",
                [
                    ("Content-Type", "text/plain; charset=utf-8"),
                    ("Content-Length", str(len(_MALFORMED))),
                    ("X-Content-Type-Options", "nosniff"),
                    ("Cache-Control", "no-store"),
                ],
            )
            return [_MALFORMED]
        return super().__call__(environ, start_response)


class PortalASGIHandler(ASGIHandler):
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
                response["X-Content-Type-Options"] = "nosniff"
                response["Cache-Control"] = "no-store"
                return None, response
        return super().create_request(scope, body_file)
