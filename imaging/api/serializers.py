from __future__ import annotations

from rest_framework import serializers

from imaging.models import Series, Study


class StudySerializer(serializers.ModelSerializer):
    patient_id = serializers.CharField(source="patient.patient_id")
    patient_name = serializers.CharField(source="patient.name")
    patient_birth_date = serializers.DateField(source="patient.birth_date", allow_null=True)
    modalities = serializers.SerializerMethodField()

    class Meta:
        model = Study
        fields = [
            "id",
            "study_uid",
            "study_date",
            "study_time",
            "accession_number",
            "description",
            "modalities",
            "referring_physician",
            "patient_id",
            "patient_name",
            "patient_birth_date",
            "num_series",
            "num_instances",
            "confidential",
            "created_at",
        ]

    def get_modalities(self, study: Study) -> list[str]:
        return [m for m in study.modalities.split("\\") if m]


class SeriesSerializer(serializers.ModelSerializer):
    class Meta:
        model = Series
        fields = [
            "id",
            "series_uid",
            "modality",
            "series_number",
            "description",
            "body_part",
            "num_instances",
            "thumbnail_status",
        ]
