"""The mount tree at scale and against hostile names (issue 8 §2 deep paths): memory linear
in the bytes of the names, measured in a child process; the fast zTOC entry path equal to
the plain one."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

from peak_rss import HWM_KB
from test_ztoc import SUPPORTED, built
from tree_oracle import TreeView, c_tree, entry_from_toc

from soci_native import ztoc
from soci_native.mount.tree import Entry, TreeBuilder

DEPTH = 40_000

_DEEP_CHILD = HWM_KB + f"""
import sys
sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
""" + r"""
import json, time
from soci_native.layer import index_layer
from soci_native.mount.tree import Entry
from tree_oracle import c_tree
t = time.monotonic()
ix = index_layer(sys.argv[1], 1 << 20, entries=True)  # what a mount does with a small layer
tree = c_tree([[Entry.from_tar(e) for e in ix.entries]])
depth, node = 0, tree.root
while node.children:
    (name, node), = node.children.items()
    depth += 1
deep = tree.get("/" + "/".join(["d"] * (int(sys.argv[2]))) + "/f")
print(json.dumps({"depth": depth, "inodes": tree.inodes, "found": deep is not None and
                  deep.size == 3, "secs": time.monotonic() - t,
                  "maxrss_kb": hwm_kb()}))
"""


def deep_layer(path: Path, depth: int) -> None:
    """One file under ``depth`` directories named "d", given by a PAX path record."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo("d/" * depth + "f")
        ti.size = 3
        tf.addfile(ti, io.BytesIO(b"abc"))
    path.write_bytes(gzip.compress(buf.getvalue(), 9))


def test_a_40000_deep_path_takes_memory_linear_in_its_name(tmp_path: Path) -> None:
    blob = tmp_path / "deep.tar.gz"
    deep_layer(blob, DEPTH)
    assert blob.stat().st_size < 1024  # the was 264 bytes
    p = subprocess.run([sys.executable, "-c", _DEEP_CHILD, str(blob), str(DEPTH)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["depth"] == DEPTH + 1 and r["found"] and r["inodes"] == DEPTH + 2, r
    # 40,001 nodes and one 80 KB name: tens of MB (the interpreter is ~30 MB of it); a table
    # of every prefix's full path took 1.8 GB
    assert r["maxrss_kb"] < 150_000, r


def test_ztoc_trees_are_the_plain_entries_trees(catalog) -> None:
    with_xattrs = 0
    for name in SUPPORTED:
        _, ix = built(catalog, name)
        assert ix.ztoc is not None
        z = ztoc.from_bytes(ix.ztoc)
        want = [entry_from_toc(f) for f in z.files]
        with_xattrs += sum(1 for e in want if e.xattrs)
        b = TreeBuilder()
        b.add_ztoc(ix.ztoc)  # parsed in C (csrc/mount_tree.c)
        t1, t2 = c_tree([want]), TreeView(b.finish())
        assert sorted(t1.paths) == sorted(t2.paths) and t1.inodes == t2.inodes
    assert with_xattrs  # the PAX records' path was taken


def test_tree_get_walks_components() -> None:
    t = c_tree([[Entry("a/b/c", "reg", 0, 1), Entry("a/l", "symlink", 0, 0,
                                                     linkname="b")]])
    assert t.get("/") is t.root and t.get("/a/b/c").size == 1  # type: ignore[union-attr]
    assert t.get("/a/b/c/d") is None and t.get("/a/x") is None and t.get("/a/l/c") is None
    assert set(t.paths) == {"/", "/a", "/a/b", "/a/b/c", "/a/l"}
    ino = {p: n.ino for p, n in t.paths.items()}
    assert ino["/"] == 1 and len(set(ino.values())) == 5 == t.inodes
