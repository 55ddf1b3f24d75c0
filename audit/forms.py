"""The audit log's filters: by study, by who, by what, by outcome and by date."""

from __future__ import annotations

import re
import uuid
from typing import Any

from django import forms

from audit.models import Action, ActorType, Outcome
from audit.selectors import EventFilter
from imaging.models import Series, Study
from tenants.models import ApiToken, Membership, Role, Tenant
from tenants.roles import RoleCode

_ACTOR = re.compile(r"(?P<type>[a-z_]{1,16}):(?P<id>[A-Za-z0-9._:@-]{1,64})")
_DICOM_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


def _actor_choices(tenant: Tenant) -> list[tuple[str, str]]:
    # Staff and tokens by name; a patient's account (its email is PHI) is reached from
    # one of its events, which links here with its id.
    staff = (
        Membership.objects.for_tenant(tenant)
        .filter(roles__in=Role.objects.exclude(code=RoleCode.PATIENT))
        .distinct()
        .select_related("user")
        .order_by("user__email")
    )
    tokens = ApiToken.objects.for_tenant(tenant).order_by("name")
    return [
        ("", "Anyone"),
        *((f"{ActorType.USER}:{m.user_id}", m.user.email) for m in staff),
        *((f"{ActorType.API_TOKEN}:{t.pk}", f"API token “{t.name}”") for t in tokens),
    ]


class AuditFilterForm(forms.Form):
    study = forms.CharField(
        label="Study",
        required=False,
        max_length=64,
        help_text="The portal's study id or its Study Instance UID.",
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
    )
    actor = forms.CharField(label="Who", required=False, max_length=90)
    action = forms.ChoiceField(
        label="What", required=False, choices=[("", "Anything"), *Action.choices]
    )
    outcome = forms.ChoiceField(
        label="Outcome", required=False, choices=[("", "Any"), *Outcome.choices]
    )
    date_from = forms.DateField(
        label="From", required=False, widget=forms.DateInput(attrs={"type": "date"})
    )
    date_to = forms.DateField(
        label="To", required=False, widget=forms.DateInput(attrs={"type": "date"})
    )

    def __init__(self, *args: Any, tenant: Tenant, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tenant = tenant
        # Any actor id may be asked for (from a link on an event), not only those listed.
        self.fields["actor"].widget = forms.Select(choices=_actor_choices(tenant))

    def clean_study(self) -> tuple[str, ...]:
        text = self.cleaned_data["study"].strip()
        if not text:
            return ()
        studies = Study.objects.for_tenant(self.tenant)
        try:
            study_id = uuid.UUID(text)
        except ValueError:
            if not _DICOM_UID.fullmatch(text):
                raise forms.ValidationError(
                    "Enter the portal's study id or a Study Instance UID (digits and dots)."
                ) from None
            study = studies.filter(study_uid=text).first()
            if study is None:
                raise forms.ValidationError(
                    "No study with this Study Instance UID in this clinic."
                ) from None
            study_id = study.pk
        # A study no longer stored keeps its events: its id alone still finds them.
        series = Series.objects.for_tenant(self.tenant).filter(study_id=study_id)
        return (str(study_id), *(str(pk) for pk in series.values_list("pk", flat=True)))

    def clean_actor(self) -> tuple[str, str] | None:
        text = self.cleaned_data["actor"].strip()
        if not text:
            return None
        match = _ACTOR.fullmatch(text)
        if match is None or match["type"] not in ActorType.values:
            raise forms.ValidationError("Choose who from the list.")
        return match["type"], match["id"]

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if data.get("date_from") and data.get("date_to") and data["date_from"] > data["date_to"]:
            raise forms.ValidationError("The start date is after the end date.")
        return data

    def event_filter(self) -> EventFilter:
        data = self.cleaned_data
        return EventFilter(
            study_ids=data["study"],
            actor=data["actor"],
            action=data["action"],
            outcome=data["outcome"],
            date_from=data["date_from"],
            date_to=data["date_to"],
        )

    def used(self) -> dict[str, str]:
        """The filters given, as the audit read's event records them (ids, no PHI)."""
        data = self.cleaned_data
        used = {name: str(self.data.get(name, "")).strip() for name in self.fields}
        if data.get("study"):
            used["study"] = data["study"][0]  # the id, even when asked for by its UID
        return {name: value for name, value in used.items() if value}
