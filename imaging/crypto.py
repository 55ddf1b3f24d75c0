"""Envelope encryption and the segmented object format. No ORM here.

    master key (KeyProvider) -> tenant key (versioned, wrapped in the DB)
      -> study data key (random 256-bit, wrapped on the Study row)
        -> stored object: AES-256-GCM in fixed-size segments

Object format, version 1:

    header  = b"PIMG" | version (1 byte) | segment size (4 bytes, big endian) | nonce prefix (8)
    segment = AES-GCM(key, nonce = prefix | index (4 bytes), plaintext, aad) -> ciphertext | tag
    aad     = b"PIMG" | version | tenant id (16 bytes) | object id | index (4) | final (1)

Every segment but the last holds exactly `segment size` plaintext bytes; the last one
is flagged final in its associated data, so truncation, reordering, splicing objects
of another clinic, or moving an object under another name all fail authentication.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from uuid import UUID

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"PIMG"
VERSION = 1
SEGMENT_SIZE = 1024 * 1024
HEADER = struct.Struct(">4sBI8s")
TAG_BYTES = 16
KEY_BYTES = 32


class IntegrityError(Exception):
    """Stored bytes failed authentication or their recorded hash: never serve them."""


@dataclass(frozen=True, slots=True)
class ObjectContext:
    """What an object's ciphertext is bound to."""

    tenant_id: UUID
    object_id: str

    def aad(self, index: int, *, final: bool) -> bytes:
        return b"".join(
            (
                MAGIC,
                bytes([VERSION]),
                self.tenant_id.bytes,
                self.object_id.encode("utf-8"),
                struct.pack(">I?", index, final),
            )
        )


def new_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def wrap_key(*, kek: bytes, key: bytes, context: bytes) -> bytes:
    """Encrypt a key under a key-encryption key, bound to `context`."""
    nonce = os.urandom(12)
    return nonce + AESGCM(kek).encrypt(nonce, key, context)


def unwrap_key(*, kek: bytes, wrapped: bytes, context: bytes) -> bytes:
    try:
        return AESGCM(kek).decrypt(wrapped[:12], wrapped[12:], context)
    except InvalidTag:
        raise IntegrityError("wrapped key failed authentication") from None


def _segments(chunks: Iterable[bytes], size: int) -> Iterator[tuple[bytes, bool]]:
    """Re-chunk a byte stream into (segment, is_final) of exactly `size` bytes."""
    buffer = bytearray()
    pending: bytes | None = None
    for chunk in chunks:
        buffer += chunk
        while len(buffer) >= size:
            if pending is not None:
                yield pending, False
            pending = bytes(buffer[:size])
            del buffer[:size]
    if buffer:
        if pending is not None:
            yield pending, False
        yield bytes(buffer), True
    elif pending is not None:
        yield pending, True
    else:
        yield b"", True


def encrypt_stream(
    chunks: Iterable[bytes], *, key: bytes, context: ObjectContext, segment_size: int = SEGMENT_SIZE
) -> Iterator[bytes]:
    """Yield the encrypted object for a plaintext stream, one segment at a time."""
    prefix = os.urandom(8)
    yield HEADER.pack(MAGIC, VERSION, segment_size, prefix)
    aead = AESGCM(key)
    for index, (segment, final) in enumerate(_segments(chunks, segment_size)):
        nonce = prefix + struct.pack(">I", index)
        yield aead.encrypt(nonce, segment, context.aad(index, final=final))


def encrypt_bytes(data: bytes, *, key: bytes, context: ObjectContext) -> bytes:
    return b"".join(encrypt_stream([data], key=key, context=context))


def decrypt_stream(
    read: Callable[[int], bytes], *, key: bytes, context: ObjectContext
) -> Iterator[bytes]:
    """Yield plaintext segments from a reader; memory stays at about two segments."""
    header = _read_exactly(read, HEADER.size)
    if len(header) != HEADER.size:
        raise IntegrityError("object header truncated")
    magic, version, segment_size, prefix = HEADER.unpack(header)
    if magic != MAGIC or version != VERSION or not 0 < segment_size <= 64 * SEGMENT_SIZE:
        raise IntegrityError("not an encrypted portal object")
    aead = AESGCM(key)
    step = segment_size + TAG_BYTES
    current = _read_exactly(read, step)
    index = 0
    while True:
        following = _read_exactly(read, step) if len(current) == step else b""
        final = not following
        if len(current) < TAG_BYTES:
            raise IntegrityError("object truncated")
        nonce = prefix + struct.pack(">I", index)
        try:
            yield aead.decrypt(nonce, current, context.aad(index, final=final))
        except InvalidTag:
            raise IntegrityError(f"segment {index} failed authentication") from None
        if final:
            return
        current, index = following, index + 1


def _read_exactly(read: Callable[[int], bytes], size: int) -> bytes:
    parts, remaining = [], size
    while remaining:
        part = read(remaining)
        if not part:
            break
        parts.append(part)
        remaining -= len(part)
    return b"".join(parts)


def decrypt_verified(
    read: Callable[[int], bytes],
    *,
    key: bytes,
    context: ObjectContext,
    sha256: str,
    size: int | None = None,
) -> Iterator[bytes]:
    """Decrypt and check the plaintext SHA-256 (and size, if given); the last chunk is
    released only if they match.

    Callers streaming to a client get everything but the final segment before the hash
    is known; the final segment is withheld and an IntegrityError raised on mismatch.
    The size matters to callers that announced a Content-Length from it.
    """
    digest = hashlib.sha256()
    held: bytes | None = None
    total = 0
    for segment in decrypt_stream(read, key=key, context=context):
        if held is not None:
            yield held
        digest.update(segment)
        total += len(segment)
        held = segment
    _matches(digest.hexdigest(), total, sha256=sha256, size=size)
    if held:
        yield held


def plaintext_check(data: bytes, *, sha256: str, size: int | None = None) -> None:
    """Raise IntegrityError unless `data` has the recorded SHA-256 (and size, if given)."""
    _matches(hashlib.sha256(data).hexdigest(), len(data), sha256=sha256, size=size)


def _matches(hexdigest: str, total: int, *, sha256: str, size: int | None) -> None:
    if hexdigest != sha256:
        raise IntegrityError("plaintext hash does not match the recorded SHA-256")
    if size is not None and total != size:
        raise IntegrityError("plaintext size does not match the recorded size")
