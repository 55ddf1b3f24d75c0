from __future__ import annotations

from typing import Any

from django import forms

from imaging.selectors import WorklistQuery


class WorklistSearchForm(forms.Form):
    text = forms.CharField(
        label="Patient, ID or accession",
        required=False,
        max_length=100,
        widget=forms.TextInput(attrs={"type": "search", "autocomplete": "off"}),
    )
    date_from = forms.DateField(
        label="From", required=False, widget=forms.DateInput(attrs={"type": "date"})
    )
    date_to = forms.DateField(
        label="To", required=False, widget=forms.DateInput(attrs={"type": "date"})
    )
    modality = forms.CharField(
        label="Modality",
        required=False,
        max_length=16,
        widget=forms.TextInput(attrs={"autocomplete": "off", "size": 4}),
    )
    referring = forms.CharField(
        label="Referring physician",
        required=False,
        max_length=100,
        widget=forms.TextInput(attrs={"autocomplete": "off"}),
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if data.get("date_from") and data.get("date_to") and data["date_from"] > data["date_to"]:
            raise forms.ValidationError("The start date is after the end date.")
        return data

    def query(self) -> WorklistQuery:
        data = self.cleaned_data
        return WorklistQuery(
            text=data["text"].strip(),
            date_from=data["date_from"],
            date_to=data["date_to"],
            modality=data["modality"].strip().upper(),
            referring=data["referring"].strip(),
        )


class BreakGlassForm(forms.Form):
    reason = forms.CharField(
        label="Clinical reason for this access",
        max_length=1000,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Privacy officers are notified and review every break-glass access.",
    )


class GrantForm(forms.Form):
    LEVELS = (("view", "View images"), ("download", "View and download"))

    grantee = forms.ChoiceField(label="Referring physician")
    level = forms.ChoiceField(label="Access", choices=LEVELS, initial="view")

    def __init__(self, *args: Any, grantees: list[tuple[str, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["grantee"].choices = grantees
