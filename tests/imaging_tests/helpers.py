"""DICOM test data: pydicom's bundled files and synthetic series. Never real patients."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from audit.actors import Actor
from imaging.crypto import IntegrityError
from imaging.ingest import IngestResult, ingest_bytes
from tenants.models import Tenant

INGEST_ACTOR = Actor.system("tests.ingest")


def sample_path(name: str) -> Path:
    path = pydicom.data.get_testdata_file(name)
    if path is None:
        path = next(iter(pydicom.data.get_charset_files(name)), None)
    assert path, f"pydicom test file {name} not available"
    return Path(path)


def sample_bytes(name: str) -> bytes:
    return sample_path(name).read_bytes()


def ingest(tenant: Tenant, data: bytes, name: str = "file.dcm") -> IngestResult:
    return ingest_bytes(tenant=tenant, actor=INGEST_ACTOR, data=data, name=name)


def synthetic_ct(
    *,
    slices: int = 3,
    size: int = 64,
    patient_name: str = "Synthetic^Patient",
    patient_id: str = "SYN-0001",
    study_uid: str | None = None,
    series_uid: str | None = None,
    tags: dict | None = None,
) -> list[bytes]:
    """A CT series of `slices` files with a recognisable pixel pattern.

    `tags` sets or overrides attributes by keyword (StudyDescription, StudyDate, ...).
    """
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    files = []
    for index in range(slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.PatientBirthDate = "19700101"
        ds.StudyDate = "20260101"
        ds.Modality = "CT"
        ds.SeriesNumber = 1
        ds.InstanceNumber = index + 1
        ds.AccessionNumber = "ACC-1"
        ds.StudyDescription = "Synthetic CT"
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.WindowCenter = 40
        ds.WindowWidth = 400
        pixels = (np.arange(size * size, dtype=np.uint16).reshape(size, size) + index) % 4096
        ds.PixelData = pixels.tobytes()
        for keyword, value in (tags or {}).items():
            setattr(ds, keyword, value)
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        files.append(buffer.getvalue())
    return files


def synthetic_palette(
    *,
    bits: int = 16,
    entry_bits: int = 16,
    eight_bit_values: bool = False,
    frames: int = 1,
    size: int = 24,
) -> bytes:
    """A palette colour file (an ultrasound secondary capture): red rises with the index,
    green falls, blue stays a third up. The pixels' indices cover the whole table.
    """
    entries = 256 if bits == 8 else 4096
    index = np.arange(entries)
    top = 255 if eight_bit_values or entry_bits == 8 else 65535
    red = (index * top // (entries - 1)).astype(f"<u{entry_bits // 8}")
    green = (top - red.astype(np.int64)).astype(red.dtype)
    blue = np.full(entries, top // 3, dtype=red.dtype)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = "Palette^Patient", "PAL-1", "US"
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "PALETTE COLOR"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    # A window in the file, as some writers leave: it must not turn the image grey.
    ds.WindowCenter, ds.WindowWidth = 40, 400
    descriptor = [entries if entries < 65536 else 0, 0, entry_bits]
    for colour, table in (("Red", red), ("Green", green), ("Blue", blue)):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", descriptor)
        setattr(ds, f"{colour}PaletteColorLookupTableData", table.tobytes())
    if frames > 1:
        ds.NumberOfFrames = frames
    pixels = (np.arange(frames * size * size) * 7 % entries).reshape(frames, size, size)
    ds.PixelData = pixels.astype(f"<u{bits // 8}").tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def synthetic_colour_cine(
    *, frames: int = 4, rows: int = 48, cols: int = 64, jpeg: bool = True
) -> bytes:
    """An ultrasound-like colour cine, the left half of each frame red, the right half
    blue: stored as JPEG baseline, YBR_FULL_422 as lossy JPEG writers record it, or
    (`jpeg=False`) uncompressed YBR_FULL."""
    from PIL import Image
    from pydicom.pixels import convert_color_space

    rgb = np.zeros((rows, cols, 3), dtype=np.uint8)
    rgb[:, : cols // 2] = (220, 30, 30)
    rgb[:, cols // 2 :] = (30, 30, 220)
    encoded = []
    for _ in range(frames):
        out = io.BytesIO()
        Image.fromarray(rgb).save(out, format="JPEG", quality=95, subsampling=1)  # 4:2:2
        encoded.append(out.getvalue())
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"  # Ultrasound Multi-frame
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEGBaseline8Bit if jpeg else ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = (
        meta.MediaStorageSOPClassUID,
        meta.MediaStorageSOPInstanceUID,
    )
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = "Colour^Cine", "US-1", "US"
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, cols, frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "YBR_FULL_422", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if jpeg:
        ds.PixelData = encapsulate(encoded)
        ds["PixelData"].VR = "OB"
    else:
        ds.PhotometricInterpretation = "YBR_FULL"
        ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
        ds.PixelData = np.stack([ybr] * frames).tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def synthetic_enhanced_ct(
    *,
    frames: int = 3,
    size: int = 16,
    windows: list[tuple[float, float]] | None = None,
    spacing: tuple[float, float] = (0.5, 0.5),
) -> bytes:
    """An Enhanced CT of `frames` frames, every pixel of frame n stored as 1024 + 40n (HU
    40n), with PS3.3 C.7.6.16 functional groups and no top-level rescale or window: the
    rescale and spacing shared, the frames' windows per frame (`windows`, one window for
    all when None, 40/80 by default), each frame's position its own."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"  # Enhanced CT Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = (
        meta.MediaStorageSOPClassUID,
        meta.MediaStorageSOPInstanceUID,
    )
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = "Enhanced^Ct", "ECT-1", "CT"
    ds.StudyDate, ds.SeriesNumber, ds.InstanceNumber = "20260101", 1, 1
    ds.Rows = ds.Columns = size
    ds.NumberOfFrames = frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    measures, transformation = Dataset(), Dataset()
    measures.PixelSpacing, measures.SliceThickness = list(spacing), 1.0
    transformation.RescaleIntercept, transformation.RescaleSlope = -1024, 1
    transformation.RescaleType = "HU"
    orientation = Dataset()
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared = Dataset()
    shared.PixelMeasuresSequence = [measures]
    shared.PixelValueTransformationSequence = [transformation]
    shared.PlaneOrientationSequence = [orientation]
    ds.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    for index in range(frames):
        centre, width = (windows or [(40.0, 80.0)] * frames)[index]
        voi, position, content = Dataset(), Dataset(), Dataset()
        voi.WindowCenter, voi.WindowWidth = centre, width
        position.ImagePositionPatient = [0, 0, float(index)]
        content.InStackPositionNumber = index + 1
        group = Dataset()
        group.FrameVOILUTSequence = [voi]
        group.PlanePositionSequence = [position]
        group.FrameContentSequence = [content]
        per_frame.append(group)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    pixels = np.stack(
        [np.full((size, size), 1024 + 40 * n, dtype=np.uint16) for n in range(frames)]
    )
    ds.PixelData = pixels.tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def ingest_study(tenant: Tenant, files: list[bytes]):
    """Ingest a series' files through the real service and return its Study row."""
    from imaging.models import Study

    results = [ingest(tenant, data, name=f"{i}.dcm") for i, data in enumerate(files)]
    study_ids = {r.study_id for r in results if r.study_id}
    assert len(study_ids) == 1, [r.message for r in results]
    return Study.objects.for_tenant(tenant).select_related("patient").get(pk=study_ids.pop())


def read_until_integrity_failure(response) -> tuple[bytes, IntegrityError | None]:
    """A streamed body as far as it got, and the failed check that ended it, if any."""
    received = bytearray()
    try:
        for chunk in response.streaming_content:
            received += chunk
    except IntegrityError as exc:
        return bytes(received), exc
    return bytes(received), None


def flip_a_stored_byte(data_dir: Path, storage_key: str) -> None:
    """Alter one byte in the middle of a stored (encrypted) object, as bit rot or an
    attacker with disk access would."""
    path = data_dir / "objects" / storage_key
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    path.write_bytes(bytes(blob))


BIG = 1_200_000  # above the 1 MB bulk data threshold


def with_large_values(data: bytes) -> bytes:
    """The object with a 1.2 MB private OB value and a 1.2 MB icon in a sequence."""
    ds = pydicom.dcmread(io.BytesIO(data))
    block = ds.private_block(0x0009, "PORTAL TESTS", create=True)
    block.add_new(0x10, "OB", bytes(range(256)) * (BIG // 256))
    icon = Dataset()
    icon.Rows, icon.Columns, icon.BitsAllocated = 1000, 600, 16
    icon.add_new(0x7FE00010, "OW", np.arange(600_000, dtype="<u2").tobytes())
    ds.IconImageSequence = [icon]
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def second_store_fails_once_written(monkeypatch, error: BaseException) -> None:
    """The second instance fails after its object is written: its row's audit append
    raises `error` (a lost database connection, or an interrupted worker)."""
    from audit import recorder
    from audit.models import Action

    real, stores = recorder.record_many, []

    def record_many(**kwargs):
        if any(entry.action == Action.INSTANCE_STORED for entry in kwargs["entries"]):
            stores.append(1)
            if len(stores) == 2:
                raise error
        return real(**kwargs)

    monkeypatch.setattr(recorder, "record_many", record_many)


def second_write_fails(monkeypatch) -> None:
    """The second object written fails, as a full disk or a lost bucket would."""
    from imaging.storage import PrivateFileSystemStorage

    real_write, calls = PrivateFileSystemStorage.write_file, []

    def failing_write(storage, name, content):
        calls.append(name)
        if len(calls) == 2:
            raise OSError("disk full")
        return real_write(storage, name, content)

    monkeypatch.setattr(PrivateFileSystemStorage, "write_file", failing_write)
