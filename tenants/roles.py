"""The permission matrix: which role may do what inside a clinic.

This module is the single source of truth. Pages check it through
`tenants.access.require_perm`, APIs through `tenants.access.HasClinicPerm`, and
`docs/roles.md` is generated from it (`manage.py roles_doc`; a test keeps them equal).
Roles are data (`tenants.Role` rows, one per code below) so memberships can hold
several; what each role grants lives here, in code, reviewed like code.
"""

from __future__ import annotations

from enum import StrEnum


class RoleCode(StrEnum):
    TENANT_ADMIN = "tenant_admin"
    RADIOLOGIST = "radiologist"
    TECHNOLOGIST = "technologist"
    FRONT_DESK = "front_desk"
    REFERRING_PHYSICIAN = "referring_physician"
    PRIVACY_OFFICER = "privacy_officer"
    PATIENT = "patient"


class Perm(StrEnum):
    CLINIC_MANAGE = "clinic.manage"
    AUDIT_READ = "audit.read"
    WORKLIST_VIEW = "worklist.view"
    STUDY_VIEW_GRANTED = "study.view_granted"
    IMAGES_VIEW = "images.view"
    STUDY_UPLOAD = "study.upload"
    STUDY_DOWNLOAD = "study.download"
    STUDY_SHARE = "study.share"
    STUDY_GRANT = "study.grant"
    STUDY_MARK_CONFIDENTIAL = "study.mark_confidential"
    STUDY_CONFIRM_PATIENT = "study.confirm_patient"
    BREAK_GLASS = "study.break_glass"
    PATIENT_INVITE = "patient.invite"
    OWN_STUDIES = "portal.own_studies"


PERM_DESCRIPTIONS: dict[Perm, str] = {
    Perm.CLINIC_MANAGE: "Manage the clinic in the tenant admin: members, roles, policies",
    Perm.AUDIT_READ: "Read the clinic's audit log",
    Perm.WORKLIST_VIEW: "See every study of the clinic in the worklist (demographics)",
    Perm.STUDY_VIEW_GRANTED: "See only studies explicitly granted (per-object grant)",
    Perm.IMAGES_VIEW: "Open images in the viewer and retrieve pixel data",
    Perm.STUDY_UPLOAD: "Upload and import studies",
    Perm.STUDY_DOWNLOAD: "Download studies (step-up second factor)",
    Perm.STUDY_SHARE: "Create and revoke share links",
    Perm.STUDY_GRANT: "Grant a referring physician access to a study",
    Perm.STUDY_MARK_CONFIDENTIAL: "Mark a study confidential",
    Perm.STUDY_CONFIRM_PATIENT: (
        "Confirm that a study whose images give other patient details belongs to its "
        "patient record (releases it to the patient portal)"
    ),
    Perm.BREAK_GLASS: "Open a study outside normal access, with a stated reason",
    Perm.PATIENT_INVITE: "Invite a patient to the patient portal",
    Perm.OWN_STUDIES: "See one's own studies in the patient portal",
}

ROLE_NAMES: dict[RoleCode, str] = {
    RoleCode.TENANT_ADMIN: "Tenant admin",
    RoleCode.RADIOLOGIST: "Radiologist",
    RoleCode.TECHNOLOGIST: "Technologist",
    RoleCode.FRONT_DESK: "Front desk",
    RoleCode.REFERRING_PHYSICIAN: "Referring physician",
    RoleCode.PRIVACY_OFFICER: "Privacy officer",
    RoleCode.PATIENT: "Patient",
}

# Least privilege: each role gets what its job needs and nothing else. A tenant admin
# runs the clinic but sees no images unless also given a clinical role.
MATRIX: dict[RoleCode, frozenset[Perm]] = {
    RoleCode.TENANT_ADMIN: frozenset({Perm.CLINIC_MANAGE}),
    RoleCode.RADIOLOGIST: frozenset(
        {
            Perm.WORKLIST_VIEW,
            Perm.IMAGES_VIEW,
            Perm.STUDY_DOWNLOAD,
            Perm.STUDY_SHARE,
            Perm.STUDY_GRANT,
            Perm.STUDY_MARK_CONFIDENTIAL,
            Perm.STUDY_CONFIRM_PATIENT,
            Perm.BREAK_GLASS,
        }
    ),
    RoleCode.TECHNOLOGIST: frozenset(
        {Perm.WORKLIST_VIEW, Perm.IMAGES_VIEW, Perm.STUDY_UPLOAD, Perm.STUDY_CONFIRM_PATIENT}
    ),
    RoleCode.FRONT_DESK: frozenset({Perm.WORKLIST_VIEW, Perm.PATIENT_INVITE}),
    RoleCode.REFERRING_PHYSICIAN: frozenset({Perm.STUDY_VIEW_GRANTED, Perm.IMAGES_VIEW}),
    RoleCode.PRIVACY_OFFICER: frozenset({Perm.AUDIT_READ}),
    RoleCode.PATIENT: frozenset({Perm.OWN_STUDIES}),
}

# Roles whose holders are clinic staff: second factor always required.
STAFF_ROLES: frozenset[RoleCode] = frozenset(set(RoleCode) - {RoleCode.PATIENT})


def perms_for(role_codes: set[str] | frozenset[str]) -> frozenset[Perm]:
    """Union of what the given roles grant; unknown codes grant nothing."""
    granted: set[Perm] = set()
    for code in role_codes:
        try:
            granted |= MATRIX[RoleCode(code)]
        except ValueError:
            continue
    return frozenset(granted)


def render_markdown() -> str:
    """The matrix as the Markdown table in docs/roles.md."""
    roles = list(RoleCode)
    lines = [
        "# Roles and permissions",
        "",
        "Generated from `tenants/roles.py` by `python manage.py roles_doc`; do not edit by hand.",
        "A membership may hold several roles; it is granted the union of their permissions.",
        "Referring physicians see only studies granted to them per object (django-guardian,",
        "through `tenants.grants`). Platform operators hold no clinic role and see no PHI.",
        "",
        "| permission | " + " | ".join(ROLE_NAMES[r] for r in roles) + " |",
        "|---|" + "---|" * len(roles),
    ]
    for perm in Perm:
        marks = ["yes" if perm in MATRIX[r] else "" for r in roles]
        lines.append(f"| `{perm.value}`: {PERM_DESCRIPTIONS[perm]} | " + " | ".join(marks) + " |")
    lines.append("")
    return "\n".join(lines)
