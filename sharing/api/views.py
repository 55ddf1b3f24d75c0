"""REST API /api/v1/shares: partners create, list and revoke share links (`shares:write`)."""

from __future__ import annotations

import re
from typing import Any

from django.db.models import QuerySet
from django.shortcuts import get_object_or_404
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import generics, status
from rest_framework.exceptions import APIException, ValidationError
from rest_framework.response import Response

import audit
from audit.actors import Actor, client_ip
from audit.models import Action
from imaging.selectors import token_studies
from sharing.api.serializers import ShareCreateSerializer, ShareSerializer
from sharing.idempotency import (
    KEY_MAX_LENGTH,
    SHARE_REQUEST_HOURS,
    IdempotencyKeyReused,
    partner_share_create,
)
from sharing.models import ShareLink
from sharing.selectors import shares_series_withheld_uids
from sharing.services import ShareInvalid, share_revoke
from tenants.roles import Perm


class KeyReused(APIException):
    status_code = 422
    default_code = "idempotency_key_reused"


IDEMPOTENCY_KEY_INVALID = (
    f"The Idempotency-Key header must be 1 to {KEY_MAX_LENGTH} printable ASCII characters."
)
_KEY = re.compile(rf"[\x20-\x7e]{{1,{KEY_MAX_LENGTH}}}")

IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key",
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    description=(
        f"Any unique text (a UUID, say). The same request sent again under the same key "
        f"within {SHARE_REQUEST_HOURS} hours returns the link the first one made, its URL "
        f"included, with `Idempotent-Replayed: true`; it makes no second link. The same "
        f"key with a different request is a 422."
    ),
)


def _idempotency_key(request: Any) -> str | None:
    """The header's value, unquoted (the IETF draft sends it as a structured-field string,
    most clients bare); None when absent."""
    value = request.headers.get("Idempotency-Key")
    if value is None:
        return None
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    if not _KEY.fullmatch(value):
        raise ValidationError({"Idempotency-Key": [IDEMPOTENCY_KEY_INVALID]})
    return value


def _actor(request: Any) -> Actor:
    return Actor.for_token(request.api_token, ip=client_ip(request))


def _token_shares(request: Any) -> QuerySet[ShareLink]:
    """Links this partner token created; nothing for any other kind of caller."""
    shares = ShareLink.objects.for_tenant(request.tenant)
    token = getattr(request, "api_token", None)
    return shares.filter(created_by_token=token) if token is not None else shares.none()


def _token_visible_shares(request: Any) -> QuerySet[ShareLink]:
    """`_token_shares` to studies the token may still see.

    A study made confidential since drops out of the list of a token without
    `confidential:read`, as it does from its study list. Revoking stays open to it: that
    only takes access away and shows nothing.
    """
    shares = _token_shares(request)
    token = getattr(request, "api_token", None)
    if token is None:
        return shares
    return shares.filter(study__in=token_studies(token=token).values("pk"))


class ShareListCreate(generics.ListCreateAPIView):
    """Share links created with this token, newest first; POST creates one.

    Creating needs `dicomweb:read` beside `shares:write`: a link shows its study to
    whoever opens it, the partner's own system included.
    """

    serializer_class = ShareSerializer
    required_scope = "shares:write"
    required_perms = (Perm.STUDY_SHARE,)

    def get_queryset(self) -> QuerySet[ShareLink]:
        return _token_visible_shares(self.request).select_related("study").order_by("-created_at")

    def get(self, request: Any, *args: Any, **kwargs: Any) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        withheld = shares_series_withheld_uids(tenant=request.tenant, shares=page)
        serializer = self.get_serializer(
            page, many=True, context={**self.get_serializer_context(), "withheld": withheld}
        )
        response = self.get_paginated_response(serializer.data)
        # Recipients' addresses and which studies were shared went out: which links and
        # studies, as the study list records.
        audit.record(
            actor=_actor(request),
            action=Action.API_READ,
            target=None,
            tenant=request.tenant,
            detail={
                "resource": "shares",
                "shares": [str(share.pk) for share in page],
                "studies": list(dict.fromkeys(str(share.study_id) for share in page)),
            },
        )
        return response

    @extend_schema(
        request=ShareCreateSerializer,
        parameters=[IDEMPOTENCY_KEY],
        responses={
            201: ShareSerializer,
            422: OpenApiResponse(description="The Idempotency-Key was sent with another request."),
        },
    )
    def post(self, request: Any, *args: Any, **kwargs: Any) -> Response:
        idempotency_key = _idempotency_key(request)
        data = ShareCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        study = get_object_or_404(
            token_studies(token=request.api_token).select_related("patient", "tenant"),
            study_uid=values["study_instance_uid"],
        )
        try:
            created = partner_share_create(
                idempotency_key=idempotency_key,
                study=study,
                actor=_actor(request),
                now=timezone.now(),
                created_by_token=request.api_token,
                expires_at=values["expires_at"],
                pin=values.get("pin"),
                max_uses=values.get("max_uses"),
                allow_download=values["allow_download"],
                deidentify=values["deidentify"],
                recipient_email=values["recipient_email"],
                message=values["message"],
            )
        except ShareInvalid as exc:
            raise ValidationError({"non_field_errors": [str(exc)]}) from None
        except IdempotencyKeyReused as exc:
            raise KeyReused(str(exc)) from None
        share = created.share
        url = request.build_absolute_uri(f"/s/{created.token}")
        body = ShareSerializer(share, context={"urls": {share.pk: url}}).data
        response = Response(body, status=status.HTTP_201_CREATED)
        if created.replayed:
            response["Idempotent-Replayed"] = "true"
        return response


class ShareRevoke(generics.DestroyAPIView):
    """Revoke a link: its recipients' next request is refused."""

    serializer_class = ShareSerializer
    required_scope = "shares:write"
    required_perms = (Perm.STUDY_SHARE,)
    lookup_field = "id"

    def get_queryset(self) -> QuerySet[ShareLink]:
        return _token_shares(self.request)

    @extend_schema(responses={204: None})
    def delete(self, request: Any, *args: Any, **kwargs: Any) -> Response:
        return super().delete(request, *args, **kwargs)

    def perform_destroy(self, instance: ShareLink) -> None:
        share_revoke(share=instance, actor=_actor(self.request), now=timezone.now())
