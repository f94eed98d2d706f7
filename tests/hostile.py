"""Crafted inputs for the C core's hostile-input tests (issue 8): small layers and zTOCs that
made the old code spend minutes or gigabytes. Also runnable, to write them for by-hand
measurements: ``python tests/hostile.py DIR``."""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import flatbuffers
import layers as L


def empty_members_layer(members: int, tail: bytes | None = None) -> bytes:
    """``members`` empty gzip members, then one holding a small tar (``tail``): each empty
    member ends a deflate stream before any output, so the reference's rule puts another
    ``out = 0`` checkpoint (32 KiB window included) there."""
    empty = gzip.compress(b"", mtime=0)
    if tail is None:
        tail = L.finish([L.file_member(b"hello.txt", b"hello, world\n" * 100)])
    return empty * members + gzip.compress(tail, mtime=0)


def pax_many_keys_tar(keys: int, dup_every: int = 0) -> tuple[bytes, dict[str, str]]:
    """One file whose PAX header holds ``keys`` distinct records (~1 MiB for 87k keys); with
    ``dup_every`` every that-many keys are written twice, the second value winning. Returns
    the tar and the PAX records Go's map ends up with."""
    recs = []
    want: dict[str, str] = {}
    for i in range(keys):
        k, v = f"{i:x}", ""  # short records: 87k fit in Go's 1 MiB limit
        recs.append(L.pax_record(k, v))
        want[k] = v
        if dup_every and i % dup_every == 0:
            recs.append(L.pax_record(k, v + "-last"))
            want[k] = v + "-last"
    body = b"".join(recs)
    tar = L.finish([L.pax_member(body), L.file_member(b"f.txt", b"data\n")])
    return tar, want


def hardlink_with_size_tar(size: int = 4096) -> bytes:
    """A file, then a hard link to it whose header claims ``size`` bytes (Go keeps the size;
    the archive holds no data for it), then another file."""
    return L.finish([
        L.file_member(b"a.txt", b"A" * 100),
        L.raw_header(b"b.txt", typeflag=b"1", linkname=b"a.txt", size=size),
        L.file_member(b"c.txt", b"C" * 100),
    ])


def ztoc_bytes(*, files: int = 0, name_len: int = 0, shared: bool = True,
               compressed_size: int = 100, uncompressed_size: int = 1024,
               xattrs: int = 0) -> bytes:
    """A structurally valid zTOC (one span, a one-checkpoint blob) with ``files`` entries.
    ``shared``: every entry references one ``name_len``-byte name string and one xattr
    vector of ``xattrs`` pairs (legal FlatBuffers, a few bytes per entry; what they decode
    to is entries × name_len)."""
    b = flatbuffers.Builder(1 << 16)
    version, tool = b.CreateString(b"0.9"), b.CreateString(b"hostile")

    def strings() -> tuple[int, int, int]:
        name, typ = b.CreateString(b"n" * name_len), b.CreateString(b"reg")
        pairs = []
        for j in range(xattrs):
            k, v = b.CreateString(b"SCHILY.xattr.user.k%d" % j), b.CreateString(b"v" * 64)
            b.StartObject(2)
            b.PrependUOffsetTRelativeSlot(0, k, 0)
            b.PrependUOffsetTRelativeSlot(1, v, 0)
            pairs.append(b.EndObject())
        b.StartVector(4, len(pairs), 4)
        for p in reversed(pairs):
            b.PrependUOffsetTRelative(p)
        return name, typ, b.EndVector()

    common = strings() if shared else None
    metas = []
    for i in range(files):
        name, typ, xv = common if common is not None else strings()
        b.StartObject(14)
        b.PrependUOffsetTRelativeSlot(0, name, 0)
        b.PrependUOffsetTRelativeSlot(1, typ, 0)
        b.PrependInt64Slot(2, 512 * (i + 1), 0)
        b.PrependUOffsetTRelativeSlot(13, xv, 0)
        metas.append(b.EndObject())
    b.StartVector(4, len(metas), 4)
    for m in reversed(metas):
        b.PrependUOffsetTRelative(m)
    metadata = b.EndVector()
    b.StartObject(1)
    b.PrependUOffsetTRelativeSlot(0, metadata, 0)
    toc = b.EndObject()
    blob = (1).to_bytes(4, "little") + (4 << 20).to_bytes(8, "little")
    blob += (10).to_bytes(8, "little") + bytes(8 + 1 + 32768)
    checkpoints = b.CreateByteVector(blob)
    digest = b.CreateString(b"sha256:" + b"0" * 64)
    b.StartVector(4, 1, 4)
    b.PrependUOffsetTRelative(digest)
    digests = b.EndVector()
    b.StartObject(4)
    b.PrependInt32Slot(1, 0, 0)
    b.PrependUOffsetTRelativeSlot(2, digests, 0)
    b.PrependUOffsetTRelativeSlot(3, checkpoints, 0)
    info = b.EndObject()
    b.StartObject(6)
    b.PrependUOffsetTRelativeSlot(0, version, 0)
    b.PrependUOffsetTRelativeSlot(1, tool, 0)
    b.PrependUOffsetTRelativeSlot(4, toc, 0)
    b.PrependInt64Slot(2, compressed_size, 0)
    b.PrependInt64Slot(3, uncompressed_size, 0)
    b.PrependUOffsetTRelativeSlot(5, info, 0)
    b.Finish(b.EndObject())
    return bytes(b.Output())


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "empty-members.gz").write_bytes(empty_members_layer(100_000))
    (out / "pax-87k.tar").write_bytes(pax_many_keys_tar(87_000)[0])
    (out / "hardlink-size.tar").write_bytes(hardlink_with_size_tar())
    (out / "shared-name.ztoc").write_bytes(ztoc_bytes(files=20_000, name_len=100_000))
    (out / "negative-size.ztoc").write_bytes(ztoc_bytes(files=1, compressed_size=-5))
    for p in sorted(out.iterdir()):
        print(f"{p.stat().st_size:>10}  {p}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
