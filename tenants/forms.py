from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from django import forms
from django.contrib.auth.forms import PasswordResetForm


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
    """Also reaches members a tenant admin added, whose accounts have no password yet."""

    def get_users(self, email: str) -> Iterator[Any]:
        from tenants.models import User

        return iter(User.objects.filter(email__iexact=email, is_active=True))
