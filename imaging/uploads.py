"""Upload handling that never writes plaintext to disk.

Django's default handlers spool large uploads to plaintext temporary files. Here an
upload larger than the in-memory limit goes to an anonymous temporary file (unlinked
at creation) encrypted segment by segment under a key that exists only in this
process's memory: a crash leaves nothing readable behind.
"""

from __future__ import annotations

import io
import os
import struct
import tempfile
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.core.files.uploadhandler import FileUploadHandler, StopUpload
from django.http import HttpRequest

from imaging.crypto import SEGMENT_SIZE, TAG_BYTES, new_key

SPOOL_AAD = b"portal-upload-spool"


class EncryptedSpool:
    """Write-once, random-read encrypted scratch file."""

    def __init__(self, *, segment_size: int = SEGMENT_SIZE) -> None:
        directory = settings.PORTAL_SPOOL_DIR
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self._file = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115  (closed by close())
        self._aead = AESGCM(new_key())
        self._prefix = os.urandom(8)
        self._segment_size = segment_size
        self._buffer = bytearray()
        self._segments = 0
        self.size = 0

    def _nonce(self, index: int) -> bytes:
        return self._prefix + struct.pack(">I", index)

    def _flush_segment(self, data: bytes) -> None:
        aad = SPOOL_AAD + struct.pack(">I", self._segments)
        self._file.write(self._aead.encrypt(self._nonce(self._segments), data, aad))
        self._segments += 1

    def write(self, chunk: bytes) -> None:
        self._buffer += chunk
        self.size += len(chunk)
        while len(self._buffer) >= self._segment_size:
            self._flush_segment(bytes(self._buffer[: self._segment_size]))
            del self._buffer[: self._segment_size]

    def finish(self) -> None:
        if self._buffer or self._segments == 0:
            self._flush_segment(bytes(self._buffer))
            self._buffer.clear()
        self._file.flush()

    def read_segment(self, index: int) -> bytes:
        self._file.seek(index * (self._segment_size + TAG_BYTES))
        blob = self._file.read(self._segment_size + TAG_BYTES)
        aad = SPOOL_AAD + struct.pack(">I", index)
        return self._aead.decrypt(self._nonce(index), blob, aad)

    @property
    def segment_size(self) -> int:
        return self._segment_size

    def close(self) -> None:
        self._file.close()


class SpoolReader(io.RawIOBase):
    """Seekable plaintext view of an EncryptedSpool (zipfile needs seek)."""

    def __init__(self, spool: EncryptedSpool) -> None:
        self._spool = spool
        self._position = 0
        self._cached: tuple[int, bytes] | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._spool.size}
        self._position = max(0, base[whence] + offset)
        return self._position

    def readinto(self, target: Any) -> int:
        if self._position >= self._spool.size:
            return 0
        index, offset = divmod(self._position, self._spool.segment_size)
        if self._cached is None or self._cached[0] != index:
            self._cached = (index, self._spool.read_segment(index))
        segment = self._cached[1][offset:]
        size = min(len(target), len(segment))
        target[:size] = segment[:size]
        self._position += size
        return size


class SpooledBody(io.BufferedReader):
    """A request body as the ASGI handler received it: in memory up to
    FILE_UPLOAD_MAX_MEMORY_SIZE, past that in an EncryptedSpool, never in clear on disk.

    Django's ASGI handler reads the whole body into a SpooledTemporaryFile before the
    request is built, which rolls over to a plaintext temporary file.
    """

    def __init__(self, spool: EncryptedSpool) -> None:
        super().__init__(SpoolReader(spool), buffer_size=spool.segment_size)
        self._spool = spool

    def close(self) -> None:
        super().close()
        self._spool.close()


def body_append(body: io.BytesIO | EncryptedSpool, chunk: bytes) -> io.BytesIO | EncryptedSpool:
    """`body` with `chunk` written to it: a memory buffer past its limit moves to a spool."""
    if isinstance(body, io.BytesIO) and body.tell() + len(chunk) > (
        settings.FILE_UPLOAD_MAX_MEMORY_SIZE
    ):
        spool = EncryptedSpool()
        spool.write(body.getvalue())
        body = spool
    body.write(chunk)
    return body


def body_finished(body: io.BytesIO | EncryptedSpool) -> io.BufferedIOBase:
    """The received body, readable from its start."""
    if isinstance(body, io.BytesIO):
        body.seek(0)
        return body
    body.finish()
    return SpooledBody(body)


class EncryptedUploadedFile(UploadedFile):
    def __init__(self, spool: EncryptedSpool, *, name: str, content_type: str) -> None:
        self.spool = spool
        super().__init__(
            file=io.BufferedReader(SpoolReader(spool), 1024 * 1024),
            name=name,
            content_type=content_type,
            size=spool.size,
        )

    def close(self) -> None:
        super().close()
        self.spool.close()


@dataclass(frozen=True)
class UploadTooLarge:
    """A file of the request went past the spool's limit: the upload was stopped."""

    name: str
    limit_bytes: int


def upload_file_limit_bytes() -> int:
    """The largest single file (a DICOM file or a zip of them) an upload may carry."""
    return max(settings.INGEST_MAX_INSTANCE_BYTES, settings.INGEST_MAX_ZIP_TOTAL_BYTES)


def upload_too_large(request: HttpRequest) -> UploadTooLarge | None:
    """Why a request's files were cut off, once they have been read (request.FILES)."""
    return getattr(request, "upload_too_large", None)


class EncryptedSpoolUploadHandler(FileUploadHandler):
    """Spool uploads encrypted; refuse any single file over the configured limit."""

    def new_file(self, *args: Any, **kwargs: Any) -> None:
        super().new_file(*args, **kwargs)
        self.spool = EncryptedSpool()
        self.limit = upload_file_limit_bytes()

    def receive_data_chunk(self, raw_data: bytes, start: int) -> None:
        if self.spool.size + len(raw_data) > self.limit:
            self.spool.close()
            # The view then sees no files; this tells it which one and why.
            self.request.upload_too_large = UploadTooLarge(  # type: ignore[union-attr]
                name=self.file_name or "", limit_bytes=self.limit
            )
            raise StopUpload(connection_reset=True)
        self.spool.write(raw_data)
        return None

    def file_complete(self, file_size: int) -> EncryptedUploadedFile:
        self.spool.finish()
        return EncryptedUploadedFile(
            self.spool, name=self.file_name, content_type=self.content_type
        )
