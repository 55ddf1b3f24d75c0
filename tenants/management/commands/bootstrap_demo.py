from __future__ import annotations

import secrets
import uuid
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django.utils import timezone

from audit.actors import Actor
from imaging.demo import demo_files
from imaging.ingest import IngestOutcome, IngestSummary, ingest_many
from imaging.selectors import study_get
from imaging.services import study_grant
from sharing.invitations import invitation_accept, patient_invite
from tenants.models import Tenant, User
from tenants.roles import ROLE_NAMES, RoleCode
from tenants.services import membership_add, tenant_create, user_create

DEMO_SLUG = "demo"
DEMO_DOMAIN = "demo-clinic.example"


class Command(BaseCommand):
    help = (
        "Create the demo clinic with one user per role and a platform operator (DEBUG only; "
        "idempotent; prints credentials once)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--yes-demo",
            action="store_true",
            help="Create the demo accounts although DEBUG is off (never on a real deployment)",
        )

    def handle(self, *args: Any, yes_demo: bool = False, **options: Any) -> None:
        if not (settings.DEBUG or yes_demo):
            # Eight accounts with printed passwords, one of them an operator: on a real
            # deployment that is a way in, and the passwords would sit in its deploy logs.
            raise CommandError(
                "The demo clinic is for DEBUG=1 (make run); DEBUG is off, so this looks like "
                "a real deployment. Nothing was created. Pass --yes-demo if it is not one."
            )
        if Tenant.objects.filter(slug=DEMO_SLUG).exists():
            self.stdout.write(
                "Demo clinic already set up (credentials were printed when it was created; "
                f"delete {settings.PORTAL_DATA_DIR} to start over)."
            )
            return
        actor = Actor.cli("bootstrap_demo")
        try:
            credentials = _demo_create(actor=actor)
        except ValidationError as exc:
            reasons = " ".join(exc.messages)
            raise CommandError(
                f"The demo clinic cannot be created: {reasons} Nothing was created."
            ) from None
        stored = _demo_studies(tenant=Tenant.objects.get(slug=DEMO_SLUG), actor=actor)
        width = max(len(email) for _, email, _ in credentials)
        self.stdout.write(self.style.SUCCESS("Demo clinic created: /t/demo/"))
        self.stdout.write(f"Demo studies (synthetic and pydicom's test files): {stored.line}.")
        base = settings.PORTAL_BASE_URL or "http://127.0.0.1:8000"
        self.stdout.write(f"Sign in at {base}/accounts/login/ with (shown once):")
        for role_name, email, password in credentials:
            self.stdout.write(f"  {email.ljust(width)}  {password}   ({role_name})")
        self.stdout.write(
            "Second factor: run `python manage.py create_user EMAIL --tenant demo --role ROLE "
            "--totp` to confirm a TOTP device and get its otpauth:// URI for an authenticator app."
        )


@transaction.atomic
def _demo_create(*, actor: Actor) -> list[tuple[str, str, str]]:
    """The demo clinic, a member per role and an operator: (role, email, password) each."""
    # A zone other than UTC, so the demo shows times as a clinic reads them.
    tenant = tenant_create(
        slug=DEMO_SLUG, name="Demo Clinic", time_zone="Europe/Zurich", actor=actor
    )
    credentials: list[tuple[str, str, str]] = []
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
    email, password = f"operator@{DEMO_DOMAIN}", secrets.token_urlsafe(12)
    user_create(email=email, password=password, actor=actor, tenant=None, operator=True)
    credentials.append(("Platform operator", email, password))
    return credentials


def _demo_studies(*, tenant: Tenant, actor: Actor) -> IngestSummary:
    """Ingest the demo studies; link the demo patient to Alice's record and let the
    referring physician see her chest CT, through the same services staff use."""
    results = ingest_many(
        tenant=tenant, actor=actor, items=list(demo_files(today=timezone.localdate()))
    )
    summary = IngestSummary(results)
    alice = next(
        (
            r
            for r in results
            if r.outcome == IngestOutcome.STORED and r.name.startswith("DEMO-ACC-0001")
        ),
        None,
    )
    if alice is None:
        return summary
    chest = study_get(tenant=tenant, study_id=uuid.UUID(alice.study_id))
    if chest is None:
        return summary
    with transaction.atomic():
        demo_users = User.objects.filter(email__endswith=f"@{DEMO_DOMAIN}")
        members = {user.email.split("@")[0]: user for user in demo_users}
        study_grant(
            study=chest, grantee=members["referring-physician"], download=False, actor=actor
        )
        invitation = patient_invite(
            tenant=tenant,
            patients=[chest.patient],
            email=members["patient"].email,
            invited_by=members["front-desk"],
            actor=actor,
            now=timezone.now(),
        )
        invitation_accept(
            invitation=invitation, user=members["patient"], actor=actor, now=timezone.now()
        )
    return summary
