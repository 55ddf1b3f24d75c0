"""The local master key file: created once, mode 0600, never silently replaced."""

from __future__ import annotations

import base64
import os
import stat

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import CommandError

from imaging.keys import master_key_load


@pytest.fixture
def key_path(settings, tmp_path):
    settings.PORTAL_MASTER_KEY = None
    settings.PORTAL_MASTER_KEY_PATH = tmp_path / "keys" / "master.key"
    return settings.PORTAL_MASTER_KEY_PATH


@pytest.mark.django_db
def test_init_creates_a_private_random_key_and_says_so(key_path, capsys):
    call_command("init_master_key")

    assert "Created master key file" in capsys.readouterr().out
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert len(base64.b64decode(key_path.read_text())) == 32
    assert master_key_load() == base64.b64decode(key_path.read_text())


@pytest.mark.django_db
def test_init_never_replaces_an_existing_key(key_path, capsys):
    call_command("init_master_key")
    first = key_path.read_text()

    call_command("init_master_key")

    assert key_path.read_text() == first
    assert "present" in capsys.readouterr().out


@pytest.mark.django_db
def test_a_key_readable_by_others_is_refused(key_path):
    call_command("init_master_key")
    key_path.chmod(0o644)

    with pytest.raises(ImproperlyConfigured, match="chmod 600"):
        master_key_load()


def test_missing_key_says_how_to_create_it(key_path):
    with pytest.raises(ImproperlyConfigured, match="init_master_key"):
        master_key_load()


def test_key_from_environment_must_be_32_bytes(settings):
    settings.PORTAL_MASTER_KEY = base64.b64encode(b"short").decode()

    with pytest.raises(ImproperlyConfigured, match="32 bytes"):
        master_key_load()


def test_a_new_key_file_is_on_disk_before_it_is_used(key_path, monkeypatch):
    from imaging.keys import master_key_file_ensure

    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.path.realpath(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)

    master_key_file_ensure(key_path)

    assert synced == [os.path.realpath(key_path), os.path.realpath(key_path.parent)]


def _manage(args: list[str], env: dict[str, str], tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    clean = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PORTAL_DATA_DIR": str(tmp_path)}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=root,
        env={**clean, "SECRET_KEY": "k" * 60, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_key_file_named_by_the_environment_is_made_private_and_checked(tmp_path):
    path = tmp_path / "secrets" / "portal-master.key"
    path.parent.mkdir()
    named = {"PORTAL_MASTER_KEY_FILE": str(path)}

    made = _manage(["init_master_key"], named, tmp_path)
    os.chmod(path, 0o644)  # a secret mounted readable by everyone
    refused = _manage(
        ["shell", "-c", "from imaging.keys import master_key_load as m; m()"], named, tmp_path
    )

    assert made.returncode == 0, made.stderr
    assert "must not be readable by group or others" in refused.stderr


def _key_text(byte: bytes) -> str:
    return base64.b64encode(byte * 32).decode() + "\n"


@pytest.mark.django_db
def test_init_refuses_a_new_key_while_the_database_holds_keys_wrapped_by_the_old(
    clinic, key_path, capsys
):
    # The clinic's audit key is wrapped by the suite's master key; its file is "lost".
    with pytest.raises(CommandError, match="Restore that key file"):
        call_command("init_master_key")

    assert not key_path.exists()


@pytest.mark.django_db
def test_init_refuses_a_key_that_does_not_unwrap_the_stored_keys(clinic, key_path, settings):
    from imaging.keyring import tenant_key_active

    tenant_key_active(tenant=clinic)
    key_path.parent.mkdir()
    key_path.write_text(_key_text(b"x"))
    key_path.chmod(0o600)

    with pytest.raises(CommandError, match="not the key they were wrapped with"):
        call_command("init_master_key")

    key_path.write_text(_key_text(b"k"))  # the suite's key (tests/conftest.py)
    call_command("init_master_key")
    settings.PORTAL_MASTER_KEY = _key_text(b"x")
    with pytest.raises(CommandError, match="from PORTAL_MASTER_KEY does not unwrap"):
        call_command("init_master_key")


@pytest.mark.django_db
def test_init_makes_no_key_file_under_kms(key_path, settings, capsys):
    settings.PORTAL_KEY_PROVIDER = "aws-kms"

    call_command("init_master_key")

    assert "no local master key file is needed" in capsys.readouterr().out
    assert not key_path.exists()


@pytest.mark.django_db
def test_init_names_a_bad_key_without_a_traceback(key_path, settings):
    call_command("init_master_key")
    key_path.chmod(0o644)
    with pytest.raises(CommandError, match="chmod 600"):
        call_command("init_master_key")

    settings.PORTAL_MASTER_KEY = "not base64!"
    with pytest.raises(CommandError, match="not valid base64"):
        call_command("init_master_key")


@pytest.mark.django_db
def test_verify_audit_names_a_wrong_master_key(clinic, settings):
    from audit.keys import audit_key_forget
    from imaging.keys import key_provider_reset

    settings.PORTAL_MASTER_KEY = _key_text(b"x")
    key_provider_reset()
    audit_key_forget()

    with pytest.raises(CommandError, match="does not unwrap with the master key in use"):
        call_command("verify_audit")
