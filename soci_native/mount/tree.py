"""The file tree of a mount, built from tar entries alone (zTOC TOCs or a local index).

Layers are applied bottom to top with the OCI layer semantics that overlayfs gives a stack of
snapshots: in each layer the whiteouts are applied first, to what the layers below left (a
whiteout hides only lower content, never its own layer's), then the layer's entries:

* ``.wh.NAME`` removes NAME (a whole subtree for a directory); ``.wh..wh..opq`` removes every
  lower entry of its directory (the directory itself stays);
* a later entry replaces an earlier one at the same path, except that a directory over a
  directory only takes the new metadata and keeps the children;
* a hard link names the very node its target names (one inode, ``nlink`` counts the names);
* missing parent directories are made implicitly (mode 0755, root-owned, mtime 0), and a
  non-directory in the way of a deeper entry is replaced by one.

``single_layer=True`` shows one layer as the reference snapshotter mounts it for overlayfs:
``.wh.NAME`` appears as a 0:0 character device named NAME (unless the layer also has a real
NAME, or NAME is "." or "..") and a directory holding ``.wh..wh..opq`` carries the xattr
``trusted.overlay.opaque=y``.

Nothing here reads file contents: a regular file records which layer holds its bytes and at
which uncompressed offset, and metadata calls never touch layer data.

The tree is built in C (``csrc/mount_tree.c``, through :class:`TreeBuilder`) straight from
each zTOC (or a local layer's entries) into the flat inode table the FUSE frontend serves
(:class:`~soci_native.mount.inodes.InodeTable`), with the GIL released: a Python tree of
65k nodes and its export were most of a mount's start. Memory is linear in the entries and
the bytes of their names, time linear in those bytes. A name the kernel could never pass back
(holding a NUL, or over 4096 bytes) is left out of its directory with a warning, and so is an
xattr Linux cannot ask for; an mtime beyond 64 bits is clamped. ``tests/tree_oracle.py`` keeps
the rules above as plain Python, the oracle the C tree is compared with, and the node views
(by path) the tests read a finished tree through.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple

from soci_native import _core
from soci_native.layer import TarEntry
from soci_native.mount.inodes import InodeTable
from soci_native.ztoc import ZtocError

if TYPE_CHECKING:
    from soci_native.ztoc import ZtocBuffer

log = logging.getLogger("soci_native.mount")

XATTR_PAX_PREFIX = "SCHILY.xattr."
NO_XATTRS: Mapping[str, bytes] = MappingProxyType({})


def pax_xattrs(pax: Iterable[tuple[str, str]]) -> Mapping[str, bytes]:
    """The ``SCHILY.xattr.*`` PAX records as xattrs; most entries have none."""
    out = {k[len(XATTR_PAX_PREFIX):]: v.encode("utf-8", "surrogateescape")
           for k, v in pax if k.startswith(XATTR_PAX_PREFIX)}
    return out or NO_XATTRS


class Entry(NamedTuple):
    """One tar member of a locally indexed layer (a zTOC's entries go to C as the zTOC
    itself). A tuple: a mount makes one per tar member (65k for a Python installation), and
    a frozen dataclass cost 5 µs each."""

    name: str
    type: str  # reg dir symlink hardlink char block fifo (others are ignored)
    offset: int  # uncompressed offset of the data in the layer's tar stream
    size: int
    linkname: str = ""
    mode: int = 0
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    devmajor: int = 0
    devminor: int = 0
    xattrs: Mapping[str, bytes] = NO_XATTRS
    sparse: bool = False  # GNU/PAX sparse file: its data is not one contiguous range
    header_offset: int = -1

    @classmethod
    def from_tar(cls, e: TarEntry) -> Entry:
        kind = "reg" if e.type == "sparse" else e.type  # old GNU sparse ('S'): a file
        return cls(e.name, kind, e.offset, e.size, e.linkname, e.mode, e.uid, e.gid,
                   e.mtime * 1_000_000_000 + e.mtime_ns, e.devmajor, e.devminor,
                   pax_xattrs(e.pax.items()) if e.pax else NO_XATTRS, e.sparse,
                   e.header_offset)


class TreeBuilder:
    """The merged tree, a layer at a time, bottom first (``_core.TreeBuilder``: parsed and
    built in C without the GIL); :meth:`finish` once."""

    def __init__(self, single_layer: bool = False) -> None:
        self._b = _core.TreeBuilder(single_layer)

    def add_ztoc(self, buf: ZtocBuffer) -> None:
        """A zTOC's entries as the next layer, checked as
        :func:`~soci_native.ztoc.sorted_files` checks them (no overlapping data). Raises
        ZtocError; the builder is spent then."""
        try:
            self._b.add_ztoc(buf)
        except ValueError as e:
            raise ZtocError(str(e)) from None

    def add_entries(self, entries: Iterable[Entry]) -> None:
        self._b.add_entries(entries if isinstance(entries, list) else list(entries))

    def finish(self) -> MountTree:
        tree = MountTree(self._b.finish())
        for line in tree.warnings:
            log.warning("%s", line)
        return tree


class MountTree:
    """A finished tree: the inode table the frontend serves (:attr:`table`) and each regular
    file's data (:meth:`file`, for the reads handed back to Python)."""

    def __init__(self, parts: tuple[Any, ...]) -> None:
        self.table = InodeTable(*parts[:9])
        self.inodes: int = self.table.inodes
        self._files = memoryview(parts[9]).cast("q")
        self.warnings: list[str] = parts[10].splitlines()

    def file(self, ino: int) -> tuple[int, int, int, int]:
        """(layer, offset, size, header offset) of regular file ``ino``: layer -1 for any
        other inode; a header offset >= 0 marks a sparse file (its data is not one range)."""
        if not 0 < ino <= self.inodes:
            return -1, 0, 0, -1
        k = ino * 4
        f = self._files
        return f[k], f[k + 1], f[k + 2], f[k + 3]
