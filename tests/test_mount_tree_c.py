"""The C mount tree (csrc/mount_tree.c) against the rules as plain Python (tree_oracle.py):
the same inode table, up to inode numbering and name order, for random layer stacks of
hostile-looking names (whiteouts, opaque markers, "." and "..", hard links, type changes),
for the catalog's real layers from their zTOCs and from their local entries, and the same
warnings."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import re
import stat
import subprocess
import sys
from array import array
from typing import Any

import fb_oracle
import layers as L
import pytest
import tree_oracle as oracle
from peak_rss import HWM_KB
from test_ztoc import SUPPORTED, TOOL, built
from test_ztoc_info import ODD_NAMES, overlapping_ztoc

from soci_native import ztoc
from soci_native.mount.inodes import InodeTable
from soci_native.mount.tree import Entry, TreeBuilder

M32 = 0xFFFFFFFF


def canon(t: InodeTable) -> dict[bytes, tuple[Any, ...]]:
    """Every path's attributes, with hard links as the first path naming the same inode
    (inode numbers themselves are the builder's choice)."""
    rows = array("q", t.rows)
    by_ino: dict[int, tuple[int, ...]] = {}
    for k in range(0, len(rows), 11):
        by_ino.setdefault(rows[k], tuple(rows[k + 1:k + 11]))
    assert len(rows) // 11 >= t.inodes and set(by_ino) == set(range(1, t.inodes + 1))
    d = array("q", t.dirs)
    dirs = {d[k]: (d[k + 1], d[k + 2], d[k + 3]) for k in range(0, len(d), 4)}
    inos, lens = array("q", t.child_ino), array("q", t.child_name_len)
    starts = [0]
    for n in lens:
        starts.append(starts[-1] + n)
    targets = dict(t.targets)
    xattrs: dict[int, list[tuple[bytes, bytes]]] = {}
    for ino, k, v in t.xattrs:
        xattrs.setdefault(ino, []).append((k, v))
    sparse = set(array("q", t.sparse))
    out: dict[bytes, tuple[Any, ...]] = {}
    first: dict[int, bytes] = {}
    stack = [(b"/", 1, 0)]
    while stack:
        path, ino, parent = stack.pop()
        kind, perm, nlink, uid, gid, size, mtime, rdev, layer, offset = by_ino[ino]
        link = first.setdefault(ino, path)
        out[path] = (kind, perm, nlink, uid & M32, gid & M32, size, mtime, rdev, layer, offset,
                     targets.get(ino), xattrs.get(ino, []), ino in sparse, link)
        if stat.S_ISDIR(kind):
            dparent, start, count = dirs[ino]
            assert dparent == parent
            kids = sorted((t.names[starts[j]:starts[j + 1]], inos[j])
                          for j in range(start, start + count))
            prefix = path if path == b"/" else path + b"/"
            stack += [(prefix + name, c, ino) for name, c in reversed(kids)]
    return out


class _Count(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.n += 1


def oracle_table(layers: list[list[Entry]], single: bool) -> tuple[InodeTable, int]:
    count = _Count()
    oracle.log.addHandler(count)
    oracle.log.propagate = False
    try:
        table, _ = oracle.export(oracle.build_tree(layers, single_layer=single))
    finally:
        oracle.log.removeHandler(count)
    return table, count.n


def same(layers: list[list[Entry]], single: bool = False) -> None:
    want, warned = oracle_table(layers, single)
    got = oracle.c_tree(layers, single_layer=single)
    assert got.inodes == want.inodes
    assert canon(got.table) == canon(want)
    assert len(got.warnings) == warned


# ------------------------------------------------------------------------ random stacks

PARTS = ["a", "b", "c", ".", "..", "", ".wh.a", ".wh.b", ".wh.c", ".wh..wh..opq", ".wh.",
         ".wh..", ".wh...",
         "x\0y", "é", "\udcff"]
TYPES = ["reg"] * 6 + ["dir"] * 4 + ["symlink", "hardlink", "hardlink", "char", "block",
                                     "fifo", "weird", "pax_global"]


def rand_name(r: random.Random) -> str:
    name = "/".join(r.choice(PARTS) for _ in range(r.randint(1, 4)))
    return r.choice(["", "", "./", "/", "//./"]) + name + r.choice(["", "", "/", "//"])


def rand_entry(r: random.Random, offset: int) -> Entry:
    kind = r.choice(TYPES)
    xattrs: dict[str, bytes] = {}
    if r.random() < 0.15:
        xattrs = {r.choice(["user.a", "user.b", "", "x" * 300, "trusted.overlay.opaque"]):
                  r.choice([b"1", b"", b"v" * 70000]) for _ in range(r.randint(1, 3))}
    return Entry(rand_name(r), kind, offset, r.choice([0, 1, 7, 4096]),
                 rand_name(r) if kind in ("symlink", "hardlink") else "",
                 r.choice([0o644, 0o755, 0o4755, -1, 1 << 40]), r.choice([0, 7, -1, 1 << 33]),
                 r.choice([0, 5]), r.choice([0, 1, -(1 << 70), 1 << 70, 10**18]),
                 r.choice([0, 1, -1, 1 << 40]), r.choice([0, 3, -2]), xattrs,
                 r.random() < 0.05, r.choice([0, 512]))


@pytest.mark.parametrize("seed", range(8))
def test_random_stacks_match_the_oracle(seed: int) -> None:
    r = random.Random(seed)
    for _ in range(250):
        stack = [[rand_entry(r, 512 * k) for k in range(r.randint(0, 25))]
                 for _ in range(r.randint(1, 3))]
        same(stack, single=False)
        same(stack[:1], single=True)


def test_the_unit_cases_match_the_oracle() -> None:
    def e(name: str, type: str = "reg", size: int = 0, **kw: Any) -> Entry:
        return Entry(name, type, kw.pop("offset", 0), size, **kw)

    lower = [e("./", "dir", mode=0o755), e("a/", "dir", mode=0o700), e("a/f1", size=1),
             e("a/sub/", "dir"), e("a/sub/x", size=3), e("b", size=4), e("c/d/e", size=5),
             e("h", size=6, offset=512), e("l", "hardlink", linkname="h"), e("o/", "dir"),
             e("o/old", size=7), e("s", "symlink", linkname="target")]
    upper = [e("a/.wh.f1"), e("a/", "dir", mode=0o751, uid=7), e(".wh.b"), e("b/", "dir"),
             e("b/in", size=8), e("new", size=9), e(".wh.new"), e("o/.wh..wh..opq"),
             e("o/y", size=10), e("h", size=11), e("./c/../c/d/e", "dir"),
             e("a/sub", "hardlink", linkname="h"), e("q/r", "hardlink", linkname="q")]
    same([lower, upper])
    same([lower + upper], single=True)
    same([[e("d/.wh..wh..opq"), e("d/.wh.gone"), e("d/kept", size=1), e("d/.wh.kept"),
           e(".wh.top"), e(".wh..wh..opq")]], single=True)


# ------------------------------------------------------------------ the catalog's layers

def test_catalog_ztocs_match_the_oracle(catalog: L.Catalog) -> None:
    raws, stacks = [], []
    for name in SUPPORTED:
        _, ix = built(catalog, name)
        assert ix.ztoc is not None
        b = TreeBuilder()
        b.add_ztoc(ix.ztoc)  # the mount's path: straight from the zTOC bytes
        want, _ = oracle_table([oracle.toc_entries(ix.ztoc)], False)
        assert canon(b.finish().table) == canon(want), name
        single = TreeBuilder(single_layer=True)
        single.add_ztoc(ix.ztoc)
        want, _ = oracle_table([oracle.toc_entries(ix.ztoc)], True)
        assert canon(single.finish().table) == canon(want), name
        local = [Entry.from_tar(x) for x in
                 __import__("soci_native").index_layer(str(L.need(catalog, name).path),
                                                        1 << 20, entries=True).entries]
        same([local])
        raws.append(ix.ztoc)
        stacks.append(oracle.toc_entries(ix.ztoc))
    b = TreeBuilder()  # all of them as one image, in both orders
    for raw in raws:
        b.add_ztoc(raw)
    want, _ = oracle_table(stacks, False)
    assert canon(b.finish().table) == canon(want)
    same(stacks[::-1])


def test_an_overlapping_ztoc_is_refused_naming_the_entry(catalog: L.Catalog) -> None:
    raw, name = overlapping_ztoc(catalog)
    with pytest.raises(ztoc.ZtocError, match=f"{re.escape(repr(name))}: overlaps") as plain:
        oracle.toc_entries(raw)
    with pytest.raises(ztoc.ZtocError, match="overlaps") as fast:
        TreeBuilder().add_ztoc(raw)
    named = str(fast.value).split("'")[1]  # the name, cut to 200 characters
    assert len(named) >= 200 and named in str(plain.value)


def test_odd_names_and_times_from_a_ztoc_match_the_oracle(catalog: L.Catalog) -> None:
    _, ix = built(catalog, "edge-pax.gz")
    rng = random.Random(11)
    names = ODD_NAMES + [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 12)))
                         for _ in range(200)]
    names += [b"./a/../" + n for n in ODD_NAMES] + [b"d/.wh." + n for n in ODD_NAMES]
    entries = [e._replace(name=names[i % len(names)].decode("utf-8", "surrogateescape"))
               for i, e in enumerate(ix.entries)]
    raw = fb_oracle.ztoc_bytes(dataclasses.replace(ix, entries=entries), TOOL)
    for single in (False, True):
        b = TreeBuilder(single)
        b.add_ztoc(raw)
        want, _ = oracle_table([oracle.toc_entries(raw)], single)
        assert canon(b.finish().table) == canon(want)


@pytest.mark.parametrize("text", [
    "2024-01-31T12:00:00Z", "2024-01-31t12:00:00.5z", " 2024-01-31 12:00:00+02:00\n",
    "0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999999Z", "10000-01-01T00:00:00Z",
    "00002024-01-31T12:00:00Z", "2024-13-01T00:00:00Z", "2024-00-01T00:00:00Z",
    "2024-02-99T99:99:99-99:99", "-2024-01-01T00:00:00Z", "2024-01-01T00:00:00",
    "2024-01-01T00:00:00.Z", "2024-01-01T00:00:00.1234567891234Z", "", "yesterday",
    "2024-1-01T00:00:00Z", "2024-01-01T00:00:00+0200", "\u0662024-01-01T00:00:00Z"])
def test_zone_and_range_rules_of_times(text: str) -> None:
    import calendar
    import re

    m = re.fullmatch(r"(-?\d{4,})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d+))?"
                     r"(?:([Zz])|([+-])(\d\d):(\d\d))", text.strip(), re.ASCII)
    want = 0
    if m:
        year, mon, day, hh, mm, ss = (int(m.group(i)) for i in range(1, 7))
        frac = (m.group(7) or "")[:9].ljust(9, "0")
        try:
            secs = calendar.timegm((year, mon, day, hh, mm, ss, 0, 0, 0))
            if m.group(9):
                off = int(m.group(10)) * 3600 + int(m.group(11)) * 60
                secs -= off if m.group(9) == "+" else -off
            want = max(min(secs * 10**9 + int(frac), (1 << 63) - 1), -(1 << 63))
        except (ValueError, OverflowError):
            want = 0
    assert oracle.parse_rfc3339_ns(text) == want


_OPAQUE_CHILD = HWM_KB + f"""
import sys
sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
""" + r"""
import json
from soci_native.mount.tree import Entry
from tree_oracle import c_tree
xattrs = {f"user.k{i}": b"v" * 16 for i in range(4000)}
layer = [Entry("d", "dir", 0, 0, xattrs=xattrs)] + [Entry("d/.wh..wh..opq", "reg", 0, 0)] * 4000
t = c_tree([layer], single_layer=True)
print(json.dumps({"xattrs": len(t.get("/d").xattrs), "maxrss_kb": hwm_kb()}))
"""


def test_many_opaque_markers_on_a_directory_with_many_xattrs_stay_small() -> None:
    """Each marker used to copy the directory's xattrs with the opaque one added: 4000 x
    4000 records (~500 MB); the directory is marked once."""
    p = subprocess.run([sys.executable, "-c", _OPAQUE_CHILD], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["xattrs"] == 4001 and r["maxrss_kb"] < 150_000, r
