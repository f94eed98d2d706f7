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
the rules above as plain Python, the oracle the C tree is compared with.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import itertools
import logging
import posixpath
import re
import stat
from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeVar

from soci_native import _core
from soci_native.layer import TarEntry
from soci_native.mount.inodes import InodeTable
from soci_native.ztoc import FileMetadata, ZtocError

if TYPE_CHECKING:
    from soci_native.ztoc import ZtocBuffer

log = logging.getLogger("soci_native.mount")

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
XATTR_PAX_PREFIX = "SCHILY.xattr."
OPAQUE_XATTR = "trusted.overlay.opaque"



@functools.lru_cache(maxsize=1 << 16)
def parse_rfc3339_ns(text: str) -> int:
    """Nanoseconds since the epoch of an RFC 3339 time as Go's ``Time.MarshalText`` writes it
    (any zone offset, up to nanosecond fractions, ASCII digits only), clamped to int64; 0 for
    an empty or unreadable value. The C tree's own reading of zTOC times (one rule for both).
    Cached: the files of a layer share few distinct mtimes."""
    return _core.rfc3339_ns(text.encode("utf-8", "surrogateescape"))


def _xattrs(pax: Iterable[tuple[str, str]]) -> Mapping[str, bytes]:
    """The ``SCHILY.xattr.*`` PAX records as xattrs; most entries have none."""
    out = {k[len(XATTR_PAX_PREFIX):]: v.encode("utf-8", "surrogateescape")
           for k, v in pax if k.startswith(XATTR_PAX_PREFIX)}
    return out or NO_XATTRS


NO_XATTRS: Mapping[str, bytes] = MappingProxyType({})


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a tree's 10^5 objects are made: each collection
    walks every object made so far and finds nothing (the tree has no cycles), and they were
    a quarter of a 53k-entry mount's start."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class Entry(NamedTuple):
    """One tar member, from a zTOC or from a locally indexed layer. A tuple: a mount makes
    one per tar member (65k for a Python installation), and a frozen dataclass cost 5 µs
    each."""

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
    def from_toc(cls, f: FileMetadata) -> Entry:
        return cls(f.name, f.type, f.uncompressed_offset, f.uncompressed_size, f.linkname,
                   f.mode, f.uid, f.gid, parse_rfc3339_ns(f.mod_time), f.devmajor, f.devminor,
                   _xattrs(f.xattrs.items()) if f.xattrs else NO_XATTRS)

    @classmethod
    def from_tar(cls, e: TarEntry) -> Entry:
        kind = "reg" if e.type == "sparse" else e.type  # old GNU sparse ('S'): a file
        return cls(e.name, kind, e.offset, e.size, e.linkname, e.mode, e.uid, e.gid,
                   e.mtime * 1_000_000_000 + e.mtime_ns, e.devmajor, e.devminor,
                   _xattrs(e.pax.items()) if e.pax else NO_XATTRS, e.sparse, e.header_offset)


def mkdev(major: int, minor: int) -> int:
    """Linux's dev_t for a tar header's numbers as the snapshotter makes it (Go's
    ``unix.Mkdev(uint32(major), uint32(minor))``): any int64 a hostile header holds wraps to
    32 bits instead of overflowing ``os.makedev``'s C ints."""
    major &= 0xFFFFFFFF
    minor &= 0xFFFFFFFF
    return ((major & 0xFFFFF000) << 32) | ((major & 0xFFF) << 8) | \
        ((minor & 0xFFFFFF00) << 12) | (minor & 0xFF)


_NEEDS_CLEANING = re.compile(r"(?:^|/)\.\.?(?:/|$)|//")


def clean_path(name: str) -> str:
    """The snapshotter's ``Clean("/" + name)`` without the leading slash ("" is the root).
    Most tar names only need their slashes trimmed; the rest go through normpath (the
    substring tests run first: cheaper than the regex, and most names have no "." after
    a slash at all)."""
    trimmed = name.strip("/")
    while trimmed.startswith("./"):  # "./usr/bin/x", as docker writes layers: not odd
        trimmed = trimmed[2:].lstrip("/")
    if ("/." not in trimmed and "//" not in trimmed and not trimmed.startswith(".")) \
            or _NEEDS_CLEANING.search(trimmed) is None:
        return trimmed
    return posixpath.normpath("/" + name).lstrip("/")




class TreeBuilder:
    """The merged tree, a layer at a time, bottom first (``_core.TreeBuilder``: parsed and
    built in C without the GIL); :meth:`finish` once."""

    def __init__(self, single_layer: bool = False) -> None:
        self.single_layer = single_layer
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
        tree = MountTree(self._b.finish(), self.single_layer)
        for line in tree.warnings:
            log.warning("%s", line)
        return tree


def build_tree(layers: Iterable[Iterable[Entry]], single_layer: bool = False) -> MountTree:
    b = TreeBuilder(single_layer)
    for entries in layers:
        b.add_entries(entries)
    return b.finish()


class _TreeNode(Protocol):
    @property
    def children(self) -> Mapping[str, Any] | None: ...

    def names(self) -> list[str]: ...


N = TypeVar("N", bound=_TreeNode)


def node_at(root: N, path: str) -> N | None:
    """The node under ``root`` at an absolute, clean path ("/", "/a/b"), for any tree whose
    nodes have ``children`` (None for a non-directory): this view's and the tests' oracle's."""
    node = root
    if path == "/":
        return node
    for part in path[1:].split("/"):
        children = node.children
        if children is None:
            return None
        child = children.get(part)
        if child is None:
            return None
        node = child
    return node


def walk_nodes(root: N) -> Iterator[tuple[str, N]]:
    """(path, node) for every name under ``root``, parents first, children in name order."""
    stack: list[tuple[str, N]] = [("/", root)]
    while stack:
        path, node = stack.pop()
        yield path, node
        children = node.children
        if children:
            prefix = path if path == "/" else path + "/"
            for name in reversed(node.names()):
                stack.append((prefix + name, children[name]))


class ModeBits:
    """``is_dir`` and ``mode`` from a node's ``kind`` (S_IFMT bits) and ``perm``: for this
    module's node views and the tests' oracle nodes."""

    __slots__ = ()
    kind: int
    perm: int

    @property
    def is_dir(self) -> bool:
        return self.kind == stat.S_IFDIR

    @property
    def mode(self) -> int:
        return self.kind | self.perm


class MountTree:
    """A finished tree: the inode table the frontend serves (:attr:`table`), each regular
    file's data (:meth:`file`, for the reads handed back to Python), and node views by path
    (:meth:`get`, :meth:`walk`: for tests and tools, made on demand)."""

    def __init__(self, parts: tuple[Any, ...], single_layer: bool = False) -> None:
        self.table = InodeTable(*parts[:9])
        self.inodes: int = self.table.inodes
        self.single_layer = single_layer
        self._files = memoryview(parts[9]).cast("q")
        self.warnings: list[str] = parts[10].splitlines()
        self._index: _Index | None = None

    def file(self, ino: int) -> tuple[int, int, int, int]:
        """(layer, offset, size, header offset) of regular file ``ino``: layer -1 for any
        other inode; a header offset >= 0 marks a sparse file (its data is not one range)."""
        if not 0 < ino <= self.inodes:
            return -1, 0, 0, -1
        k = ino * 4
        f = self._files
        return f[k], f[k + 1], f[k + 2], f[k + 3]

    # -- views

    @property
    def root(self) -> Node:
        return self._idx().node(1)

    def get(self, path: str) -> Node | None:
        """The node at an absolute, clean path as FUSE passes them ("/", "/a/b")."""
        return node_at(self.root, path)

    def walk(self) -> Iterator[tuple[str, Node]]:
        """(path, node) for every name, parents first. Makes every path."""
        return walk_nodes(self.root)

    @property
    def paths(self) -> dict[str, Node]:
        """Every path's node (see :meth:`walk`)."""
        return dict(self.walk())

    def _idx(self) -> _Index:
        if self._index is None:
            self._index = _Index(self.table)
        return self._index


class _Index:
    """The table by inode, for :class:`Node` views."""

    def __init__(self, t: InodeTable) -> None:
        rows = memoryview(t.rows).cast("q")
        self.rows: dict[int, tuple[int, ...]] = {}
        for k in range(0, len(rows), ROW_FIELDS):
            self.rows.setdefault(rows[k], tuple(rows[k:k + ROW_FIELDS]))
        dirs = memoryview(t.dirs).cast("q")
        self.dirs = {dirs[k]: (dirs[k + 2], dirs[k + 3]) for k in range(0, len(dirs), 4)}
        self.child_ino = memoryview(t.child_ino).cast("q")
        lens = memoryview(t.child_name_len).cast("q")
        self.starts = list(itertools.accumulate(lens, initial=0))
        self.names = t.names
        self.targets = {ino: b.decode("utf-8", "surrogateescape") for ino, b in t.targets}
        self.xattrs: dict[int, dict[str, bytes]] = {}
        for ino, name, value in t.xattrs:
            self.xattrs.setdefault(ino, {})[name.decode("utf-8", "surrogateescape")] = value
        self.sparse = set(memoryview(t.sparse).cast("q"))
        self.views: dict[int, Node] = {}

    def node(self, ino: int) -> Node:
        n = self.views.get(ino)
        if n is None:
            n = self.views[ino] = Node(self, ino)
        return n

    def children(self, ino: int) -> dict[str, Node]:
        start, count = self.dirs[ino]
        out: dict[str, Node] = {}
        for k in range(start, start + count):
            name = self.names[self.starts[k]:self.starts[k + 1]]
            out[name.decode("utf-8", "surrogateescape")] = self.node(self.child_ino[k])
        return out


ROW_FIELDS = 11  # ino kind perm nlink uid gid size mtime rdev layer offset (_fuse.FIELDS)


class Node(ModeBits):
    """A view of one inode of a :class:`MountTree` (one object per inode: hard links are
    several names for the same Node)."""

    __slots__ = ("_idx", "ino", "kind", "perm", "nlink", "uid", "gid", "size", "mtime_ns",
                 "rdev", "layer", "offset", "_children")

    def __init__(self, idx: _Index, ino: int) -> None:
        self._idx = idx
        (self.ino, self.kind, self.perm, self.nlink, self.uid, self.gid, self.size,
         self.mtime_ns, rdev, self.layer, self.offset) = idx.rows[ino]
        self.rdev = rdev & 0xFFFFFFFFFFFFFFFF
        self._children: dict[str, Node] | None = None

    @property
    def target(self) -> str:
        return self._idx.targets.get(self.ino, "")

    @property
    def xattrs(self) -> Mapping[str, bytes]:
        return self._idx.xattrs.get(self.ino, NO_XATTRS)

    @property
    def sparse(self) -> bool:
        return self.ino in self._idx.sparse

    @property
    def children(self) -> dict[str, Node] | None:
        if not self.is_dir:
            return None
        if self._children is None:
            self._children = self._idx.children(self.ino)
        return self._children

    def names(self) -> list[str]:
        return sorted(self.children or ())
