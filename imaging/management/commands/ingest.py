from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit.actors import Actor
from imaging.ingest import IngestOutcome, IngestSummary, ingest_paths, printable
from tenants.models import User
from tenants.roles import Perm
from tenants.selectors import membership_for_user, tenant_get_active


class Command(BaseCommand):
    help = (
        "Ingest DICOM files, folders (recursively) and zip archives into a clinic. Prints one "
        "line per rejected file, then `stored N, duplicate D, rejected R`. Exits 1 when a "
        "file was rejected, 130 when interrupted (after the lines for what was done)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("paths", nargs="+", type=Path)
        parser.add_argument("--tenant", required=True, help="Clinic slug")
        parser.add_argument("--as", dest="as_email", help="Record the ingest as this member")

    def handle(self, *args: Any, paths: list[Path], tenant: str, **options: Any) -> None:
        clinic = tenant_get_active(slug=tenant)
        if clinic is None:
            raise CommandError(f"No active clinic with slug {tenant!r}.")
        missing = [str(path) for path in paths if not path.exists()]
        if missing:
            raise CommandError(f"No such file or folder: {', '.join(missing)}")
        actor = Actor.cli("ingest")
        if options.get("as_email"):
            user = User.objects.filter(email__iexact=options["as_email"]).first()
            membership = membership_for_user(tenant=clinic, user=user) if user else None
            if membership is None:
                raise CommandError(f"{options['as_email']} is not an active member of {tenant}.")
            if not membership.has_perm(Perm.STUDY_UPLOAD):
                # The audit trail would name as uploader someone whose roles cannot upload.
                raise CommandError(
                    f"{options['as_email']} may not upload studies in {tenant}: "
                    "give them a role that may (technologist), or name someone who has one."
                )
            actor = Actor.for_user(user)
        summary = IngestSummary([])
        try:
            for result in ingest_paths(tenant=clinic, actor=actor, paths=paths):
                summary.results.append(result)
        except KeyboardInterrupt:
            # Each file is stored whole or not at all: say what was kept, so the operator
            # knows a second run will count those as duplicates and go on.
            self._report(summary)
            self.stderr.write("Interrupted; what is counted was kept. Run it again to go on.")
            raise SystemExit(130) from None
        self._report(summary)
        if summary.count(IngestOutcome.REJECTED):
            raise SystemExit(1)

    def _report(self, summary: IngestSummary) -> None:
        for result in summary.results:
            if result.outcome == IngestOutcome.REJECTED:
                # One line per file whatever its name holds: the output is read by tools.
                self.stdout.write(f"rejected {printable(result.name)}: {printable(result.message)}")
        self.stdout.write(summary.line)
