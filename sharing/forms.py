from __future__ import annotations

import datetime as dt
import re
from typing import Any

from django import forms

from sharing.models import ShareLink
from sharing.services import EMAIL_TOO_LONG
from tenants.forms import NewAccountForm
from tenants.models import EMAIL_MAX_LENGTH


class ShareForm(forms.Form):
    series = forms.MultipleChoiceField(
        label="Series to share",
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Leave all unticked to share the whole study.",
    )
    expires_days = forms.IntegerField(label="Expires after (days)", min_value=1)
    challenge = forms.ChoiceField(label="Recipient must enter", choices=ShareLink.Challenge.choices)
    pin = forms.CharField(
        label="PIN (4 to 12 digits)",
        required=False,
        max_length=12,
        widget=forms.TextInput(attrs={"inputmode": "numeric", "autocomplete": "off"}),
        help_text="Give the PIN to the recipient separately, not in the same email.",
    )
    max_uses = forms.IntegerField(
        label="Maximum number of openings",
        required=False,
        min_value=1,
        max_value=ShareLink.MAX_USES,
    )
    allow_download = forms.BooleanField(label="Allow download", required=False)
    deidentify = forms.BooleanField(
        label=(
            "De-identify (names, IDs, birth date, addresses, notes and private data "
            "removed; dates, sex and age kept)"
        ),
        required=False,
    )
    recipient_email = forms.EmailField(
        label="Send the link to (optional)",
        required=False,
        max_length=EMAIL_MAX_LENGTH,
        error_messages={"max_length": EMAIL_TOO_LONG},
    )
    message = forms.CharField(
        label="Message (optional)",
        required=False,
        max_length=2000,
        widget=forms.Textarea(attrs={"rows": 3}),
    )
    notify_on_first_open = forms.BooleanField(
        label="Email me when the link is first opened", required=False
    )

    def __init__(
        self,
        *args: Any,
        series: list[tuple[str, str]],
        max_days: int,
        may_download: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.fields["series"].choices = series
        if not may_download:  # a link allows no more than its maker may do
            del self.fields["allow_download"]
        self.fields["expires_days"].widget.attrs.update({"min": 1, "max": max_days})
        self.max_days = max_days

    def clean_expires_days(self) -> int:
        days = self.cleaned_data["expires_days"]
        if days > self.max_days:
            raise forms.ValidationError(f"Links of this clinic last at most {self.max_days} days.")
        return days


class ChallengeForm(forms.Form):
    answer = forms.CharField(
        label="PIN",
        max_length=32,
        widget=forms.TextInput(attrs={"autocomplete": "off", "autofocus": True}),
    )

    def __init__(self, *args: Any, birth_date: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.birth_date = birth_date
        if birth_date:
            self.fields["answer"].label = "Patient's date of birth (YYYY-MM-DD)"
            self.fields["answer"].widget = forms.DateInput(
                attrs={"type": "date", "autocomplete": "off", "autofocus": True}
            )

    def clean_answer(self) -> str:
        answer = self.cleaned_data["answer"].strip()
        if self.birth_date:
            # A date written another way is a slip, not a wrong answer: it is refused
            # before it is checked, so it costs none of the link's few attempts.
            try:
                if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", answer):
                    raise ValueError
                dt.date.fromisoformat(answer)
            except ValueError:
                raise forms.ValidationError(
                    "Enter the date of birth as year-month-day, for example 1970-01-31."
                ) from None
        return answer


class PatientShareForm(ShareForm):
    """A patient's own link: always behind a PIN or the date of birth, never de-identified."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        del self.fields["deidentify"]
        self.fields["challenge"].choices = [
            (value, label)
            for value, label in ShareLink.Challenge.choices
            if value != ShareLink.Challenge.NONE
        ]
        self.fields["pin"].help_text = "Tell your doctor the PIN yourself, not in the same email."
        self.fields["recipient_email"].label = "Send the link to your doctor (optional)"


class PatientInviteForm(forms.Form):
    email = forms.EmailField(
        label="Patient's email address",
        max_length=EMAIL_MAX_LENGTH,
        error_messages={"max_length": EMAIL_TOO_LONG},
        help_text="Check it with the patient in person: the invitation goes to this address.",
    )
    patients = forms.MultipleChoiceField(
        label="Records to link", widget=forms.CheckboxSelectMultiple
    )

    def __init__(self, *args: Any, records: list[tuple[str, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["patients"].choices = records


class BirthDateForm(forms.Form):
    birth_date = forms.DateField(
        label="Your date of birth",
        help_text="As the clinic has it, e.g. 1970-01-31.",
        widget=forms.DateInput(attrs={"type": "date", "autocomplete": "bday"}),
    )


class NewPatientAccountForm(NewAccountForm):
    full_name = forms.CharField(label="Your name (optional)", required=False, max_length=150)
