"""The master key, root of the envelope-encryption hierarchy (see ARCHITECTURE.md).

The embedded default keeps a random 256-bit key in a file under PORTAL_DATA_DIR,
created with mode 0600 by `manage.py init_master_key` (run by `make run`).
Production passes it through PORTAL_MASTER_KEY / PORTAL_MASTER_KEY_FILE or a KMS
provider. It is never generated implicitly outside that command.
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
import secrets
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

MASTER_KEY_BYTES = 32


def _decode(text: str, source: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ImproperlyConfigured(f"{source} is not valid base64") from None
    if len(key) != MASTER_KEY_BYTES:
        raise ImproperlyConfigured(f"{source} must decode to {MASTER_KEY_BYTES} bytes")
    return key


def master_key_file_ensure(path: Path) -> bool:
    """Create the key file (0600) if absent. Returns True when it was created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(base64.b64encode(secrets.token_bytes(MASTER_KEY_BYTES)).decode("ascii"))
        handle.write("\n")
        handle.flush()
        # On disk before any key is wrapped under it: a power cut must not leave the
        # database holding keys wrapped by a key file that is empty or gone.
        os.fsync(handle.fileno())
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return True


def master_key_load() -> bytes:
    """The local master key, from the environment or the key file."""
    if settings.PORTAL_MASTER_KEY:
        return _decode(settings.PORTAL_MASTER_KEY, "PORTAL_MASTER_KEY")
    path = Path(settings.PORTAL_MASTER_KEY_PATH)
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise ImproperlyConfigured(
            f"No master key: set PORTAL_MASTER_KEY or create {path} with "
            "`python manage.py init_master_key`"
        ) from None
    if path.stat().st_mode & 0o077:
        raise ImproperlyConfigured(f"{path} must not be readable by group or others (chmod 600)")
    return _decode(text, str(path))


class KeyProvider:
    """Wraps and unwraps tenant keys under the master key (or a KMS key)."""

    def wrap(self, key: bytes, *, context: bytes) -> bytes:
        raise NotImplementedError

    def unwrap(self, wrapped: bytes, *, context: bytes) -> bytes:
        raise NotImplementedError


class LocalKeyProvider(KeyProvider):
    """The master key from PORTAL_MASTER_KEY or the key file (embedded default)."""

    def __init__(self, master_key: bytes | None = None) -> None:
        self._master_key = master_key

    @property
    def master_key(self) -> bytes:
        if self._master_key is None:
            self._master_key = master_key_load()
        return self._master_key

    def wrap(self, key: bytes, *, context: bytes) -> bytes:
        from imaging.crypto import wrap_key

        return b"L1" + wrap_key(kek=self.master_key, key=key, context=context)

    def unwrap(self, wrapped: bytes, *, context: bytes) -> bytes:
        from imaging.crypto import IntegrityError, unwrap_key

        if wrapped[:2] != b"L1":
            raise IntegrityError("tenant key was not wrapped by the local key provider")
        return unwrap_key(kek=self.master_key, wrapped=wrapped[2:], context=context)


# KMS's answers for a ciphertext it cannot or will not decrypt as asked.
KMS_REFUSALS = frozenset(
    {"InvalidCiphertextException", "IncorrectKeyException", "InvalidKeyUsageException"}
)


class AwsKmsKeyProvider(KeyProvider):
    """AWS KMS: tenant keys are encrypted by a KMS key and never leave KMS unwrapped.

    Set PORTAL_KEY_PROVIDER=aws-kms and PORTAL_KMS_KEY_ID (key id, ARN or alias); boto3
    takes credentials and region from its usual environment. The wrapping context is
    passed as the KMS EncryptionContext, so CloudTrail records which clinic key was used.
    """

    def __init__(self, key_id: str, client: object | None = None, *, config: object = None) -> None:
        self.key_id = key_id
        self._client = client
        self._config = config

    @property
    def client(self) -> object:
        if self._client is None:
            import boto3

            self._client = boto3.client("kms", config=self._config)
        return self._client

    def probing(self) -> AwsKmsKeyProvider:
        """The same key through a client whose calls give up within seconds (readiness
        probes); this provider itself when it was given its client."""
        return self if self._client is not None else _kms_probe_provider(self.key_id)

    def wrap(self, key: bytes, *, context: bytes) -> bytes:
        response = self.client.encrypt(  # type: ignore[attr-defined]
            KeyId=self.key_id, Plaintext=key, EncryptionContext={"portal": context.hex()}
        )
        return b"K1" + response["CiphertextBlob"]

    def unwrap(self, wrapped: bytes, *, context: bytes) -> bytes:
        from botocore.exceptions import ClientError

        from imaging.crypto import IntegrityError

        if wrapped[:2] != b"K1":
            raise IntegrityError("tenant key was not wrapped by KMS")
        try:
            response = self.client.decrypt(  # type: ignore[attr-defined]
                CiphertextBlob=wrapped[2:], EncryptionContext={"portal": context.hex()}
            )
        except ClientError as exc:
            # KMS saying the blob is not its own, or not for this context, is tampering
            # (audited as the local provider's failure is); an outage or a throttle is not.
            if exc.response.get("Error", {}).get("Code") in KMS_REFUSALS:
                raise IntegrityError("KMS refused to unwrap the tenant key") from None
            raise
        return response["Plaintext"]


_provider: KeyProvider | None = None


def key_provider() -> KeyProvider:
    """The configured provider (PORTAL_KEY_PROVIDER: local, the default, or aws-kms)."""
    global _provider
    if _provider is None:
        kind = getattr(settings, "PORTAL_KEY_PROVIDER", "local")
        if kind == "aws-kms":
            _provider = AwsKmsKeyProvider(settings.PORTAL_KMS_KEY_ID)
        elif kind == "local":
            _provider = LocalKeyProvider()
        else:
            raise ImproperlyConfigured(f"Unknown PORTAL_KEY_PROVIDER {kind!r}")
    return _provider


@functools.lru_cache(maxsize=4)
def _kms_probe_provider(key_id: str) -> AwsKmsKeyProvider:
    from portal.probes import PROBE_CLIENT_CONFIG

    return AwsKmsKeyProvider(key_id, config=PROBE_CLIENT_CONFIG)


def key_provider_check() -> None:
    """Raise unless the provider wraps a key and unwraps it again: the master key
    readable, or KMS reachable and letting the portal use its key."""
    provider = key_provider()
    if isinstance(provider, AwsKmsKeyProvider):
        provider = provider.probing()
    probe = secrets.token_bytes(MASTER_KEY_BYTES)
    context = b"portal-readiness-probe"
    if provider.unwrap(provider.wrap(probe, context=context), context=context) != probe:
        raise RuntimeError("the key provider returned another key than it wrapped")


def key_provider_reset() -> None:
    """Forget the cached provider (settings changed, e.g. in tests)."""
    global _provider
    _provider = None
