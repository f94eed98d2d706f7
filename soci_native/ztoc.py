"""zTOC: the per-layer SOCI artifact (soci-format 1.1), a FlatBuffer with the reference's v0.9
schema. The C core writes it (csrc/ztoc_write.c) in the reference's builder call order with
the reference FlatBuffers builder algorithm, so the same layer and span size give the same
bytes (and digest) as `soci create`. This module reads zTOCs back with bounds checks, ours
and the reference's (v1 checkpoint blobs, the omitted compression_algorithm field)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from soci_native import _core
from soci_native.layer import DEFAULT_SPAN_SIZE, IndexSource, LayerIndex, index_layer

if TYPE_CHECKING:
    import mmap

    # what the readers take: zTOC bytes, or a mapped blob (Store.map_blob)
    ZtocBuffer = bytes | mmap.mmap

VERSION = "0.9"
BUILD_TOOL_IDENTIFIER = "AWS SOCI CLI v0.2"
"""What the reference CLI writes; kept so our zTOCs are byte-identical to its."""

GZIP, UNCOMPRESSED = 1, 2  # enum CompressionAlgorithm
_ALGORITHMS = {GZIP: "gzip", UNCOMPRESSED: "uncompressed"}


class ZtocError(ValueError):
    """A zTOC that cannot be built from a layer, or bytes that are not a valid zTOC."""


@dataclass(frozen=True)
class FileMetadata:
    name: str
    type: str
    uncompressed_offset: int
    uncompressed_size: int
    linkname: str = ""
    mode: int = 0
    uid: int = 0
    gid: int = 0
    uname: str = ""
    gname: str = ""
    mod_time: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict[str, str] = field(default_factory=dict)  # all raw PAX records, by key


@dataclass(frozen=True)
class Ztoc:
    compression_algorithm: str  # "gzip" | "uncompressed"
    compressed_archive_size: int
    uncompressed_archive_size: int
    max_span_id: int
    span_digests: list[str]
    checkpoints: bytes
    files: list[FileMetadata]
    version: str = VERSION
    build_tool_identifier: str = BUILD_TOOL_IDENTIFIER

    @property
    def num_spans(self) -> int:
        return self.max_span_id + 1


def build(src: IndexSource, span_size: int = DEFAULT_SPAN_SIZE,
          build_tool: str = BUILD_TOOL_IDENTIFIER) -> tuple[LayerIndex, bytes]:
    """Indexes a layer and serialises its zTOC in one C pass; raises :class:`ZtocError` when
    the layer has entries a zTOC cannot describe: sparse files (their data is not
    contiguous), PAX global headers (they break the reference's header check of the next
    entry) and unknown types; such a layer is pulled whole at runtime."""
    ix = index_layer(src, span_size, build_tool=build_tool)
    if ix.ztoc is None:
        raise ZtocError(ix.ztoc_error or "no zTOC was built")
    return ix, ix.ztoc


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------- reading

def _file(f: tuple[Any, ...]) -> FileMetadata:
    (name, typ, off, size, link, mode, uid, gid, uname, gname, mtime, dmaj, dmin, xattrs) = f
    return FileMetadata(name, typ, off, size, link, mode, uid, gid, uname, gname, mtime, dmaj,
                        dmin, dict(xattrs))


def from_bytes(buf: ZtocBuffer, files: bool = True) -> Ztoc:
    """Parses a zTOC (ours or the reference's) in C with every offset checked; raises
    ZtocError on malformed input. ``files=False`` leaves the file list empty (all the rest,
    e.g. to read one file found with :func:`find_file`)."""
    try:
        r = _core.ztoc_parse(buf, files)
    except ValueError as e:
        raise ZtocError(str(e)) from None
    return Ztoc(r["algorithm"], r["compressed_size"], r["uncompressed_size"], r["max_span_id"],
                r["span_digests"], r["checkpoints"], [_file(f) for f in r["files"]],
                r["version"], r["build_tool"])


def find_file(buf: ZtocBuffer, path: str) -> FileMetadata | None:
    """The entry named ``path`` (leading "/" or "./" and trailing "/" ignored on both sides;
    the last one if repeated), found in C without building the whole file list."""
    want = path.lstrip("/")
    while want.startswith("./"):
        want = want[2:].lstrip("/")
    try:
        t = _core.ztoc_find(buf, want.rstrip("/").encode("utf-8", "surrogateescape"))
    except ValueError as e:
        raise ZtocError(str(e)) from None
    return None if t is None else _file(t)


def name_lookup(buf: ZtocBuffer) -> Callable[[str], FileMetadata | None]:
    """A lookup for many paths (already cleaned as index.clean_prefetch_path cleans them):
    the entry :func:`find_file` gives, else the one whose cleaned name ("a//b", "a/./b") is
    the path; the last one when repeated. Indexed in C in one pass over the names."""
    try:
        names = _core.ZtocNames(buf)
    except ValueError as e:
        raise ZtocError(str(e)) from None

    def find(path: str) -> FileMetadata | None:
        try:
            t = names.find(path.encode("utf-8", "surrogateescape"))
        except ValueError as e:
            raise ZtocError(str(e)) from None
        return None if t is None else _file(t)
    return find


def sorted_files(z: Ztoc) -> list[FileMetadata]:
    """Entries by uncompressed offset, as readers see them, checking what the reference
    checks: each entry's data starts after the previous entry's padded data."""
    files = sorted(z.files, key=lambda f: f.uncompressed_offset)
    check_order((f.name, f.uncompressed_offset, f.uncompressed_size) for f in files)
    return files


def check_order(entries: Iterable[tuple[str, int, int]]) -> None:
    """Raises ZtocError unless each (name, offset, size), taken by offset, starts after the
    previous entry's padded data."""
    next_header = 0
    for name, off, size in entries:
        if next_header > off:
            raise ZtocError(f"invalid TOC entry {name!r}: overlaps the previous entry")
        next_header = -(-(off + size) // 512) * 512
