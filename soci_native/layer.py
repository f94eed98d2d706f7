"""One layer in, index data out: the Python face of the C core (soci_native._core)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, NamedTuple, Protocol, Union, overload

from soci_native import _core, tarzinfo
from soci_native.filestream import is_gzip_blob

FormatError = _core.FormatError
"""Corrupt or hostile input (a :class:`ValueError`); the message names the problem and offset."""

DEFAULT_SPAN_SIZE = 4 << 20
"""The reference's default span size: 4 MiB of uncompressed data."""

LayerSource = Union[str, "os.PathLike[str]", BinaryIO]


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


IndexSource = Union[str, "os.PathLike[str]", Readable]
"""What index_layer reads: a path, or anything with read() (readinto() is used if present)."""

class TarEntry(NamedTuple):
    """One tar member as Go's archive/tar reports it (what the reference puts in a TOC).

    ``type``: "reg" (typeflags 0 and 7), "dir", "symlink", "hardlink", "char", "block",
    "fifo", "pax_global" (g), "sparse" (old GNU S) or "unknown". The C core builds these tuples
    in this field order (``_core.ENTRY_FIELDS``), so making one costs no Python code."""

    name: str
    type: str
    typeflag: str
    offset: int
    size: int
    header_offset: int
    linkname: str
    mode: int
    uid: int
    gid: int
    uname: str
    gname: str
    mtime: int
    mtime_ns: int
    devmajor: int
    devminor: int
    pax: dict[str, str]
    sparse: bool


class Entries(Sequence[TarEntry]):
    """The tar entries of an index, left in the C core's table: a :class:`TarEntry` is made
    when an entry is looked at (building one per member up front cost a tenth of a
    large layer's indexing time). Equal to any sequence of equal entries."""

    __slots__ = ("_table",)

    def __init__(self, table: Any) -> None:
        self._table = table

    def __len__(self) -> int:
        return len(self._table)

    @overload
    def __getitem__(self, i: int) -> TarEntry: ...
    @overload
    def __getitem__(self, i: slice) -> list[TarEntry]: ...

    def __getitem__(self, i: int | slice) -> TarEntry | list[TarEntry]:
        if isinstance(i, slice):
            return [TarEntry._make(self._table[k]) for k in range(*i.indices(len(self)))]
        return TarEntry._make(self._table[i])

    def __iter__(self) -> Iterator[TarEntry]:
        t = self._table
        return (TarEntry._make(t[k]) for k in range(len(t)))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Entries):
            return bool(self._table == other._table)
        if isinstance(other, Sequence) and not isinstance(other, (str, bytes)):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<{len(self)} tar entries>"


@dataclass(frozen=True)
class LayerIndex:
    """Everything a zTOC needs from one layer."""

    compression: str  # "gzip" | "uncompressed"
    span_size: int
    compressed_size: int
    uncompressed_size: int
    checkpoints: bytes  # gzip: v2 checkpoint blob; uncompressed: TarZinfo FlatBuffer
    span_digests: list[str]
    entries: Sequence[TarEntry]  # an :class:`Entries` (made on access), or [] if not asked for
    blob_digest: str = ""  # "sha256:<hex>" of the whole layer blob as read
    num_entries: int = 0  # tar members, also when entries were not asked for
    xattr_free: bool = True  # no SCHILY.xattr record, no opaque-dir whiteout (soci-format 3.5)
    ztoc: bytes | None = None  # the zTOC, when index_layer was given a build_tool
    ztoc_error: str | None = None  # why there is no zTOC (sparse files, PAX global headers)

    @property
    def num_spans(self) -> int:
        return len(self.span_digests)


def _layer_index(r: dict[str, Any]) -> LayerIndex:
    return LayerIndex(r["compression"], r["span_size"], r["compressed_size"],
                      r["uncompressed_size"], r["checkpoints"], list(r["span_digests"]),
                      Entries(r["entries"]) if r["entries"] else [], r["blob_digest"],
                      r["num_entries"],
                      r["xattr_free"], r.get("ztoc"), r.get("ztoc_error"))


def index_layer(src: IndexSource, span_size: int = DEFAULT_SPAN_SIZE, *, mode: str = "auto",
                chunk_size: int = 1 << 20, build_tool: str | None = None,
                entries: bool = True, hash_thread: bool = True,
                spare_cores: _core.SpareCores | None = None) -> LayerIndex:
    """Indexes a gzip or plain tar layer in one pass.

    ``src`` is a path (read entirely in C) or a binary file object (read in ``chunk_size``/4
    pieces, e.g. an HTTP body). ``mode`` is "auto" (sniff the gzip magic), "gzip" or "tar".
    With ``build_tool`` (the zTOC's build_tool_identifier) the zTOC is serialised in C as
    well: ``.ztoc``, or ``.ztoc_error`` when the layer has entries a zTOC cannot describe.
    ``entries=False`` leaves ``.entries`` empty (``.num_entries`` still counts them) and
    frees the C table at once; otherwise it is an :class:`Entries` over that table.
    ``hash_thread=False`` hashes a path's spans on the calling thread instead of a second one
    (same results; cheaper when every core already runs an indexer); given ``spare_cores``
    (a :class:`soci_native._core.SpareCores` its build's jobs give idle cores to) it moves the
    rest of its hashing to a thread once a core is given.
    Raises :class:`FormatError` for corrupt input, :class:`OSError` for I/O errors.
    """
    if span_size <= 0:
        raise ValueError(f"span size must be positive, got {span_size}")
    if isinstance(src, (str, os.PathLike)):
        return _layer_index(_core.index_file(os.fspath(src), span_size, mode, build_tool,
                                             entries, hash_thread, spare_cores))
    ix = _core.Indexer(span_size, mode)
    # Four buffers in turn (chunk_size in all), fed with hold=True: the C hasher keeps the
    # last three until it is done with them, so reading and inflating never wait for it
    # between chunks.
    views = [memoryview(bytearray(max(chunk_size // 4, 1))) for _ in range(4)]
    k = 0
    while True:
        view = views[k]
        k = (k + 1) % len(views)
        n = src.readinto(view) if hasattr(src, "readinto") else _read_into(src, view)
        if not n:
            break
        ix.feed(view[:n], hold=True)
    return _layer_index(ix.finish(build_tool, entries))


def _read_into(src: Readable, view: memoryview) -> int:
    data = src.read(len(view))
    view[: len(data)] = data
    return len(data)


def _tar_zinfo(checkpoints: bytes) -> tarzinfo.TarZinfo | None:
    """The TarZinfo if ``checkpoints`` is one, None for a gzip checkpoint blob."""
    if is_gzip_blob(checkpoints):
        return None
    try:
        return tarzinfo.decode(checkpoints)
    except ValueError as e:
        raise FormatError(
            f"checkpoints are neither a gzip checkpoint blob nor a TarZinfo: {e}") from None


def _check_range(offset: int, length: int) -> None:
    if offset < 0 or length < 0:
        raise ValueError(f"offset and length must be >= 0, got {offset}, {length}")


def span_range(checkpoints: bytes, offset: int, length: int,
               compressed_size: int) -> tuple[int, int, int]:
    """``(first_span, start, end)``: the compressed bytes ``[start, end)`` that hold the
    uncompressed range, starting at span ``first_span``'s compressed start."""
    _check_range(offset, length)
    z = _tar_zinfo(checkpoints)
    if z is None:
        first, start, end = _core.span_range(checkpoints, offset, length, compressed_size)
        return int(first), int(start), int(end)
    first = offset // z.span_size
    last = (offset + max(length, 1) - 1) // z.span_size
    return first, first * z.span_size, min((last + 1) * z.span_size, z.size)


def extract(layer: LayerSource, checkpoints: bytes, offset: int, length: int) -> bytes:
    """Reads ``length`` bytes at uncompressed ``offset`` of a layer through its checkpoints,
    inflating from the nearest checkpoint only as far as needed."""
    _check_range(offset, length)
    z = _tar_zinfo(checkpoints)
    if z is not None:
        if offset + length > z.size:
            raise FormatError(f"range {offset}+{length} runs past the tar's end ({z.size})")
        return _read_at(layer, offset, length)
    if isinstance(layer, (str, os.PathLike)):
        return _core.extract_file(os.fspath(layer), checkpoints, offset, length)
    layer.seek(0, os.SEEK_END)
    size = layer.tell()
    first, start, end = span_range(checkpoints, offset, length, size)
    data = _read_at(layer, start, end - start)
    return extract_span(checkpoints, first, data, offset, length)


def extract_span(checkpoints: bytes, span_id: int, span_bytes: bytes | bytearray | memoryview,
                 offset: int, length: int) -> bytes:
    """Like :func:`extract`, from compressed bytes that start at span ``span_id``'s
    compressed start (soci-format 1.3) and may run on into later spans."""
    _check_range(offset, length)
    z = _tar_zinfo(checkpoints)
    if z is not None:
        rel = offset - span_id * z.span_size
        if rel < 0 or rel + length > len(span_bytes):
            raise FormatError(f"range {offset}+{length} is not inside the given span bytes")
        return bytes(span_bytes[rel:rel + length])
    return _core.extract_buffer(checkpoints, span_id, span_bytes, offset, length)


def _read_at(layer: LayerSource, offset: int, length: int) -> bytes:
    if isinstance(layer, (str, os.PathLike)):
        with open(layer, "rb") as f:
            return _read_at(f, offset, length)
    layer.seek(offset)
    data = layer.read(length)
    if len(data) != length:
        raise FormatError(
            f"layer ends before byte {offset + length} (read {len(data)} of {length})")
    return data


def checkpoint_table(checkpoints: bytes) -> Sequence[tuple[int, int, int]]:
    """``[(in, out, bits), ...]`` of a gzip checkpoint blob (validated)."""
    return [(int(a), int(b), int(c)) for a, b, c in _core.checkpoint_table(checkpoints)]


def checkpoint_record(checkpoints: bytes, i: int) -> bytes:
    """Checkpoint ``i``'s packed record (in, out, bits, 32 KiB window) as a v2 blob stores
    it; a v1 blob's unstored checkpoint 0 is synthesised (in 10, out 0, bits 0, zeros)."""
    size, header = _core.CHECKPOINT_SIZE, 12
    count = int.from_bytes(checkpoints[:4], "little")
    v1 = len(checkpoints) != header + count * size
    if v1 and i == 0:
        return (10).to_bytes(8, "little") + bytes(8 + 1 + _core.WINDOW_SIZE)
    at = header + (i - 1 if v1 else i) * size
    if not 0 <= i < count or at + size > len(checkpoints):
        raise FormatError(f"checkpoint {i} is not in the blob ({count} checkpoints)")
    return checkpoints[at:at + size]


def checkpoint_window(checkpoints: bytes, i: int) -> bytes:
    """The 32 KiB of uncompressed data before checkpoint ``i`` (soci-format 1.2)."""
    return checkpoint_record(checkpoints, i)[17:]
