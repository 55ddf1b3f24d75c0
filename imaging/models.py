"""Patients, studies, series and instances of a clinic, and the clinic's keys.

PHI lives in these rows (the database is the one place allowed to hold it in clear);
every stored object is encrypted and named by an opaque random key.
"""

from __future__ import annotations

import uuid

from django.db import models
from django.utils import timezone

from tenants.scoping import TenantOwnedModel


class TenantKey(TenantOwnedModel):
    """A clinic key, wrapped by the key provider. Versioned for rotation."""

    class State(models.TextChoices):
        ACTIVE = "active", "Active"
        RETIRED = "retired", "Retired"

    version = models.PositiveIntegerField()
    wrapped_key = models.BinaryField()
    state = models.CharField(max_length=16, choices=State.choices, default=State.ACTIVE)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "version"], name="tenant_key_version_unique"),
            models.UniqueConstraint(
                fields=["tenant"],
                condition=models.Q(state="active"),
                name="tenant_key_one_active",
            ),
        ]

    def __str__(self) -> str:
        return f"TenantKey {self.tenant_id} v{self.version}"


class Patient(TenantOwnedModel):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    issuer = models.CharField(max_length=64, blank=True)
    patient_id = models.CharField(max_length=64)
    name = models.CharField(max_length=324, blank=True)
    birth_date = models.DateField(null=True, blank=True)
    sex = models.CharField(max_length=16, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "issuer", "patient_id"], name="patient_unique_per_tenant"
            )
        ]
        indexes = [
            models.Index(fields=["tenant", "name"]),
            models.Index(fields=["tenant", "patient_id"]),
        ]

    def __str__(self) -> str:
        return f"Patient {self.id}"


class Study(TenantOwnedModel):
    class Status(models.TextChoices):
        RECEIVING = "receiving", "Receiving"
        AVAILABLE = "available", "Available"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="studies")
    study_uid = models.CharField(max_length=64)
    study_date = models.DateField(null=True, blank=True)
    study_time = models.CharField(max_length=16, blank=True)
    accession_number = models.CharField(max_length=64, blank=True)
    study_id = models.CharField(max_length=16, blank=True)  # StudyID (0020,0010), not a key
    description = models.CharField(max_length=256, blank=True)
    modalities = models.CharField(max_length=128, blank=True)
    referring_physician = models.CharField(max_length=324, blank=True)
    num_series = models.PositiveIntegerField(default=0)
    num_instances = models.PositiveIntegerField(default=0)
    size_bytes = models.BigIntegerField(default=0)
    wrapped_dek = models.BinaryField()
    key_version = models.PositiveIntegerField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.AVAILABLE)
    confidential = models.BooleanField(default=False)
    # What the study's images give otherwise than its patient record, whose details the
    # first file of its PatientID set: field names ("birth_date", "name"), never values.
    # A study whose images may be another person's is held from the patient portal until
    # a member confirms it belongs to the record (imaging.services.study_patient_confirm).
    patient_differs = models.JSONField(default=list, blank=True)
    patient_held = models.BooleanField(default=False)
    # A digest of each differing set of details seen (imaging.ingest._header_identity):
    # a third person's images hold the study again after a confirmation, and a
    # confirmation covers only the sets its page showed.
    patient_headers = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "studies"
        # Object-level grants (django-guardian) beyond the built-in view_study.
        permissions = [("download_study", "Can download the study")]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "study_uid"], name="study_uid_per_tenant"),
            models.CheckConstraint(
                condition=models.Q(status__in=["receiving", "available"]),
                name="study_status_valid",
            ),
        ]
        indexes = [
            models.Index(fields=["tenant", "-study_date"]),
            models.Index(fields=["tenant", "accession_number"]),
            models.Index(fields=["tenant", "patient"]),
            models.Index(fields=["tenant", "-created_at"]),
        ]

    def __str__(self) -> str:
        return f"Study {self.id}"


class Series(TenantOwnedModel):
    class ThumbnailStatus(models.TextChoices):
        PENDING = "pending", "Pending"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    study = models.ForeignKey(Study, on_delete=models.PROTECT, related_name="series")
    series_uid = models.CharField(max_length=64)
    modality = models.CharField(max_length=16, blank=True)
    series_number = models.IntegerField(null=True, blank=True)
    description = models.CharField(max_length=256, blank=True)
    body_part = models.CharField(max_length=64, blank=True)
    # Performed Procedure Step Start Date and Time (0040,0244/0245): QIDO-RS matches them.
    performed_date = models.DateField(null=True, blank=True)
    performed_time = models.CharField(max_length=16, blank=True)
    # [ScheduledProcedureStepID, RequestedProcedureID] of each RequestAttributesSequence
    # item (imaging.dicom.request_attributes), as QIDO-RS results return them; matched
    # through SeriesRequest rows.
    request_attributes = models.JSONField(default=list, blank=True)
    num_instances = models.PositiveIntegerField(default=0)
    thumbnail_key = models.CharField(max_length=128, blank=True)
    thumbnail_status = models.CharField(
        max_length=16, choices=ThumbnailStatus.choices, default=ThumbnailStatus.PENDING
    )
    thumbnail_error = models.CharField(max_length=256, blank=True)
    # Renders begun that never ended: one that kills its worker (out of memory, a decoder
    # crash, the time limit) leaves no other trace, and its message comes back.
    thumbnail_attempts = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "series"
        constraints = [
            models.UniqueConstraint(fields=["tenant", "series_uid"], name="series_uid_per_tenant"),
            models.CheckConstraint(
                condition=models.Q(thumbnail_status__in=["pending", "ready", "failed"]),
                name="series_thumbnail_status_valid",
            ),
        ]
        indexes = [models.Index(fields=["tenant", "study", "series_number"])]

    def __str__(self) -> str:
        return f"Series {self.id}"


class SeriesRequest(TenantOwnedModel):
    """One order a series fulfils (a RequestAttributesSequence item), for QIDO-RS matching.

    A row per item, so a search matches both keys within one item (PS3.4 C.2.2.2.6).
    """

    series = models.ForeignKey(Series, on_delete=models.CASCADE, related_name="requests")
    scheduled_step_id = models.CharField(max_length=16, blank=True)  # (0040,0009)
    requested_procedure_id = models.CharField(max_length=16, blank=True)  # (0040,1001)

    class Meta:
        indexes = [
            models.Index(fields=["tenant", "scheduled_step_id"]),
            models.Index(fields=["tenant", "requested_procedure_id"]),
        ]

    def __str__(self) -> str:
        return f"SeriesRequest {self.pk}"


class Instance(TenantOwnedModel):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    series = models.ForeignKey(Series, on_delete=models.PROTECT, related_name="instances")
    study = models.ForeignKey(Study, on_delete=models.PROTECT, related_name="instances")
    sop_instance_uid = models.CharField(max_length=64)
    sop_class_uid = models.CharField(max_length=64)
    transfer_syntax_uid = models.CharField(max_length=64)
    instance_number = models.IntegerField(null=True, blank=True)
    # Null: no pixel data (a report, a plan), which has no frames to count.
    number_of_frames = models.PositiveIntegerField(null=True, blank=True, default=1)
    rows = models.PositiveIntegerField(null=True, blank=True)
    columns = models.PositiveIntegerField(null=True, blank=True)
    bits_allocated = models.PositiveSmallIntegerField(null=True, blank=True)
    # Which pixel data the object holds (imaging.dicom.pixel_tag): "" none, "7FE00010",
    # or float "7FE00008" / double "7FE00009". Null (not recorded: rows stored before it
    # was kept) differs from "" (no pixel data), hence null on a text field.
    pixel_tag = models.CharField(max_length=8, null=True, blank=True, default=None)  # noqa: DJ001
    # Where the plaintext's frames are and how they render (imaging.render.pixel_layout),
    # so frames are read without parsing the file. Null: not recorded (stored before
    # it was kept); no "offset": pixel data only pydicom can decode.
    pixel_layout = models.JSONField(null=True, blank=True, default=None, editable=False)
    # Whether its pixels may show who the patient is (imaging.deidentify.
    # pixels_may_identify): withheld from de-identified links. Null: not assessed
    # (stored before it was), withheld too until `instance_headers_backfill` decides.
    pixels_may_identify = models.BooleanField(null=True, default=None, editable=False)
    size_bytes = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    storage_key = models.CharField(max_length=128)
    key_version = models.PositiveIntegerField()
    original_sha256 = models.CharField(
        max_length=64,
        blank=True,
        help_text="Hash as received, when the bytes stored differ (preamble neutralised, "
        "file meta corrected)",
    )
    # The header as DICOM JSON, AES-GCM under the study key (see imaging.metadata), so
    # metadata requests need no object reads. Empty for rows stored before it existed.
    metadata = models.BinaryField(default=b"", blank=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "sop_instance_uid"], name="instance_uid_per_tenant"
            ),
            models.UniqueConstraint(fields=["storage_key"], name="instance_storage_key_unique"),
        ]
        indexes = [
            models.Index(fields=["tenant", "series", "instance_number"]),
            models.Index(fields=["tenant", "study"]),
        ]

    def __str__(self) -> str:
        return f"Instance {self.id}"


class ViewerSession(TenantOwnedModel):
    """One opening of the viewer: pixel reads under it are audited once per series.

    The viewer sends its id with every request; the first read of each series writes
    one audit event (see `imaging.viewing`), so the log says who looked at which
    series without one row per frame.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(
        "tenants.User", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    share = models.ForeignKey(
        "sharing.ShareLink", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    study = models.ForeignKey(Study, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["tenant", "user", "-created_at"])]

    def __str__(self) -> str:
        return f"ViewerSession {self.id}"


class ViewerSeriesView(TenantOwnedModel):
    """A series first read under a viewer session; unique, so concurrent frames audit once."""

    viewer_session = models.ForeignKey(ViewerSession, on_delete=models.CASCADE, related_name="+")
    series = models.ForeignKey(Series, on_delete=models.PROTECT, related_name="+")
    first_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["viewer_session", "series"], name="viewer_series_view_once"
            )
        ]

    def __str__(self) -> str:
        return f"ViewerSeriesView {self.pk}"
