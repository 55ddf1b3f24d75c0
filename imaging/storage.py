"""Private object storage per clinic: local filesystem or S3-compatible.

Objects are written under opaque random keys, `<tenant uuid>/<random>`; no UID, name
or date appears in a path. This storage never produces a URL: everything is served
through the portal, which decrypts and checks it.
"""

from __future__ import annotations

import io
import os
import re
import secrets
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from functools import lru_cache
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError
from django.conf import settings
from django.core.files.base import File
from django.core.files.storage import FileSystemStorage, Storage
from storages.backends.s3 import S3Storage
from storages.utils import clean_name

from portal.probes import PROBE_CLIENT_CONFIG
from tenants.models import Tenant


class NoPublicURL(Exception):
    """Private storage has no URLs."""


class PrivateFileSystemStorage(FileSystemStorage):
    """Files 0600 in directories 0700, fsynced before a save returns."""

    def __init__(self, location: str) -> None:
        super().__init__(
            location=location, file_permissions_mode=0o600, directory_permissions_mode=0o700
        )

    def url(self, name: str | None) -> str:
        raise NoPublicURL("private storage has no URLs")

    def _save(self, name: str, content: File) -> str:
        path = self.write_file(name, content)
        sync_directory(path.parent)  # the rename itself must survive a power cut
        return name

    def write_file(self, name: str, content: File) -> Path:
        """Write and fsync `name` under a temporary name, then rename it into place.

        The caller fsyncs the directory (`sync_directory`), once for many files.
        """
        path = Path(self.path(name))
        if not path.parent.is_dir():
            _make_directories(path.parent)
        temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                for chunk in content.chunks():
                    handle.write(chunk)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return path


def _make_directories(directory: Path) -> None:
    """Create `directory` and any missing parents, each new entry made durable in its
    parent (a clinic's first object must not vanish with its new folder on a power cut)."""
    missing = []
    while not directory.is_dir() and directory != directory.parent:
        missing.append(directory)
        directory = directory.parent
    for new in reversed(missing):
        new.mkdir(mode=0o700, exist_ok=True)  # another writer may have just made it
        sync_directory(new.parent)


def sync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PrivateS3Storage(S3Storage):
    default_acl = "private"
    querystring_auth = True
    file_overwrite = False

    def url(self, name: str, parameters: Any = None, expire: Any = None, http_method: Any = None):
        raise NoPublicURL("private storage has no URLs")


class IterableFile(io.RawIOBase):
    """A read-only file over an iterator of byte chunks (streams into storage)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks: Iterator[bytes] = iter(chunks)
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        while not self._buffer:
            try:
                self._buffer = next(self._chunks)
            except StopIteration:
                return 0
        size = min(len(target), len(self._buffer))
        target[:size] = self._buffer[:size]
        self._buffer = self._buffer[size:]
        return size


@lru_cache(maxsize=256)
def _s3_storage(bucket: str, region: str, *, probe: bool = False) -> PrivateS3Storage:
    return PrivateS3Storage(
        bucket_name=bucket,
        region_name=region or settings.STORAGE_S3_DEFAULT_REGION,
        endpoint_url=settings.STORAGE_S3_ENDPOINT_URL,
        access_key=settings.STORAGE_S3_ACCESS_KEY_ID,
        secret_key=settings.STORAGE_S3_SECRET_ACCESS_KEY,
        **({"client_config": PROBE_CLIENT_CONFIG} if probe else {}),
    )


def bucket_storage(bucket: str, region: str = "") -> Storage:
    """A private S3 bucket on the configured endpoint (one client per bucket and region)."""
    return _s3_storage(bucket, region)


def storage_for(tenant: Tenant) -> Storage:
    """The clinic's storage (data residency: backend, bucket and region per clinic)."""
    if tenant.storage_backend == Tenant.StorageBackend.S3:
        return _s3_storage(
            tenant.storage_bucket or settings.STORAGE_S3_DEFAULT_BUCKET, tenant.storage_region
        )
    return PrivateFileSystemStorage(str(settings.PORTAL_STORAGE_ROOT))


def storage_ready_check() -> None:
    """Raise unless every storage a clinic writes to can be reached: the local root
    takes a file (made 0700, as a first object would make it, if missing) and each S3
    bucket an active clinic names answers."""
    from tenants.models import Tenant

    root = Path(settings.PORTAL_STORAGE_ROOT)
    if not root.is_dir():
        _make_directories(root)
    probe = root / f".readyz-{secrets.token_hex(8)}"
    os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    probe.unlink()
    buckets = (
        Tenant.objects.filter(status=Tenant.Status.ACTIVE, storage_backend=Tenant.StorageBackend.S3)
        .values_list("storage_bucket", "storage_region")
        .distinct()
    )
    for bucket, region in buckets:
        bucket = bucket or settings.STORAGE_S3_DEFAULT_BUCKET
        _s3_storage(bucket, region, probe=True).connection.meta.client.head_bucket(Bucket=bucket)


OBJECT_NAME = re.compile(r"[0-9a-f]{32}")
# `write_file`'s temporary name for a write under way, left behind by a crash.
PARTIAL_NAME = re.compile(r"\.[0-9a-f]{32}\.[0-9a-f]{8}\.part")


def object_key_new(tenant: Tenant) -> str:
    return f"{tenant.pk}/{secrets.token_hex(16)}"


def object_key_is_ours(key: str, *, tenant: Tenant) -> bool:
    """Whether `key` has the shape of a key `object_key_new` made for `tenant` (or of
    a write of one cut short): what the orphan sweep may delete, and nothing else that
    happens to share the prefix (audit checkpoints put beside the objects, say)."""
    prefix, _, name = key.partition("/")
    return prefix == str(tenant.pk) and bool(
        OBJECT_NAME.fullmatch(name) or PARTIAL_NAME.fullmatch(name)
    )


def object_write(storage: Storage, key: str, chunks: Iterable[bytes]) -> None:
    saved = storage.save(key, _readable(key, chunks))
    if saved != key:  # random keys never collide; if one did, do not guess
        storage.delete(saved)
        raise RuntimeError("object key collision")


@lru_cache(maxsize=1)
def _writers() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(
        max_workers=settings.STORAGE_WRITE_THREADS, thread_name_prefix="object-write"
    )


# A forked child (a prefork worker) has none of its parent's threads: it makes its own pool.
os.register_at_fork(after_in_child=_writers.cache_clear)


def object_write_many(storage: Storage, objects: Sequence[tuple[str, Iterable[bytes]]]) -> None:
    """Write several objects; every one is durable when this returns, or it raises.

    The writes overlap on a small thread pool: file writes, fsyncs and S3 uploads wait on
    the disk or the network and release the GIL. On the local filesystem each file is
    fsynced and each directory once for the batch, not once per file. On an error every
    write has finished (or failed) before it is raised, so the caller can delete them all.
    """
    local = isinstance(storage, PrivateFileSystemStorage)

    def write(key: str, chunks: Iterable[bytes]) -> None:
        if not local:
            object_write(storage, key, chunks)
        elif storage.exists(key):  # as object_write: random keys never collide; never guess
            raise RuntimeError("object key collision")
        else:
            storage.write_file(key, _readable(key, chunks))  # type: ignore[attr-defined]

    futures = [_writers().submit(write, key, chunks) for key, chunks in objects]
    wait(futures)
    for future in futures:
        future.result()  # the first failure, if any
    if local:
        for directory in {Path(storage.path(key)).parent for key, _ in objects}:
            sync_directory(directory)


def _readable(key: str, chunks: Iterable[bytes]) -> File:
    return File(io.BufferedReader(IterableFile(chunks), 1024 * 1024), key)


def object_exists(storage: Storage, key: str) -> bool:
    return storage.exists(key)


def object_open(storage: Storage, key: str) -> Any:
    """A binary reader of the stored object, read front to back; FileNotFoundError if
    there is none."""
    if isinstance(storage, S3Storage):
        return _s3_body(storage, key)
    return storage.open(key, "rb")


def _s3_body(storage: S3Storage, key: str) -> Any:
    # The response body, read as it arrives: django-storages' S3File downloads the whole
    # object into memory before its first byte can be read, and objects reach 1 GiB.
    name = storage._normalize_name(clean_name(key))
    try:
        return storage.bucket.Object(name).get()["Body"]
    except ClientError as exc:
        if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
            raise FileNotFoundError(f"no stored object {key}") from None
        raise


def object_delete(storage: Storage, key: str) -> None:
    storage.delete(key)


def object_delete_quietly(storage: Storage, key: str) -> bool:
    """Delete an object no row names; False if that failed (the orphan sweep removes it).

    For clean-up after the fact, where a storage error must not undo what succeeded.
    """
    try:
        object_delete(storage, key)
    except Exception:  # any backend's error: local OSError, S3 ClientError, ...
        return False
    return True


def object_keys(storage: Storage, prefix: str) -> list[str]:
    """Every key under `<prefix>/` (used by the orphan sweep)."""
    found: list[str] = []

    def walk(path: str) -> None:
        try:
            directories, files = storage.listdir(path)
        except FileNotFoundError:
            return
        # Dot files are none of the portal's, except a write a crash left half done
        # (`write_file`'s ".<key>.<random>.part"): no row names it, so the sweep takes it.
        found.extend(
            f"{path}/{name}" for name in files if not name.startswith(".") or name.endswith(".part")
        )
        for directory in directories:
            walk(f"{path}/{directory}")

    walk(prefix)
    return found
