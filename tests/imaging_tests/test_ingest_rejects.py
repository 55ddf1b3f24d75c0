"""Bad input gets its specific error and leaves no row and no object."""

from __future__ import annotations

import hashlib
import io
import logging
import struct
import tracemalloc
import zipfile

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filewriter import write_file_meta_info
from pydicom.sequence import Sequence

from audit.models import Action, AuditEvent, Outcome
from imaging.crypto import SEGMENT_SIZE
from imaging.dicom import dataset_offset
from imaging.ingest import IngestOutcome, ingest_archive
from imaging.models import Instance, Patient, Series, Study
from imaging.services import instance_bytes
from imaging.storage import storage_for
from tests.imaging_tests.helpers import INGEST_ACTOR, ingest, sample_bytes, synthetic_ct


def _rewrite(data: bytes, change) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    change(ds)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _absurd_length(data: bytes) -> bytes:
    at = data.find(b"\xe0\x7f\x10\x00OW")
    return data[: at + 8] + struct.pack("<I", 0x7FFFFFF0) + data[at + 12 :]


def _deeply_nested(data: bytes) -> bytes:
    def change(ds):
        item = Dataset()
        item.CodeValue = "X"
        for _ in range(20):
            outer = Dataset()
            outer.ReferencedImageSequence = Sequence([item])
            item = outer
        ds.ReferencedImageSequence = Sequence([item])

    return _rewrite(data, change)


def _relabelled(data: bytes, syntax: str) -> bytes:
    """The same data set bytes under a file meta naming another transfer syntax."""
    meta = pydicom.dcmread(io.BytesIO(data)).file_meta
    meta.TransferSyntaxUID = syntax
    relabelled = io.BytesIO()
    relabelled.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(relabelled, meta)
    relabelled.write(data[dataset_offset(data) :])
    return relabelled.getvalue()


def _saved_as(name: str, syntax: str) -> bytes:
    """A compressed file saved by pydicom under another syntax, its fragments left as
    they were (written as one defined-length value)."""
    ds = pydicom.dcmread(io.BytesIO(sample_bytes(name)))
    ds.file_meta.TransferSyntaxUID = syntax
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def _appended(*elements: bytes):
    """The file with `elements` appended to its data set (after its pixel data)."""
    return lambda data: data + b"".join(elements)


def _meta_vr_replaced(data: bytes) -> bytes:
    """TransferSyntaxUID's VR bytes replaced by ones that are no VR."""
    at = data.index(b"\x02\x00\x10\x00UI")
    return data[: at + 4] + b"XX" + data[at + 6 :]


def _with_uid(value: str):
    return lambda data: _rewrite(data, lambda ds: setattr(ds, "SOPInstanceUID", value))


CT = sample_bytes("CT_small.dcm")
JPEG = sample_bytes("SC_rgb_jpeg_dcmtk.dcm")
CASES = {
    "truncated": (lambda d: d[: len(d) // 2], "truncated"),
    "non-dicom": (lambda d: b"%PDF-1.7 not an image " * 50, "not_part10"),
    "tiny": (lambda d: b"hello", "not_dicom"),
    "no preamble": (lambda d: d[128:], "not_part10"),
    "no meta header": (lambda d: sample_bytes("meta_missing_tsyntax.dcm"), "no_meta"),
    "absurd length": (_absurd_length, "truncated"),
    "deep nesting": (_deeply_nested, "nesting_too_deep"),
    "uid with path": (_with_uid("../../etc/passwd"), "invalid_uid"),
    "uid with letters": (_with_uid("1.2.840.abc"), "invalid_uid"),
    "uid too long": (_with_uid("1." + "2" * 70), "invalid_uid"),
    "uid leading zero": (_with_uid("1.02.3"), "invalid_uid"),
    "native pixels labelled jpeg": (
        lambda d: _relabelled(d, pydicom.uid.JPEGBaseline8Bit),
        "pixel_encoding",
    ),
    "jpeg pixels labelled native": (
        lambda d: _relabelled(JPEG, pydicom.uid.ExplicitVRLittleEndian),
        "pixel_encoding",
    ),
    "jpeg saved as explicit native": (
        lambda d: _saved_as("SC_rgb_small_odd_jpeg.dcm", pydicom.uid.ExplicitVRLittleEndian),
        "pixel_encoding",
    ),
    "rle saved as implicit native": (
        lambda d: _saved_as("MR_small_RLE.dcm", pydicom.uid.ImplicitVRLittleEndian),
        "pixel_encoding",
    ),
    # pydicom keeps the last of a repeated element, other readers the first: the index
    # and a viewer would show two different patients, or two different images.
    "patient named twice": (
        _appended(
            _element(0x0008, 0x0018, b"UI", b"9.9.9.9\0"),
            _element(0x0010, 0x0010, b"PN", b"Other^Patient "),
        ),
        "malformed",
    ),
    "pixel data twice": (_appended(_element(0x7FE0, 0x0010, b"OB", b"\0\0")), "malformed"),
    "transfer syntax of no VR": (_meta_vr_replaced, "malformed"),
    "implicit VR labelled explicit": (
        lambda d: _relabelled(
            sample_bytes("MR_small_implicit.dcm"), pydicom.uid.ExplicitVRLittleEndian
        ),
        "malformed",
    ),
    "bits allocated past 64": (
        lambda d: _rewrite(d, lambda ds: setattr(ds, "BitsAllocated", 40000)),
        "invalid_value",
    ),
}


def _object_files(data_dir):
    root = data_dir / "objects"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def _nothing_stored(clinic, data_dir):
    assert not Instance.objects.for_tenant(clinic).exists()
    assert not Study.objects.for_tenant(clinic).exists()
    assert not Series.objects.for_tenant(clinic).exists()
    assert not Patient.objects.for_tenant(clinic).exists()
    assert _object_files(data_dir) == []


@pytest.mark.django_db
@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_file_is_rejected_with_its_reason_and_leaves_nothing(case, clinic, data_dir):
    make, code = CASES[case]

    result = ingest(clinic, make(CT), "bad.dcm")

    assert result.outcome == IngestOutcome.REJECTED
    assert result.code == code, result.message
    assert result.message
    _nothing_stored(clinic, data_dir)
    event = AuditEvent.objects.for_tenant(clinic).get(action=Action.INSTANCE_REJECTED)
    assert event.detail == {"code": code}


@pytest.mark.django_db
def test_uncompressed_pixels_that_begin_like_an_item_are_stored(clinic, data_dir):
    # Two pixel values, 0xFFFE and 0xE000, read as an item tag; the rest is no item run.
    def change(ds):
        ds.PixelData = b"\xfe\xff\x00\xe0" + ds.PixelData[4:]

    result = ingest(clinic, _rewrite(CT, change))

    assert result.outcome == IngestOutcome.STORED, result.message


@pytest.mark.django_db
def test_oversized_file_is_refused_before_parsing(clinic, data_dir, settings):
    settings.INGEST_MAX_INSTANCE_BYTES = 1000

    result = ingest(clinic, CT)

    assert result.code == "too_large"
    _nothing_stored(clinic, data_dir)


@pytest.mark.django_db
def test_same_uid_with_different_content_is_refused_and_original_kept(clinic, data_dir):
    first = ingest(clinic, CT)
    altered = _rewrite(CT, lambda ds: setattr(ds, "PatientName", "Someone^Else"))
    objects_before = _object_files(data_dir)

    result = ingest(clinic, altered)

    assert result.outcome == IngestOutcome.REJECTED
    assert result.code == "conflict"
    assert "kept unchanged" in result.message
    assert _object_files(data_dir) == objects_before
    original = Instance.objects.for_tenant(clinic).get(pk=first.instance_id)
    assert instance_bytes(instance=original, actor=INGEST_ACTOR)[128:] == CT[128:]
    assert Study.objects.for_tenant(clinic).get().patient.name != "Someone^Else"


def _meta_rewritten(data: bytes) -> bytes:
    """The same instance as another toolkit passes it on: its own meta, private meta too."""

    def change(ds):
        ds.file_meta.ImplementationClassUID = "1.2.826.0.1.3680043.9.9999.1"
        ds.file_meta.ImplementationVersionName = "OTHER_TOOLKIT_2"
        ds.file_meta.SourceApplicationEntityTitle = "FORWARDER"
        ds.file_meta.PrivateInformationCreatorUID = "1.2.3.4"
        ds.file_meta.PrivateInformation = b"\x01" * 300

    return _rewrite(data, change)


@pytest.mark.django_db
def test_a_resend_whose_file_meta_was_rewritten_is_a_duplicate(clinic, data_dir):
    first = ingest(clinic, CT)
    resent = _meta_rewritten(CT)
    assert hashlib.sha256(resent).digest() != hashlib.sha256(CT).digest()
    objects_before = _object_files(data_dir)

    result = ingest(clinic, resent)

    assert result.outcome == IngestOutcome.DUPLICATE
    assert result.instance_id == first.instance_id
    assert _object_files(data_dir) == objects_before
    original = Instance.objects.for_tenant(clinic).get(pk=first.instance_id)
    assert instance_bytes(instance=original, actor=INGEST_ACTOR)[128:] == CT[128:]
    event = AuditEvent.objects.for_tenant(clinic).get(action=Action.INSTANCE_DUPLICATE)
    assert event.detail == {"study": first.study_id, "file_meta": "differs"}


@pytest.mark.django_db
def test_a_resend_with_rewritten_meta_and_other_content_is_still_a_conflict(clinic, data_dir):
    ingest(clinic, CT)
    altered = _meta_rewritten(_rewrite(CT, lambda ds: setattr(ds, "StudyDescription", "Other")))

    result = ingest(clinic, altered)

    assert result.code == "conflict"
    assert (
        not AuditEvent.objects.for_tenant(clinic).filter(action=Action.INSTANCE_DUPLICATE).exists()
    )


@pytest.mark.django_db
def test_a_resend_of_an_instance_whose_object_is_gone_restores_it(clinic):
    first = ingest(clinic, CT)
    stored = Instance.objects.for_tenant(clinic).get(pk=first.instance_id)
    original = instance_bytes(instance=stored, actor=INGEST_ACTOR)
    storage_for(clinic).delete(stored.storage_key)

    result = ingest(clinic, CT)

    assert result.outcome == IngestOutcome.STORED
    assert result.instance_id == first.instance_id
    assert "restored" in result.message
    assert instance_bytes(instance=stored, actor=INGEST_ACTOR) == original
    event = AuditEvent.objects.for_tenant(clinic).get(action=Action.INSTANCE_RESTORED)
    assert event.target_id == str(stored.pk)
    assert (
        not AuditEvent.objects.for_tenant(clinic).filter(action=Action.INSTANCE_DUPLICATE).exists()
    )


@pytest.mark.django_db
def test_a_resend_differing_in_its_meta_does_not_stand_in_for_a_missing_object(clinic):
    first = ingest(clinic, CT)
    stored = Instance.objects.for_tenant(clinic).get(pk=first.instance_id)
    storage_for(clinic).delete(stored.storage_key)

    result = ingest(clinic, _meta_rewritten(CT))

    assert result.code == "stored_copy_missing"
    assert "stored copy is missing" in result.message
    assert not storage_for(clinic).exists(stored.storage_key)
    assert (
        not AuditEvent.objects.for_tenant(clinic)
        .filter(action__in=[Action.INSTANCE_DUPLICATE, Action.INSTANCE_RESTORED])
        .exists()
    )


@pytest.mark.django_db
def test_a_resend_finding_the_object_gone_audits_which_instance_lost_it(clinic, caplog):
    first = ingest(clinic, CT)
    stored = Instance.objects.for_tenant(clinic).get(pk=first.instance_id)
    storage_for(clinic).delete(stored.storage_key)

    with caplog.at_level(logging.WARNING, logger="imaging"):
        ingest(clinic, _meta_rewritten(CT))

    event = AuditEvent.objects.for_tenant(clinic).get(action=Action.INTEGRITY_FAILED)
    assert event.target_id == str(stored.pk)
    assert event.outcome == Outcome.FAILURE
    assert event.detail == {"reason": "object missing"}
    assert f"Instance {stored.pk}" in caplog.text


def _meta_hiding_an_element(data: bytes) -> bytes:
    """A meta element whose VR bytes are no VR: pydicom reads it as implicit VR, with a
    4-byte length, so the next meta element's value becomes part of the data set."""
    start = dataset_offset(data)
    hidden = struct.pack("<HH", 0x0010, 0x1000) + b"LO" + struct.pack("<H", 8) + b"EVIL^ID "
    not_a_vr = struct.pack("<HH", 0x0002, 0x0102) + b"\x10\x00" + b"\x00\x00"
    carrier_value = b"\x00" * 4 + hidden
    carrier = struct.pack("<HH", 0x0002, 0x0103) + b"OB\x00\x00" + struct.pack("<I", 20)
    return data[:start] + not_a_vr + carrier + carrier_value + data[start:]


@pytest.mark.django_db
@pytest.mark.parametrize("changed", [False, True], ids=["same", "pixel-in-third-segment"])
def test_a_large_resend_is_compared_segment_by_segment(changed, clinic, data_dir):
    # 2.5 MiB: the stored copy is decrypted over three segments as it is compared.
    (data,) = synthetic_ct(slices=1, size=1152)
    first = ingest(clinic, data)
    resent = bytearray(_meta_rewritten(data))
    if changed:
        resent[-100] ^= 0xFF  # a pixel near the end

    result = ingest(clinic, bytes(resent))

    assert len(data) > 2 * SEGMENT_SIZE
    if changed:
        assert result.code == "conflict"
    else:
        assert result.outcome == IngestOutcome.DUPLICATE
        assert result.instance_id == first.instance_id


@pytest.mark.django_db
def test_a_meta_that_pydicom_reads_otherwise_is_not_taken_for_a_duplicate(clinic, data_dir):
    ingest(clinic, CT)
    hiding = _meta_hiding_an_element(CT)

    result = ingest(clinic, hiding)

    assert result.outcome != IngestOutcome.DUPLICATE
    assert (
        not AuditEvent.objects.for_tenant(clinic).filter(action=Action.INSTANCE_DUPLICATE).exists()
    )


@pytest.mark.django_db
def test_the_same_data_set_under_another_transfer_syntax_is_a_conflict(clinic, data_dir):
    # Byte for byte the same data set, labelled with another syntax: read another way,
    # so not the instance stored.
    ingest(clinic, JPEG)

    result = ingest(clinic, _relabelled(JPEG, pydicom.uid.JPEGExtended12Bit))

    assert result.code == "conflict"


@pytest.mark.django_db
def test_a_resend_is_a_conflict_when_the_stored_copy_fails_its_check(clinic, data_dir):
    first = ingest(clinic, CT)
    stored = Instance.objects.for_tenant(clinic).get(pk=first.instance_id)
    (data_dir / "objects" / stored.storage_key).write_bytes(b"not the object")

    result = ingest(clinic, _meta_rewritten(CT))

    assert result.code == "conflict"
    assert AuditEvent.objects.for_tenant(clinic).filter(action=Action.INTEGRITY_FAILED).exists()


@pytest.mark.django_db
def test_study_uid_of_another_patient_is_refused(clinic, data_dir):
    (a,) = synthetic_ct(slices=1, patient_id="P-1", study_uid="1.2.3.4")
    (b,) = synthetic_ct(slices=1, patient_id="P-2", study_uid="1.2.3.4")
    ingest(clinic, a)

    result = ingest(clinic, b)

    assert result.code == "patient_mismatch"
    assert Instance.objects.for_tenant(clinic).count() == 1


def _zip(entries: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> io.BytesIO:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    buffer.seek(0)
    return buffer


@pytest.mark.django_db
def test_zip_bomb_is_refused_before_extraction(clinic, data_dir):
    bomb = _zip({"a.dcm": b"\0" * (20 * 1024 * 1024)})

    results = ingest_archive(tenant=clinic, actor=INGEST_ACTOR, fileobj=bomb, name="bomb.zip")

    assert [r.code for r in results] == ["zip_bomb"]
    assert "expands" in results[0].message
    _nothing_stored(clinic, data_dir)


@pytest.mark.django_db
def test_a_zip_declaring_more_compressed_bytes_than_it_holds_is_refused(clinic, data_dir):
    data = bytearray(_zip({"a.dcm": b"\0" * (20 * 1024 * 1024)}).getvalue())
    entry = data.index(b"PK\x01\x02")
    struct.pack_into("<L", data, entry + 20, 10 * 1024 * 1024)  # its compressed size, a lie
    assert zipfile.ZipFile(io.BytesIO(data)).read("a.dcm")  # zipfile still inflates it

    results = ingest_archive(
        tenant=clinic, actor=INGEST_ACTOR, fileobj=io.BytesIO(data), name="bomb.zip"
    )

    assert [r.code for r in results] == ["zip_bomb"]
    assert "declares 10485760 compressed bytes" in results[0].message
    _nothing_stored(clinic, data_dir)


@pytest.mark.django_db
def test_zip_with_too_many_entries_is_refused(clinic, data_dir, settings):
    settings.INGEST_MAX_ZIP_ENTRIES = 3
    archive = _zip({f"{i}.dcm": b"x" for i in range(4)}, zipfile.ZIP_STORED)

    results = ingest_archive(tenant=clinic, actor=INGEST_ACTOR, fileobj=archive, name="many.zip")

    assert [r.code for r in results] == ["zip_bomb"]
    _nothing_stored(clinic, data_dir)


@pytest.mark.django_db
def test_zip_slip_paths_are_ignored(clinic, data_dir, tmp_path):
    archive = _zip({"../../../../tmp/evil.dcm": CT, "/etc/cron.d/evil.dcm": b"junk"})

    results = ingest_archive(tenant=clinic, actor=INGEST_ACTOR, fileobj=archive, name="slip.zip")

    assert [(r.name, r.outcome) for r in results] == [
        ("evil.dcm", IngestOutcome.STORED),
        ("evil.dcm", IngestOutcome.REJECTED),
    ]
    assert not (tmp_path.parent / "evil.dcm").exists()
    stored = {p.name for p in data_dir.rglob("*") if p.is_file()}
    assert "evil.dcm" not in stored


@pytest.mark.django_db
def test_a_cds_dicomdir_is_named_as_its_index_and_its_images_are_stored(clinic, data_dir):
    archive = _zip({"CD/DICOMDIR": sample_bytes("DICOMDIR"), "CD/IMAGES/IM0001": CT})

    results = ingest_archive(tenant=clinic, actor=INGEST_ACTOR, fileobj=archive, name="cd.zip")

    assert [(r.name, r.outcome, r.code) for r in results] == [
        ("DICOMDIR", IngestOutcome.REJECTED, "dicomdir"),
        ("IM0001", IngestOutcome.STORED, ""),
    ]
    assert "index a CD or folder keeps of its images" in results[0].message
    assert Instance.objects.for_tenant(clinic).count() == 1


@pytest.mark.django_db
def test_nested_archives_are_refused(clinic, data_dir):
    inner = _zip({"a.dcm": CT}).getvalue()
    archive = _zip({"inner.zip": inner, "renamed.dcm": inner})

    results = ingest_archive(tenant=clinic, actor=INGEST_ACTOR, fileobj=archive, name="n.zip")

    assert [r.code for r in results] == ["nested_archive", "nested_archive"]
    _nothing_stored(clinic, data_dir)


@pytest.mark.django_db
def test_corrupt_zip_gets_a_clear_error(clinic, data_dir):
    results = ingest_archive(
        tenant=clinic, actor=INGEST_ACTOR, fileobj=io.BytesIO(b"PK\x03\x04broken"), name="x.zip"
    )

    assert [r.code for r in results] == ["bad_archive"]
    _nothing_stored(clinic, data_dir)


def _zip_with_central_directory(change) -> io.BytesIO:
    """A one-entry zip whose central directory record `change` rewrites."""
    data = bytearray(_zip({"a.dcm": b"x" * 300}, zipfile.ZIP_STORED).getvalue())
    at = data.find(b"PK\x01\x02")
    change(data, at)
    return io.BytesIO(bytes(data))


def _version_needed(data: bytearray, at: int) -> None:
    data[at + 6] = 218  # "zip file version 21.8": zipfile raises NotImplementedError


def _empty_name(data: bytearray, at: int) -> None:
    name_length = struct.unpack_from("<H", data, at + 28)[0]
    struct.pack_into("<H", data, at + 28, 0)  # is_dir() indexes the last character
    del data[at + 46 : at + 46 + name_length]
    end = data.find(b"PK\x05\x06")
    size = struct.unpack_from("<I", data, end + 12)[0]
    struct.pack_into("<I", data, end + 12, size - name_length)


@pytest.mark.django_db
@pytest.mark.parametrize("change", [_version_needed, _empty_name])
def test_a_zip_directory_zipfile_cannot_take_gets_a_clear_error(clinic, data_dir, change):
    archive = _zip_with_central_directory(change)

    results = ingest_archive(tenant=clinic, actor=INGEST_ACTOR, fileobj=archive, name="x.zip")

    assert [r.code for r in results] == ["bad_archive"]
    _nothing_stored(clinic, data_dir)


def _deflated(data: bytes, *, padding: int = 0) -> bytes:
    """`data` re-encoded as Deflated Explicit VR Little Endian, with `padding` zero bytes
    of a private OB value appended to its data set before deflating."""
    import zlib

    ds = pydicom.dcmread(io.BytesIO(data))
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    plain = io.BytesIO()
    ds.save_as(plain, enforce_file_format=True)
    body = plain.getvalue()[dataset_offset(plain.getvalue()) :]
    if padding:
        body += struct.pack("<HH", 0x0009, 0x0010) + b"LO" + struct.pack("<H", 6) + b"BOMB  "
        body += struct.pack("<HH", 0x0009, 0x1000) + b"OB\0\0" + struct.pack("<I", padding)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -15)
    packed = deflater.compress(body)
    for _ in range(padding >> 20):
        packed += deflater.compress(b"\0" * (1 << 20))
    packed += deflater.flush()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    head = io.BytesIO()
    head.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(head, ds.file_meta, enforce_standard=True)
    return head.getvalue() + packed


@pytest.mark.django_db
def test_a_deflated_file_that_inflates_past_its_limit_is_refused_unparsed(
    clinic, data_dir, monkeypatch
):
    bomb = _deflated(CT, padding=64 << 20)  # about 65 KiB inflating to 64 MiB
    monkeypatch.setattr(pydicom, "dcmread", lambda *a, **k: pytest.fail("parsed"))

    result = ingest(clinic, bomb, "bomb.dcm")

    assert len(bomb) < 1 << 20
    assert result.code == "too_large" and "inflates" in result.message
    _nothing_stored(clinic, data_dir)


@pytest.mark.django_db
def test_a_deflated_file_of_ordinary_size_is_stored(clinic, data_dir):
    result = ingest(clinic, _deflated(CT), "deflated.dcm")

    assert result.outcome == IngestOutcome.STORED, result.message


def _as_zip64(archive: io.BytesIO) -> io.BytesIO:
    """The same zip with ZIP64 end records, as large archives carry them."""
    data = archive.getvalue()
    end = data.rindex(b"PK\x05\x06")
    entries, size, offset = struct.unpack_from("<HLL", data, end + 10)
    record = struct.pack(
        "<4sQHHLLQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, entries, entries, size, offset
    )
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, end, 1)
    eocd = struct.pack("<4sHHHHLLH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 2**32 - 1, 2**32 - 1, 0)
    return io.BytesIO(data[:end] + record + locator + eocd)


@pytest.mark.django_db
@pytest.mark.parametrize("zip64", [False, True], ids=["zip", "zip64"])
def test_a_zip_directory_listing_too_many_entries_is_refused_before_it_is_read(
    clinic, data_dir, settings, zip64
):
    settings.INGEST_MAX_ZIP_ENTRIES = 3
    archive = _zip({f"{i}.dcm": b"x" for i in range(4)}, zipfile.ZIP_STORED)
    archive = _as_zip64(archive) if zip64 else archive
    assert len(zipfile.ZipFile(archive).infolist()) == 4  # a valid zip, either way

    results = ingest_archive(tenant=clinic, actor=INGEST_ACTOR, fileobj=archive, name="many.zip")

    assert [r.code for r in results] == ["zip_bomb"]
    assert "directory lists more than 3 entries" in results[0].message
    _nothing_stored(clinic, data_dir)


@pytest.mark.django_db
def test_a_huge_zip_directory_is_refused_without_reading_it_into_objects(clinic, settings):
    settings.INGEST_MAX_ZIP_ENTRIES = 1000
    data = _zip({"a.dcm": b"x"}, zipfile.ZIP_STORED).getvalue()
    start = data.index(b"PK\x01\x02")
    end = data.rindex(b"PK\x05\x06")
    count = 200_000  # about 9 MiB of directory, fine by its size alone
    directory = data[start:end] * count
    tail = struct.pack("<4sHHHHLLH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, len(directory), start, 0)
    archive = io.BytesIO(data[:start] + directory + tail)
    settings.INGEST_MAX_ZIP_ENTRIES = len(directory) // 1024 + 1  # its size is within limits

    tracemalloc.start()
    try:
        results = ingest_archive(
            tenant=clinic, actor=INGEST_ACTOR, fileobj=archive, name="wide.zip"
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert [r.code for r in results] == ["zip_bomb"]
    assert "directory lists more than" in results[0].message
    assert peak < 3 * len(directory)  # zipfile's objects for it took about ten times


@pytest.mark.django_db
def test_a_zip_directory_larger_than_its_entries_need_is_refused(clinic, settings):
    settings.INGEST_MAX_ZIP_ENTRIES = 2
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("a.dcm")
        info.comment = b"c" * 3000
        zf.writestr(info, b"x")

    results = ingest_archive(tenant=clinic, actor=INGEST_ACTOR, fileobj=archive, name="fat.zip")

    assert [r.code for r in results] == ["zip_bomb"]
    assert "its directory takes" in results[0].message


@pytest.mark.django_db
def test_a_file_of_more_elements_than_the_limit_is_refused_unparsed(
    clinic, data_dir, settings, monkeypatch
):
    settings.INGEST_MAX_ELEMENTS = 100  # CT_small.dcm holds more
    monkeypatch.setattr(pydicom, "dcmread", lambda *a, **k: pytest.fail("parsed"))

    result = ingest(clinic, CT, "ct.dcm")

    assert result.code == "too_complex" and "100" in result.message
    _nothing_stored(clinic, data_dir)


@pytest.mark.django_db
def test_a_small_deflated_file_of_countless_empty_items_is_refused_unparsed(
    clinic, data_dir, monkeypatch
):
    import zlib

    ds = pydicom.dcmread(io.BytesIO(CT))
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    plain = io.BytesIO()
    ds.save_as(plain, enforce_file_format=True)
    body = plain.getvalue()[dataset_offset(plain.getvalue()) :]
    # An undefined-length sequence of a million empty items: 8 MB inflated, each item
    # an object to pydicom.
    body += struct.pack("<HH2sHI", 0x0099, 0x1001, b"SQ", 0, 0xFFFFFFFF)
    body += struct.pack("<HHI", 0xFFFE, 0xE000, 0) * 1_000_000
    body += struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -15)
    packed = deflater.compress(body) + deflater.flush()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    head = io.BytesIO()
    head.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(head, ds.file_meta, enforce_standard=True)
    monkeypatch.setattr(pydicom, "dcmread", lambda *a, **k: pytest.fail("parsed"))

    result = ingest(clinic, head.getvalue() + packed, "items.dcm")

    assert len(head.getvalue() + packed) < 200_000
    assert result.code == "too_complex"
    _nothing_stored(clinic, data_dir)


def _implicit_meta(data: bytes) -> bytes:
    """The file with its meta written in implicit VR, as some old writers do."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    meta = pydicom.dcmread(io.BytesIO(data)).file_meta
    plain = Dataset()
    for element in meta:
        plain[element.tag] = element
    writer = DicomBytesIO()
    writer.is_little_endian, writer.is_implicit_VR = True, True
    write_dataset(writer, plain)
    return data[:132] + writer.getvalue() + data[dataset_offset(data) :]


IMPLICIT = sample_bytes("MR_small_implicit.dcm")
ACCEPTED = {
    # Pixel descriptions on an object without pixels: nothing reads them.
    "bits stored odd without pixels": lambda: _rewrite(
        CT, lambda ds: (delattr(ds, "PixelData"), setattr(ds, "BitsStored", 400))
    ),
    # A repeat byte for byte the same: every reader reads the one value.
    "element repeated with its value": lambda: (
        CT + _element(0x0008, 0x0060, b"CS", pydicom.dcmread(io.BytesIO(CT)).Modality.encode())
    ),
    # Zeros padding an implicit VR file read as empty (0000,0000) elements.
    "implicit VR padded with zeros": lambda: IMPLICIT + b"\0" * 16,
    "file meta in implicit VR": lambda: _implicit_meta(IMPLICIT),
}


@pytest.mark.django_db
@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_odd_but_unambiguous_files_are_stored(case, clinic):
    result = ingest(clinic, ACCEPTED[case](), "odd.dcm")

    assert result.outcome == IngestOutcome.STORED, result.message


@pytest.mark.django_db
def test_items_in_a_value_pydicom_reads_as_a_sequence_are_counted(clinic, data_dir, settings):
    # A UN of a sequence's tag: pydicom makes it a sequence of objects, item by item.
    settings.INGEST_MAX_ELEMENTS = 1000
    items = struct.pack("<HHI", 0xFFFE, 0xE000, 0) * 2000
    un = struct.pack("<HH2sHI", 0x0040, 0x0275, b"UN", 0, len(items)) + items

    result = ingest(clinic, CT + un, "un.dcm")

    assert result.code == "too_complex"
    _nothing_stored(clinic, data_dir)


@pytest.mark.django_db
def test_a_parse_failure_no_check_foresaw_rejects_that_file_only_and_logs_where(
    clinic, data_dir, monkeypatch, caplog
):
    from imaging import ingest as ingest_module

    real = ingest_module.parse_part10

    def parse_part10(data, **kwargs):
        if data == CT:
            _deep_in_a_parser()
        return real(data, **kwargs)

    monkeypatch.setattr(ingest_module, "parse_part10", parse_part10)
    other = synthetic_ct(slices=1)[0]

    results = ingest_module.ingest_many(
        tenant=clinic, actor=INGEST_ACTOR, items=[("a.dcm", CT), ("b.dcm", other)]
    )

    assert [(r.outcome, r.code) for r in results] == [
        (IngestOutcome.REJECTED, "malformed"),
        (IngestOutcome.STORED, ""),
    ]
    assert results[0].message == "The file could not be parsed as DICOM (KeyError)."
    assert "unforeseen parse failure KeyError at" in caplog.text
    assert "in _deep_in_a_parser" in caplog.text and "Doe" not in caplog.text


def _deep_in_a_parser() -> None:
    raise KeyError("PatientName 'Doe^Jane'")
