from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

import audit
from audit.actors import Actor
from audit.models import Action
from tenants.models import User
from tenants.throttle import throttle_reset


class Command(BaseCommand):
    help = "Lift the sign-in and second-factor lockout of an account (operators)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("email")

    def handle(self, *args: Any, email: str, **options: Any) -> None:
        throttle_reset(account=email)
        user = User.objects.filter(email__iexact=email).first()
        audit.record_for_user(
            user=user, actor=Actor.system("cli.unlock_signin"), action=Action.THROTTLE_RESET
        )
        self.stdout.write("Lockout lifted (if there was one).")
