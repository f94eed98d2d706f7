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

from soci_native.mount.tree import Node, Tree

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
    frontend hands back to Python."""
    n = tree.inodes + 1
    rows: list[tuple[int, ...] | None] = [None] * n
    by_ino: list[Node | None] = [None] * n
    child_ino: list[int] = []
    name_lens: list[int] = []
    names: list[bytes] = []
    targets: list[tuple[int, bytes]] = []
    xattrs: list[tuple[int, bytes, bytes]] = []
    parents = {1: 0}
    stack = [tree.root]
    while stack:
        d = stack.pop()
        assert d.children is not None
        start = len(child_ino)
        for name, c in d.children.items():
            enc = name.encode("utf-8", "surrogateescape")
            if not _name_ok(enc):
                log.warning("leaving out %r: a name FUSE cannot look up", name)
                continue
            child_ino.append(c.ino)
            name_lens.append(len(enc))
            names.append(enc)
            if c.children is not None:
                parents[c.ino] = d.ino
                stack.append(c)
        _row(d, parents[d.ino], start, len(child_ino) - start, rows, by_ino, targets, xattrs)
        for c in d.children.values():
            if c.children is None and by_ino[c.ino] is None:
                _row(c, 0, 0, 0, rows, by_ino, targets, xattrs)
    zero = (0,) * 13
    table = InodeTable(
        array("q", chain.from_iterable(r or zero for r in rows)).tobytes(),
        array("q", child_ino).tobytes(), array("q", name_lens).tobytes(), b"".join(names),
        targets, xattrs)
    return table, by_ino


def _row(x: Node, parent: int, start: int, count: int, rows: list[tuple[int, ...] | None],
         by_ino: list[Node | None], targets: list[tuple[int, bytes]],
         xattrs: list[tuple[int, bytes, bytes]]) -> None:
    ino = x.ino
    by_ino[ino] = x
    rdev = x.rdev & 0xFFFFFFFFFFFFFFFF  # dev_t's 64 bits, as the int64 that holds them
    rows[ino] = (x.kind | x.perm, x.nlink, x.uid & 0xFFFFFFFF, x.gid & 0xFFFFFFFF, x.size,
                 min(max(x.mtime_ns, INT64_MIN), INT64_MAX),
                 rdev - (1 << 64) if rdev > INT64_MAX else rdev, x.layer, x.offset,
                 FLAG_SPARSE if x.entry is not None else 0, parent, start, count)
    if x.kind == stat.S_IFLNK:
        targets.append((ino, x.target.encode("utf-8", "surrogateescape")))
    for k, v in x.xattrs.items():
        name = k.encode("utf-8", "surrogateescape")
        if 0 < len(name) <= XATTR_NAME_MAX and b"\0" not in name and len(v) <= XATTR_VALUE_MAX:
            xattrs.append((ino, name, v))
        else:
            log.warning("leaving out xattr %r of inode %d: beyond what Linux can ask for", k, ino)
