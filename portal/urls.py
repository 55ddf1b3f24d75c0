"""Project URLs. Clinic pages live under /t/<slug>/, resolved by TenantMiddleware."""

from __future__ import annotations

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from imaging.dicomweb.urls import viewer_patterns as viewer_dicomweb_patterns
from portal import views
from portal.admin import platform_admin_site
from portal.api_docs import api_docs
from sharing.urls import clinic_patterns as sharing_clinic_patterns
from sharing.urls import invitation_patterns
from sharing.urls import recipient_patterns as share_recipient_patterns

clinic_patterns = [
    path("", include("imaging.urls")),
    path("dicomweb/", include(viewer_dicomweb_patterns)),
    path("audit/", include("audit.urls")),
    path("", include(sharing_clinic_patterns)),
]

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("", views.home, name="home"),
    path("accounts/", include("tenants.urls")),
    path("admin/", platform_admin_site.urls),
    path("dicomweb/", include("imaging.dicomweb.urls")),
    path("api/v1/", include("imaging.api.urls")),
    path("api/v1/", include("sharing.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api_schema"),
    path("api/docs/", api_docs, name="api_docs"),
    path("t/<slug:tenant_slug>/", include(clinic_patterns)),
    path("s/", include(share_recipient_patterns)),
    path("portal/", include(invitation_patterns)),
]

handler403 = "portal.views.permission_denied"
handler404 = "portal.views.not_found"
handler500 = "portal.views.server_error"
