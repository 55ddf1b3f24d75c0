"""The demo clinic's studies (`bootstrap_demo`, run by `make run`).

Synthetic series generated here, with made-up people, plus a few of pydicom's bundled
test files, so the demo shows other codecs (JPEG 2000, RLE, colour) too. Never real
patient data, and nothing is downloaded: the bundled files ship inside pydicom.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

# Bundled with pydicom (pydicom/data/test_files): one each of JPEG 2000, RLE and colour.
BUNDLED_FILES = ("CT_small.dcm", "JPEG2000.dcm", "MR_small_RLE.dcm", "SC_rgb_rle.dcm")


@dataclass(frozen=True)
class DemoPatient:
    name: str
    patient_id: str
    birth_date: str
    sex: str


# The demo patient account (patient@demo-clinic.example) is linked to this record.
ALICE = DemoPatient("Demo^Alice", "DEMO-0001", "19800214", "F")
BRUNO = DemoPatient("Demo^Bruno", "DEMO-0002", "19621103", "M")


def _ellipse(size: int, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    """A boolean mask of an ellipse; centre and radii as fractions of the image side."""
    y, x = np.mgrid[0:size, 0:size] / size
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1


def _chest_slice(size: int, z: float) -> np.ndarray:
    """A CT chest phantom in Hounsfield units at height z (0 at the bottom, 1 at the top)."""
    hu = np.full((size, size), -1000, dtype=np.int16)  # air
    hu[_ellipse(size, 0.5, 0.5, 0.42, 0.30)] = 40  # soft tissue
    lung_ry = 0.20 * (0.6 + 0.4 * np.sin(np.pi * z))
    hu[_ellipse(size, 0.33, 0.47, 0.12, lung_ry)] = -820
    hu[_ellipse(size, 0.67, 0.47, 0.12, lung_ry)] = -820
    heart = 0.10 * max(0.0, np.sin(np.pi * (z - 0.1) / 0.7)) if z < 0.8 else 0.0
    if heart > 0.01:
        hu[_ellipse(size, 0.55, 0.52, heart, heart * 0.85)] = 45
    hu[_ellipse(size, 0.5, 0.74, 0.05, 0.05)] = 700  # vertebra
    hu[_ellipse(size, 0.5, 0.74, 0.025, 0.025)] = 30  # spinal canal
    return hu


def _head_slice(size: int, z: float) -> np.ndarray:
    """An MR head phantom (Shepp-Logan-like intensities) at height z."""
    scale = np.sqrt(max(0.05, 1 - (2 * z - 1) ** 2))
    image = np.zeros((size, size), dtype=np.uint16)
    image[_ellipse(size, 0.5, 0.5, 0.36 * scale, 0.44 * scale)] = 900  # scalp and skull
    image[_ellipse(size, 0.5, 0.5, 0.33 * scale, 0.41 * scale)] = 420  # brain
    if 0.3 < z < 0.7:
        image[_ellipse(size, 0.44, 0.47, 0.04, 0.12 * scale)] = 1400  # ventricles
        image[_ellipse(size, 0.56, 0.47, 0.04, 0.12 * scale)] = 1400
    image[_ellipse(size, 0.6, 0.62, 0.05 * scale, 0.04 * scale)] = 650  # a lesion to find
    return image


def _series_files(
    *,
    patient: DemoPatient,
    study_uid: str,
    study: dict[str, str],
    modality: str,
    description: str,
    number: int,
    slices: int,
    size: int,
    spacing: float,
) -> Iterator[bytes]:
    series_uid = generate_uid()
    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    for index in range(slices):
        z = index / max(1, slices - 1)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = study_uid + ".1"
        ds.PatientName = patient.name
        ds.PatientID = patient.patient_id
        ds.PatientBirthDate = patient.birth_date
        ds.PatientSex = patient.sex
        for keyword, value in study.items():
            setattr(ds, keyword, value)
        ds.Modality = modality
        ds.SeriesDescription = description
        ds.SeriesNumber = number
        ds.InstanceNumber = index + 1
        ds.ImagePositionPatient = [-size * 0.5, -size * 0.5, round(index * spacing, 2)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [1, 1]
        ds.SliceThickness = spacing
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 12 if modality == "MR" else 16
        ds.HighBit = ds.BitsStored - 1
        if modality == "CT":
            ds.PixelRepresentation = 1
            ds.RescaleIntercept = 0
            ds.RescaleSlope = 1
            ds.WindowCenter, ds.WindowWidth = [40, -600], [400, 1500]  # soft tissue, lung
            ds.WindowCenterWidthExplanation = ["SOFT TISSUE", "LUNG"]
            ds.PixelData = _chest_slice(size, z).tobytes()
        else:
            ds.PixelRepresentation = 0
            ds.WindowCenter, ds.WindowWidth = 600, 1400
            ds.PixelData = _head_slice(size, z).tobytes()
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        yield buffer.getvalue()


def demo_files(*, today: dt.date) -> Iterator[tuple[str, bytes]]:
    """(name, DICOM bytes) of every demo instance: two studies of Alice's, one of Bruno's,
    then pydicom's bundled files (each its own study and test patient)."""
    from pydicom.data import get_testdata_file

    def study(patient: DemoPatient, days_ago: int, description: str, accession: str) -> dict:
        return {
            "StudyDate": (today - dt.timedelta(days=days_ago)).strftime("%Y%m%d"),
            "StudyTime": "093000",
            "StudyDescription": description,
            "AccessionNumber": accession,
            "ReferringPhysicianName": "Demo^Referrer",
            "StudyID": accession[-4:],
        }

    chest = study(ALICE, 1, "CT Chest (synthetic)", "DEMO-ACC-0001")
    head = study(ALICE, 30, "MR Head (synthetic)", "DEMO-ACC-0002")
    follow_up = study(BRUNO, 3, "CT Chest follow-up (synthetic)", "DEMO-ACC-0003")
    series = [
        (ALICE, generate_uid(), chest, "CT", "Chest axial 5 mm", 40, 5.0),
        (ALICE, generate_uid(), head, "MR", "Head axial T2", 24, 4.0),
        (BRUNO, generate_uid(), follow_up, "CT", "Chest axial 5 mm", 30, 5.0),
    ]
    for patient, study_uid, tags, modality, description, slices, spacing in series:
        files = _series_files(
            patient=patient,
            study_uid=study_uid,
            study=tags,
            modality=modality,
            description=description,
            number=1,
            slices=slices,
            size=256,
            spacing=spacing,
        )
        for index, data in enumerate(files):
            yield f"{tags['AccessionNumber']}-{index + 1:03d}.dcm", data
    for name in BUNDLED_FILES:
        path = get_testdata_file(name, download=False)
        if path is not None:  # a pydicom that no longer bundles it: the demo goes without
            with open(path, "rb") as handle:
                yield name, handle.read()
