"""Account pages: sign-in, second factor, security settings, password flows."""

from django.contrib.auth import views as auth_views
from django.urls import include, path

from tenants import invitation_views, views

urlpatterns = [
    path("login/", views.SignInView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("verify/", views.mfa_verify, name="mfa_verify"),
    path("enrol/", views.mfa_enrol, name="mfa_enrol"),
    path("step-up/", views.step_up, name="step_up"),
    path("webauthn/", include("tenants.webauthn")),
    path("security/", views.account_security, name="account_security"),
    path("security/backup-codes/", views.backup_codes_regenerate, name="backup_codes_regenerate"),
    path("invitation/", invitation_views.staff_invitation_home, name="staff_invitation_home"),
    path(
        "invitation/<str:token>",
        invitation_views.staff_invitation_open,
        name="staff_invitation_open",
    ),
    path("password/", views.PasswordChangeView.as_view(), name="password_change"),
    path("password-reset/", views.PasswordResetView.as_view(), name="password_reset"),
    path(
        "password-reset/sent/",
        auth_views.PasswordResetDoneView.as_view(),
        name="password_reset_done",
    ),
    path(
        "password-reset/<uidb64>/<token>/",
        views.PasswordResetConfirmView.as_view(),
        name="password_reset_confirm",
    ),
    path(
        "password-reset/done/",
        auth_views.PasswordResetCompleteView.as_view(),
        name="password_reset_complete",
    ),
]
