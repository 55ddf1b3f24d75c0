"""Response headers that keep PHI out of caches and switch off browser features."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse
from django.utils.cache import add_never_cache_headers, patch_cache_control

PERMISSIONS_POLICY = "camera=(), microphone=(), geolocation=(), payment=(), usb=()"
PUBLIC_PREFIXES = ("/static/", "/healthz", "/readyz")


class PrivacyHeadersMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        response.setdefault("Permissions-Policy", PERMISSIONS_POLICY)
        response.setdefault("Cross-Origin-Resource-Policy", "same-origin")
        if not request.path.startswith(PUBLIC_PREFIXES):
            # Any page may show PHI or a credential form: never store it anywhere.
            add_never_cache_headers(response)
            patch_cache_control(response, private=True)
        return response


class HeadWithoutBodyMiddleware:
    """Send a HEAD answer's headers and nothing else (RFC 9110 9.3.2).

    A WSGI server still iterates the body of a HEAD answer and drops it: a streamed
    retrieve would read and decrypt a whole series for nothing. The stream is replaced
    unstarted (the server closes the original with the answer); a body already built
    keeps its Content-Length.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if request.method != "HEAD":
            return response
        if response.streaming:
            response.streaming_content = iter(())  # type: ignore[attr-defined]
        else:
            response.setdefault("Content-Length", str(len(response.content)))
            response.content = b""
        return response
