"""The C FUSE frontend (soci_native._fuse): the inode table it is handed is checked before
anything is served; reads of cached spans served in C fall back to Python when a span's file
was evicted, and many concurrent readers get the bytes `umoci unpack` has."""

# ruff: noqa: F811 (the fixtures imported from test_mount are parameters here)
from __future__ import annotations

import contextlib
import os
import random
import subprocess
import threading
from array import array
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mnt_image as mi
import pytest
from test_mount import Mount, img, mount, store  # noqa: F401 - fixtures
from tree_oracle import c_tree

from soci_native import _fuse
from soci_native.mount.inodes import InodeTable
from soci_native.mount.tree import Entry

FIELDS, DIR_FIELDS = _fuse.FIELDS, _fuse.DIR_FIELDS
KIND, PERM, NLINK, SIZE, LAYER, OFFSET = 1, 2, 3, 6, 9, 10  # row columns after the inode
PARENT, START, COUNT = 1, 2, 3  # dir row columns after the inode


@contextlib.contextmanager
def _served(front: _fuse.Frontend, mp: Path) -> Iterator[Path]:
    """`front` served at `mp` on a thread (up to 4 FUSE worker threads) until the block ends;
    fails at once if it is not mounted within 5 s, and always unmounts."""
    mp.mkdir()
    t = threading.Thread(target=front.serve, args=(str(mp), "ro,fsname=t", False, False, 2, 4),
                         daemon=True)
    t.start()
    try:
        for _ in range(100):
            if mi.is_mounted(mp):
                break
            threading.Event().wait(0.05)
        assert mi.is_mounted(mp), f"the frontend did not mount {mp} in 5 s"
        yield mp
    finally:
        subprocess.run(["fusermount3", "-u", str(mp)], check=False)
        t.join(10)
        mi.force_unmount(mp)


class _AskedOps:
    """An ops object for the frontend alone: records each span it is asked to read ahead and
    takes those `take` accepts; fills nothing (-1: every read goes to `read`), reads zeros."""

    def __init__(self, take: Callable[[int], bool]) -> None:
        self.asked: list[int] = []
        self._take = take

    def init(self) -> None:
        pass

    def read_ahead(self, layer: int, i: int) -> bool:
        self.asked.append(i)
        return self._take(i)

    def fill(self, layer: int, i: int, need: int) -> int:
        return -1

    def read(self, ino: int, offset: int, length: int) -> bytes:
        return bytes(length)


# ------------------------------------------------------------------------- the inode table

def _table() -> InodeTable:
    tree = c_tree([[
        Entry("d", "dir", 0, 0, mode=0o755),
        Entry("d/f", "reg", 512, 3, mode=0o644),
        Entry("d/g", "reg", 1024, 3, mode=0o644),
        Entry("l", "symlink", 0, 0, "d/f", mode=0o777),
    ]])
    return tree.table


def _frontend(t: InodeTable, layers: int = 1) -> _fuse.Frontend:
    return _fuse.Frontend(*t, layers, 0, object())


def _ino(t: InodeTable, name: bytes) -> int:
    lens = array("q", t.child_name_len)
    inos = array("q", t.child_ino)
    pos = 0
    for ln, ino in zip(lens, inos, strict=True):
        if t.names[pos:pos + ln] == name:
            return ino
        pos += ln
    raise KeyError(name)


def test_a_valid_table_is_taken() -> None:
    t = _table()
    fe = _frontend(t)
    assert (fe.stats_dir_ino, fe.stats_ino) == (t.inodes + 1, t.inodes + 2)
    fe.set_spans(0, array("q", [0, 65536, 70000]).tobytes())
    fe.span_cached(0, 1, "/nonexistent")
    assert fe.take_hits() == [0] and fe.take_touched(0) == []


def _edit(t: InodeTable, field: str, width: int, ino: int, col: int, value: int
          ) -> InodeTable:
    """The table with column ``col`` of inode ``ino``'s rows (in ``field``) set to value."""
    a = array("q", getattr(t, field))
    for k in range(0, len(a), width):
        if a[k] == ino:
            a[k + col] = value
    return t._replace(**{field: a.tobytes()})


def _bad_tables() -> dict[str, tuple[InodeTable, int]]:
    t = _table()
    f, d = _ino(t, b"f"), _ino(t, b"d")
    cases: dict[str, tuple[InodeTable, int]] = {}

    def row(name: str, ino: int, col: int, value: int) -> None:
        cases[name] = (_edit(t, "rows", FIELDS, ino, col, value), 1)

    def dir_row(name: str, ino: int, col: int, value: int) -> None:
        cases[name] = (_edit(t, "dirs", DIR_FIELDS, ino, col, value), 1)

    cases["truncated rows"] = (t._replace(rows=t.rows[:-8]), 1)
    cases["an inode without a row"] = (t._replace(rows=t.rows[:-8 * FIELDS]), 1)
    cases["no inodes"] = (t._replace(inodes=0), 1)
    cases["more inodes than rows"] = (t._replace(inodes=t.inodes + 1), 1)
    row("root not a directory", 1, KIND, 0o100000)
    row("unknown file type", f, KIND, 0o170000)
    row("file type with permission bits", f, KIND, 0o100644)
    row("bad permissions", f, PERM, 0o10000)
    row("no links", f, NLINK, 0)
    row("negative size", f, SIZE, -1)
    row("huge size", f, SIZE, 1 << 62)
    row("negative offset", f, OFFSET, -5)
    row("no such layer", f, LAYER, 1)
    row("negative layer", f, LAYER, -1)
    row("inode out of range", f, 0, t.inodes + 1)
    dir_row("children past the table", d, START, 1 << 40)
    dir_row("too many children", d, COUNT, 99)
    dir_row("negative child count", d, COUNT, -1)
    dir_row("parent out of range", d, PARENT, 1 << 30)
    dir_row("wrong parent", d, PARENT, f)
    dir_row("children shared", 1, COUNT, len(t.child_ino) // 8)
    dir_row("a file with a dir row", d, 0, f)
    cases["two dir rows"] = (t._replace(dirs=t.dirs + t.dirs[:8 * DIR_FIELDS]), 1)
    cases["sparse directory"] = (t._replace(sparse=array("q", [d]).tobytes()), 1)
    inos = array("q", t.child_ino)
    bad = array("q", inos)
    bad[0] = t.inodes + 1
    cases["child inode out of range"] = (t._replace(child_ino=bad.tobytes()), 1)
    bad = array("q", inos)
    bad[0] = 1
    cases["root as a child"] = (t._replace(child_ino=bad.tobytes()), 1)
    cases["child_ino short"] = (t._replace(child_ino=t.child_ino[:-8]), 1)
    lens = array("q", t.child_name_len)
    bad = array("q", lens)
    bad[0] += 1
    cases["names too short"] = (t._replace(child_name_len=bad.tobytes()), 1)
    cases["names too long"] = (t._replace(names=t.names + b"x"), 1)
    bad = array("q", lens)
    bad[0] = 0
    cases["empty name"] = (t._replace(child_name_len=bad.tobytes(), names=t.names[lens[0]:]), 1)
    for what, junk in (("slash", b"/"), ("NUL", b"\0")):
        cases[f"name with a {what}"] = (t._replace(names=junk + t.names[1:]), 1)
    assert t.names.count(b"g") == 1  # f and g are d's children: g named f too
    cases["duplicate name"] = (t._replace(names=t.names.replace(b"g", b"f")), 1)
    cases["target of a non-symlink"] = (t._replace(targets=[(f, b"x")]), 1)
    cases["xattr inode out of range"] = (t._replace(xattrs=[(1 << 20, b"user.a", b"v")]), 1)
    cases["xattr without a name"] = (t._replace(xattrs=[(f, b"", b"v")]), 1)
    cases["duplicate xattr"] = (t._replace(xattrs=[(f, b"user.a", b"1"), (f, b"user.a", b"2")]),
                                1)
    cases["negative layer count"] = (t, -1)
    return cases


@pytest.mark.parametrize("case", sorted(_bad_tables()))
def test_a_bad_table_is_refused(case: str) -> None:
    t, layers = _bad_tables()[case]
    with pytest.raises(ValueError, match="inode table"):
        _frontend(t, layers)


@pytest.mark.parametrize("starts", [[], [5, 3], [-1, 4], [0, (1 << 62) + 1]])
def test_a_bad_span_table_is_refused(starts: list[int]) -> None:
    fe = _frontend(_table())
    with pytest.raises(ValueError, match="span table"):
        fe.set_spans(0, array("q", starts).tobytes())
    with pytest.raises(ValueError):
        fe.set_spans(1, array("q", [0, 10]).tobytes())  # no such layer
    with pytest.raises(ValueError):
        fe.span_cached(0, 0, "/x")  # no table for the layer
    with pytest.raises(ValueError):
        fe.span_filling(0, 0, "/x", 1)
    fe.set_spans(0, array("q", [0, 10]).tobytes())
    for span in (-1, 1, 1 << 40):
        with pytest.raises(ValueError):
            fe.span_filling(0, span, "/x", 1)
    fe.span_filling(0, 0, "/x", 11)  # more than the span holds: taken as "not filling"


def test_names_fuse_cannot_pass_are_left_out() -> None:
    tree = c_tree([[Entry("ok", "reg", 0, 0), Entry("bad\0name", "reg", 512, 0),
                        Entry("x" * 5000, "reg", 1024, 0)]])
    table = tree.table
    assert table.names == b"ok" and tree.inodes == 4 and len(tree.warnings) == 2
    _frontend(table)


def test_times_and_devices_past_64_bits_are_clamped() -> None:
    tree = c_tree([[Entry("f", "reg", 0, 0, mtime_ns=1 << 70),
                        Entry("c", "char", 0, 0, devmajor=-1, devminor=-1)]])
    table = tree.table
    _frontend(table)
    rows = array("q", table.rows)
    assert (1 << 63) - 1 in rows


# --------------------------------------------------------------------------- reads, mounted

def _drop_pages(path: Path) -> None:
    """The kernel's cached pages of a file on the mount go: the next read reaches FUSE."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _big_layer(mp: Path) -> tuple[int, dict[str, Any]]:
    layers = mi.stats(mp)["layers"]
    i = max(range(len(layers)), key=lambda k: layers[k]["spans_fetched"])
    return i, layers[i]


def test_cached_spans_are_read_in_c_and_evicted_ones_in_python(
        mount: Mount, img: mi.Image, tmp_path: Path) -> None:
    cache = tmp_path / "span-cache"
    mp = mount("--cache-dir", str(cache))
    rel = "data/big.bin"
    want = (img.ref / rel).read_bytes()
    assert (mp / rel).read_bytes() == want  # cold: fetched, inflated, committed by Python
    li, cold = _big_layer(mp)
    assert cold["spans_fetched"] >= 2 and cold["errors"] == 0
    assert cold["inflate_ratio"] == 1.0

    _drop_pages(mp / rel)
    assert (mp / rel).read_bytes() == want  # warm: every span from its cache file, in C
    direct = mi.stats(mp)["direct_reads"]
    _drop_pages(mp / rel)
    assert (mp / rel).read_bytes() == want
    assert mi.stats(mp)["direct_reads"] > direct  # from the cache files, in C
    warm = mi.stats(mp)["layers"][li]
    assert warm["cache_hits"] > cold["cache_hits"]
    assert (warm["cache_misses"], warm["bytes_fetched"]) == \
        (cold["cache_misses"], cold["bytes_fetched"])

    spans = [p for p in cache.rglob("*") if p.is_file()]
    assert spans
    for p in spans:  # evicted behind the frontend's back
        p.unlink()
    _drop_pages(mp / rel)
    assert (mp / rel).read_bytes() == want  # C finds no file: Python fetches again
    again = mi.stats(mp)["layers"][li]
    assert again["cache_misses"] > warm["cache_misses"]
    assert again["bytes_fetched"] > warm["bytes_fetched"]
    assert again["errors"] == 0


def test_a_mount_over_a_warm_cache_reads_its_spans_in_c_from_the_first_read(
        mount: Mount, store: Path, img: mi.Image, tmp_path: Path) -> None:  # noqa: F811
    cache = tmp_path / "warm"
    rel = "data/big.bin"
    want = (img.ref / rel).read_bytes()
    mp = mount("--cache-dir", str(cache))
    assert (mp / rel).read_bytes() == want
    for _ in range(200):  # the background fills are committed
        if not [p for p in cache.rglob("*") if ".tmp-" in p.name]:
            break
        threading.Event().wait(0.05)
    assert mi.umount_cmd(mp, store).returncode == 0
    mp = mount("--cache-dir", str(cache))
    with open(mp / rel, "rb") as f:
        assert f.read(4096) == want[:4096]
    s = mi.stats(mp)
    assert s["direct_reads"] >= 1  # the span was known cached at mount: no Python read
    assert s["totals"]["cache_misses"] == 0 and s["totals"]["errors"] == 0


def _regular_files(root: Path) -> list[str]:
    out = []
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            p = Path(dirpath) / name
            if p.is_file() and not p.is_symlink():
                out.append(str(p.relative_to(root)))
    return sorted(out)


def test_many_threads_read_the_right_bytes(mount: Mount, img: mi.Image) -> None:
    mp = mount()
    files = _regular_files(img.ref)
    want = {rel: (img.ref / rel).read_bytes() for rel in files}
    errors: list[str] = []

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        order = list(files)
        rng.shuffle(order)
        for rel in order:
            data = want[rel]
            fd = os.open(mp / rel, os.O_RDONLY)
            try:
                if rng.random() < 0.3:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                got = bytearray()
                while len(got) < len(data):
                    chunk = os.pread(fd, rng.choice((4096, 65536, 1 << 20)), len(got))
                    if not chunk:
                        break
                    got += chunk
                if bytes(got) != data:
                    errors.append(rel)
            finally:
                os.close(fd)

    threads = [threading.Thread(target=reader, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    s = mi.stats(mp)
    assert s["totals"]["errors"] == 0
    ratios = [x["inflate_ratio"] for x in s["layers"] if x["inflate_ratio"] is not None]
    assert ratios and all(r == 1.0 for r in ratios), ratios  # no span inflated twice


# ------------------------------------------------------------------------------ read-ahead

def _read_in_steps(path: Path, step: int = 32 << 10, stop: int = 1 << 62) -> bytes:
    """A file read in order (up to ``stop``) in reads of ``step`` bytes each (the kernel's
    read-ahead off, so FUSE sees those reads)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        out = bytearray()
        while len(out) < stop and (chunk := os.pread(fd, min(step, stop - len(out)), len(out))):
            out += chunk
        return bytes(out)
    finally:
        os.close(fd)


def test_spans_too_big_to_cache_cost_one_fill_call_each(mount: Mount, img: mi.Image) -> None:
    """A span bigger than the cache takes (here: all of big.bin's, under a 100 kB cache) is
    served by ops.read only; the frontend asks ops.fill about it once, not once per read
    (each ask is a trip through the GIL), and the bytes are the image's."""
    mp = mount("--cache-size", "100000")
    path, want = mp / "data/big.bin", (img.ref / "data/big.bin").read_bytes()
    assert _read_in_steps(path) == want  # 32 KiB reads: two or more per 64 KiB span
    first = mi.stats(mp)["python_calls"]["fill"]
    assert 0 < first <= len(want) // (32 << 10) // 2 + 2
    _drop_pages(path)
    assert _read_in_steps(path) == want
    assert mi.stats(mp)["python_calls"]["fill"] == first
    assert mi.stats(mp)["totals"]["errors"] == 0


def _first_read(path: Path, size: int, want: bytes) -> None:
    """One read of ``size`` bytes at ``path``'s start, checked against ``want``, with the
    kernel's read-ahead off so FUSE sees just this read."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        assert os.pread(fd, size, 0) == want[:size]
    finally:
        os.close(fd)


def test_a_file_read_in_order_has_its_spans_filled_ahead_once_each(
        mount: Mount, img: mi.Image, tmp_path: Path) -> None:  # noqa: F811
    """The frontend asks for the spans after a read of a file that goes on into them (and
    more once the reader looks sequential): read whole, the file's spans are each fetched
    and inflated once, most of them ahead of the reader, none past the file's end."""
    rel = "data/big.bin"
    want = (img.ref / rel).read_bytes()
    mp = mount("--cache-dir", str(tmp_path / "c"))
    _first_read(mp / rel, 4096, want)
    li, first = _big_layer(mp)
    assert first["spans_read_ahead"] == 1  # the span after the first read's
    assert _read_in_steps(mp / rel) == want  # (reads of 32 KiB: within a span or two)
    s = mi.stats(mp)["layers"][li]
    spans = s["spans_fetched"]
    assert spans >= len(want) // (2 * mi.SPAN)  # (random bytes: spans of about SPAN)
    # every span but the first is asked for ahead, by a read in the span before it (or
    # earlier), once; none past the file's end
    assert s["spans_read_ahead"] == spans - 1
    assert s["errors"] == 0 and s["inflate_ratio"] == 1.0


@pytest.mark.parametrize("size, ahead", [(16 << 10, 1), (1 << 20, 2)])
def test_a_big_read_at_a_file_s_start_has_two_spans_filled_ahead(
        mount: Mount, img: mi.Image, tmp_path: Path, size: int, ahead: int) -> None:  # noqa: F811
    """A program reading a file from its start in big reads gets the two spans after its first
    read filled at once (both cores inflate while it reads the first); a small read there
    (the loader's look at a library's header) only the next one."""
    rel = "data/big.bin"
    want = (img.ref / rel).read_bytes()
    mp = mount("--cache-dir", str(tmp_path / "c"))
    _first_read(mp / rel, size, want)
    li, s = _big_layer(mp)
    assert s["spans_read_ahead"] == ahead
    assert s["errors"] == 0


def _ahead_over(mp: Path, li: int, cache: Path | None = None) -> dict[str, Any]:
    """Layer ``li``'s stats once every fill asked for ahead of a reader is over (the budget
    free, the frontend told) and, given the cache directory, no span is being filled."""
    for _ in range(1200):  # a guard: a minute
        s = mi.stats(mp)["layers"][li]
        if s["spans_read_ahead_done"] == s["spans_read_ahead"] and not (
                cache and [p for p in cache.rglob("*") if ".tmp-" in p.name]):
            return s
        threading.Event().wait(0.05)
    raise AssertionError(f"fills ahead still under way after a minute: {s}")


def test_evicted_spans_are_filled_ahead_again(
        mount: Mount, img: mi.Image, tmp_path: Path) -> None:  # noqa: F811
    """A span evicted from the cache is one the frontend may ask to be filled ahead again
    (the span cache tells it, which also sends the span's reads to Python): a file read
    whole through a cache smaller than it has its first spans evicted by the end, and
    reading those again reads ahead again, right bytes both times."""
    rel = "data/big.bin"
    want = (img.ref / rel).read_bytes()
    assert len(want) > 1 << 20
    cache = tmp_path / "c"
    mp = mount("--cache-dir", str(cache), "--cache-size", str(1 << 20))
    assert _read_in_steps(mp / rel) == want
    li, _ = _big_layer(mp)
    one = _ahead_over(mp, li, cache)
    assert one["spans_read_ahead"] >= 4
    _drop_pages(mp / rel)
    head = 384 << 10  # the cache holds the last MiB read: these spans were evicted
    # read again in steps, each once the fills ahead of the last are over: how many of them
    # the read-ahead budget takes is then the frontend's asking, not how fast the workers
    # (sharing a loaded machine's cores with the reader) got through the earlier ones
    fd = os.open(mp / rel, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        for pos in range(0, head, 32 << 10):
            assert os.pread(fd, 32 << 10, pos) == want[pos:pos + (32 << 10)]
            _ahead_over(mp, li)
    finally:
        os.close(fd)
    two = mi.stats(mp)["layers"][li]
    assert two["spans_fetched"] > one["spans_fetched"] or \
        two["bytes_fetched"] > one["bytes_fetched"]  # the evicted spans were fetched again
    again = two["spans_read_ahead"] - one["spans_read_ahead"]
    assert again >= 3, (one["spans_read_ahead"], again)
    assert two["errors"] == 0


def test_a_tree_walk_in_stream_order_has_the_spans_after_it_filled_ahead(
        mount: Mount, img: mi.Image, tmp_path: Path) -> None:  # noqa: F811
    """Small files read one after another in the layer's order make the frontend take the
    reader as sequential: the spans after the last file read (no file read goes on into
    them) are fetched and cached in the background, verified like any other."""
    import tarfile

    from soci_native import ztoc
    from soci_native.mount.spans import span_table

    blob = img.layout / "blobs" / "sha256" / img.layers[0]["digest"].split(":", 1)[1]
    spans = span_table(ztoc.from_bytes(ztoc.build(str(blob), span_size=mi.SPAN)[1]))
    starts = [s.ustart for s in spans]

    def span_of(pos: int) -> int:
        return max(i for i, u in enumerate(starts) if u <= pos)

    with tarfile.open(blob, "r:gz") as tf:
        members = [(m.name, m.offset_data, m.size) for m in tf
                   if m.isreg() and 0 < m.size < mi.SPAN and m.name.startswith("usr/")]
    cache = tmp_path / "c"
    mp = mount("--cache-dir", str(cache))
    touched: set[int] = set()
    end = 0
    for name, off, size in members:  # until the walk has crossed a few span boundaries
        assert (mp / name).read_bytes() == (img.ref / name).read_bytes(), name
        touched |= {span_of(off), span_of(off + size - 1)}
        end = off + size
        if len(touched) >= 5:
            break
    assert len(touched) >= 5
    for _ in range(200):  # the background fills are committed
        ahead = [p for p in cache.rglob("*+*") if p.is_file() and ".tmp-" not in p.name
                 and int(p.name.split("+", 1)[0]) >= end]
        if ahead:
            break
        threading.Event().wait(0.05)
    assert ahead, "no span past the walk was filled ahead"
    s = mi.stats(mp)
    assert s["totals"]["errors"] == 0
    assert s["layers"][0]["spans_fetched"] > len(touched)
    assert s["layers"][0]["inflate_ratio"] == 1.0


def test_spans_read_ahead_stay_within_a_quarter_of_the_cache(tmp_path: Path) -> None:
    """However many spans are asked for ahead, those queued or filling take at most a
    quarter of the cache's bound (one always may)."""
    import gzip
    import io
    import tarfile

    from soci_native import ztoc
    from soci_native.mount.spans import (
        FileBlobReader,
        LayerStats,
        SpanCache,
        ZtocLayer,
        span_table,
    )

    data = random.Random(8).randbytes(1 << 20)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        ti = tarfile.TarInfo("a")
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
    blob = tmp_path / "layer.gz"
    blob.write_bytes(gzip.compress(buf.getvalue(), 6, mtime=0))
    z = ztoc.from_bytes(ztoc.build(str(blob), span_size=1 << 16)[1])
    gate = threading.Event()

    class Gated(FileBlobReader):
        def read_range(self, start: int, end: int) -> bytes:
            gate.wait(30)
            return super().read_range(start, end)

    st = LayerStats("sha256:" + "cd" * 32, blob.stat().st_size, "lazy")
    span = max(s.uend - s.ustart for s in span_table(z))
    cache = SpanCache(tmp_path / "c", 4 * (2 * span + span // 2))  # room for two ahead
    layer = ZtocLayer(st.digest, z, Gated(blob), cache, st)
    try:
        n = len(layer.spans)
        assert n > 8
        taken = [layer.read_ahead(i) for i in range(1, n)]
        assert taken[0] and not all(taken)  # the first always; False: ask again later
        assert layer.read_ahead(1)  # already queued: nothing to ask again
        gate.set()
        layer.drain()
        assert 1 <= st.spans_fetched <= 2, st.spans_fetched  # the rest were turned away
        assert st.errors == 0 and st.to_json()["inflate_ratio"] == 1.0
    finally:
        layer.close()


def _reads_answered(front: _fuse.Frontend) -> int:
    """FUSE reads of files whose handlers have returned (counted after the reply and
    whatever the handler does after it)."""
    return int(front.requests().get("read", (0, 0))[0])


def _wait_reads_answered(front: _fuse.Frontend, n: int) -> None:
    for _ in range(1200):  # a guard: a minute
        if _reads_answered(front) >= n:
            return
        threading.Event().wait(0.05)
    raise AssertionError(f"{_reads_answered(front)} of {n} reads answered after a minute")


def test_a_read_ahead_the_budget_refused_is_asked_again_only_after_a_fill_ahead_ends(
        tmp_path: Path) -> None:
    """The real frontend over a one-file table, with spans 0 and 1 whole in a cache directory
    and an ops object that takes the first read-ahead and refuses the rest (a full budget):
    reads served in C do not call ops.read_ahead again for the refused spans (each call is a
    trip through the GIL), however many come, until ahead_done says a fill ahead ended."""
    span = 1 << 16
    tree = c_tree([[Entry("f", "reg", 0, 8 * span, mode=0o644)]])
    # the first span ahead is taken, the budget turns the others away
    ops = _AskedOps(lambda i: i == 2)
    asked = ops.asked
    front = _fuse.Frontend(*tree.table, 1, 8 * span, ops)
    front.set_spans(0, array("q", [k * span for k in range(9)]).tobytes())
    for i in (0, 1):
        p = tmp_path / f"span{i}"
        p.write_bytes(bytes([i + 1]) * span)
        front.span_cached(0, i, str(p))
    with _served(front, tmp_path / "mnt") as mp:
        f = mp / "f"

        def two_spans() -> None:  # in 32 KiB reads: sequential, into span 1
            _drop_pages(f)
            before = _reads_answered(front)
            assert _read_in_steps(f, stop=2 * span) == b"\1" * span + b"\2" * span
            # a read of cached spans is answered first, then the spans ahead are asked for:
            # their asks are over once the four reads' handlers are
            _wait_reads_answered(front, before + 4)

        two_spans()
        assert asked == [2, 3, 4, 5]  # four ahead of a sequential reader
        for _ in range(5):
            two_spans()
        assert asked == [2, 3, 4, 5]  # not asked again per read (was: three per read)
        front.ahead_done(0)  # a fill ahead ended: the budget may have room
        two_spans()
        assert asked == [2, 3, 4, 5, 3, 4, 5]


def _tail_layer(tmp_path: Path, files: int) -> tuple[Any, Path, list[Any]]:
    """A gzip layer of ``files`` incompressible files of 1.6 spans (2 MiB, more than a fill's
    first step) each, so the tail of each crosses into a span the next file starts in; its
    zTOC and tar members."""
    import gzip
    import io
    import tarfile

    from soci_native import ztoc

    rnd = random.Random(11)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for k in range(files):
            ti = tarfile.TarInfo(f"f{k:03d}")
            ti.size = 3_300_000
            ti.mode = 0o644
            tf.addfile(ti, io.BytesIO(rnd.randbytes(ti.size)))
    buf.seek(0)
    with tarfile.open(fileobj=buf) as tf:
        members = tf.getmembers()
    blob = tmp_path / "layer.gz"
    blob.write_bytes(gzip.compress(buf.getvalue(), 1, mtime=0))
    return ztoc.from_bytes(ztoc.build(str(blob), span_size=2 << 20)[1]), blob, members


class _Gated:
    """Holds the fetch of everything from ``at`` on (a fill a worker runs, urgent, that does
    not end) until ``gate`` is set; ``entered`` once one waits."""

    def __init__(self, blob: Path, at: int) -> None:
        from soci_native.mount.spans import FileBlobReader

        self.inner, self.at = FileBlobReader(blob), at
        self.gate, self.entered = threading.Event(), threading.Event()

    def read_range(self, start: int, end: int) -> bytes:
        if start >= self.at:
            self.entered.set()
            self.gate.wait(60)
        return self.inner.read_range(start, end)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_walk_reading_ahead_into_span_tails_keeps_few_fills_open(tmp_path: Path) -> None:
    """A walk over many files whose tails cross into new spans, each such span read ahead
    while a worker is held in an urgent fill that does not end: every span read ahead is
    filled whole and committed (not left open, half filled, behind the held job), so the fills
    open at once, and the descriptors, stay a few, however many files there are."""
    from soci_native.mount.spans import LayerStats, SpanCache, ZtocLayer

    z, blob, members = _tail_layer(tmp_path, 14)
    st = LayerStats("sha256:" + "ce" * 32, blob.stat().st_size, "lazy")
    reader = _Gated(blob, 1 << 62)
    layer = ZtocLayer(st.digest, z, reader, SpanCache(tmp_path / "c", 1 << 30), st)
    n = len(layer.spans)
    assert n > 20
    starts = [s.ustart for s in layer.spans]
    reader.at = layer.spans[n - 1].cstart
    done = threading.Semaphore(0)
    layer.on_ahead_done = done.release
    try:
        assert layer.read_ahead(n - 1)
        assert reader.entered.wait(30)  # one worker is held in that fill
        fds, most_fills, most_fds = _open_fds(), 0, 0
        for m in members:  # the span each file's tail is in, as the walk reaches it
            i = max(k for k in range(n) if starts[k] <= m.offset_data + m.size - 1)
            if not starts[i] > m.offset_data or i == n - 1:
                continue
            assert layer.read_ahead(i)
            assert done.acquire(timeout=30)
            most_fills = max(most_fills, len(layer._fills))
            most_fds = max(most_fds, _open_fds() - fds)
        assert most_fills <= 2 and most_fds <= 2, (most_fills, most_fds)
        assert sum(os.path.exists(layer._path(i)) for i in range(n)) >= 12
        reader.gate.set()
        layer.drain()
        assert st.errors == 0 and os.path.exists(layer._path(n - 1))
    finally:
        reader.gate.set()
        layer.close()


def test_a_read_past_what_a_fill_ahead_reached_is_served_at_once(tmp_path: Path) -> None:
    """The real frontend over a real layer: spans a walk read ahead up to where a file ends,
    while a worker is held in an urgent fill that does not end; a read of the next file,
    which starts after that in the same span, is served at once (no fill left behind that
    nobody advances, for C to wait on) and the span is committed. Before, each such read
    waited the 200 ms C waits for a fill (5 reads: a second)."""
    import gzip
    import itertools
    import time
    from functools import partial

    from soci_native.mount.spans import LayerStats, SpanCache, ZtocLayer

    z, blob, members = _tail_layer(tmp_path, 16)
    st = LayerStats("sha256:" + "cf" * 32, blob.stat().st_size, "lazy")
    reader = _Gated(blob, 1 << 62)
    layer = ZtocLayer(st.digest, z, reader, SpanCache(tmp_path / "c", 1 << 30), st)
    n = len(layer.spans)
    reader.at = layer.spans[n - 1].cstart
    starts = [s.ustart for s in layer.spans] + [layer.spans[-1].uend]

    def span_of(pos: int) -> int:
        return max(k for k in range(n) if starts[k] <= pos)

    pairs = []  # (a file, the span its tail crosses into, the next file, starting there)
    for a, b in itertools.pairwise(members):
        k = span_of(a.offset_data + a.size - 1)
        # (past the first step a fill ahead takes, the part a reader must wait for)
        if starts[k] > a.offset_data and b.offset_data - starts[k] > (1 << 20) + 4096 \
                and span_of(b.offset_data + 4095) == k and k + 1 < n - 1:
            pairs.append((a, k, b))
    pairs = pairs[:5]
    assert len(pairs) == 5
    tree = c_tree([[Entry(m.name, "reg", m.offset_data, m.size, mode=0o644) for m in members]])

    class Ops:
        def init(self) -> None:
            pass

        def read_ahead(self, layer_: int, i: int) -> bool:
            return True  # the test reads ahead itself, as the walk would

        def fill(self, layer_: int, i: int, need: int) -> int:
            return 0 if layer.fill_to(i, need) else -1

        def read(self, ino: int, offset: int, length: int) -> int:
            return 5  # EIO: every read here is served from the span files

    front = _fuse.Frontend(*tree.table, 1, starts[-1], Ops())
    front.set_spans(0, array("q", starts).tobytes())
    layer.on_cached = partial(front.span_cached, 0)
    layer.on_filling = partial(front.span_filling, 0)
    done = threading.Semaphore(0)
    layer.on_ahead_done = done.release
    try:
        with _served(front, tmp_path / "mnt") as mp:
            assert layer.read_ahead(n - 1)
            assert reader.entered.wait(30)  # one worker is held in that fill
            for _a, k, _b in pairs:
                assert layer.read_ahead(k)
                assert done.acquire(timeout=30)
            stream = gzip.decompress(blob.read_bytes())
            took = 0.0
            for _a, k, b in pairs:
                fd = os.open(mp / b.name, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # FUSE sees exactly this read
                    t0 = time.monotonic()
                    got = os.pread(fd, 4096, 0)
                    took += time.monotonic() - t0
                finally:
                    os.close(fd)
                assert got == stream[b.offset_data:b.offset_data + 4096]
                assert os.path.exists(layer._path(k))  # committed, with the worker still held
            assert took < 0.5, took  # a generous guard: before, at least 5 x 200 ms
            reader.gate.set()
            layer.drain()
            assert st.errors == 0
    finally:
        reader.gate.set()  # (after the unmount: no request waits on it)
        layer.close()


def test_a_stream_from_a_file_start_is_read_ahead_at_its_second_read(tmp_path: Path) -> None:
    """The real frontend over a 6.5-span file, no span cached, reads of 1 MiB from the start:
    the second read, where the first ended, makes it a stream, and the spans ahead of it are
    asked for at once (four ahead, not after a span's worth of reads)."""
    span = 1 << 20
    size = 6 * span + span // 2
    tree = c_tree([[Entry("f", "reg", 0, size, mode=0o644)]])
    ops = _AskedOps(lambda i: True)
    asked = ops.asked
    front = _fuse.Frontend(*tree.table, 1, 8 * span, ops)
    front.set_spans(0, array("q", [k * span for k in range(9)]).tobytes())
    with _served(front, tmp_path / "mnt") as mp:
        from soci_native.mount.fs import tune_read_ahead
        assert tune_read_ahead(str(mp))  # 1 MiB requests, as a mount has them
        fd = os.open(mp / "f", os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # FUSE sees exactly these reads
            assert os.pread(fd, span, 0) == bytes(span)
            assert asked == [1, 2]  # a big read at the start: the next two
            assert os.pread(fd, span, span) == bytes(span)
            assert asked == [1, 2, 3, 4, 5]  # a stream: four ahead
            assert os.pread(fd, span, 2 * span) == bytes(span)
            assert asked[5:] == [6]  # the span the file ends in
        finally:
            os.close(fd)
        fd = os.open(mp / "f", os.O_RDONLY)
        try:  # reads that do not go on from the last one's end are no stream
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            del asked[:]
            front.span_evicted(0, 0, "")  # (no span is cached: the hints stay as they were)
            assert os.pread(fd, span // 2, span // 4) == bytes(span // 2)
            assert os.pread(fd, span, 3 * span) == bytes(span)
            assert asked == []  # spans 1..6 were all asked for once already
        finally:
            os.close(fd)


def test_span_workers_run_a_waited_on_span_before_the_ones_ahead() -> None:
    from soci_native.mount.spans import _Workers

    w = _Workers(1, "test-workers")
    gate, ran = threading.Event(), []
    w.submit((1, 0), lambda: gate.wait(30))  # keeps the one thread busy while jobs queue
    for prio in ((1, 7), (1, 3), (0, 9), (1, 5)):
        w.submit(prio, lambda p=prio: ran.append(p))
    gate.set()
    w.shutdown(cancel=False)
    assert ran == [(0, 9), (1, 3), (1, 5), (1, 7)]
    w.submit((0, 1), lambda: ran.append((0, 1)))  # after shutdown: dropped
    assert len(ran) == 4


@pytest.fixture(scope="module")
def big_spans(img: mi.Image, tmp_path_factory: pytest.TempPathFactory
              ) -> tuple[str, Path, bytes]:  # noqa: F811
    """An image of one 12 MiB file indexed with 4 MiB spans: each span is inflated in
    several steps, and read (in C too) while it is still being filled."""
    base = tmp_path_factory.mktemp("big-spans")
    lay = base / "lay"
    mi.run("umoci", "init", "--layout", str(lay))
    mi.run("umoci", "new", "--image", f"{lay}:t")
    bundle = base / "b"
    mi.run("umoci", "unpack", "--image", f"{lay}:t", str(bundle))
    data = random.Random(11).randbytes(12 << 20)
    (bundle / "rootfs" / "big").write_bytes(data)
    mi.run("umoci", "repack", "--image", f"{lay}:t", str(bundle))
    root = base / "store"
    mi.cli("create", f"oci:{lay}:t", "--min-layer-size", "1000", "--span-size",
           str(4 << 20), root=root)
    return f"oci:{lay}:t", root, data


def test_spans_filled_in_steps_serve_the_right_bytes_to_many_readers(
        mount: Mount, big_spans: tuple[str, Path, bytes]) -> None:  # noqa: F811
    image, root, data = big_spans
    for rnd in range(3):  # a fresh span cache each time
        mp = mount(image=image, root=root)
        errors: list[str] = []

        def reader(seed: int, mp: Path = mp, errors: list[str] = errors) -> None:
            rng = random.Random(seed)
            with open(mp / "big", "rb", buffering=0) as f:
                for _ in range(40):
                    off = rng.randrange(len(data))
                    n = rng.choice([1, 4096, 128 << 10, 1 << 20])
                    got = os.pread(f.fileno(), n, off)
                    if got != data[off:off + n]:
                        errors.append(f"[{off}, +{n})")

        threads = [threading.Thread(target=reader, args=(rnd * 10 + k,)) for k in range(4)]
        for t in threads:
            t.start()
        assert (mp / "big").read_bytes() == data
        for t in threads:
            t.join()
        assert not errors, errors[:5]
        s = mi.stats(mp)
        assert s["totals"]["errors"] == 0
        assert s["layers"][0]["inflate_ratio"] == 1.0  # no span inflated twice


PUSH_TREE = "usr/lib/python/json"


def _warm_cache(mount: Mount, img: mi.Image, store: Path, cache: Path, tree: str) -> list[str]:
    """Reads every file under ``tree`` through a mount on span cache ``cache`` until its spans
    are all committed there, and unmounts: the next mount on ``cache`` starts warm. The
    files, relative to ``tree``."""
    mp = mount("--cache-dir", str(cache))
    files = _regular_files(img.ref / tree)
    assert len(files) >= 5
    for rel in files:
        (mp / tree / rel).read_bytes()
    for _ in range(200):  # until the spans' background fills are committed
        committed = [p for p in cache.rglob("*") if p.is_file() and ".tmp-" not in p.name]
        if len(committed) >= mi.stats(mp)["totals"]["spans_fetched"]:
            break
        threading.Event().wait(0.05)
    assert mi.umount_cmd(mp, store).returncode == 0
    return files


def _requests(mp: Path, kind: str) -> int:
    """How many FUSE requests of ``kind`` the mount has answered (stats.json's own reads are
    counted apart, as stats_read)."""
    return int(mi.stats(mp)["requests"].get(kind, {}).get("count", 0))


def _settled_pushes(mp: Path, jobs: int = 1) -> dict[str, Any]:
    """stats.json once the pusher has taken at least ``jobs`` jobs (a listing queues one as
    it ends) and finished every job it took."""
    for _ in range(400):
        s = mi.stats(mp)
        if s["push_jobs"]["queued"] >= jobs and s["push_jobs"]["done"] == s["push_jobs"]["queued"]:
            return s
        threading.Event().wait(0.025)
    raise AssertionError(f"the pusher did not finish its jobs: {s['push_jobs']}")


def test_a_read_span_s_other_files_are_pushed_into_the_page_cache(
        mount: Mount, img: mi.Image, store: Path, tmp_path: Path) -> None:  # noqa: F811
    """On a fresh mount over a warm span cache, the first read served from a span puts the
    other files inside it into the kernel's page cache, also for a reader that opens files
    by name without listing their directory: reading them then mostly makes no FUSE read at
    all, and every byte is still the image's."""
    cache = tmp_path / "warm"
    tree = PUSH_TREE
    files = _warm_cache(mount, img, store, cache, tree)
    mp = mount("--cache-dir", str(cache))
    for rel in files:  # the kernel learns the inodes by LOOKUP: no listing pushes them
        os.stat(mp / tree / rel)
    assert mi.stats(mp)["pushed_files"] == 0
    first = mp / tree / files[0]
    assert first.read_bytes() == (img.ref / tree / files[0]).read_bytes()
    for _ in range(100):
        pushed = mi.stats(mp)["pushed_files"]
        if pushed:
            break
        threading.Event().wait(0.05)
    assert pushed > 0
    before = _requests(mp, "read")
    for rel in files:
        assert (mp / tree / rel).read_bytes() == (img.ref / tree / rel).read_bytes(), rel
    s = mi.stats(mp)
    assert _requests(mp, "read") - before < len(files) - 1  # most were in the page cache already
    assert s["totals"]["errors"] == 0 and s["totals"]["spans_fetched"] == 0


SPLICE_ENOENT = "splice from pipe: No such file or directory"  # libfuse's perror of a failed store


def _drop_kernel_inodes() -> None:
    """Has the kernel evict the unused dentries and inodes (drop_caches 2, root only): it
    FORGETs the mount's inodes no one holds."""
    if os.geteuid() != 0:
        pytest.skip("dropping the kernel's inodes needs root")
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("2\n")


def test_pushes_skip_files_the_kernel_has_no_inode_for(
        mount: Mount, img: mi.Image, store: Path, tmp_path: Path) -> None:  # noqa: F811
    """The other files of a span read here are pushed only if the kernel has an inode for
    them (the frontend counts LOOKUP and READDIRPLUS entries less FORGETs): a file never
    looked up, or forgotten since (drop_caches), is skipped and counted, not stored into
    (which failed, and libfuse printed a line per store to the mount's log). Their bytes are
    still the image's."""
    cache = tmp_path / "warm"
    tree = PUSH_TREE
    files = _warm_cache(mount, img, store, cache, tree)
    big = [rel for rel in files if (img.ref / tree / rel).stat().st_size >= 2 * 4096]
    assert len(big) >= 2  # stores of two pages or more splice from the span file
    mp = mount("--cache-dir", str(cache))
    log = Path(mi.stats(mp)["log_file"])
    # only this file is looked up: the other files of its spans are unknown to the kernel
    assert (mp / tree / big[0]).read_bytes() == (img.ref / tree / big[0]).read_bytes()
    s = _settled_pushes(mp)
    assert s["push_skipped"]["unknown"] >= 1 and s["push_skipped"]["failed"] == 0
    assert SPLICE_ENOENT not in log.read_text()

    # known, then forgotten: a later span push skips them too
    mp = mount("--cache-dir", str(cache))
    log = Path(mi.stats(mp)["log_file"])
    for rel in files:
        os.stat(mp / tree / rel)
    _drop_kernel_inodes()
    threading.Event().wait(0.5)  # the FORGETs read (they go before other requests)
    assert (mp / tree / big[0]).read_bytes() == (img.ref / tree / big[0]).read_bytes()
    s = _settled_pushes(mp)
    assert s["push_skipped"]["unknown"] >= 1 and s["push_skipped"]["failed"] == 0
    assert SPLICE_ENOENT not in log.read_text()
    for rel in files:
        assert (mp / tree / rel).read_bytes() == (img.ref / tree / rel).read_bytes(), rel
    s = mi.stats(mp)
    assert s["totals"]["errors"] == 0 and s["totals"]["spans_fetched"] == 0


@pytest.mark.parametrize("tree,min_size", [(PUSH_TREE, 0), ("data", 4096)])
def test_a_listed_directory_s_files_are_pushed_into_the_page_cache_right(
        mount: Mount, img: mi.Image, store: Path, tmp_path: Path,  # noqa: F811
        tree: str, min_size: int) -> None:
    """On a fresh mount over a warm span cache, listing a directory puts all its files into
    the kernel's page cache (no-open mode keeps them): reading them then makes no FUSE read,
    and every byte is what `umoci unpack` wrote. data/ has files of many spans (stores cut at
    span ends, the page across one put together from both), hard links and zeros; its files
    under 4 KiB come from layers too small for a zTOC (read whole at mount, never pushed)."""
    cache = tmp_path / "warm"
    _warm_cache(mount, img, store, cache, tree)
    mp = mount("--cache-dir", str(cache))
    listed = os.listdir(mp / tree)  # READDIRPLUS: the pusher starts
    here = sorted(n for n in listed if (img.ref / tree / n).is_file() and not
                  (img.ref / tree / n).is_symlink() and
                  (img.ref / tree / n).stat().st_size >= min_size)
    assert len(here) >= 2
    inodes = {os.stat(mp / tree / n).st_ino: os.stat(mp / tree / n).st_size for n in here}
    s = _settled_pushes(mp)  # each inode once (hard links share one)
    if min_size:
        assert s["pushed_files"] >= len(inodes) and s["pushed_bytes"] >= sum(inodes.values())
    else:
        assert (s["pushed_files"], s["pushed_bytes"]) == (len(inodes), sum(inodes.values()))
    before = _requests(mp, "read")
    for n in here:
        assert (mp / tree / n).read_bytes() == (img.ref / tree / n).read_bytes(), n
    assert _requests(mp, "read") == before  # every page was there
    s = mi.stats(mp)
    assert s["totals"]["errors"] == 0 and s["totals"]["spans_fetched"] == 0
    # no-opendir mode: one OPENDIR (answered ENOSYS), then none and no RELEASEDIR, however
    # many directories are listed
    for d in ("usr/lib/python", "usr/lib", "usr", "data"):
        os.listdir(mp / d)
    assert _requests(mp, "opendir") <= 1 and _requests(mp, "releasedir") == 0


def test_listing_pushes_stay_within_their_caps(
        mount: Mount, img: mi.Image, store: Path, tmp_path: Path) -> None:  # noqa: F811
    """--page-cache-push SIZE: a listing pushes only files up to SIZE, at most 2*SIZE bytes
    of them (in the listing's order, a file that does not fit skipped); the others are
    read through FUSE as before, with the right bytes. 0 pushes nothing at all."""
    cache = tmp_path / "warm"
    tree = PUSH_TREE
    _warm_cache(mount, img, store, cache, tree)
    ref = img.ref / tree
    here = sorted((n for n in os.listdir(ref) if (ref / n).is_file() and not
                   (ref / n).is_symlink()), key=os.fsencode)  # the frontend's order
    sizes = {n: (ref / n).stat().st_size for n in here}
    cap = sorted(sizes.values())[len(sizes) // 2]  # about half the files are larger
    budget, want = 2 * cap, []
    for n in here:  # the budget counts the pages a file takes
        if 0 < sizes[n] <= cap and _pages(sizes[n]) <= budget:
            budget -= _pages(sizes[n])
            want.append(n)
    assert 0 < len(want) < len(here)

    mp = mount("--cache-dir", str(cache), "--page-cache-push", str(cap))
    os.listdir(mp / tree)
    s = _settled_pushes(mp)
    assert (s["pushed_files"], s["pushed_bytes"]) == (len(want), sum(sizes[n] for n in want))
    assert s["pushed_bytes"] <= 2 * cap
    before = _requests(mp, "read")
    for n in here:
        assert (mp / tree / n).read_bytes() == (ref / n).read_bytes(), n
    assert _requests(mp, "read") - before >= len([n for n in here if sizes[n] and n not in want])

    mp = mount("--cache-dir", str(cache), "--page-cache-push", "0")
    os.listdir(mp / tree)
    for n in here:
        assert (mp / tree / n).read_bytes() == (ref / n).read_bytes(), n
    s = _settled_pushes(mp, jobs=0)  # off: neither the listing nor the reads queue any
    assert s["push_jobs"]["queued"] == 0
    assert (s["pushed_files"], s["pushed_bytes"]) == (0, 0)
    assert _requests(mp, "read") >= len([n for n in here if sizes[n]])


def _pages(n: int) -> int:
    page = os.sysconf("SC_PAGESIZE")
    return -(-n // page) * page


def test_listing_pushes_count_pages_not_bytes(
        mount: Mount, img: mi.Image, store: Path, tmp_path: Path) -> None:  # noqa: F811
    """A listing's cap counts the pages its files take in the page cache (a 1-byte file
    takes a whole page), not their bytes: a directory of many tiny files under a one-page
    --page-cache-push (two pages per listing) pushes at most two of them."""
    cache = tmp_path / "warm"
    tree = "usr/lib/python/encodings"
    _warm_cache(mount, img, store, cache, tree)
    ref = img.ref / tree
    page = os.sysconf("SC_PAGESIZE")
    tiny = [n for n in os.listdir(ref) if (ref / n).is_file() and not (ref / n).is_symlink()
            and 0 < (ref / n).stat().st_size <= page // 2]
    assert len(tiny) >= 8  # by bytes, a listing cap of two pages would take four or more
    mp = mount("--cache-dir", str(cache), "--page-cache-push", str(page))
    os.listdir(mp / tree)
    s = _settled_pushes(mp)
    assert 1 <= s["pushed_files"] <= 2
    assert s["pushed_bytes"] <= 2 * page
    for n in tiny:
        assert (mp / tree / n).read_bytes() == (ref / n).read_bytes(), n


def test_nothing_is_pushed_from_spans_not_whole_in_the_cache(
        mount: Mount, img: mi.Image, store: Path, tmp_path: Path) -> None:  # noqa: F811
    """Listing pushes only bytes already verified and cached: on a cold cache nothing, and
    over a warm one whose span files were cut short after the mount took them (no longer
    the verified span), nothing either; reads still get the image's bytes."""
    tree = PUSH_TREE
    ref = img.ref / tree
    here = [n for n in os.listdir(ref) if (ref / n).is_file() and not (ref / n).is_symlink()]
    mp = mount()  # a fresh, empty span cache
    os.listdir(mp / tree)
    s = _settled_pushes(mp)  # the listing's job done, not just not started yet
    assert (s["pushed_files"], s["pushed_bytes"]) == (0, 0)

    cache = tmp_path / "warm"
    _warm_cache(mount, img, store, cache, tree)
    mp = mount("--cache-dir", str(cache))
    spans = [p for p in cache.rglob("*") if p.is_file()]
    assert spans
    for p in spans:
        os.truncate(p, p.stat().st_size - 1)
    os.listdir(mp / tree)
    s = _settled_pushes(mp)
    assert (s["pushed_files"], s["pushed_bytes"]) == (0, 0)
    for n in here:
        assert (mp / tree / n).read_bytes() == (ref / n).read_bytes(), n
    assert mi.stats(mp)["totals"]["errors"] == 0
