"""A study as a zip, streamed: decrypted as it is sent, never written to disk.

Entries are stored (DICOM compresses poorly and the stream stays cheap), so the zip's
exact size is known before the first byte and the browser shows real progress.
Names carry numbers only; no patient name, ID or date goes into the archive's paths.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from django.http import StreamingHttpResponse
from zipstream import ZIP_STORED, ZipStream

from audit.actors import Actor
from imaging.deidentify import deidentified_bytes
from imaging.models import Instance, Study
from imaging.services import instances_chunks

README = (
    "This archive holds one imaging study as DICOM Part 10 files, one folder per series.\n"
    "It contains personal health information: keep it encrypted and delete it when done.\n"
)


def _entries_read_ahead(
    instances: Sequence[Instance], actor: Actor, pseudonym: str | None
) -> list[Iterator[bytes]]:
    """One lazy entry body per instance, read a few instances ahead (`instances_chunks`),
    de-identified under `pseudonym` when given.

    The zip consumes its entries in order, so entry n takes the n-th object; nothing is
    read until the zip reaches its first entry. De-identifying rewrites the whole
    object, so it runs here, on the sending thread, while the next objects are read.
    """
    ahead = instances_chunks(instances=instances, actor=actor)

    def entry() -> Iterator[bytes]:
        if pseudonym is None:
            yield from next(ahead)
        else:
            yield deidentified_bytes(b"".join(next(ahead)), pseudonym=pseudonym)

    return [entry() for _ in instances]


def study_zip(
    *, study: Study, instances: list[Instance], actor: Actor, pseudonym: str | None = None
) -> ZipStream:
    """The study's instances as a zip; de-identified under `pseudonym` when given."""
    archive = ZipStream(compress_type=ZIP_STORED, sized=pseudonym is None)
    archive.add(README.encode(), "README.txt")
    series_dirs: dict[object, str] = {}
    bodies = _entries_read_ahead(instances, actor, pseudonym)
    for index, instance in enumerate(instances):
        series = instance.series
        if series.pk not in series_dirs:
            number = series.series_number if series.series_number is not None else 0
            modality = "".join(c for c in series.modality if c.isalnum())[:8] or "OT"
            series_dirs[series.pk] = f"series-{len(series_dirs) + 1:03d}-{number}-{modality}"
        position = instance.instance_number if instance.instance_number is not None else 0
        name = f"{series_dirs[series.pk]}/{position:05d}-{instance.pk.hex[:8]}.dcm"
        # De-identified entries are rewritten, so their size is known only once sent.
        archive.add(bodies[index], name, size=instance.size_bytes if pseudonym is None else None)
    return archive


def zip_response(archive: ZipStream, *, study: Study) -> StreamingHttpResponse:
    response = StreamingHttpResponse(archive, content_type="application/zip")
    if archive.sized:  # de-identified entries are rewritten, so their size is unknown
        response["Content-Length"] = str(len(archive))
    response["Content-Disposition"] = f'attachment; filename="study-{study.pk.hex[:12]}.zip"'
    return response
