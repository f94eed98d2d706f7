"""zTOC: the per-layer SOCI artifact (soci-format 1.1), a FlatBuffer with the reference's v0.9
schema. The C core writes it (csrc/ztoc_write.c) in the reference's builder call order with
the reference FlatBuffers builder algorithm, so the same layer and span size give the same
bytes (and digest) as `soci create`. This module reads zTOCs back with bounds checks, ours
and the reference's (v1 checkpoint blobs, the omitted compression_algorithm field)."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from soci_native.layer import DEFAULT_SPAN_SIZE, IndexSource, LayerIndex, TarEntry, index_layer

VERSION = "0.9"
BUILD_TOOL_IDENTIFIER = "AWS SOCI CLI v0.2"
"""What the reference CLI writes; kept so our zTOCs are byte-identical to its."""

GZIP, UNCOMPRESSED = 1, 2  # enum CompressionAlgorithm
_ALGORITHMS = {GZIP: "gzip", UNCOMPRESSED: "uncompressed"}
TOC_TYPES = ("reg", "dir", "symlink", "hardlink", "char", "block", "fifo")


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


def unsupported_entries(entries: Iterable[TarEntry]) -> list[TarEntry]:
    """Entries a zTOC cannot describe so that the reference snapshotter serves them right:
    sparse files (their data is not contiguous), PAX global headers (they break its header
    verification of the next entry) and unknown types. A layer with any gets no zTOC and is
    pulled whole at runtime, like a small layer."""
    return [e for e in entries if e.sparse or e.type not in TOC_TYPES]


def build(src: IndexSource, span_size: int = DEFAULT_SPAN_SIZE,
          build_tool: str = BUILD_TOOL_IDENTIFIER) -> tuple[LayerIndex, bytes]:
    """Indexes a layer and serialises its zTOC in one C pass; raises :class:`ZtocError` when
    the layer has entries a zTOC cannot describe (see :func:`unsupported_entries`)."""
    ix = index_layer(src, span_size, build_tool=build_tool)
    if ix.ztoc is None:
        raise ZtocError(ix.ztoc_error or "no zTOC was built")
    return ix, ix.ztoc


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------- reading

class _Reader:
    """Bounds-checked FlatBuffers table access (no generated code, no trust in offsets)."""

    def __init__(self, buf: bytes) -> None:
        self.buf = buf

    def _u32(self, at: int) -> int:
        if at < 0 or at + 4 > len(self.buf):
            raise ZtocError(f"offset {at} outside the {len(self.buf)}-byte zTOC")
        return int(struct.unpack_from("<I", self.buf, at)[0])

    def root(self) -> int:
        return self._u32(0)

    def field_pos(self, table: int, slot: int) -> int:
        vt = table - struct.unpack_from("<i", self.buf, table)[0] if table + 4 <= len(
            self.buf) else -1
        vt_len = struct.unpack_from("<H", self.buf, vt)[0] if 0 <= vt <= len(self.buf) - 4 else 0
        if vt_len < 4:
            raise ZtocError(f"bad vtable for table at {table}")
        if 4 + 2 * slot + 2 > vt_len:
            return 0
        off = struct.unpack_from("<H", self.buf, vt + 4 + 2 * slot)[0]
        return table + off if off else 0

    def scalar(self, table: int, slot: int, fmt: str, default: int = 0) -> int:
        pos = self.field_pos(table, slot)
        if not pos:
            return default
        if pos + struct.calcsize(fmt) > len(self.buf):
            raise ZtocError(f"field at {pos} runs past the end")
        return int(struct.unpack_from(fmt, self.buf, pos)[0])

    def ref(self, table: int, slot: int) -> int:
        pos = self.field_pos(table, slot)
        return pos + self._u32(pos) if pos else 0

    def vector(self, table: int, slot: int, elem: int) -> tuple[int, int]:
        at = self.ref(table, slot)
        if not at:
            return 0, 0
        n = self._u32(at)
        if at + 4 + n * elem > len(self.buf):
            raise ZtocError(f"vector at {at} ({n} elements) runs past the end")
        return at + 4, n

    def bytes_(self, table: int, slot: int) -> bytes:
        start, n = self.vector(table, slot, 1)
        return bytes(self.buf[start:start + n])

    def string(self, table: int, slot: int) -> str:
        return self.bytes_(table, slot).decode("utf-8", "surrogateescape")

    def tables(self, table: int, slot: int) -> list[int]:
        start, n = self.vector(table, slot, 4)
        return [start + 4 * i + self._u32(start + 4 * i) for i in range(n)]

    def strings(self, table: int, slot: int) -> list[str]:
        out = []
        for at in self.tables(table, slot):
            n = self._u32(at)
            if at + 4 + n > len(self.buf):
                raise ZtocError(f"string at {at} runs past the end")
            out.append(bytes(self.buf[at + 4:at + 4 + n]).decode("utf-8", "surrogateescape"))
        return out


def from_bytes(buf: bytes) -> Ztoc:
    """Parses a zTOC (ours or the reference's); raises ZtocError on malformed input."""
    try:
        return _parse(_Reader(buf))
    except struct.error as e:
        raise ZtocError(f"malformed zTOC: {e}") from None


def _parse(r: _Reader) -> Ztoc:
    root = r.root()
    files = []
    toc = r.ref(root, 4)
    for t in r.tables(toc, 0) if toc else []:
        xattrs = {r.string(x, 0): r.string(x, 1) for x in r.tables(t, 13)}
        files.append(FileMetadata(
            r.string(t, 0), r.string(t, 1), r.scalar(t, 2, "<q"), r.scalar(t, 3, "<q"),
            r.string(t, 4), r.scalar(t, 5, "<q"), r.scalar(t, 6, "<I"), r.scalar(t, 7, "<I"),
            r.string(t, 8), r.string(t, 9), r.string(t, 10), r.scalar(t, 11, "<q"),
            r.scalar(t, 12, "<q"), xattrs))
    info = r.ref(root, 5)
    if not info:
        raise ZtocError("zTOC has no compression_info")
    algo = r.scalar(info, 0, "<b", GZIP)
    if algo not in _ALGORITHMS:
        raise ZtocError(f"unknown compression algorithm {algo}")
    z = Ztoc(_ALGORITHMS[algo], r.scalar(root, 2, "<q"), r.scalar(root, 3, "<q"),
             r.scalar(info, 1, "<i"), r.strings(info, 2), r.bytes_(info, 3), files,
             r.string(root, 0), r.string(root, 1))
    if len(z.span_digests) != z.num_spans:
        raise ZtocError(f"zTOC has {len(z.span_digests)} span digests for {z.num_spans} spans")
    return z


def sorted_files(z: Ztoc) -> list[FileMetadata]:
    """Entries by uncompressed offset, as readers see them, checking what the reference
    checks: each entry's data starts after the previous entry's padded data."""
    files = sorted(z.files, key=lambda f: f.uncompressed_offset)
    next_header = 0
    for f in files:
        if next_header > f.uncompressed_offset:
            raise ZtocError(f"invalid TOC entry {f.name!r}: overlaps the previous entry")
        next_header = -(-(f.uncompressed_offset + f.uncompressed_size) // 512) * 512
    return files
