"""The WSGI handler gunicorn runs: Django's, with the one request it cannot build refused."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from django.core.handlers.wsgi import WSGIHandler
from django.utils.http import parse_header_parameters

_MALFORMED = b"The Content-Type header is malformed: a parameter names an unknown charset.\n"


class PortalWSGIHandler(WSGIHandler):
    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        # Django parses Content-Type while it builds the request, before any middleware,
        # and an RFC 2231 parameter naming an unknown charset (`boundary*=bogus''x`)
        # raises there: an unhandled error on any URL. Such parameters are rare, so the
        # header is parsed twice only when one may be present.
        content_type = environ.get("CONTENT_TYPE", "")
        if "*=" in content_type:
            try:
                parse_header_parameters(content_type)
            except ValueError:
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
