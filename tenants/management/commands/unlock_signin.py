from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError, transaction
from redis.exceptions import RedisError

import audit
from audit.actors import Actor
from audit.models import Action
from portal.checks import PER_PROCESS_CACHES
from tenants.models import User
from tenants.throttle import throttle_reset


class Command(BaseCommand):
    help = "Lift the sign-in and second-factor lockout of an account (operators)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("email")

    def handle(self, *args: Any, email: str, **options: Any) -> None:
        if settings.CACHES["default"]["BACKEND"] in PER_PROCESS_CACHES:
            # The counts are in each web process's memory: this process has none of them.
            raise CommandError(
                "Sign-in failures are counted in each web process's memory (REDIS_URL is "
                "not set), out of this command's reach. Restart the portal to clear them, "
                f"or wait {settings.SIGNIN_LOCKOUT_SECONDS // 60} minutes; set REDIS_URL "
                "so this command can lift a lockout."
            )
        email = email.strip()  # as the sign-in form takes it, pasted spaces and all
        user = User.objects.filter(email__iexact=email).first()
        try:
            with transaction.atomic():
                # Audited first, lifted inside the same transaction: a lockout is never
                # lifted unrecorded, and an event never names a lift that failed (only
                # a failed commit, after the lift, could part them).
                audit.record_for_user(
                    user=user, actor=Actor.cli("unlock_signin"), action=Action.THROTTLE_RESET
                )
                throttle_reset(account=email)
        except (DatabaseError, RedisError, OSError) as exc:
            raise CommandError(
                f"Nothing was lifted ({type(exc).__name__}): check that the database and "
                "REDIS_URL are reachable, then run this again."
            ) from None
        if user is None:
            self.stdout.write("No account has this address; its failure count was cleared.")
        else:
            self.stdout.write("Lockout lifted (if there was one).")
