"""The local master key file: created once, mode 0600, never silently replaced."""

from __future__ import annotations

import base64
import os
import stat

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command

from imaging.keys import master_key_load


@pytest.fixture
def key_path(settings, tmp_path):
    settings.PORTAL_MASTER_KEY = None
    settings.PORTAL_MASTER_KEY_PATH = tmp_path / "keys" / "master.key"
    return settings.PORTAL_MASTER_KEY_PATH


def test_init_creates_a_private_random_key_and_says_so(key_path, capsys):
    call_command("init_master_key")

    assert "Created master key file" in capsys.readouterr().out
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert len(base64.b64decode(key_path.read_text())) == 32
    assert master_key_load() == base64.b64decode(key_path.read_text())


def test_init_never_replaces_an_existing_key(key_path, capsys):
    call_command("init_master_key")
    first = key_path.read_text()

    call_command("init_master_key")

    assert key_path.read_text() == first
    assert "present" in capsys.readouterr().out


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
