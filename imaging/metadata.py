"""The encrypted header JSON kept on each instance row, for WADO-RS metadata.

Parsing 300 stored objects to answer one series metadata request is what made it slow;
ingest already has the parsed header, so it keeps the DICOM JSON (no pixel data),
encrypted under the study key and bound to the instance's object key, on the row.
Metadata requests then read one query's worth of rows and decrypt a few KB each.
"""

from __future__ import annotations

import io
import json
from typing import Any
from uuid import UUID

from imaging.crypto import ObjectContext, decrypt_stream, encrypt_bytes


def _context(tenant_id: UUID, storage_key: str) -> ObjectContext:
    return ObjectContext(tenant_id, f"{storage_key}#metadata")


def metadata_seal(*, header_json: bytes, key: bytes, tenant_id: UUID, storage_key: str) -> bytes:
    """Encrypt an instance's header JSON (b"" stays b"": nothing to keep)."""
    if not header_json:
        return b""
    return encrypt_bytes(header_json, key=key, context=_context(tenant_id, storage_key))


def metadata_open(*, sealed: bytes, key: bytes, tenant_id: UUID, storage_key: str) -> bytes:
    """The header JSON; raises imaging.crypto.IntegrityError if it was altered or moved."""
    reader = io.BytesIO(sealed)
    return b"".join(decrypt_stream(reader.read, key=key, context=_context(tenant_id, storage_key)))


def metadata_with_pixel_uri(header_json: bytes, *, retrieve_uri: str) -> bytes:
    """Append the pixel data's BulkDataURI to a header JSON object, without re-parsing."""
    pixel = b'"7FE00010":' + json.dumps({"vr": "OB", "BulkDataURI": retrieve_uri}).encode()
    separator = b"," if header_json.strip() != b"{}" else b""
    return header_json.rstrip()[:-1] + separator + pixel + b"}"


def metadata_item(header: dict[str, Any], *, retrieve_uri: str) -> bytes:
    """The same for a header parsed at read time (rows stored before the cache, pseudonyms)."""
    header["7FE00010"] = {"vr": "OB", "BulkDataURI": retrieve_uri}
    return json.dumps(header, separators=(",", ":")).encode()
