"""What the account commands share."""

from __future__ import annotations

import getpass
import sys

from django.core.management.base import CommandError


def password_read() -> str:
    """The password from standard input: a pipe's first line, or typed twice unseen."""
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Password (again): ") != password:
            raise CommandError("The two passwords differ.")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise CommandError("No password on standard input.")
    return password
