"""multipart/related bodies for STOW-RS (parsing) and WADO-RS (streaming)."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterable, Iterator
from email.message import Message
from email.utils import collapse_rfc2231_value
from typing import NamedTuple


class MultipartError(ValueError):
    """The body is not well-formed multipart/related."""


def content_type_parameters(header: str) -> tuple[str, dict[str, str]]:
    message = Message()
    message["Content-Type"] = header
    # RFC 2231 parameters (`type*=utf-8''...`) come back as tuples: collapsed to text.
    params = {
        k.lower(): v if isinstance(v, str) else collapse_rfc2231_value(v)
        for k, v in message.get_params(failobj=[])[1:]
    }
    return message.get_content_type(), params


def accept_range(item: str) -> tuple[str, dict[str, str]]:
    """One range of an Accept header: its media type, lower case, and its parameters.

    A bare `*` is how some old HTTP stacks (Java's among them) write `*/*`; parsed as a
    Content-Type it would read as text/plain, as would any other item without a slash.
    """
    media, _, rest = item.strip().partition(";")
    media = media.strip().lower()
    _, params = content_type_parameters(f"x/x;{rest}" if rest else "x/x")
    return ("*/*" if media == "*" else media), params


def new_boundary() -> str:
    return secrets.token_hex(16)


def related_stream(
    parts: Iterable[tuple[str, Iterable[bytes]]], *, boundary: str | None = None
) -> tuple[str, Iterator[bytes]]:
    """A boundary and an iterator of body bytes for (part content type, chunks) pairs."""
    boundary = boundary or new_boundary()

    def body() -> Iterator[bytes]:
        # Each part's trailing CRLF goes out with the next delimiter: one small write
        # between two parts' bytes, not two.
        separator = b""
        for content_type, chunks in parts:
            yield separator + _part_head(boundary, content_type)
            yield from chunks
            separator = b"\r\n"
        yield separator + _closing(boundary)

    return boundary, body()


def related_length(boundary: str, parts: Iterable[tuple[str, int]]) -> int:
    """The length of the body `related_stream` yields for (content type, size) parts."""
    return sum(len(_part_head(boundary, kind)) + size + 2 for kind, size in parts) + len(
        _closing(boundary)
    )


def _part_head(boundary: str, content_type: str) -> bytes:
    return f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode()


def _closing(boundary: str) -> bytes:
    return f"--{boundary}--\r\n".encode()


class BodyTooLarge(MultipartError):
    """A body without a Content-Length grew past the server's limit while being read."""


def limited_reader(read: Callable[[int], bytes], *, limit: int) -> Callable[[int], bytes]:
    """`read`, refusing to go past `limit` bytes in total (for chunked bodies)."""
    seen = 0

    def bounded(size: int) -> bytes:
        nonlocal seen
        data = read(size)
        seen += len(data)
        if seen > limit:
            raise BodyTooLarge("The request is larger than this server accepts.")
        return data

    return bounded


class PartTooLarge(Exception):
    """A part exceeded the per-part limit; its bytes were discarded."""


class Part(NamedTuple):
    """One part of a multipart/related body."""

    type: str  # media type, lower case, without parameters
    payload: bytes | PartTooLarge
    params: dict[str, str]  # of its Content-Type (a `transfer-syntax`, say)
    location: str  # its Content-Location, or ""


def iter_related_parts(
    read: Callable[[int], bytes],
    content_type: str,
    *,
    max_part_bytes: int,
    chunk_size: int = 1 << 20,
) -> Iterator[Part]:
    """Stream the parts of a multipart/related body.

    Memory stays at one part plus one read chunk, however large the request: each part
    is handed over as soon as its closing delimiter arrives.
    """
    _, params = content_type_parameters(content_type)
    boundary = params.get("boundary", "")
    if not boundary or not re.fullmatch(r"[0-9A-Za-z'()+_,\-./:=? ]{1,70}", boundary):
        raise MultipartError("The multipart boundary is missing or invalid.")
    delimiter = b"\r\n--" + boundary.encode()
    # A delimiter not found in the buffer can only start in its last `keep` bytes.
    keep = len(delimiter) - 1
    # One growing buffer, consumed from the front (`del` there is cheap for a
    # bytearray): each byte is copied in once and out once, however the reads split it.
    buffer = bytearray(b"\r\n")  # lets the first delimiter match like every later one
    eof = False

    def fill() -> bool:
        nonlocal eof
        if eof:
            return False
        chunk = read(chunk_size)
        if not chunk:
            eof = True
            return False
        buffer.extend(chunk)
        return True

    # Preamble: everything before the first delimiter is ignored.
    while (start := buffer.find(delimiter)) < 0:
        del buffer[: max(0, len(buffer) - keep)]
        if not fill():
            raise MultipartError("The body does not contain the declared multipart boundary.")
    del buffer[: start + len(delimiter)]
    parts = 0
    while True:
        while len(buffer) < 2 and fill():
            pass
        if buffer.startswith(b"--"):
            break  # closing delimiter
        while (end := buffer.find(b"\r\n\r\n")) < 0:
            if len(buffer) > 16384 or not fill():
                raise MultipartError("A part's headers are malformed or never end.")
        headers = buffer[:end].decode("latin-1").strip().split("\r\n")
        del buffer[: end + 4]
        part_type, part_params, location = "application/octet-stream", {}, ""
        for line in headers:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-type":
                part_type, part_params = content_type_parameters(value.strip())
            elif name.strip().lower() == "content-location":
                location = value.strip()
        too_large = False
        searched = 0
        while (end := buffer.find(delimiter, searched)) < 0:
            searched = max(0, len(buffer) - keep)
            if searched > max_part_bytes:  # longer than allowed already: drop what came
                too_large = True
                del buffer[:searched]
                searched = 0
            if not fill():
                raise MultipartError("The body ends inside a part (no closing boundary).")
        payload: bytes | PartTooLarge = PartTooLarge()
        if not too_large and end <= max_part_bytes:
            with memoryview(buffer) as view, view[:end] as part:
                payload = bytes(part)
        del buffer[: end + len(delimiter)]
        parts += 1
        yield Part(part_type, payload, part_params, location)
    if not parts:
        raise MultipartError("The multipart body has no parts.")
