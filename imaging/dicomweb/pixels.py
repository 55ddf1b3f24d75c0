"""Which form pixel data is sent in: the Accept header of frames and bulk data.

Uncompressed little-endian (`application/octet-stream`) is always offered; a frame is
decoded to it when it is stored compressed. A frame stored compressed is also offered as
stored, its bitstream untouched, to a client that asks for its compressed media type
(PS3.18 8.7.3.3.2): no decoding on the server, a fraction of the bytes on the wire, and
the colour space the metadata describes (a colour JPEG decoded here is RGB, while its
metadata still says YBR_FULL_422). Nothing is transcoded into a compressed syntax.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.uid import UID

from imaging.dicomweb.multipart import accept_range

OCTET_STREAM = "application/octet-stream"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"

# PS3.18 8.7.3.3.2: each compressed media type and the transfer syntaxes it carries,
# its default (what it means without a transfer-syntax parameter) first.
COMPRESSED_MEDIA_TYPES: dict[str, tuple[str, ...]] = {
    "image/jpeg": (
        "1.2.840.10008.1.2.4.70",
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.57",
    ),
    "image/dicom-rle": ("1.2.840.10008.1.2.5",),
    "image/jls": ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"),
    "image/jp2": ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"),
    "image/jpx": ("1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93"),
    "image/jphc": ("1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"),
}
# Names earlier editions and common clients use for the same types.
_ALIASES = {"image/x-dicom-rle": "image/dicom-rle", "image/x-jls": "image/jls"}
# What a multipart Accept's `type=` may name for octet-stream parts.
_OCTET_STREAM_PARTS = {OCTET_STREAM, "application/*", "*/*"}
_MULTIPART = {"multipart/related", "multipart/*"}


@dataclass(frozen=True, slots=True)
class PixelForm:
    """How pixel data goes out: each part's media type and transfer syntax, and whether
    one value goes as a single part rather than multipart/related."""

    media_type: str
    transfer_syntax: str
    single: bool

    @property
    def compressed(self) -> bool:
        return self.media_type != OCTET_STREAM

    @property
    def part_content_type(self) -> str:
        return f"{self.media_type}; transfer-syntax={self.transfer_syntax}"


@dataclass(frozen=True, slots=True)
class _Offer:
    quality: float
    position: int
    media_type: str  # of each part: OCTET_STREAM or a compressed type
    transfer_syntax: str | None  # as asked for; None: no parameter
    single: bool
    label: str = ""  # the media type as asked for (an alias is answered as asked)


def pixel_offers(accept: str) -> list[_Offer]:
    """The forms of pixel data `accept` admits, most preferred first."""
    offers: list[_Offer] = []
    for position, item in enumerate((accept or "*/*").split(",")):
        media, params = accept_range(item)
        try:
            quality = float(params.get("q", "1"))
        except ValueError:
            continue
        if not 0 < quality <= 1:
            continue  # 0: "not this one" (RFC 9110 12.4.2); nan and the like: malformed
        syntax = params.get("transfer-syntax")
        part = params.get("type", OCTET_STREAM).lower()
        if media in (OCTET_STREAM, "application/*"):
            # application/* admits no multipart/related answer: one part, or nothing.
            offers.append(_Offer(quality, position, OCTET_STREAM, syntax, single=True))
        elif _ALIASES.get(media, media) in COMPRESSED_MEDIA_TYPES:
            offers.append(
                _Offer(quality, position, _ALIASES.get(media, media), syntax, True, label=media)
            )
        elif media == "*/*" or (media in _MULTIPART and part in _OCTET_STREAM_PARTS):
            offers.append(_Offer(quality, position, OCTET_STREAM, syntax, single=False))
        elif media in _MULTIPART and _ALIASES.get(part, part) in COMPRESSED_MEDIA_TYPES:
            offers.append(
                _Offer(quality, position, _ALIASES.get(part, part), syntax, False, label=part)
            )
    return sorted(offers, key=lambda offer: (-offer.quality, offer.position))


def _matches(offer: _Offer, stored: str | None) -> str | None:
    """The transfer syntax `offer` gets for pixel data stored in `stored`, or None."""
    if offer.media_type == OCTET_STREAM:
        return EXPLICIT_VR_LE if offer.transfer_syntax in (None, "*", EXPLICIT_VR_LE) else None
    syntaxes = COMPRESSED_MEDIA_TYPES[offer.media_type]
    if stored not in syntaxes:
        return None
    if offer.transfer_syntax in (stored, "*") or (
        offer.transfer_syntax is None and stored == syntaxes[0]
    ):
        return stored
    return None


def pixel_form(offers: list[_Offer], *, parts: int, stored: str | None) -> PixelForm | None:
    """The most preferred form of `offers` that can carry `parts` values stored in the
    transfer syntax `stored` (None: decoded only, as bulk data is); None if there is none.

    A single part carries one value; several need a multipart offer.
    """
    for offer in offers:
        if offer.single and parts != 1:
            continue
        syntax = _matches(offer, stored)
        if syntax is not None:
            return PixelForm(offer.label or offer.media_type, syntax, single=offer.single)
    return None


def any_pixel_form(offers: list[_Offer], *, parts: int) -> bool:
    """Whether `offers` admit some form for some stored transfer syntax (checked before
    the instance is looked up, so a 406 then says nothing about it)."""
    return any(
        pixel_form(offers, parts=parts, stored=stored) is not None
        for stored in (None, *(s for syntaxes in COMPRESSED_MEDIA_TYPES.values() for s in syntaxes))
    )


def not_offered_message(*, stored: str | None, parts: int) -> str:
    """What to ask for instead, for frames stored in `stored` (None: offered decoded
    only)."""
    single = "; one frame as application/octet-stream" if parts == 1 else ""
    decoded = f'multipart/related; type="{OCTET_STREAM}" (decoded){single}'
    media = next((m for m, syntaxes in COMPRESSED_MEDIA_TYPES.items() if stored in syntaxes), None)
    if media is None:
        return f"These frames are offered as {decoded}."
    return (
        f"These frames are stored as {UID(stored).name} ({stored}). They are offered as "
        f'multipart/related; type="{media}"; transfer-syntax={stored} (or transfer-syntax=*), '
        f"as stored, or as {decoded}."
    )


def sent_transfer_syntax(media_type: str, params: dict[str, str]) -> str | None:
    """The transfer syntax a part of compressed pixel data sent as `media_type` is in:
    its `transfer-syntax` parameter, or the type's default; None if the type carries no
    compressed syntax or the parameter names one it cannot carry."""
    syntaxes = COMPRESSED_MEDIA_TYPES.get(_ALIASES.get(media_type, media_type))
    if syntaxes is None:
        return None
    syntax = params.get("transfer-syntax", syntaxes[0]).strip('"')
    return syntax if syntax in syntaxes else None
