"""Streaming one file of a local gzip layer out through the layer's checkpoints, in pieces of
a few spans (memory stays bounded whatever the file's size), each read straight from the
blob by the C core.

Imports only the C core: `ztoc get-file`'s fast path (soci_native/quick_getfile.py) and the
click command (soci_native/getfile.py) stream with this same code."""

from __future__ import annotations

from soci_native import _core

TYPE_CHECKING = False  # not typing's: see pathwalk.py
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Protocol


    Blob = bytes | memoryview  # a checkpoint blob: a zTOC's copy or a view into the mapped zTOC
    class Writable(Protocol):
        def write(self, data: bytes, /) -> int: ...

PIECE = 16 << 20  # uncompressed bytes per piece: the memory bound, whatever the file size


def is_gzip_blob(checkpoints: Blob) -> bool:
    """Whether a zTOC's checkpoint blob is the gzip form (a count, then fixed-size
    checkpoints: soci-format 1.3) rather than a plain tar's TarZinfo."""
    if len(checkpoints) < 12:
        return False
    count = int.from_bytes(checkpoints[:4], "little", signed=True)
    body = len(checkpoints) - 12
    size = _core.CHECKPOINT_SIZE
    return count >= 0 and body in (count * size, (count - 1) * size)  # v2 or v1 length form


def gzip_span_size(checkpoints: Blob) -> int:
    """The span size a gzip checkpoint blob records."""
    return int.from_bytes(checkpoints[4:12], "little", signed=True)


def pieces(offset: int, size: int, span_size: int) -> Iterator[tuple[int, int]]:
    """(offset, length) pieces of at most PIECE bytes (a few spans, so re-inflating from a
    piece's checkpoint costs little next to the piece)."""
    step = max(PIECE, 4 * span_size)
    end = offset + size
    while offset < end:
        n = min(step, end - offset)
        yield offset, n
        offset += n


def stream_gzip(layer: str, checkpoints: Blob, compressed_size: int, offset: int, size: int,
                span_size: int, out: Writable) -> int:
    """Writes ``size`` bytes at uncompressed ``offset`` of the gzip layer blob at path
    ``layer`` to ``out``; returns how many compressed bytes the pieces' spans cover (what
    was read of the layer)."""
    fetched = 0
    for off, n in pieces(offset, size, span_size):
        _, start, end = _core.span_range(checkpoints, off, n, compressed_size)
        out.write(_core.extract_file(layer, checkpoints, off, n))
        fetched += int(end) - int(start)
    return fetched
