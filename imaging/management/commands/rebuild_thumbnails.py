from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit.actors import Actor
from imaging.services import SeriesNotFound, ThumbnailsNotQueued, series_thumbnails_rebuild
from portal.tasks import broker_check
from tenants.models import Tenant


class Command(BaseCommand):
    help = (
        "Render a clinic's series thumbnails again, after a change to rendering. Each "
        "keeps its present thumbnail until the new one is stored. Prints the count queued."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", required=True, help="Clinic slug")
        parser.add_argument(
            "--series", nargs="+", default=[], metavar="UID", help="Only these series"
        )
        parser.add_argument(
            "--failed", action="store_true", help="Only series whose thumbnail failed"
        )

    def handle(
        self, *args: Any, tenant: str, series: list[str], failed: bool, **options: Any
    ) -> None:
        clinic = Tenant.objects.filter(slug=tenant).first()
        if clinic is None:
            raise CommandError(f"No clinic with slug {tenant!r}.")
        try:
            broker_check()
        except Exception as exc:  # whatever the transport raises: nothing may be queued
            raise CommandError(
                f"The task queue cannot be reached ({type(exc).__name__}); nothing was "
                "queued. Start it (REDIS_URL names it) and run this again."
            ) from None
        try:
            count = series_thumbnails_rebuild(
                tenant=clinic,
                actor=Actor.cli("rebuild_thumbnails"),
                series_uids=series,
                failed_only=failed,
            )
        except (SeriesNotFound, ThumbnailsNotQueued) as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"{clinic.slug}: {count} series queued for new thumbnails")
