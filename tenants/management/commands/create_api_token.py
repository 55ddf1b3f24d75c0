from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from audit.actors import Actor
from tenants.selectors import tenant_get_active
from tenants.tokens import MAX_EXPIRES_DAYS, api_token_create


class Command(BaseCommand):
    help = "Create an API token for a clinic. The token is printed once, as the last line."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", required=True, help="Clinic slug")
        parser.add_argument("--name", required=True, help="Who or what uses the token")
        parser.add_argument("--scopes", required=True, help="Comma-separated, e.g. dicomweb:read")
        parser.add_argument(
            "--expires-days",
            type=int,
            default=None,
            help=f"Days until it expires, 1 to {MAX_EXPIRES_DAYS}; without it, the token never "
            "expires (until revoked)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        tenant = tenant_get_active(slug=options["tenant"])
        if tenant is None:
            raise CommandError(f"No active clinic with slug {options['tenant']!r}.")
        scopes = [s.strip() for s in options["scopes"].split(",") if s.strip()]
        try:
            token, plaintext = api_token_create(
                tenant=tenant,
                name=options["name"],
                scopes=scopes,
                expires_days=options["expires_days"],
                actor=Actor.cli("create_api_token"),
                now=timezone.now(),
            )
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        expiry = f"expires {token.expires_at:%Y-%m-%d}" if token.expires_at else "no expiry"
        self.stdout.write(
            f"Token {token.prefix} for {tenant.slug}: {', '.join(token.scopes)}; {expiry}."
        )
        self.stdout.write("Store it now; it is not shown again:")
        self.stdout.write(plaintext)
