from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit.actors import Actor
from tenants.management.passwords import password_read
from tenants.services import user_create


class Command(BaseCommand):
    help = (
        "Create a platform operator (superuser: the platform admin, no clinic's data), "
        "recorded in the platform's audit chain. Without --password-stdin the account "
        "waits for a password reset."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("email")
        parser.add_argument("--full-name", default="")
        parser.add_argument(
            "--password-stdin", action="store_true", help="Read the password from standard input"
        )

    def handle(self, *args: Any, email: str, full_name: str, **options: Any) -> None:
        password = password_read() if options["password_stdin"] else None
        try:
            user = user_create(
                email=email,
                password=password,
                full_name=full_name,
                actor=Actor.cli("create_operator"),
                tenant=None,
                operator=True,
            )
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        self.stdout.write(f"Operator {user.pk} created; they enrol a second factor at sign-in.")
