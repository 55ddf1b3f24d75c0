from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from audit.actors import Actor
from tenants.management.passwords import password_read
from tenants.mfa import has_totp
from tenants.models import User
from tenants.roles import RoleCode
from tenants.selectors import tenant_get_active
from tenants.services import membership_add, totp_device_create_confirmed, user_create


class Command(BaseCommand):
    help = (
        "Create a user (or reuse an existing one) and give them a role in a clinic. "
        "With --totp, confirm a TOTP device and print its otpauth:// URI; a person who "
        "already has one keeps it unless --replace-totp is given (a lost phone)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("email")
        parser.add_argument("--tenant", required=True, help="Clinic slug")
        parser.add_argument("--role", required=True, choices=[code.value for code in RoleCode])
        parser.add_argument("--full-name", default="")
        parser.add_argument(
            "--password-stdin", action="store_true", help="Read the password from standard input"
        )
        totp = parser.add_mutually_exclusive_group()
        totp.add_argument("--totp", action="store_true", help="Confirm a TOTP device")
        totp.add_argument(
            "--replace-totp",
            action="store_true",
            help="Confirm a new TOTP device and remove the person's earlier ones",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        tenant = tenant_get_active(slug=options["tenant"])
        if tenant is None:
            raise CommandError(f"No active clinic with slug {options['tenant']!r}.")
        password = password_read() if options["password_stdin"] else None
        actor = Actor.cli("create_user")
        try:
            with transaction.atomic():
                user = User.objects.filter(email__iexact=options["email"].strip()).first()
                if user is None:
                    user = user_create(
                        email=options["email"],
                        password=password,
                        full_name=options["full_name"],
                        actor=actor,
                        tenant=tenant,
                    )
                elif password is not None:
                    raise CommandError(
                        "This user already exists; their password is not changed here."
                    )
                elif options["full_name"]:
                    raise CommandError(
                        "This user already exists; their name is changed in the admin, not here."
                    )
                membership_add(tenant=tenant, user=user, roles=[options["role"]], actor=actor)
                device = None
                if options["totp"] or options["replace_totp"]:
                    if options["totp"] and has_totp(user):
                        # Every earlier secret would stay valid beside the new one: a re-run
                        # would hand out working second factors for someone else's account.
                        raise CommandError(
                            "This user already has a TOTP device; pass --replace-totp to "
                            "remove it and confirm a new one."
                        )
                    device = totp_device_create_confirmed(
                        user=user, actor=actor, replace=options["replace_totp"]
                    )
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        self.stdout.write(f"User {user.pk} is {options['role']} in {tenant.slug}.")
        if device is not None:
            self.stdout.write(device.config_url)
