"""Independent writers for the FlatBuffers the core produces, built with the reference
FlatBuffers builder (PyPI `flatbuffers`: the same algorithm as the Go builder the reference
uses) in the reference marshaller's call order. The C writer must produce the same bytes."""

from __future__ import annotations

import datetime as _dt

import flatbuffers

from soci_native.layer import LayerIndex

TOC_TYPES = ("reg", "dir", "symlink", "hardlink", "char", "block", "fifo")


def go_time_text(sec: int, nsec: int) -> str:
    """Go's Time.MarshalText in UTC: RFC 3339 with trailing-zero-trimmed nanoseconds; Go
    gives an error (the reference then writes "") for years outside 0..9999."""
    try:
        t = _dt.datetime(1970, 1, 1) + _dt.timedelta(seconds=sec)
    except OverflowError:
        return ""
    if not 0 <= t.year <= 9999:
        return ""
    frac = f".{nsec:09d}".rstrip("0") if nsec else ""
    return f"{t.year:04d}" + t.strftime("-%m-%dT%H:%M:%S") + frac + "Z"


def _b(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


def _offsets_vector(b: flatbuffers.Builder, offsets: list) -> int:
    b.StartVector(4, len(offsets), 4)
    for off in reversed(offsets):
        b.PrependUOffsetTRelative(off)
    return b.EndVector()


def _file_metadata(b: flatbuffers.Builder, e) -> int:
    name, typ, link = b.CreateString(_b(e.name)), b.CreateString(_b(e.type)), b.CreateString(
        _b(e.linkname))
    uname, gname = b.CreateString(_b(e.uname)), b.CreateString(_b(e.gname))
    mtime = b.CreateString(_b(go_time_text(e.mtime, e.mtime_ns)))
    pairs = []
    for k, v in sorted((_b(k), _b(v)) for k, v in e.pax.items()):  # Go sorts keys by bytes
        ko, vo = b.CreateString(k), b.CreateString(v)
        b.StartObject(2)
        b.PrependUOffsetTRelativeSlot(0, ko, 0)
        b.PrependUOffsetTRelativeSlot(1, vo, 0)
        pairs.append(b.EndObject())
    xattrs = _offsets_vector(b, pairs)
    b.StartObject(14)
    b.PrependUOffsetTRelativeSlot(0, name, 0)
    b.PrependUOffsetTRelativeSlot(1, typ, 0)
    b.PrependInt64Slot(2, e.offset, 0)
    b.PrependInt64Slot(3, e.size, 0)
    b.PrependUOffsetTRelativeSlot(4, link, 0)
    b.PrependInt64Slot(5, e.mode, 0)
    b.PrependUint32Slot(6, e.uid & 0xFFFFFFFF, 0)
    b.PrependUint32Slot(7, e.gid & 0xFFFFFFFF, 0)
    b.PrependUOffsetTRelativeSlot(8, uname, 0)
    b.PrependUOffsetTRelativeSlot(9, gname, 0)
    b.PrependUOffsetTRelativeSlot(10, mtime, 0)
    b.PrependInt64Slot(11, e.devmajor, 0)
    b.PrependInt64Slot(12, e.devminor, 0)
    b.PrependUOffsetTRelativeSlot(13, xattrs, 0)
    return b.EndObject()


def ztoc_bytes(ix: LayerIndex, build_tool: str) -> bytes:
    b = flatbuffers.Builder(1 << 16)
    version = b.CreateString(b"0.9")
    tool = b.CreateString(_b(build_tool))
    metas = [0] * len(ix.entries)
    for i in range(len(ix.entries) - 1, -1, -1):  # the reference builds entries last to first
        metas[i] = _file_metadata(b, ix.entries[i])
    metadata = _offsets_vector(b, metas)
    b.StartObject(1)
    b.PrependUOffsetTRelativeSlot(0, metadata, 0)
    toc = b.EndObject()
    checkpoints = b.CreateByteVector(ix.checkpoints)
    digests = _offsets_vector(b, [b.CreateString(_b(d)) for d in ix.span_digests])
    b.StartObject(4)
    b.PrependInt32Slot(1, ix.num_spans - 1, 0)
    b.PrependUOffsetTRelativeSlot(2, digests, 0)
    b.PrependUOffsetTRelativeSlot(3, checkpoints, 0)
    b.PrependInt8Slot(0, 1 if ix.compression == "gzip" else 2, 1)
    info = b.EndObject()
    b.StartObject(6)
    b.PrependUOffsetTRelativeSlot(0, version, 0)
    b.PrependUOffsetTRelativeSlot(1, tool, 0)
    b.PrependUOffsetTRelativeSlot(4, toc, 0)
    b.PrependInt64Slot(2, ix.compressed_size, 0)
    b.PrependInt64Slot(3, ix.uncompressed_size, 0)
    b.PrependUOffsetTRelativeSlot(5, info, 0)
    b.Finish(b.EndObject())
    return bytes(b.Output())


def tar_zinfo_bytes(span_size: int, size: int) -> bytes:
    b = flatbuffers.Builder(64)
    b.StartObject(3)
    b.PrependInt32Slot(0, 2, 0)
    b.PrependInt64Slot(1, span_size, 0)
    b.PrependInt64Slot(2, size, 0)
    b.Finish(b.EndObject())
    return bytes(b.Output())
