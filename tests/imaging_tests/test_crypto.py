"""The object format and key hierarchy: any change to stored bytes is detected."""

from __future__ import annotations

import io
import uuid

import pytest

from imaging.crypto import (
    HEADER,
    TAG_BYTES,
    IntegrityError,
    ObjectContext,
    decrypt_stream,
    decrypt_verified,
    encrypt_stream,
    new_key,
    unwrap_key,
    wrap_key,
)

SEGMENT = 1000
CTX = ObjectContext(uuid.UUID(int=1), "tenant/object-a")


def _encrypt(data: bytes, context=CTX, key=b"k" * 32) -> bytes:
    chunks = [data[i : i + 333] for i in range(0, len(data), 333)] or [b""]
    return b"".join(encrypt_stream(chunks, key=key, context=context, segment_size=SEGMENT))


def _decrypt(blob: bytes, context=CTX, key=b"k" * 32) -> bytes:
    return b"".join(decrypt_stream(io.BytesIO(blob).read, key=key, context=context))


@pytest.mark.parametrize("size", [0, 1, SEGMENT - 1, SEGMENT, SEGMENT + 1, 3 * SEGMENT, 5555])
def test_round_trip_at_every_boundary(size):
    data = bytes(i % 251 for i in range(size))

    assert _decrypt(_encrypt(data)) == data


def test_ciphertext_hides_the_plaintext():
    data = b"Doe^Jane 19700101 " * 200

    assert b"Doe^Jane" not in _encrypt(data)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda b: b[: HEADER.size + SEGMENT + TAG_BYTES],  # drop the final segments
        lambda b: b[:-1],  # cut the last byte
        lambda b: b[: len(b) // 2] + bytes([b[len(b) // 2] ^ 1]) + b[len(b) // 2 + 1 :],
        lambda b: (
            b[: HEADER.size]  # swap the first two segments
            + b[HEADER.size + SEGMENT + TAG_BYTES : HEADER.size + 2 * (SEGMENT + TAG_BYTES)]
            + b[HEADER.size : HEADER.size + SEGMENT + TAG_BYTES]
            + b[HEADER.size + 2 * (SEGMENT + TAG_BYTES) :]
        ),
        lambda b: b"XXXX" + b[4:],  # wrong magic
        lambda b: b[:5] + (500).to_bytes(4, "big") + b[9:],  # wrong segment size
    ],
    ids=["truncated-at-boundary", "truncated", "bit-flip", "reordered", "magic", "segment-size"],
)
def test_any_change_fails_authentication(tamper):
    blob = _encrypt(bytes(range(256)) * 20)

    with pytest.raises(IntegrityError):
        _decrypt(tamper(blob))


def test_object_moved_to_another_key_or_clinic_fails():
    blob = _encrypt(b"pixels" * 100)

    with pytest.raises(IntegrityError):
        _decrypt(blob, context=ObjectContext(CTX.tenant_id, "tenant/object-b"))
    with pytest.raises(IntegrityError):
        _decrypt(blob, context=ObjectContext(uuid.UUID(int=2), CTX.object_id))
    with pytest.raises(IntegrityError):
        _decrypt(blob, key=b"x" * 32)


def test_verified_decrypt_withholds_the_end_on_hash_mismatch():
    data = b"a" * 2500
    blob = _encrypt(data)
    import hashlib

    good = b"".join(
        decrypt_verified(
            io.BytesIO(blob).read,
            key=b"k" * 32,
            context=CTX,
            sha256=hashlib.sha256(data).hexdigest(),
        )
    )
    assert good == data
    received = []
    with pytest.raises(IntegrityError):
        for chunk in decrypt_verified(
            io.BytesIO(blob).read, key=b"k" * 32, context=CTX, sha256="0" * 64
        ):
            received.append(chunk)
    assert sum(map(len, received)) < len(data)


@pytest.mark.parametrize("recorded", [2559, 2561, 0])
def test_a_plaintext_of_another_size_than_recorded_withholds_the_last_segment(recorded):
    import hashlib

    data = bytes(range(256)) * 10  # 2,560 bytes: three segments of at most 1,000
    blob = _encrypt(data)
    sha256 = hashlib.sha256(data).hexdigest()
    read = io.BytesIO(blob).read
    received = []

    assert b"".join(decrypt_verified(read, key=b"k" * 32, context=CTX, sha256=sha256, size=2560))
    with pytest.raises(IntegrityError, match="size"):
        for chunk in decrypt_verified(
            io.BytesIO(blob).read, key=b"k" * 32, context=CTX, sha256=sha256, size=recorded
        ):
            received.append(chunk)
    assert sum(map(len, received)) == 2 * SEGMENT


def test_wrapped_keys_are_bound_to_their_context():
    kek, key = new_key(), new_key()
    wrapped = wrap_key(kek=kek, key=key, context=b"study-dek|A|1")

    assert unwrap_key(kek=kek, wrapped=wrapped, context=b"study-dek|A|1") == key
    with pytest.raises(IntegrityError):
        unwrap_key(kek=kek, wrapped=wrapped, context=b"study-dek|B|1")


@pytest.mark.django_db
def test_study_keys_differ_and_survive_a_restart(clinic):
    from imaging.keyring import keyring_forget, study_dek
    from imaging.models import Study, TenantKey
    from tests.imaging_tests.helpers import ingest, synthetic_ct

    first = ingest(clinic, synthetic_ct(slices=1)[0])
    second = ingest(clinic, synthetic_ct(slices=1)[0])
    a, b = (Study.objects.for_tenant(clinic).get(pk=r.study_id) for r in (first, second))
    dek_a = study_dek(study=a)
    keyring_forget()

    assert study_dek(study=a) == dek_a
    assert dek_a != study_dek(study=b)
    assert TenantKey.objects.for_tenant(clinic).count() == 1
    assert bytes(a.wrapped_dek) != dek_a


@pytest.mark.django_db
def test_wrong_master_key_cannot_open_a_clinic_key(clinic, settings):
    import base64

    from imaging.keyring import keyring_forget, study_dek
    from imaging.keys import key_provider_reset
    from imaging.models import Study
    from tests.imaging_tests.helpers import ingest, synthetic_ct

    result = ingest(clinic, synthetic_ct(slices=1)[0])
    settings.PORTAL_MASTER_KEY = base64.b64encode(b"z" * 32).decode()
    key_provider_reset()
    keyring_forget()

    with pytest.raises(IntegrityError):
        study_dek(study=Study.objects.for_tenant(clinic).get(pk=result.study_id))


@pytest.mark.django_db
def test_a_clinic_key_made_in_a_rolled_back_store_is_not_kept(clinic):
    from pydicom.uid import generate_uid

    from imaging.ingest import ingest_many
    from imaging.keyring import keyring_forget, study_dek
    from imaging.models import Study, TenantKey
    from tests.helpers import TEST_ACTOR
    from tests.imaging_tests.helpers import synthetic_ct

    # The clinic's first batch rolls back (one study, two PatientIDs), making its key in
    # the transaction that is undone; the files are then stored one by one.
    study_uid = generate_uid()
    a = synthetic_ct(slices=1, study_uid=study_uid, patient_id="P-A")[0]
    b = synthetic_ct(slices=1, study_uid=study_uid, patient_id="P-B")[0]
    results = ingest_many(tenant=clinic, actor=TEST_ACTOR, items=[("a.dcm", a), ("b.dcm", b)])
    assert [r.outcome for r in results].count("stored") == 1
    keyring_forget()  # another process, or this one restarted

    study = Study.objects.for_tenant(clinic).get()

    assert len(study_dek(study=study)) == 32
    assert TenantKey.objects.for_tenant(clinic).count() == 1
