from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from django import forms
from django.conf import settings
from django.contrib.auth.forms import PasswordResetForm
from django.contrib.auth.tokens import default_token_generator
from django.contrib.sites.shortcuts import get_current_site
from django.http import HttpRequest
from django.template.loader import render_to_string
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode

from portal.mail import mail_send


class CodeForm(forms.Form):
    code = forms.CharField(
        label="Code",
        max_length=32,
        widget=forms.TextInput(
            attrs={"autocomplete": "one-time-code", "inputmode": "text", "autofocus": True}
        ),
        help_text="The 6-digit code from your authenticator app, or one of your backup codes.",
    )


class EnrolForm(forms.Form):
    device_id = forms.IntegerField(widget=forms.HiddenInput)
    code = forms.CharField(
        label="6-digit code",
        max_length=8,
        widget=forms.TextInput(
            attrs={"autocomplete": "one-time-code", "inputmode": "numeric", "autofocus": True}
        ),
    )


class NewAccountForm(forms.Form):
    """A password chosen twice; subclasses say how they ask for the person's name."""

    field_order = ["full_name", "password", "password_again"]
    password = forms.CharField(
        label="Choose a password",
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )
    password_again = forms.CharField(
        label="The password again",
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if data.get("password") and data.get("password") != data.get("password_again"):
            self.add_error("password_again", "The two passwords differ.")
        return data


class NewStaffAccountForm(NewAccountForm):
    full_name = forms.CharField(
        label="Your full name",
        max_length=150,
        help_text="Colleagues see it beside your work, and the audit log names you by it.",
    )


class BreakGlassForm(forms.Form):
    reason = forms.CharField(
        label="Why do you need this study now?",
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Required. Your clinic's privacy officers are notified and review it.",
    )


class InvitationAwarePasswordResetForm(PasswordResetForm):
    """Also reaches members a tenant admin added, whose accounts have no password yet.

    The mail goes from a task: sent while the request waited, it made a known address
    answer hundreds of milliseconds later than an unknown one (an SMTP round trip),
    which told anyone which addresses have accounts. The task makes the link itself, so
    no message carries a credential; it takes the account's id.
    """

    def get_users(self, email: str) -> Iterator[Any]:
        from tenants.models import User

        return iter(User.objects.filter(email__iexact=email, is_active=True))

    def save(  # type: ignore[override]
        self,
        *,
        request: HttpRequest,
        use_https: bool = False,
        domain_override: str | None = None,
        **_: Any,
    ) -> None:
        from portal.tasks import task_send_on_commit
        from tenants.tasks import password_reset_send

        domain = domain_override or get_current_site(request).domain
        if settings.PORTAL_BASE_URL:
            # The portal's own address, as every other email's links: the request's
            # Host header is the sender's to choose, and the link carries a credential.
            base = urlsplit(settings.PORTAL_BASE_URL)
            domain, use_https = base.netloc + base.path.rstrip("/"), base.scheme == "https"
        for user in self.get_users(self.cleaned_data["email"]):
            task_send_on_commit(
                task=password_reset_send,
                kwargs={"user_id": str(user.pk), "domain": domain, "use_https": use_https},
            )


def password_reset_mail(*, user: Any, domain: str, use_https: bool) -> None:
    """Mail `user` a link to choose a new password, valid from now (Django's token)."""
    context = {
        "email": user.email,
        "domain": domain,
        "site_name": domain,
        "uid": urlsafe_base64_encode(force_bytes(user.pk)),
        "user": user,
        "token": default_token_generator.make_token(user),
        "protocol": "https" if use_https else "http",
    }
    # Not PasswordResetForm.send_mail: it logs and swallows a mail server's refusal,
    # and the task retries on one.
    subject = "".join(
        render_to_string("registration/password_reset_subject.txt", context).splitlines()
    )
    body = render_to_string("registration/password_reset_email.html", context)
    mail_send(subject=subject, message=body, recipient_list=[user.email])
