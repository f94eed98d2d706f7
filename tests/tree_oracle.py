"""The mount tree's rules as plain Python: the oracle the C tree (csrc/mount_tree.c, through
soci_native.mount.tree) is compared with. This is the Python tree and inode-table export the
mount used before the tree moved to C, kept as the rules' readable statement (see
soci_native/mount/tree.py's docstring for the rules); and node views by path of a finished C
tree (:func:`c_tree`, :class:`TreeView`), which tests read it through (a mount needs none)."""

from __future__ import annotations

import contextlib
import functools
import gc
import itertools
import logging
import posixpath
import re
import stat
import struct
from array import array
from collections.abc import Iterable, Iterator, Mapping
from itertools import repeat, starmap
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from soci_native import _core, ztoc
from soci_native.mount.inodes import InodeTable
from soci_native.mount.tree import NO_XATTRS, Entry, MountTree, TreeBuilder, pax_xattrs

if TYPE_CHECKING:
    from soci_native.ztoc import FileMetadata, ZtocBuffer

log = logging.getLogger("tree_oracle")

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"

@functools.lru_cache(maxsize=1 << 16)
def parse_rfc3339_ns(text: str) -> int:
    """Nanoseconds since the epoch of an RFC 3339 time as Go's ``Time.MarshalText`` writes it
    (any zone offset, up to nanosecond fractions, ASCII digits only), clamped to int64; 0 for
    an empty or unreadable value: the C tree's own reading of zTOC times (one rule for both).
    Cached: the files of a layer share few distinct mtimes."""
    return _core.rfc3339_ns(text.encode("utf-8", "surrogateescape"))


def entry_from_toc(f: FileMetadata) -> Entry:
    """A zTOC TOC entry as the Entry the oracle takes (a mount hands C the zTOC itself)."""
    return Entry(f.name, f.type, f.uncompressed_offset, f.uncompressed_size, f.linkname,
                 f.mode, f.uid, f.gid, parse_rfc3339_ns(f.mod_time), f.devmajor, f.devminor,
                 pax_xattrs(f.xattrs.items()) if f.xattrs else NO_XATTRS)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a tree's 10^5 objects are made: each collection
    walks every object made so far and finds nothing (the tree has no cycles), and they were
    a quarter of a 53k-entry tree's build."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


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


class _TreeNode(Protocol):
    @property
    def children(self) -> Mapping[str, Any] | None: ...

    def names(self) -> list[str]: ...


N = TypeVar("N", bound=_TreeNode)


def node_at(root: N, path: str) -> N | None:
    """The node under ``root`` at an absolute, clean path ("/", "/a/b"), for any tree whose
    nodes have ``children`` (None for a non-directory): the oracle's and the C tree's views."""
    return root if path == "/" else node_under(root, path[1:].split("/"))


def node_under(root: N, parts: Iterable[str]) -> N | None:
    """The node under ``root`` named by these components, or None (missing, or a
    non-directory on the way)."""
    node = root
    for part in parts:
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


class ByPath(Generic[N]):
    """Nodes by path under ``root``: the oracle's :class:`Tree` and the C tree's
    :class:`TreeView`."""

    if TYPE_CHECKING:  # an attribute of the oracle's, a property of the view's
        @property
        def root(self) -> N: ...

    def get(self, path: str) -> N | None:
        """The node at an absolute, clean path as FUSE passes them ("/", "/a/b")."""
        return node_at(self.root, path)

    def walk(self) -> Iterator[tuple[str, N]]:
        """(path, node) for every name, parents first. Makes every path: for tests and
        tools, not for the mount."""
        return walk_nodes(self.root)

    @property
    def paths(self) -> dict[str, N]:
        """Every path's node (see :meth:`walk`)."""
        return dict(self.walk())


class ModeBits:
    """``is_dir`` and ``mode`` from a node's ``kind`` (S_IFMT bits) and ``perm``: for the
    oracle's nodes and the C tree's views."""

    __slots__ = ()
    kind: int
    perm: int

    @property
    def is_dir(self) -> bool:
        return self.kind == stat.S_IFDIR

    @property
    def mode(self) -> int:
        return self.kind | self.perm


NAME_MAX_BYTES = 4096
XATTR_NAME_MAX = 255
XATTR_VALUE_MAX = 65536
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1

_KINDS = {
    "reg": stat.S_IFREG,
    "dir": stat.S_IFDIR,
    "symlink": stat.S_IFLNK,
    "char": stat.S_IFCHR,
    "block": stat.S_IFBLK,
    "fifo": stat.S_IFIFO,
}


class Node(ModeBits):
    """One inode. Hard links are several names for the same Node."""

    __slots__ = ("ino", "kind", "perm", "uid", "gid", "mtime_ns", "size", "target", "rdev",
                 "xattrs", "layer", "offset", "children", "nlink", "entry", "_sorted")

    def __init__(self, kind: int, perm: int = 0o755, uid: int = 0, gid: int = 0,
                 mtime_ns: int = 0) -> None:
        self.ino = 0
        self.kind = kind
        self.perm = perm
        self.uid = uid
        self.gid = gid
        self.mtime_ns = mtime_ns
        self.size = 0
        self.target = ""  # symlink target
        self.rdev = 0
        self.xattrs: Mapping[str, bytes] = NO_XATTRS  # replaced, never changed in place
        self.layer = -1  # index of the layer holding a regular file's bytes
        self.offset = 0  # their uncompressed offset in that layer
        self.entry: Entry | None = None  # the tar member of a sparse file
        self.children: dict[str, Node] | None = {} if kind == stat.S_IFDIR else None
        self.nlink = 1
        self._sorted: list[str] | None = None

    def names(self) -> list[str]:
        """Children's names, sorted (computed once: the tree is immutable once mounted)."""
        if self._sorted is None:
            self._sorted = sorted(self.children or ())
        return self._sorted

    @classmethod
    def from_entry(cls, e: Entry, layer: int) -> Node:
        n = cls(_KINDS[e.type], e.mode & 0o7777, e.uid, e.gid, e.mtime_ns)
        n.xattrs = e.xattrs
        if e.type == "reg":
            n.size, n.layer, n.offset = e.size, layer, e.offset
            if e.sparse:  # its data is not one range: reads need the member
                n.entry = e
        elif e.type == "symlink":
            n.target = e.linkname
            n.size = len(e.linkname.encode("utf-8", "surrogateescape"))
        elif e.type in ("char", "block"):
            n.rdev = mkdev(e.devmajor, e.devminor)
        return n


def _is_whiteout(path: str) -> bool:
    return path.rpartition("/")[2].startswith(WHITEOUT_PREFIX)


class Tree(ByPath["Node"]):
    """The merged tree. Build with :meth:`add_layer` (bottom layer first), then
    :meth:`finish`, which numbers inodes and counts links.

    Memory is linear in the bytes of the names: a node holds its own name only (as its
    parent's dict key), paths are resolved component by component (:meth:`get`), and the
    build's directory cache is keyed by entries' parent paths, each a prefix of its entry's
    name. (A table of every full path made a 40,000-deep name cost 1.8 GB.)"""

    root: Node  # (ByPath's)

    def __init__(self, single_layer: bool = False) -> None:
        self.root = Node(stat.S_IFDIR, 0o755)
        self.single_layer = single_layer
        self.inodes = 0
        self._layers = 0
        self._dirs: dict[str, Node] = {}  # parent path -> its directory, while adding

    # -- building

    def _parent(self, parts: list[str]) -> Node:
        """The directory for ``parts[:-1]``, made (implicitly) where missing."""
        node = self.root
        for p in parts[:-1]:
            assert node.children is not None
            child = node.children.get(p)
            if child is None or not child.is_dir:
                child = Node(stat.S_IFDIR, 0o755)
                node.children[p] = child
            node = child
        return node

    def _dir(self, parent: str) -> Node:
        """The directory at the clean path ``parent`` ("" is the root), made where missing.
        Cached: a layer lists a directory's entries together, so most entries find their
        parent in one dict lookup instead of a walk from the root."""
        node = self._dirs.get(parent)
        if node is None:
            node = self._parent([*parent.split("/"), ""]) if parent else self.root
            self._dirs[parent] = node
        return node

    def add_layer(self, entries: Iterable[Entry]) -> None:
        layer = self._layers
        self._layers += 1
        items = [(clean_path(e.name), e) for e in entries]
        self._dirs.clear()
        if self.single_layer:
            self._add_single(layer, items)
            return
        whiteouts = [path for path, _ in items
                     if WHITEOUT_PREFIX in path and _is_whiteout(path)]
        for path in whiteouts:  # whiteouts first: they only hide what lower layers made
            parts = path.split("/")
            parent = node_under(self.root, parts[:-1])
            if parent is None or parent.children is None:
                continue
            if parts[-1] == OPAQUE_MARKER:
                parent.children.clear()
            else:
                parent.children.pop(parts[-1][len(WHITEOUT_PREFIX):], None)
        add, dirs, parent_dir, new = self._add, self._dirs, self._dir, Node.from_entry
        kinds = _KINDS
        for path, e in items:
            if whiteouts and WHITEOUT_PREFIX in path and _is_whiteout(path):
                continue
            # the usual entry, inline: a new name of a known kind in a cached directory
            # (a call per entry was a third of the build); the rest through _add
            if e.type not in kinds or not path:
                add(layer, path, e)
                continue
            dirname, _, name = path.rpartition("/")
            parent = dirs.get(dirname) or parent_dir(dirname)
            children = parent.children
            assert children is not None
            if name in children:
                add(layer, path, e)
            else:
                children[name] = new(e, layer)
        self._dirs.clear()

    def _add_single(self, layer: int, items: list[tuple[str, Entry]]) -> None:
        whiteouts: list[tuple[str, Entry]] = []
        for path, e in items:
            base = path.rpartition("/")[2]
            if base.startswith(WHITEOUT_PREFIX):
                whiteouts.append((path, e))
            else:
                self._add(layer, path, e)
        self._dirs.clear()
        for path, e in whiteouts:
            parts = path.split("/")
            parent = self._parent(parts)
            assert parent.children is not None
            if parts[-1] == OPAQUE_MARKER:
                parent.xattrs = {**parent.xattrs, OPAQUE_XATTR: b"y"}
                continue
            name = parts[-1][len(WHITEOUT_PREFIX):]
            if name and name not in (".", "..") and name not in parent.children:
                parent.children[name] = Node(stat.S_IFCHR, 0, e.uid, e.gid, e.mtime_ns)

    def _add(self, layer: int, path: str, e: Entry) -> None:
        kind = e.type
        if kind not in _KINDS and kind != "hardlink":
            if kind != "pax_global":
                log.warning("skipping %r: unsupported tar entry type %r", e.name, kind)
            return
        if not path:  # the root directory itself ("./")
            if kind == "dir":
                self._set_dir_meta(self.root, e)
            return
        dirname, _, name = path.rpartition("/")
        parent = self._dir(dirname)
        assert parent.children is not None
        old = parent.children.get(name)
        if kind == "dir" and old is not None and old.children is not None:
            self._set_dir_meta(old, e)
            return
        if kind == "hardlink":
            target = node_under(self.root, clean_path(e.linkname).split("/"))
            if target is None or target.is_dir or not clean_path(e.linkname):
                log.warning("skipping hard link %r: its target %r is missing or a directory",
                            e.name, e.linkname)
                return
            new = target
        else:
            new = Node.from_entry(e, layer)
        if old is not None and old.children is not None:
            self._dirs.clear()  # a directory (maybe cached, maybe holding cached ones) goes
        parent.children[name] = new

    @staticmethod
    def _set_dir_meta(node: Node, e: Entry) -> None:
        node.perm, node.uid, node.gid = e.mode & 0o7777, e.uid, e.gid
        node.mtime_ns, node.xattrs = e.mtime_ns, e.xattrs

    # -- finishing

    def finish(self) -> Tree:
        """Numbers inodes (root is 1, hard links share one) and sets link counts, in one
        walk over the nodes (no paths made)."""
        root = self.root
        root.ino = ino = 1
        stack = [root]
        while stack:
            d = stack.pop()
            assert d.children is not None
            subdirs = 0
            for c in d.children.values():
                if c.children is not None:  # a directory has one name: it is new
                    subdirs += 1
                    ino += 1
                    c.ino = ino
                    stack.append(c)
                elif c.ino == 0:
                    ino += 1
                    c.ino, c.nlink = ino, 1
                else:  # another name of a hard-linked node
                    c.nlink += 1
            d.nlink = 2 + subdirs
        self.inodes = ino
        return self


def toc_entries(buf: ZtocBuffer) -> list[Entry]:
    """A zTOC's entries in archive order, through the plain parser (:mod:`soci_native.ztoc`),
    checked as :func:`~soci_native.ztoc.sorted_files` checks them (no overlapping data)."""
    z = ztoc.from_bytes(buf)
    ztoc.sorted_files(z)
    return [entry_from_toc(f) for f in z.files]


def build_tree(layers: Iterable[Iterable[Entry]], single_layer: bool = False) -> Tree:
    tree = Tree(single_layer)
    with gc_paused():
        for entries in layers:
            tree.add_layer(entries)
        return tree.finish()


_ROW = attrgetter("ino", "kind", "perm", "nlink", "uid", "gid", "size", "mtime_ns", "rdev",
                  "layer", "offset")
_INO = attrgetter("ino")
_PACK = struct.Struct("=11q").pack


def export(tree: Tree) -> tuple[InodeTable, dict[int, Node]]:  # noqa: D103
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


# ------------------------------------------------------------------ views of the C tree

def c_tree(layers: Iterable[Iterable[Entry]], single_layer: bool = False) -> TreeView:
    """The C tree of these layers (bottom first), as a mount builds it, with views by path."""
    b = TreeBuilder(single_layer)
    for entries in layers:
        b.add_entries(entries)
    return TreeView(b.finish())


class TreeView(ByPath["TableNode"]):
    """A finished :class:`~soci_native.mount.tree.MountTree` (its table, inodes, warnings
    and files), plus node views by path made on demand from its inode table."""

    def __init__(self, tree: MountTree) -> None:
        self.tree = tree
        self.table = tree.table
        self.inodes = tree.inodes
        self.warnings = tree.warnings
        self.file = tree.file
        self._index: _Index | None = None

    @property
    def root(self) -> TableNode:
        if self._index is None:
            self._index = _Index(self.table)
        return self._index.node(1)


class _Index:
    """The table by inode, for :class:`TableNode` views."""

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
        self.views: dict[int, TableNode] = {}

    def node(self, ino: int) -> TableNode:
        n = self.views.get(ino)
        if n is None:
            n = self.views[ino] = TableNode(self, ino)
        return n

    def children(self, ino: int) -> dict[str, TableNode]:
        start, count = self.dirs[ino]
        out: dict[str, TableNode] = {}
        for k in range(start, start + count):
            name = self.names[self.starts[k]:self.starts[k + 1]]
            out[name.decode("utf-8", "surrogateescape")] = self.node(self.child_ino[k])
        return out


ROW_FIELDS = 11  # ino kind perm nlink uid gid size mtime rdev layer offset (_fuse.FIELDS)


class TableNode(ModeBits):
    """A view of one inode of a C tree's table (one object per inode: hard links are several
    names for the same TableNode)."""

    __slots__ = ("_idx", "ino", "kind", "perm", "nlink", "uid", "gid", "size", "mtime_ns",
                 "rdev", "layer", "offset", "_children")

    def __init__(self, idx: _Index, ino: int) -> None:
        self._idx = idx
        (self.ino, self.kind, self.perm, self.nlink, self.uid, self.gid, self.size,
         self.mtime_ns, rdev, self.layer, self.offset) = idx.rows[ino]
        self.rdev = rdev & 0xFFFFFFFFFFFFFFFF
        self._children: dict[str, TableNode] | None = None

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
    def children(self) -> dict[str, TableNode] | None:
        if not self.is_dir:
            return None
        if self._children is None:
            self._children = self._idx.children(self.ino)
        return self._children

    def names(self) -> list[str]:
        return sorted(self.children or ())
