"""Per-clinic URL configuration, so the tenant admin lives under `/t/<slug>/admin/`.

Django's admin reverses its own URLs without arguments, so it cannot sit under a
pattern with a `<slug>` parameter. For requests inside a clinic the middleware
installs a URLconf that mounts the tenant admin site at that clinic's literal prefix
in front of the project's normal patterns.
"""

from __future__ import annotations

from functools import lru_cache

from django.conf import settings
from django.urls import include, path


class TenantURLConf:
    # Error views come from the URLconf that served the request: the project's own.
    handler403 = "portal.views.permission_denied"
    handler404 = "portal.views.not_found"

    def __init__(self, slug: str) -> None:
        from tenants.admin_site import tenant_admin_site

        self.slug = slug
        self.urlpatterns = [
            path(f"t/{slug}/admin/", tenant_admin_site.urls),
            path("", include(settings.ROOT_URLCONF)),
        ]


@lru_cache(maxsize=4096)
def tenant_urlconf(slug: str) -> TenantURLConf:
    return TenantURLConf(slug)


def tenant_admin_url(slug: str) -> str:
    return f"/t/{slug}/admin/"
