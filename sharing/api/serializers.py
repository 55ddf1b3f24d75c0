from __future__ import annotations

import re

from django.utils import timezone
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from sharing.models import ShareLink
from sharing.selectors import shares_series_withheld_uids
from sharing.services import EMAIL_TOO_LONG
from tenants.models import EMAIL_MAX_LENGTH


class _Text(serializers.CharField):
    """Text only: DRF's CharField would store a number sent for it as its digits (a PIN
    sent as 01234 would become 1234)."""

    default_error_messages = {"not_text": "Must be a string."}

    def to_internal_value(self, data: object) -> str:
        if not isinstance(data, str):
            self.fail("not_text")
        return super().to_internal_value(data)


class _Pattern(_Text, serializers.RegexField):
    pass


class _WholeNumber(serializers.IntegerField):
    """A JSON integer, or its digits as text (a form's value). DRF's IntegerField also
    reads "٣" (Arabic-Indic three), "3.0", 3.0 and true as numbers, so a partner's bug
    would pass unseen."""

    def to_internal_value(self, data: object) -> int:
        if isinstance(data, bool | float) or (
            isinstance(data, str) and not re.fullmatch(r"-?[0-9]+", data.strip())
        ):
            self.fail("invalid")
        return super().to_internal_value(data)


class ShareCreateSerializer(serializers.Serializer):
    study_instance_uid = _Text(max_length=64)
    expires_at = serializers.DateTimeField()
    pin = _Pattern(r"^[0-9]{4,12}$", required=False, allow_blank=False)
    max_uses = _WholeNumber(
        required=False, min_value=1, max_value=ShareLink.MAX_USES, allow_null=True
    )
    allow_download = serializers.BooleanField(
        required=False,
        default=False,
        help_text="Let recipients download the originals.",
    )
    deidentify = serializers.BooleanField(required=False, default=False)
    recipient_email = serializers.EmailField(
        required=False,
        allow_blank=True,
        default="",
        max_length=EMAIL_MAX_LENGTH,
        error_messages={"max_length": EMAIL_TOO_LONG},
    )
    message = _Text(required=False, allow_blank=True, max_length=2000, default="")


class ShareSerializer(serializers.ModelSerializer):
    study_instance_uid = serializers.CharField(source="study.study_uid")
    status = serializers.SerializerMethodField()
    url = serializers.SerializerMethodField()
    withheld_series_instance_uids = serializers.SerializerMethodField(
        help_text=(
            "Series a de-identified link leaves out: their images may show the patient's "
            "details in the pixels (burned-in text, photographs, documents)."
        )
    )

    class Meta:
        model = ShareLink
        fields = [
            "id",
            "url",
            "study_instance_uid",
            "status",
            "created_at",
            "expires_at",
            "revoked_at",
            "challenge",
            "max_uses",
            "use_count",
            "allow_download",
            "deidentify",
            "withheld_series_instance_uids",
            "recipient_email",
            "last_access_at",
        ]

    def get_status(self, share: ShareLink) -> str:
        return share.state_at(timezone.now()).value

    @extend_schema_field(serializers.ListField(child=serializers.CharField()))
    def get_withheld_series_instance_uids(self, share: ShareLink) -> list[str]:
        # A list works them out for the whole page at once and passes them in.
        withheld = self.context.get("withheld")
        if withheld is None:
            withheld = shares_series_withheld_uids(tenant=share.tenant, shares=[share])
        return withheld.get(share.pk, [])

    def get_url(self, share: ShareLink) -> str | None:
        # The link exists in clear only in the creation response.
        return self.context.get("urls", {}).get(share.pk)
