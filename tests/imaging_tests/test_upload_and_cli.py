"""Entry points: the upload page (JSON and plain form) and `manage.py ingest`."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError

from audit.models import Action, AuditEvent
from imaging.models import Instance
from imaging.storage import object_keys, storage_for
from imaging.uploads import EncryptedSpool, SpoolReader
from tests.imaging_tests.helpers import (
    ingest,
    sample_bytes,
    second_store_fails_once_written,
    second_write_fails,
    synthetic_ct,
)


def _file(data: bytes, name: str = "a.dcm") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data, content_type="application/dicom")


@pytest.mark.django_db
def test_technologist_uploads_files_and_gets_per_file_results(clinic, technologist, client_for):
    good, bad = sample_bytes("CT_small.dcm"), b"not dicom at all" * 20

    response = client_for(technologist).post(
        "/t/north/upload/",
        {"files": [_file(good, "ct.dcm"), _file(bad, "notes.txt")]},
        HTTP_ACCEPT="application/json",
    )

    body = response.json()
    assert body["summary"] == "stored 1, duplicate 0, rejected 1"
    assert body["results"][0] == {"name": "ct.dcm", "outcome": "stored", "message": ""}
    assert body["results"][1]["outcome"] == "rejected"
    assert "DICM" in body["results"][1]["message"]
    event = AuditEvent.objects.for_tenant(clinic).get(action=Action.INSTANCE_STORED)
    assert event.actor_id == str(technologist.pk)


@pytest.mark.django_db
def test_plain_form_upload_renders_a_result_table(clinic, technologist, client_for, settings):
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 100  # through the encrypted spool
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for i, data in enumerate(synthetic_ct(slices=2)):
            zf.writestr(f"dir/{i}.dcm", data)

    response = client_for(technologist).post(
        "/t/north/upload/", {"files": [_file(archive.getvalue(), "study.zip")]}
    )

    assert response.status_code == 200
    assert b"stored 2, duplicate 0, rejected 0" in response.content
    assert Instance.objects.for_tenant(clinic).count() == 2


@pytest.mark.django_db
def test_upload_without_files_is_a_clear_400(clinic, technologist, client_for):
    response = client_for(technologist).post("/t/north/upload/", {}, HTTP_ACCEPT="application/json")

    assert response.status_code == 400
    assert "Choose at least one" in response.json()["error"]


@pytest.mark.django_db
@pytest.mark.parametrize("accept", ["application/json", "text/html"])
def test_a_file_over_the_limit_is_a_413_naming_it_and_stores_nothing(
    clinic, technologist, client_for, settings, accept
):
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 100  # through the encrypted spool
    settings.INGEST_MAX_INSTANCE_BYTES = settings.INGEST_MAX_ZIP_TOTAL_BYTES = 2**20
    good = sample_bytes("CT_small.dcm")

    response = client_for(technologist).post(
        "/t/north/upload/",
        {"files": [_file(good, "ct.dcm"), _file(b"\0" * (2**20 + 1), "huge.zip")]},
        HTTP_ACCEPT=accept,
    )

    assert response.status_code == 413
    message = "“huge.zip” is larger than one file of an upload may be (1 MB)"
    if accept == "application/json":
        assert response.json()["error"].startswith(message)
    else:
        assert message in response.content.decode()
    assert not Instance.objects.for_tenant(clinic).exists()


@pytest.mark.django_db
def test_upload_page_needs_the_upload_permission(clinic, front_desk, radiologist, client_for):
    assert client_for(front_desk).get("/t/north/upload/").status_code == 403
    assert client_for(radiologist).post("/t/north/upload/", {}).status_code == 403


@pytest.mark.django_db
def test_file_names_with_markup_are_escaped(clinic, technologist, client_for):
    response = client_for(technologist).post(
        "/t/north/upload/", {"files": [_file(b"junk" * 40, "<img src=x onerror=alert(1)>.dcm")]}
    )

    assert b"<img src=x onerror" not in response.content
    assert b"&lt;img src=x onerror=alert(1)&gt;.dcm" in response.content


def test_encrypted_spool_reads_back_with_seeks(settings, tmp_path):
    settings.PORTAL_SPOOL_DIR = tmp_path
    data = bytes(range(256)) * 1000
    spool = EncryptedSpool(segment_size=1000)
    for offset in range(0, len(data), 777):
        spool.write(data[offset : offset + 777])
    spool.finish()
    reader = io.BufferedReader(SpoolReader(spool))

    assert reader.read() == data
    reader.seek(123_456)
    assert reader.read(10) == data[123_456:123_466]
    reader.seek(-5, io.SEEK_END)
    assert reader.read() == data[-5:]
    assert list(tmp_path.iterdir()) == []  # the spool file is anonymous
    spool.close()


def test_encrypted_spool_holds_no_plaintext(settings, tmp_path):
    settings.PORTAL_SPOOL_DIR = tmp_path
    spool = EncryptedSpool(segment_size=64)
    secret = b"Patient^Secret 1234567890" * 10
    spool.write(secret)
    spool.finish()

    spool._file.seek(0)
    assert b"Patient^Secret" not in spool._file.read()
    spool.close()


@pytest.mark.django_db
def test_cli_reports_each_rejected_file_and_a_summary(clinic, tmp_path, capsys):
    folder = tmp_path / "in"
    (folder / "nested").mkdir(parents=True)
    for i, data in enumerate(synthetic_ct(slices=2)):
        (folder / "nested" / f"{i}.dcm").write_bytes(data)
    (folder / "readme.txt").write_text("not an image " * 20)

    with pytest.raises(SystemExit) as exit_info:
        call_command("ingest", str(folder), "--tenant", "north")

    lines = capsys.readouterr().out.strip().splitlines()
    assert exit_info.value.code == 1
    assert lines[-1] == "stored 2, duplicate 0, rejected 1"
    assert lines[0].startswith("rejected ") and "readme.txt" in lines[0] and "DICM" in lines[0]


@pytest.mark.django_db
def test_cli_interrupted_says_what_it_kept_and_a_second_run_goes_on(
    clinic, tmp_path, capsys, monkeypatch
):
    from imaging import ingest as ingest_module

    folder = tmp_path / "in"
    folder.mkdir()
    for i, data in enumerate(synthetic_ct(slices=3)):
        (folder / f"{i}.dcm").write_bytes(data)
    real, calls = ingest_module._ingest_path, []

    def ctrl_c_at_the_third(**kwargs):
        calls.append(kwargs["path"])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(**kwargs)

    monkeypatch.setattr(ingest_module, "_ingest_path", ctrl_c_at_the_third)
    # KeyboardInterrupt caught here too: escaping, it would stop the whole test run.
    with pytest.raises((SystemExit, KeyboardInterrupt)) as exit_info:
        call_command("ingest", str(folder), "--tenant", "north")
    monkeypatch.undo()
    first = capsys.readouterr()
    call_command("ingest", str(folder), "--tenant", "north")

    assert exit_info.type is SystemExit and exit_info.value.code == 130
    assert first.out.splitlines() == ["stored 2, duplicate 0, rejected 0"]
    assert "Interrupted" in first.err
    assert capsys.readouterr().out.splitlines() == ["stored 1, duplicate 2, rejected 0"]
    assert Instance.objects.for_tenant(clinic).count() == 3


@pytest.mark.django_db
def test_cli_prints_one_line_per_rejected_file_whatever_its_name_holds(clinic, tmp_path, capsys):
    hostile = "scan.dcm\nstored 250, duplicate 0, rejected 0\x1b[2K\rok.dcm"
    with zipfile.ZipFile(tmp_path / "sent.zip", "w") as zf:
        zf.writestr(hostile, b"not dicom")

    with pytest.raises(SystemExit):
        call_command("ingest", str(tmp_path / "sent.zip"), "--tenant", "north")

    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "stored 0, duplicate 0, rejected 1"
    assert len(lines) == 2
    assert lines[0].startswith("rejected scan.dcm\\x0astored 250, duplicate 0, rejected 0")
    assert "\x1b" not in lines[0] and "\r" not in lines[0]


@pytest.mark.django_db
def test_cli_records_the_member_given_with_as(clinic, technologist, tmp_path, capsys):
    path = tmp_path / "ct.dcm"
    path.write_bytes(sample_bytes("CT_small.dcm"))

    call_command("ingest", str(path), "--tenant", "north", "--as", technologist.email)

    assert capsys.readouterr().out.strip() == "stored 1, duplicate 0, rejected 0"
    event = AuditEvent.objects.for_tenant(clinic).get(action=Action.INSTANCE_STORED)
    assert event.actor_id == str(technologist.pk)


@pytest.mark.django_db
def test_cli_errors_are_specific(clinic, other_clinic, tmp_path):
    from tests.helpers import make_member

    outsider = make_member(other_clinic, "technologist")
    path = tmp_path / "ct.dcm"
    path.write_bytes(b"x")

    with pytest.raises(CommandError, match="No active clinic"):
        call_command("ingest", str(path), "--tenant", "nowhere")
    with pytest.raises(CommandError, match="No such file"):
        call_command("ingest", str(tmp_path / "missing"), "--tenant", "north")
    with pytest.raises(CommandError, match="not an active member"):
        call_command("ingest", str(path), "--tenant", "north", "--as", outsider.email)
    front_desk = make_member(clinic, "front_desk")
    with pytest.raises(CommandError, match="may not upload studies"):
        call_command("ingest", str(path), "--tenant", "north", "--as", front_desk.email)


@pytest.mark.django_db
def test_cli_rejects_unreadable_paths_with_a_reason_and_stores_the_rest(clinic, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "0.dcm").write_bytes(synthetic_ct(slices=1)[0])
    os.mkfifo(folder / "pipe")  # a reader would block on it for ever
    unreadable = Path("/proc/self/mem")  # a regular file whose reads fail (EIO)

    with pytest.raises(SystemExit):
        call_command("ingest", str(folder), str(unreadable), "--tenant", "north")

    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == "stored 1, duplicate 0, rejected 2"
    assert any("pipe" in line and "Not a regular file" in line for line in lines)
    assert any("/proc/self/mem" in line and "could not be read" in line for line in lines)


@pytest.mark.django_db
def test_a_corrupt_deflate_stream_in_a_zip_is_rejected_and_the_rest_stored(
    clinic, tmp_path, capsys
):
    first, second = synthetic_ct(slices=2)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("a.dcm", first)
        archive.writestr("b.dcm", second)
    data = bytearray(buffer.getvalue())
    entry = zipfile.ZipFile(io.BytesIO(bytes(data))).getinfo("a.dcm")
    body = entry.header_offset + 30 + len(entry.filename)
    data[body : body + 64] = bytes(64)  # the first entry's deflate stream, zeroed
    path = tmp_path / "study.zip"
    path.write_bytes(bytes(data))

    with pytest.raises(SystemExit):
        call_command("ingest", str(path), "--tenant", "north")

    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == "stored 1, duplicate 0, rejected 1"
    assert "a.dcm" in lines[0] and "cannot be read" in lines[0]


@pytest.mark.django_db
def test_an_upload_file_failing_to_store_fails_alone_and_the_rest_are_stored(
    clinic, technologist, client_for, monkeypatch
):
    files = synthetic_ct(slices=3)
    second_write_fails(monkeypatch)

    response = client_for(technologist).post(
        "/t/north/upload/",
        {"files": [_file(data, f"{i}.dcm") for i, data in enumerate(files)]},
        HTTP_ACCEPT="application/json",
    )

    assert response.status_code == 200
    body = response.json()
    assert body["summary"] == "stored 2, duplicate 0, rejected 1"
    assert [r["outcome"] for r in body["results"]] == ["stored", "rejected", "stored"]
    assert "could not be stored" in body["results"][1]["message"]
    assert Instance.objects.for_tenant(clinic).count() == 2
    assert len(object_keys(storage_for(clinic), str(clinic.pk))) == 2  # none half-written


@pytest.mark.django_db
def test_an_upload_file_failing_once_its_object_is_written_leaves_no_object(
    clinic, technologist, client_for, monkeypatch
):
    files = synthetic_ct(slices=3)
    second_store_fails_once_written(monkeypatch, DatabaseError("connection lost"))

    response = client_for(technologist).post(
        "/t/north/upload/",
        {"files": [_file(data, f"{i}.dcm") for i, data in enumerate(files)]},
        HTTP_ACCEPT="application/json",
    )

    assert response.json()["summary"] == "stored 2, duplicate 0, rejected 1"
    assert Instance.objects.for_tenant(clinic).count() == 2
    assert len(object_keys(storage_for(clinic), str(clinic.pk))) == 2  # its object went too
    failed = AuditEvent.objects.for_tenant(clinic).filter(action=Action.INSTANCE_REJECTED)
    assert [e.detail.get("error") for e in failed] == ["DatabaseError"]


@pytest.mark.django_db
def test_an_interrupted_ingest_leaves_neither_row_nor_object(clinic, monkeypatch):
    first, second = synthetic_ct(slices=2)
    second_store_fails_once_written(monkeypatch, KeyboardInterrupt())
    ingest(clinic, first)

    with pytest.raises(KeyboardInterrupt):
        ingest(clinic, second)

    assert Instance.objects.for_tenant(clinic).count() == 1
    assert len(object_keys(storage_for(clinic), str(clinic.pk))) == 1


@pytest.mark.django_db
def test_a_zip_entry_failing_to_store_fails_alone(clinic, technologist, client_for, monkeypatch):
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for i, data in enumerate(synthetic_ct(slices=3)):
            zf.writestr(f"{i}.dcm", data)
    second_write_fails(monkeypatch)

    response = client_for(technologist).post(
        "/t/north/upload/",
        {"files": [_file(archive.getvalue(), "study.zip")]},
        HTTP_ACCEPT="application/json",
    )

    assert response.json()["summary"] == "stored 2, duplicate 0, rejected 1"
    assert Instance.objects.for_tenant(clinic).count() == 2


@pytest.mark.django_db
def test_cli_reports_a_file_failing_to_store_and_stores_the_rest(
    clinic, tmp_path, capsys, monkeypatch
):
    for i, data in enumerate(synthetic_ct(slices=3)):
        (tmp_path / f"{i}.dcm").write_bytes(data)
    second_write_fails(monkeypatch)

    with pytest.raises(SystemExit) as exit_info:
        call_command("ingest", str(tmp_path), "--tenant", "north")

    lines = capsys.readouterr().out.strip().splitlines()
    assert exit_info.value.code == 1
    assert lines[-1] == "stored 2, duplicate 0, rejected 1"
    assert "1.dcm" in lines[0] and "could not be stored" in lines[0]
    assert Instance.objects.for_tenant(clinic).count() == 2
