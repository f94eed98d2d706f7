"""The merged tree as the flat inode table the C FUSE frontend (``soci_native._fuse``) serves.

One walk over the finished :class:`~soci_native.mount.tree.Tree`'s directories (inode numbers
as :meth:`~soci_native.mount.tree.Tree.finish` gave them), the per-node work done by C-level
iterators (``attrgetter``, ``map``, ``array``) rather than a Python loop per file: a mount of
a 65k-entry layer must be ready in a fraction of a second. Handed over:

* ``rows``: int64s, ``_fuse.FIELDS`` per name (ino, kind, perm, nlink, uid, gid, size, mtime,
  rdev, layer, offset): a hard-linked inode's names give identical rows;
* ``dirs``: ``_fuse.DIR_FIELDS`` per directory (ino, parent, first child, child count);
* each directory's children as a contiguous range of ``child_ino`` / ``child_name_len``
  whose names are concatenated in ``names``;
* ``sparse`` (inodes whose data is not one range), symlink ``targets`` and ``xattrs``.

The C side checks every number and range before it serves anything and sorts each
directory's names itself. A name the kernel could never pass back (holding a NUL, or over
4096 bytes) is left out of its directory with a warning, and so is an xattr Linux cannot ask
for; an mtime or device number beyond 64 bits is clamped.
"""

from __future__ import annotations

import logging
import stat
import struct
from array import array
from collections.abc import Iterable
from itertools import repeat, starmap
from operator import attrgetter
from typing import NamedTuple

from soci_native.mount.tree import Node, Tree, gc_paused

log = logging.getLogger("soci_native.mount")

NAME_MAX_BYTES = 4096
XATTR_NAME_MAX = 255  # Linux's limits: an xattr beyond them cannot be asked for
XATTR_VALUE_MAX = 65536
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1

_ROW = attrgetter("ino", "kind", "perm", "nlink", "uid", "gid", "size", "mtime_ns", "rdev",
                  "layer", "offset")
_INO = attrgetter("ino")
_PACK = struct.Struct("=11q").pack


class InodeTable(NamedTuple):
    inodes: int
    rows: bytes
    dirs: bytes
    child_ino: bytes
    child_name_len: bytes
    names: bytes
    sparse: bytes
    targets: list[tuple[int, bytes]]  # (symlink inode, target)
    xattrs: list[tuple[int, bytes, bytes]]  # (inode, name, value)


def export(tree: Tree) -> tuple[InodeTable, dict[int, Node]]:
    """The table, and each inode's :class:`Node` by number (for the reads the frontend hands
    back to Python). The cyclic GC is paused meanwhile: the tuples made here would otherwise
    have it scan the whole tree a few times over (half the time, measured)."""
    with gc_paused():
        return _export(tree)


def _export(tree: Tree) -> tuple[InodeTable, dict[int, Node]]:
    dirs: list[int] = []
    keys: list[str] = []
    nodes: list[Node] = [tree.root]
    stack = [(tree.root, 0)]
    while stack:
        d, parent = stack.pop()
        children = d.children
        assert children is not None
        dirs += (d.ino, parent, len(keys), len(children))
        keys += children
        vals = list(children.values())
        nodes += vals
        stack += [(c, d.ino) for c in vals if c.children is not None]
    enc = list(map(str.encode, keys, repeat("utf-8"), repeat("surrogateescape")))
    names = b"".join(enc)
    lens = list(map(len, enc))
    inos = list(map(_INO, nodes[1:]))
    if b"\0" in names or (lens and max(lens) > NAME_MAX_BYTES):
        dirs, enc, inos = _drop_bad_names(dirs, enc, inos)
        names, lens = b"".join(enc), list(map(len, enc))
    try:
        rows = b"".join(starmap(_PACK, map(_ROW, nodes)))
    except struct.error:  # an mtime or dev_t past int64: clamp them (rare, slower)
        rows = b"".join(starmap(_PACK, map(_clamped_row, nodes)))
    table = InodeTable(
        tree.inodes, rows, array("q", dirs).tobytes(), array("q", inos).tobytes(),
        array("q", lens).tobytes(), names,
        array("q", [n.ino for n in nodes if n.entry is not None]).tobytes(),
        [(n.ino, n.target.encode("utf-8", "surrogateescape")) for n in nodes
         if n.kind == stat.S_IFLNK],
        list(_xattrs(n for n in nodes if n.xattrs)))
    return table, dict(zip(map(_INO, nodes), nodes, strict=True))


def _clamped_row(n: Node) -> tuple[int, ...]:
    rdev = n.rdev & 0xFFFFFFFFFFFFFFFF  # dev_t's 64 bits, as the int64 that holds them
    return (n.ino, n.kind, n.perm, n.nlink, n.uid, n.gid, n.size,
            min(max(n.mtime_ns, INT64_MIN), INT64_MAX),
            rdev - (1 << 64) if rdev > INT64_MAX else rdev, n.layer, n.offset)


def _drop_bad_names(dirs: list[int], enc: list[bytes], inos: list[int]
                    ) -> tuple[list[int], list[bytes], list[int]]:
    """The children lists without names FUSE cannot look up (ranges renumbered)."""
    out_dirs: list[int] = []
    out_enc: list[bytes] = []
    out_inos: list[int] = []
    for k in range(0, len(dirs), 4):
        ino, parent, start, count = dirs[k:k + 4]
        first = len(out_enc)
        for name, child in zip(enc[start:start + count], inos[start:start + count],
                               strict=True):
            if b"\0" in name or len(name) > NAME_MAX_BYTES:
                log.warning("leaving out %r: a name FUSE cannot look up",
                            name[:100].decode("utf-8", "replace"))
                continue
            out_enc.append(name)
            out_inos.append(child)
        out_dirs += (ino, parent, first, len(out_enc) - first)
    return out_dirs, out_enc, out_inos


def _xattrs(nodes: Iterable[Node]) -> Iterable[tuple[int, bytes, bytes]]:
    seen: set[int] = set()
    for n in nodes:
        if n.ino in seen:  # another name of a hard-linked inode
            continue
        seen.add(n.ino)
        for k, v in n.xattrs.items():
            name = k.encode("utf-8", "surrogateescape")
            if 0 < len(name) <= XATTR_NAME_MAX and b"\0" not in name \
                    and len(v) <= XATTR_VALUE_MAX:
                yield n.ino, name, v
            else:
                log.warning("leaving out xattr %r of inode %d: beyond what Linux can ask for",
                            k, n.ino)
