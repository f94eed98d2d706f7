"""The flat inode table the C FUSE frontend (``soci_native._fuse``) serves, as the C tree
builder (``csrc/mount_tree.c``, :class:`~soci_native.mount.tree.TreeBuilder`) makes it:

* ``rows``: int64s, ``_fuse.FIELDS`` per name (ino, kind, perm, nlink, uid, gid, size, mtime,
  rdev, layer, offset), the root's first: a hard-linked inode's names give identical rows;
* ``dirs``: ``_fuse.DIR_FIELDS`` per directory (ino, parent, first child, child count);
* each directory's children as a contiguous range of ``child_ino`` / ``child_name_len``
  whose names are concatenated in ``names``;
* ``sparse`` (inodes whose data is not one range), symlink ``targets`` and ``xattrs``.

The frontend checks every number and range again before it serves anything (the table is
its input, whoever made it) and sorts each directory's names itself.
"""

from __future__ import annotations

from typing import NamedTuple


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
