"""The encrypted header JSON kept on each instance row, for WADO-RS metadata.

Parsing 300 stored objects to answer one series metadata request is what made it slow;
ingest already has the parsed header, so it keeps the DICOM JSON (no pixel data),
encrypted under the study key and bound to the instance's object key, on the row.
Metadata requests then read one query's worth of rows and decrypt a few KB each.
"""

from __future__ import annotations

import io
import json
import re
from typing import Any
from uuid import UUID

from imaging.crypto import ObjectContext, decrypt_stream, encrypt_bytes
from imaging.dicom import BULK


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


# Bulk data paths are kept relative to the instance (`imaging.dicom.BULK`). The json
# module escapes every quote inside a string, so this key and quote, unescaped, start
# a BulkDataURI member and nothing else.
_URI = b'"BulkDataURI":"'
_RELATIVE_URI = _URI + BULK.encode()
# Headers kept before bulk data had paths hold an empty URI instead.
_STALE_URI = _URI + b'"'


# Headers kept before NaN and infinity were written as text hold them as bare JSON
# tokens, which JSON does not have (values always stand in a "Value" array).
_NOT_JSON = re.compile(rb"[\[,]-?(?:NaN|Infinity)")


def header_stale(header_json: bytes) -> bool:
    """Whether a kept header predates bulk data paths (an empty BulkDataURI) or holds
    NaN or infinity as bare tokens; either is rebuilt."""
    return _STALE_URI in header_json or _holds_non_json(header_json)


class _BareToken(Exception):
    pass


def _bare_token(name: str) -> Any:
    raise _BareToken(name)


def _holds_non_json(header_json: bytes) -> bool:
    # Two substring scans first: the expression runs only on the rare header that may.
    if not (b"NaN" in header_json or b"Infinity" in header_json):
        return False
    if not _NOT_JSON.search(header_json):
        return False
    # The expression matches text values too ("CT head,NaN protocol"): only a parse
    # tells a bare token from text. Without it such a header counted as stale forever,
    # and each metadata read parsed the stored object instead.
    try:
        json.loads(header_json, parse_constant=_bare_token)
    except (_BareToken, ValueError):
        return True
    return False


def metadata_for_instance(
    header_json: bytes, *, instance_uri: str, pixel: tuple[str, str] | None
) -> bytes | None:
    """A header JSON object with its BulkDataURIs under `instance_uri`, without parsing,
    and the pixel data's added (`pixel`: its tag and VR) when it has pixel data; None
    for a header kept before bulk data had paths or before NaN and infinity were
    written as text, which must be rebuilt."""
    if header_stale(header_json):
        return None
    return _with_uris(header_json, uris=_URI in header_json, instance_uri=instance_uri, pixel=pixel)


def metadata_item(
    header: dict[str, Any], *, instance_uri: str, pixel: tuple[str, str] | None
) -> bytes:
    """The same for a header parsed at read time (rows stored before the cache, pseudonyms)."""
    header_json = json.dumps(header, separators=(",", ":")).encode()
    uris = _URI in header_json
    return _with_uris(header_json, uris=uris, instance_uri=instance_uri, pixel=pixel)


def _with_uris(
    header_json: bytes, *, uris: bool, instance_uri: str, pixel: tuple[str, str] | None
) -> bytes:
    # The instance's bulk data URL, escaped as a JSON string's contents.
    bulk = json.dumps(f"{instance_uri}/{BULK}")[1:-1].encode()
    if uris:
        header_json = header_json.replace(_RELATIVE_URI, _URI + bulk)
    if pixel is None:
        return header_json
    tag, vr = pixel
    pixel_json = b'"%s":{"vr":"%s","BulkDataURI":"%s%s"}' % (
        tag.encode(),
        vr.encode(),
        bulk,
        tag.encode(),
    )
    separator = b"," if header_json.strip() != b"{}" else b""
    return header_json.rstrip()[:-1] + separator + pixel_json + b"}"
