from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit.keys import AuditKeyMissing
from audit.models import PLATFORM_CHAIN_KEY
from audit.verify import ChainReport, chains_verify
from imaging.crypto import IntegrityError
from tenants.models import Tenant


class Command(BaseCommand):
    help = "Verify the hash chains of the audit log. Exit 0 when intact, 1 naming the first break."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", help="Verify only this clinic's chain (slug)")

    def handle(self, *args: Any, tenant: str | None = None, **options: Any) -> None:
        if tenant is not None and not Tenant.objects.filter(slug=tenant).exists():
            raise CommandError(f"No clinic with slug {tenant!r}.")
        try:
            reports = chains_verify(tenant_slug=tenant)
        except (AuditKeyMissing, ImproperlyConfigured) as exc:
            raise CommandError(f"Audit chains cannot be verified: {exc}") from None
        except IntegrityError:
            raise CommandError(
                "Audit chains cannot be verified: the audit key does not unwrap with the "
                "master key in use (not the key it was wrapped with). Restore the right "
                "master key; `init_master_key` checks one."
            ) from None
        broken = [report for report in reports if not report.intact]
        for report in reports:
            name = _name(report)
            if report.intact:
                self.stdout.write(f"{name}: intact ({report.events} events)")
            else:
                self.stdout.write(f"{name}: BROKEN at seq {report.broken_seq} ({report.reason})")
        if broken:
            first = broken[0]
            raise CommandError(
                f"Audit chain broken: {_name(first)}, first broken seq {first.broken_seq}"
            )


def _name(report: ChainReport) -> str:
    if report.tenant_slug:
        return f"tenant {report.tenant_slug}"
    return "platform" if report.chain_key == PLATFORM_CHAIN_KEY else f"chain {report.chain_key}"
