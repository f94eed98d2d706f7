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
NAME) and a directory holding ``.wh..wh..opq`` carries the xattr ``trusted.overlay.opaque=y``.

Nothing here reads file contents: a regular file records which layer holds its bytes and at
which uncompressed offset, and metadata calls never touch layer data.
"""

from __future__ import annotations

import calendar
import contextlib
import functools
import gc
import logging
import operator
import posixpath
import re
import stat
from collections.abc import Iterable, Iterator, Mapping
from operator import itemgetter
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple

from soci_native import _core
from soci_native.layer import TarEntry
from soci_native.ztoc import FileMetadata, ZtocError
from soci_native.ztoc_info import check_entries

if TYPE_CHECKING:
    from soci_native.ztoc import ZtocBuffer

log = logging.getLogger("soci_native.mount")

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
XATTR_PAX_PREFIX = "SCHILY.xattr."
OPAQUE_XATTR = "trusted.overlay.opaque"

_KINDS = {
    "reg": stat.S_IFREG,
    "dir": stat.S_IFDIR,
    "symlink": stat.S_IFLNK,
    "char": stat.S_IFCHR,
    "block": stat.S_IFBLK,
    "fifo": stat.S_IFIFO,
}
_RFC3339 = re.compile(
    r"(-?\d{4,})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d+))?(?:([Zz])|([+-])(\d\d):(\d\d))")


@functools.lru_cache(maxsize=1 << 16)
def parse_rfc3339_ns(text: str) -> int:
    """Nanoseconds since the epoch of an RFC 3339 time as Go's ``Time.MarshalText`` writes it
    (any zone offset, up to nanosecond fractions); 0 for an empty or unreadable value.
    Cached: the files of a layer share few distinct mtimes, and parsing was ~40% of the
    tree build for a 55k-entry image."""
    m = _RFC3339.fullmatch(text.strip())
    if m is None:
        return 0
    year, mon, day, hh, mm, ss = (int(m.group(i)) for i in range(1, 7))
    frac = (m.group(7) or "")[:9].ljust(9, "0")
    try:
        secs = calendar.timegm((year, mon, day, hh, mm, ss, 0, 0, 0))
    except (ValueError, OverflowError):
        return 0
    if m.group(9):
        off = int(m.group(10)) * 3600 + int(m.group(11)) * 60
        secs -= off if m.group(9) == "+" else -off
    return secs * 1_000_000_000 + int(frac)


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
    def from_toc_tuple(cls, f: tuple[Any, ...]) -> Entry:
        """From one of ``_core.ztoc_parse``'s file tuples (name, type, offset, size, linkname,
        mode, uid, gid, uname, gname, mod_time, devmajor, devminor, PAX records), skipping
        the :class:`~soci_native.ztoc.FileMetadata` in between."""
        return cls(f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], parse_rfc3339_ns(f[10]),
                   f[11], f[12], _xattrs(f[13]) if f[13] else NO_XATTRS)

    @classmethod
    def from_tar(cls, e: TarEntry) -> Entry:
        kind = "reg" if e.type == "sparse" else e.type  # old GNU sparse ('S'): a file
        return cls(e.name, kind, e.offset, e.size, e.linkname, e.mode, e.uid, e.gid,
                   e.mtime * 1_000_000_000 + e.mtime_ns, e.devmajor, e.devminor,
                   _xattrs(e.pax.items()) if e.pax else NO_XATTRS, e.sparse, e.header_offset)


def toc_entries(buf: ZtocBuffer) -> list[Entry]:
    """A zTOC's entries, in archive order, checked as
    :func:`~soci_native.ztoc.sorted_files` checks them (no overlapping data). Made in C
    (``_core.ztoc_entries``): from the parser's generic tuples this was a third of a
    mount's start."""
    with gc_paused():
        return _toc_entries(buf)


def _toc_entries(buf: ZtocBuffer) -> list[Entry]:
    try:
        files: list[Entry] = _core.ztoc_entries(buf, Entry, parse_rfc3339_ns, _xattrs,
                                                NO_XATTRS)
    except ValueError as e:
        raise ZtocError(str(e)) from None
    by_offset = files
    offs = list(map(itemgetter(2), files))
    if not all(map(operator.le, offs, offs[1:])):
        by_offset = sorted(files, key=itemgetter(2))
        offs = list(map(itemgetter(2), by_offset))
    check_entries(list(map(itemgetter(0), by_offset)), offs,
                  list(map(itemgetter(3), by_offset)))
    return files


class Node:
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

    @property
    def is_dir(self) -> bool:
        return self.kind == stat.S_IFDIR

    @property
    def mode(self) -> int:
        return self.kind | self.perm

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


def _is_whiteout(path: str) -> bool:
    return path.rpartition("/")[2].startswith(WHITEOUT_PREFIX)


class Tree:
    """The merged tree. Build with :meth:`add_layer` (bottom layer first), then
    :meth:`finish`, which numbers inodes and counts links.

    Memory is linear in the bytes of the names: a node holds its own name only (as its
    parent's dict key), paths are resolved component by component (:meth:`get`), and the
    build's directory cache is keyed by entries' parent paths, each a prefix of its entry's
    name. (A table of every full path made a 40,000-deep name cost 1.8 GB.)"""

    def __init__(self, single_layer: bool = False) -> None:
        self.root = Node(stat.S_IFDIR, 0o755)
        self.single_layer = single_layer
        self.inodes = 0
        self._layers = 0
        self._dirs: dict[str, Node] = {}  # parent path -> its directory, while adding

    # -- building

    def _lookup(self, parts: list[str]) -> Node | None:
        node = self.root
        for p in parts:
            if node.children is None:
                return None
            child = node.children.get(p)
            if child is None:
                return None
            node = child
        return node

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
            parent = self._lookup(parts[:-1])
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
            if name and name not in parent.children:
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
            target = self._lookup(clean_path(e.linkname).split("/"))
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

    def get(self, path: str) -> Node | None:
        """The node at an absolute, clean path as FUSE passes them ("/", "/a/b")."""
        node = self.root
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

    def walk(self) -> Iterator[tuple[str, Node]]:
        """(path, node) for every name, parents first. Makes every path: for tests and
        tools, not for the mount."""
        stack: list[tuple[str, Node]] = [("/", self.root)]
        while stack:
            path, node = stack.pop()
            yield path, node
            if node.children:
                prefix = path if path == "/" else path + "/"
                for name in reversed(node.names()):
                    stack.append((prefix + name, node.children[name]))

    @property
    def paths(self) -> dict[str, Node]:
        """Every path's node (see :meth:`walk`)."""
        return dict(self.walk())


def build_tree(layers: Iterable[Iterable[Entry]], single_layer: bool = False) -> Tree:
    tree = Tree(single_layer)
    with gc_paused():
        for entries in layers:
            tree.add_layer(entries)
        return tree.finish()
