"""`ztoc get-file`: find a path in a layer's zTOC the way the image would resolve it (its own
symbolic links, in this layer or the image's other layers), then stream the file's bytes out
in bounded pieces, reading only the spans each piece needs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO

from soci_native import pathwalk, ztoc
from soci_native.filestream import is_gzip_blob, pieces, stream_gzip
from soci_native.layer import extract, extract_span, span_range
from soci_native.pathwalk import PathError as PathError  # the error of resolve, as before

if TYPE_CHECKING:
    from soci_native.filestream import Writable
    from soci_native.images import ImageSource

Lookup = Callable[[str], "ztoc.FileMetadata | None"]


class SpanMismatch(Exception):
    """A registry sent bytes other than the ones the zTOC was built from."""


def lookup_in(raw: ztoc.ZtocBuffer) -> Lookup:
    """The entry whose cleaned name is the argument (see ztoc.name_lookup: a path walk looks
    up every directory on the way, and a directory a layer does not list misses)."""
    return ztoc.name_lookup(raw)


def resolve(path: str, here: Lookup, others: Sequence[Lookup] = ()) -> ztoc.FileMetadata:
    """pathwalk.resolve over zTOC lookups (see there)."""
    return pathwalk.resolve(path, here, others)


def stream_file(src: ImageSource, layer_digest: str, z: ztoc.Ztoc, f: ztoc.FileMetadata,
                out: Writable, span_size: int | None = None) -> int:
    """Writes file ``f`` of zTOC ``z`` (its layer ``layer_digest`` in ``src``) to ``out`` in
    pieces of a few spans, so memory stays bounded; returns how many layer bytes were read
    (compressed spans: range requests to a registry, or preads of a local blob). Spans read
    from a registry are checked against the zTOC's digests (:class:`SpanMismatch`)."""
    from soci_native.discover import is_registry
    from soci_native.ztoc_info import span_size as span_size_of

    if span_size is None:
        span_size = span_size_of(z.checkpoints, z.compression_algorithm)

    fetched = 0
    if is_registry(src):
        for off, n in pieces(f.uncompressed_offset, f.uncompressed_size, span_size):
            first = span_range(z.checkpoints, off, n, z.compressed_archive_size)[0]
            comp = verified_spans(src, layer_digest, z, off, n)
            out.write(extract_span(z.checkpoints, first, comp, off, n))
            fetched += len(comp)
        return fetched
    blob = src.blob_path(layer_digest)
    if blob is not None and is_gzip_blob(z.checkpoints):
        return stream_gzip(blob, z.checkpoints, z.compressed_archive_size,
                           f.uncompressed_offset, f.uncompressed_size, span_size, out)
    fh: BinaryIO | None = None if blob is not None else src.open_blob(layer_digest)
    layer: str | BinaryIO = blob if blob is not None else fh  # type: ignore[assignment]
    try:
        for off, n in pieces(f.uncompressed_offset, f.uncompressed_size, span_size):
            _, start, end = span_range(z.checkpoints, off, n, z.compressed_archive_size)
            out.write(extract(layer, z.checkpoints, off, n))
            fetched += end - start
    finally:
        if fh is not None:
            fh.close()
    return fetched


def verified_spans(src: Any, layer_digest: str, z: ztoc.Ztoc, off: int, size: int) -> bytes:
    """The compressed bytes of the whole spans holding ``[off, off + size)`` from a
    registry (one range request), each checked against its digest in the zTOC as a mount
    checks them: a registry's bytes are not output unless they are the ones the zTOC was
    built from."""
    import hashlib

    from soci_native.mount.spans import span_table

    spans = span_table(z)
    want = [(i, s) for i, s in enumerate(spans)
            if s.ustart < off + max(size, 1) and s.uend > off] or [(0, spans[0])]
    start, end = want[0][1].cstart, max(s.cend for _, s in want)
    comp = src.client.read_range(src.repository, layer_digest, start, end - start)
    for i, s in want:
        got = "sha256:" + hashlib.sha256(comp[s.cstart - start:s.cend - start]).hexdigest()
        if got != z.span_digests[i]:
            raise SpanMismatch(
                f"layer {layer_digest} span {i}: digest mismatch (bytes [{s.cstart}, "
                f"{s.cend}) hash to {got}, the zTOC says {z.span_digests[i]}): the registry "
                "sent other bytes than the zTOC was built from; refusing to output them")
    return bytes(comp)
