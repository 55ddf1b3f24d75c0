from __future__ import annotations

import secrets
from typing import Any

from django.core.management.base import BaseCommand
from django.db import transaction

from audit.actors import Actor
from tenants.models import Tenant, User
from tenants.roles import ROLE_NAMES, RoleCode
from tenants.services import membership_add, tenant_create, user_create

DEMO_SLUG = "demo"
DEMO_DOMAIN = "demo-clinic.example"


class Command(BaseCommand):
    help = "Create the demo clinic with one user per role (idempotent; prints credentials once)."

    def handle(self, *args: Any, **options: Any) -> None:
        if Tenant.objects.filter(slug=DEMO_SLUG).exists():
            self.stdout.write(
                "Demo clinic already set up (credentials were printed when it was created; "
                "delete var/ to start over)."
            )
            return
        actor = Actor.system("cli.bootstrap_demo")
        credentials: list[tuple[str, str, str]] = []
        with transaction.atomic():
            # A zone other than UTC, so the demo shows times as a clinic reads them.
            tenant = tenant_create(
                slug=DEMO_SLUG, name="Demo Clinic", time_zone="Europe/Zurich", actor=actor
            )
            for role in RoleCode:
                email = f"{role.value.replace('_', '-')}@{DEMO_DOMAIN}"
                password = secrets.token_urlsafe(12)
                user = user_create(
                    email=email,
                    password=password,
                    full_name=f"Demo {ROLE_NAMES[role]}",
                    actor=actor,
                    tenant=tenant,
                )
                membership_add(tenant=tenant, user=user, roles=[role.value], actor=actor)
                credentials.append((ROLE_NAMES[role], email, password))
            operator_password = secrets.token_urlsafe(12)
            User.objects.create_superuser(
                email=f"operator@{DEMO_DOMAIN}", password=operator_password
            )
            credentials.append(("Platform operator", f"operator@{DEMO_DOMAIN}", operator_password))
        width = max(len(email) for _, email, _ in credentials)
        self.stdout.write(self.style.SUCCESS("Demo clinic created: /t/demo/"))
        self.stdout.write("Sign in at http://127.0.0.1:8000/accounts/login/ with (shown once):")
        for role_name, email, password in credentials:
            self.stdout.write(f"  {email.ljust(width)}  {password}   ({role_name})")
        self.stdout.write(
            "Second factor: run `python manage.py create_user EMAIL --tenant demo --role ROLE "
            "--totp` to confirm a TOTP device and get its otpauth:// URI for an authenticator app."
        )
