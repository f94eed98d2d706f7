"""The C FUSE frontend (soci_native._fuse): the inode table it is handed is checked before
anything is served; reads of cached spans served in C fall back to Python when a span's file
was evicted, and many concurrent readers get the bytes `umoci unpack` has."""

# ruff: noqa: F811 (the fixtures imported from test_mount are parameters here)
from __future__ import annotations

import os
import random
import threading
from array import array
from pathlib import Path
from typing import Any

import mnt_image as mi
import pytest
from test_mount import Mount, img, mount, store  # noqa: F401 - fixtures

from soci_native import _fuse
from soci_native.mount.inodes import InodeTable, export
from soci_native.mount.tree import Entry, build_tree

FIELDS = _fuse.FIELDS
MODE, LAYER, SIZE, PARENT, CHILD_START, CHILD_COUNT = 0, 7, 4, 10, 11, 12


# ------------------------------------------------------------------------- the inode table

def _table() -> InodeTable:
    tree = build_tree([[
        Entry("d", "dir", 0, 0, mode=0o755),
        Entry("d/f", "reg", 512, 3, mode=0o644),
        Entry("d/g", "reg", 1024, 3, mode=0o644),
        Entry("l", "symlink", 0, 0, "d/f", mode=0o777),
    ]])
    table, _ = export(tree)
    return table


def _frontend(t: InodeTable, layers: int = 1) -> _fuse.Frontend:
    return _fuse.Frontend(*t, layers, 0, object())


def _rows(t: InodeTable) -> list[int]:
    return list(array("q", t.nodes))


def _with_rows(t: InodeTable, rows: list[int]) -> InodeTable:
    return t._replace(nodes=array("q", rows).tobytes())


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
    n = len(t.nodes) // (8 * FIELDS)
    assert (fe.stats_dir_ino, fe.stats_ino) == (n, n + 1)
    fe.set_spans(0, array("q", [0, 65536, 70000]).tobytes())
    fe.span_cached(0, 1, "/nonexistent")
    assert fe.take_hits() == [0] and fe.take_touched(0) == []


def _bad_tables() -> dict[str, tuple[InodeTable, int]]:
    t = _table()
    rows = _rows(t)
    f = _ino(t, b"f")
    d = _ino(t, b"d")
    cases: dict[str, tuple[InodeTable, int]] = {}

    def row_case(name: str, ino: int, field: int, value: int) -> None:
        r = list(rows)
        r[ino * FIELDS + field] = value
        cases[name] = (_with_rows(t, r), 1)

    cases["truncated rows"] = (t._replace(nodes=t.nodes[:-8]), 1)
    cases["no root"] = (t._replace(nodes=t.nodes[:FIELDS * 8]), 1)
    row_case("root not a directory", 1, MODE, 0o100644)
    row_case("unknown file type", f, MODE, 0o170644)
    row_case("negative size", f, SIZE, -1)
    row_case("huge size", f, SIZE, 1 << 62)
    row_case("no such layer", f, LAYER, 1)
    row_case("negative layer", f, LAYER, -1)
    row_case("children past the table", d, CHILD_START, 1 << 40)
    row_case("too many children", d, CHILD_COUNT, 99)
    row_case("file with children", f, CHILD_COUNT, 1)
    row_case("parent out of range", d, PARENT, 1 << 30)
    row_case("wrong parent", d, PARENT, f)
    r = list(rows)  # the root lists d's children too: two directories claim them
    r[1 * FIELDS + CHILD_START], r[1 * FIELDS + CHILD_COUNT] = 0, len(t.child_ino) // 8
    cases["children shared"] = (_with_rows(t, r), 1)
    inos = array("q", t.child_ino)
    bad = array("q", inos)
    bad[0] = len(rows) // FIELDS
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
        names = bytearray(t.names)
        names[0:1] = junk
        cases[f"name with a {what}"] = (t._replace(names=bytes(names)), 1)
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
    with pytest.raises(ValueError, match="inode table|bad layer count"):
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


def test_names_fuse_cannot_pass_are_left_out() -> None:
    tree = build_tree([[Entry("ok", "reg", 0, 0), Entry("bad\0name", "reg", 512, 0),
                        Entry("x" * 5000, "reg", 1024, 0)]])
    table, by_ino = export(tree)
    assert table.names == b"ok"
    _frontend(table)


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
