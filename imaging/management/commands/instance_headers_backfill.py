from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit.actors import Actor
from imaging.services import instance_headers_backfill
from tenants.models import Tenant


class Command(BaseCommand):
    help = (
        "Keep the encrypted header of instances stored before the portal kept them, or "
        "kept before large binary values had bulk data paths, and record where their "
        "frames are, so their metadata and frame requests need no parsing; and index the "
        "QIDO-RS keys added later (StudyID, performed procedure step start, "
        "BitsAllocated) where rows lack them. Safe to run again; prints the count. Exits "
        "non-zero when a stored object could not be read."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", help="Clinic slug (default: every clinic)")

    def handle(self, *args: Any, tenant: str | None = None, **options: Any) -> None:
        clinics = Tenant.objects.order_by("slug")
        if tenant is not None:
            clinics = clinics.filter(slug=tenant)
            if not clinics.exists():
                raise CommandError(f"No clinic with slug {tenant!r}.")
        actor = Actor.cli("instance_headers_backfill")
        unreadable = []
        for clinic in clinics:
            done = instance_headers_backfill(tenant=clinic, actor=actor)
            line = f"{clinic.slug}: {done.kept} instance headers kept"
            if done.unreadable:
                line += f", {done.unreadable} unreadable"
                unreadable.append(clinic.slug)
            self.stdout.write(line)
        if unreadable:
            # A row whose object is gone or altered is a durability incident: a monitor
            # running this must not read it as a clean pass.
            raise CommandError(
                f"Stored objects could not be read in {', '.join(unreadable)}; each is in "
                "that clinic's audit log as an integrity failure. Restore them from backup."
            )
