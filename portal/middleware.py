"""Response headers that keep PHI out of caches and switch off browser features."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils.cache import add_never_cache_headers, patch_cache_control

from audit.actors import ip_canonical

PERMISSIONS_POLICY = "camera=(), microphone=(), geolocation=(), payment=(), usb=()"
PUBLIC_PREFIXES = ("/static/", "/healthz", "/readyz")


class ForwardedForMiddleware:
    """The client's address from the X-Forwarded-For hop the portal's own proxies added.

    Behind TRUSTED_PROXY_COUNT proxies that each append the address they were reached
    from, the client is the count-th entry from the right; entries further left are
    whatever the client sent, and are never believed. Without it, every client would
    have the proxy's address: one sign-in throttle for all, and audit events that name
    nobody. A header with fewer hops (a request that bypassed a proxy), or a hop that is
    not an address, leaves REMOTE_ADDR as the connection gave it.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self.proxies = settings.TRUSTED_PROXY_COUNT

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if self.proxies:
            header = request.META.get("HTTP_X_FORWARDED_FOR", "")
            hops = [hop.strip() for hop in header.split(",") if hop.strip()]
            if len(hops) >= self.proxies:
                client = ip_canonical(hops[-self.proxies])
                if client is not None:
                    request.META["REMOTE_ADDR"] = client
        return self.get_response(request)


class HealthProbeMiddleware:
    """Answer /healthz and /readyz whatever the Host header says.

    Load balancers and orchestrators probe each replica by its address, which is no host
    the portal serves: past this point (sessions, CSRF, the URL resolver) such a request
    is a DisallowedHost 400, logged as an error on every probe. The probes show nothing
    of a clinic and change nothing, so they need none of that; the response still passes
    back through the header middleware above.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        from portal.views import healthz, readyz

        self.get_response = get_response
        self.probes = {"/healthz": healthz, "/readyz": readyz}

    def __call__(self, request: HttpRequest) -> HttpResponse:
        probe = self.probes.get(request.path_info)
        if probe is not None and request.method in ("GET", "HEAD"):
            return probe(request)
        return self.get_response(request)


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
