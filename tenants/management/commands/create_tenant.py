from __future__ import annotations

from typing import Any

from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit.actors import Actor
from tenants.models import Tenant
from tenants.services import tenant_create
from tenants.timezones import DEFAULT_TIME_ZONE


class Command(BaseCommand):
    help = "Create a clinic (tenant)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug", help="URL name of the clinic: lowercase letters, digits, -")
        parser.add_argument("--name", required=True, help="Display name of the clinic")
        parser.add_argument(
            "--time-zone",
            default=DEFAULT_TIME_ZONE,
            help="The clinic's local time by IANA name, e.g. Europe/Zurich (default UTC)",
        )

    def handle(self, *args: Any, slug: str, name: str, time_zone: str, **options: Any) -> None:
        if Tenant.objects.filter(slug=slug).exists():
            raise CommandError(f"A clinic with slug {slug!r} already exists.")
        try:
            tenant = tenant_create(
                slug=slug, name=name, time_zone=time_zone, actor=Actor.cli("create_tenant")
            )
        except ValidationError as exc:
            raise CommandError(
                "; ".join(
                    f"{field}: {message}" if field != NON_FIELD_ERRORS else message
                    for field, messages in exc.message_dict.items()
                    for message in messages
                )
            ) from None
        self.stdout.write(f"Created clinic {tenant.slug} ({tenant.pk}).")
