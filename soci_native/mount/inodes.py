"""The merged tree as the flat inode table the C FUSE frontend (``soci_native._fuse``) serves.

One walk over the finished :class:`~soci_native.mount.tree.Tree` (inode numbers as
:meth:`~soci_native.mount.tree.Tree.finish` gave them): a row of ``_fuse.FIELDS`` int64s per
inode (index = inode number, slot 0 unused), each directory's children as a contiguous range
of (name length, inode) pairs whose names are concatenated in one bytes object, and the few
symlink targets and xattrs as lists. The C side checks every number and range before it
serves anything and sorts each directory's names itself.

A name the kernel could never pass back (holding a NUL, or over 4096 bytes) is left out of
its directory with a warning: it could not be looked up anyway.
"""

from __future__ import annotations

import logging
import stat
from array import array
from itertools import chain
from typing import NamedTuple

from soci_native.mount.tree import Node, Tree, gc_paused

log = logging.getLogger("soci_native.mount")

NAME_MAX_BYTES = 4096
XATTR_NAME_MAX = 255  # Linux's limits: an xattr beyond them cannot be asked for
XATTR_VALUE_MAX = 65536
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
FLAG_SPARSE = 1  # as _fuse.FLAG_SPARSE: the file's data is not one range (Python reads it)


class InodeTable(NamedTuple):
    nodes: bytes  # int64 rows: mode nlink uid gid size mtime_ns rdev layer offset flags
    #               parent child_start child_count
    child_ino: bytes  # int64 per child
    child_name_len: bytes  # int64 per child
    names: bytes  # the children's names, concatenated in child order
    targets: list[tuple[int, bytes]]  # (symlink inode, target)
    xattrs: list[tuple[int, bytes, bytes]]  # (inode, name, value)


def _name_ok(enc: bytes) -> bool:
    return 0 < len(enc) <= NAME_MAX_BYTES and b"\0" not in enc


def export(tree: Tree) -> tuple[InodeTable, list[Node | None]]:
    """The table, and each inode's :class:`Node` (index = inode number) for the reads the
    frontend hands back to Python. Written for 10^5 nodes: a directory's names are encoded
    and checked together, and a row is one tuple built inline (a call per node was a third
    of the time)."""
    with gc_paused():
        return _export(tree)


def _export(tree: Tree) -> tuple[InodeTable, list[Node | None]]:
    n = tree.inodes + 1
    rows: list[tuple[int, ...] | None] = [None] * n
    by_ino: list[Node | None] = [None] * n
    child_ino: list[int] = []
    name_lens: list[int] = []
    names: list[bytes] = []
    targets: list[tuple[int, bytes]] = []
    xattrs: list[tuple[int, bytes, bytes]] = []
    extras: list[Node] = []  # symlinks and nodes with xattrs: their side tables
    lnk = stat.S_IFLNK
    stack: list[tuple[Node, int]] = [(tree.root, 0)]
    while stack:
        d, parent = stack.pop()
        assert d.children is not None
        start = len(child_ino)
        if d.xattrs:
            extras.append(d)
        kids = list(d.children.items())
        encs = [name.encode("utf-8", "surrogateescape") for name, _ in kids]
        lens = list(map(len, encs))
        if kids and (min(lens) == 0 or max(lens) > NAME_MAX_BYTES or b"\0" in b"".join(encs)):
            keep = [i for i, e in enumerate(encs) if _name_ok(e)]
            for i in sorted(set(range(len(kids))) - set(keep)):
                log.warning("leaving out %r: a name FUSE cannot look up", kids[i][0])
                c = kids[i][1]
                if c.children is None and by_ino[c.ino] is None:  # a row all the same
                    by_ino[c.ino] = c
                    rows[c.ino] = _row(c, 0, 0, 0)
                    if c.kind == lnk or c.xattrs:
                        extras.append(c)
            kids, encs, lens = [kids[i] for i in keep], [encs[i] for i in keep], \
                [lens[i] for i in keep]
        names += encs
        name_lens += lens
        ino = d.ino
        for _, c in kids:
            child_ino.append(c.ino)
            if c.children is not None:
                stack.append((c, ino))
            elif by_ino[c.ino] is None:
                ci = c.ino
                by_ino[ci] = c
                rows[ci] = _row(c, 0, 0, 0)
                if c.kind == lnk or c.xattrs:
                    extras.append(c)
        by_ino[ino] = d
        rows[ino] = _row(d, parent, start, len(child_ino) - start)
    for x in extras:
        _side(x, targets, xattrs)
    zero = (0,) * 13
    table = InodeTable(
        array("q", chain.from_iterable(r or zero for r in rows)).tobytes(),
        array("q", child_ino).tobytes(), array("q", name_lens).tobytes(), b"".join(names),
        targets, xattrs)
    return table, by_ino


def _row(x: Node, parent: int, start: int, count: int) -> tuple[int, ...]:
    m = x.mtime_ns
    if not INT64_MIN <= m <= INT64_MAX:
        m = min(max(m, INT64_MIN), INT64_MAX)
    rdev = x.rdev
    if rdev:
        rdev &= 0xFFFFFFFFFFFFFFFF  # dev_t's 64 bits, as the int64 that holds them
        if rdev > INT64_MAX:
            rdev -= 1 << 64
    return (x.kind | x.perm, x.nlink, x.uid & 0xFFFFFFFF, x.gid & 0xFFFFFFFF, x.size, m, rdev,
            x.layer, x.offset, FLAG_SPARSE if x.entry is not None else 0, parent, start, count)


def _side(x: Node, targets: list[tuple[int, bytes]],
          xattrs: list[tuple[int, bytes, bytes]]) -> None:
    """A node's symlink target and xattrs, in the side tables."""
    ino = x.ino
    if x.kind == stat.S_IFLNK:
        targets.append((ino, x.target.encode("utf-8", "surrogateescape")))
    for k, v in x.xattrs.items():
        name = k.encode("utf-8", "surrogateescape")
        if 0 < len(name) <= XATTR_NAME_MAX and b"\0" not in name and len(v) <= XATTR_VALUE_MAX:
            xattrs.append((ino, name, v))
        else:
            log.warning("leaving out xattr %r of inode %d: beyond what Linux can ask for", k, ino)
