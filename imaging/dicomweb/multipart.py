"""multipart/related bodies for STOW-RS (parsing) and WADO-RS (streaming)."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Iterator
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP


class MultipartError(ValueError):
    """The body is not well-formed multipart/related."""


def content_type_parameters(header: str) -> tuple[str, dict[str, str]]:
    message = Message()
    message["Content-Type"] = header
    params = {k.lower(): v for k, v in message.get_params(failobj=[])[1:]}
    return message.get_content_type(), params


def parse_related(body: bytes, content_type: str) -> list[tuple[str, bytes]]:
    """Split a multipart/related body into (content type, payload) parts."""
    _, params = content_type_parameters(content_type)
    boundary = params.get("boundary")
    if not boundary or not re.fullmatch(r"[0-9A-Za-z'()+_,\-./:=? ]{1,70}", boundary):
        raise MultipartError("The multipart boundary is missing or invalid.")
    if f"--{boundary}".encode() not in body:
        raise MultipartError("The body does not contain the declared multipart boundary.")
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise MultipartError("The body is not a multipart message.")
    parts = []
    for part in message.iter_parts():
        payload = part.get_payload(decode=True)
        parts.append((part.get_content_type(), payload or b""))
    if not parts:
        raise MultipartError("The multipart body has no parts.")
    return parts


def related_stream(
    parts: Iterable[tuple[str, Iterable[bytes]]], *, boundary: str | None = None
) -> tuple[str, Iterator[bytes]]:
    """A boundary and an iterator of body bytes for (part content type, chunks) pairs."""
    boundary = boundary or secrets.token_hex(16)

    def body() -> Iterator[bytes]:
        for content_type, chunks in parts:
            yield f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode()
            yield from chunks
            yield b"\r\n"
        yield f"--{boundary}--\r\n".encode()

    return boundary, body()
