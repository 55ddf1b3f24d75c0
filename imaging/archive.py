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
from imaging.dicom import deidentified_bytes
from imaging.models import Instance, Study
from imaging.services import instance_bytes, instances_chunks

README = (
    "This archive holds one imaging study as DICOM Part 10 files, one folder per series.\n"
    "It contains personal health information: keep it encrypted and delete it when done.\n"
)


def _lazy_deidentified(instance: Instance, actor: Actor, pseudonym: str) -> Iterator[bytes]:
    yield deidentified_bytes(instance_bytes(instance=instance, actor=actor), pseudonym=pseudonym)


def _entries_read_ahead(instances: Sequence[Instance], actor: Actor) -> list[Iterator[bytes]]:
    """One lazy entry body per instance, read a few instances ahead (`instances_chunks`).

    The zip consumes its entries in order, so entry n takes the n-th object; nothing is
    read until the zip reaches its first entry.
    """
    ahead = instances_chunks(instances=instances, actor=actor)

    def entry() -> Iterator[bytes]:
        yield from next(ahead)

    return [entry() for _ in instances]


def study_zip(
    *, study: Study, instances: list[Instance], actor: Actor, pseudonym: str | None = None
) -> ZipStream:
    """The study's instances as a zip; de-identified under `pseudonym` when given."""
    archive = ZipStream(compress_type=ZIP_STORED, sized=pseudonym is None)
    archive.add(README.encode(), "README.txt")
    series_dirs: dict[object, str] = {}
    bodies = _entries_read_ahead(instances, actor) if pseudonym is None else []
    for index, instance in enumerate(instances):
        series = instance.series
        if series.pk not in series_dirs:
            number = series.series_number if series.series_number is not None else 0
            modality = "".join(c for c in series.modality if c.isalnum())[:8] or "OT"
            series_dirs[series.pk] = f"series-{len(series_dirs) + 1:03d}-{number}-{modality}"
        position = instance.instance_number if instance.instance_number is not None else 0
        name = f"{series_dirs[series.pk]}/{position:05d}-{instance.pk.hex[:8]}.dcm"
        if pseudonym is None:
            archive.add(bodies[index], name, size=instance.size_bytes)
        else:
            archive.add(_lazy_deidentified(instance, actor, pseudonym), name)
    return archive


def zip_response(archive: ZipStream, *, study: Study) -> StreamingHttpResponse:
    response = StreamingHttpResponse(archive, content_type="application/zip")
    if archive.sized:  # de-identified entries are rewritten, so their size is unknown
        response["Content-Length"] = str(len(archive))
    response["Content-Disposition"] = f'attachment; filename="study-{study.pk.hex[:12]}.zip"'
    return response
