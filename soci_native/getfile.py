"""`ztoc get-file`: find a path in a layer's zTOC the way the image would resolve it (its own
symbolic links, in this layer or the image's other layers), then stream the file's bytes out
in bounded pieces, reading only the spans each piece needs."""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from soci_native import ztoc
from soci_native.index import clean_prefetch_path
from soci_native.layer import extract, extract_span, span_range

if TYPE_CHECKING:
    from soci_native.images import ImageSource

MAX_LINKS = 40  # as Linux's path walk
PIECE = 16 << 20  # uncompressed bytes per piece: the memory bound, whatever the file size

Lookup = Callable[[str], "ztoc.FileMetadata | None"]


class Writable(Protocol):
    def write(self, data: bytes, /) -> int: ...


class PathError(Exception):
    """A path that does not name a regular file in the layer; the message says why."""


class SpanMismatch(Exception):
    """A registry sent bytes other than the ones the zTOC was built from."""


def lookup_in(raw: ztoc.ZtocBuffer) -> Lookup:
    """The entry whose cleaned name is the argument (see ztoc.name_lookup: a path walk looks
    up every directory on the way, and a directory a layer does not list misses)."""
    return ztoc.name_lookup(raw)


def resolve(path: str, here: Lookup, others: Sequence[Lookup] = ()) -> ztoc.FileMetadata:
    """The regular file ``path`` names in this layer (``here``), following symbolic links
    in every directory component and at the end, and hard links. A link that is not in this
    layer is looked for in ``others`` (the image's other layers): merged-/usr images keep
    ``bin -> usr/bin`` in one layer and the files in another."""
    todo = [c for c in clean_prefetch_path(path).split("/") if c]
    done = ""
    hops = 0
    while todo:
        part = todo.pop(0)
        name = posixpath.join(done, part) if done else part
        f = here(name) or next((g for g in (o(name) for o in others)
                                if g is not None and g.type == "symlink"), None)
        if f is not None and f.type == "symlink":
            hops += 1
            if hops > MAX_LINKS:
                raise PathError(f"{path}: too many levels of symbolic links")
            base = "" if f.linkname.startswith("/") else posixpath.dirname(name)
            target = clean_prefetch_path(posixpath.join(base, f.linkname))
            todo = [c for c in target.split("/") if c] + todo
            done = ""
            continue
        done = name  # a directory a layer does not list is still a directory (its parent's)
    f = here(done)
    for _ in range(MAX_LINKS):
        if f is None or f.type != "hardlink":
            break
        f = here(clean_prefetch_path(f.linkname))
    if f is None:
        where = f" (resolved to /{done})" if done != clean_prefetch_path(path) else ""
        raise PathError(f"{path}: no such file in this layer{where}")
    if f.type != "reg":
        raise PathError(f"{path} is a {f.type}, not a regular file")
    return f


def pieces(offset: int, size: int, span_size: int) -> Iterator[tuple[int, int]]:
    """(offset, length) pieces of at most PIECE bytes (a few spans, so re-inflating from a
    piece's checkpoint costs little next to the piece)."""
    step = max(PIECE, 4 * span_size)
    end = offset + size
    while offset < end:
        n = min(step, end - offset)
        yield offset, n
        offset += n


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
