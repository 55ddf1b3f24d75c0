"""De-identified share links follow PS3.15's Basic Profile (Table E.1-1) with the Retain
UIDs, Full Dates and Patient Characteristics options, in nested sequences too."""

from __future__ import annotations

import copy
import io

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from imaging.deidentify import deidentified_bytes, deidentify
from tests.imaging_tests.helpers import synthetic_ct

PSEUDONYM = "ANON-7"


def identified() -> Dataset:
    """A CT slice carrying identity in the places the profile names, nested ones too."""
    ds = pydicom.dcmread(
        io.BytesIO(
            synthetic_ct(slices=1, size=16, patient_name="Doe^Jane", patient_id="MRN-123")[0]
        )
    )
    ds.PatientBirthDate = "19700101"
    ds.PatientAddress = "1 High Street, Springfield"
    ds.OtherPatientIDs = "NHS-999"
    ds.PatientSex = "F"
    ds.PatientAge = "054Y"
    ds.PatientWeight = "70"
    ds.AccessionNumber = "ACC-42"
    ds.InstitutionName = "St Elsewhere"
    ds.StationName = "CT-ROOM-3"
    ds.DeviceSerialNumber = "SN-0001"
    ds.ReferringPhysicianName = "House^Gregory"
    ds.PerformingPhysicianName = "Quinn^Michaela"
    ds.StudyDescription = "CT head for Jane Doe"
    ds.ImageComments = "Mrs Doe, bed 4"
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = "20260301"
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.1"
    procedure = Dataset()
    procedure.CodeValue = "CTHEAD"
    procedure.CodingSchemeDesignator = "99LOCAL"
    procedure.OperatorsName = "Tech^Tom"
    procedure.add_new(0x00091010, "LO", "a vendor's note on Jane Doe")
    ds.ProcedureCodeSequence = Sequence([procedure])
    referenced = Dataset()
    referenced.PatientName = "Doe^Jane"
    ds.ReferencedPatientSequence = Sequence([referenced])
    ds.add_new(0x00291010, "LO", "private: Jane Doe")
    ds.add_new(0x60003000, "OW", b"\x00\x01" * 8)  # overlay data
    return ds


@pytest.fixture
def clean() -> tuple[Dataset, Dataset]:
    original = identified()
    return original, deidentify(copy.deepcopy(original), pseudonym=PSEUDONYM)


def test_direct_identifiers_are_removed_emptied_or_replaced(clean):
    _, ds = clean

    assert str(ds.PatientName) == "ANONYMOUS" and ds.PatientID == PSEUDONYM
    assert ds.PatientBirthDate in ("", None)
    for keyword in (
        "PatientAddress",
        "OtherPatientIDs",
        "PerformingPhysicianName",
        "StudyDescription",
        "ImageComments",
        "ReferencedPatientSequence",
    ):
        assert keyword not in ds, keyword
    assert ds.AccessionNumber in ("", None) and ds.ReferringPhysicianName in ("", None)
    assert ds.InstitutionName != "St Elsewhere" and ds.StationName != "CT-ROOM-3"
    assert ds.DeviceSerialNumber != "SN-0001"


def test_private_attributes_and_overlays_go_at_every_depth(clean):
    _, ds = clean

    assert not [e for e in ds.iterall() if e.tag.is_private]
    assert 0x60003000 not in ds


def test_identity_nested_in_a_kept_sequence_is_cleaned(clean):
    _, ds = clean

    (item,) = ds.ProcedureCodeSequence
    assert item.CodeValue == "CTHEAD"  # the sequence stays; what it names is not identity
    assert str(item.OperatorsName) != "Tech^Tom"


def test_uids_dates_and_patient_characteristics_are_retained(clean):
    original, ds = clean

    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        assert ds[keyword].value == original[keyword].value
    assert ds.FrameOfReferenceUID == original.FrameOfReferenceUID
    assert (ds.StudyDate, ds.SeriesDate, ds.AcquisitionDate) == ("20260301",) * 3
    assert (ds.PatientSex, ds.PatientAge, str(ds.PatientWeight)) == ("F", "054Y", "70")
    assert ds.PixelData == original.PixelData


def test_what_was_done_is_recorded_in_the_object(clean):
    _, ds = clean

    assert ds.PatientIdentityRemoved == "YES"
    assert ds.LongitudinalTemporalInformationModified == "UNMODIFIED"
    codes = {item.CodeValue for item in ds.DeidentificationMethodCodeSequence}
    assert codes == {"113100", "113106", "113108", "113110"}


def test_the_written_file_holds_none_of_the_identifying_text():
    data = bytes(synthetic_ct(slices=1, size=16, patient_name="Doe^Jane", patient_id="MRN-123")[0])

    written = deidentified_bytes(data, pseudonym=PSEUDONYM)

    assert b"Doe^Jane" not in written and b"MRN-123" not in written
    assert pydicom.dcmread(io.BytesIO(written)).PatientID == PSEUDONYM


@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",
        "MR_small.dcm",
        "JPEG2000.dcm",
        "SC_rgb_rle.dcm",
        "rtplan.dcm",
        "rtdose.dcm",
        "test-SR.dcm",
        "nested_priv_SQ.dcm",
        "priv_SQ.dcm",
    ],
)
def test_every_person_name_left_in_pydicoms_files_is_the_placeholder(name):
    ds = deidentify(pydicom.dcmread(get_testdata_file(name)), pseudonym=PSEUDONYM)
    written = io.BytesIO()
    ds.save_as(written)  # some of these files have no file meta to enforce

    ds = pydicom.dcmread(io.BytesIO(written.getvalue()), force=True)

    names = {str(e.value) for e in ds.iterall() if e.VR == "PN" and not e.is_empty}
    assert names <= {"ANONYMOUS"}
    assert not [e for e in ds.iterall() if e.tag.is_private]
