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
import functools
import logging
import posixpath
import re
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from soci_native.layer import TarEntry
from soci_native.ztoc import FileMetadata

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


def _xattrs(pax: Mapping[str, str]) -> dict[str, bytes]:
    return {k[len(XATTR_PAX_PREFIX):]: v.encode("utf-8", "surrogateescape")
            for k, v in pax.items() if k.startswith(XATTR_PAX_PREFIX)}


@dataclass(frozen=True, slots=True)
class Entry:
    """One tar member, from a zTOC or from a locally indexed layer."""

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
    xattrs: dict[str, bytes] = field(default_factory=dict)
    sparse: bool = False  # GNU/PAX sparse file: its data is not one contiguous range
    header_offset: int = -1

    @classmethod
    def from_toc(cls, f: FileMetadata) -> Entry:
        return cls(f.name, f.type, f.uncompressed_offset, f.uncompressed_size, f.linkname,
                   f.mode, f.uid, f.gid, parse_rfc3339_ns(f.mod_time), f.devmajor, f.devminor,
                   _xattrs(f.xattrs))

    @classmethod
    def from_tar(cls, e: TarEntry) -> Entry:
        kind = "reg" if e.type == "sparse" else e.type  # old GNU sparse ('S'): a file
        return cls(e.name, kind, e.offset, e.size, e.linkname, e.mode, e.uid, e.gid,
                   e.mtime * 1_000_000_000 + e.mtime_ns, e.devmajor, e.devminor,
                   _xattrs(e.pax), e.sparse, e.header_offset)


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
        self.xattrs: dict[str, bytes] = {}
        self.layer = -1  # index of the layer holding a regular file's bytes
        self.offset = 0  # their uncompressed offset in that layer
        self.entry: Entry | None = None  # the tar member (sparse files need it)
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
        n.xattrs = dict(e.xattrs)
        if e.type == "reg":
            n.size, n.layer, n.offset, n.entry = e.size, layer, e.offset, e
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
    Most tar names only need their slashes trimmed; the rest go through normpath."""
    trimmed = name.strip("/")
    if _NEEDS_CLEANING.search(trimmed) is None:
        return trimmed
    return posixpath.normpath("/" + name).lstrip("/")


class Tree:
    """The merged tree. Build with :meth:`add_layer` (bottom layer first), then
    :meth:`finish`, which numbers inodes, counts links and makes the path table."""

    def __init__(self, single_layer: bool = False) -> None:
        self.root = Node(stat.S_IFDIR, 0o755)
        self.single_layer = single_layer
        self.paths: dict[str, Node] = {}
        self.inodes = 0
        self._layers = 0

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

    def add_layer(self, entries: Iterable[Entry]) -> None:
        layer = self._layers
        self._layers += 1
        items = [(clean_path(e.name), e) for e in entries]
        if self.single_layer:
            self._add_single(layer, items)
            return
        for path, _ in items:  # whiteouts first: they only hide what lower layers made
            parts = path.split("/") if path else []
            if not parts or not parts[-1].startswith(WHITEOUT_PREFIX):
                continue
            parent = self._lookup(parts[:-1])
            if parent is None or parent.children is None:
                continue
            if parts[-1] == OPAQUE_MARKER:
                parent.children.clear()
            else:
                parent.children.pop(parts[-1][len(WHITEOUT_PREFIX):], None)
        for path, e in items:
            if not path.rsplit("/", 1)[-1].startswith(WHITEOUT_PREFIX):
                self._add(layer, path, e)

    def _add_single(self, layer: int, items: list[tuple[str, Entry]]) -> None:
        whiteouts: list[tuple[str, Entry]] = []
        for path, e in items:
            base = path.rsplit("/", 1)[-1]
            if base.startswith(WHITEOUT_PREFIX):
                whiteouts.append((path, e))
            else:
                self._add(layer, path, e)
        for path, e in whiteouts:
            parts = path.split("/")
            parent = self._parent(parts)
            assert parent.children is not None
            if parts[-1] == OPAQUE_MARKER:
                parent.xattrs[OPAQUE_XATTR] = b"y"
                continue
            name = parts[-1][len(WHITEOUT_PREFIX):]
            if name and name not in parent.children:
                parent.children[name] = Node(stat.S_IFCHR, 0, e.uid, e.gid, e.mtime_ns)

    def _add(self, layer: int, path: str, e: Entry) -> None:
        if e.type == "pax_global":
            return
        if e.type not in _KINDS and e.type != "hardlink":
            log.warning("skipping %r: unsupported tar entry type %r", e.name, e.type)
            return
        if not path:  # the root directory itself ("./")
            if e.type == "dir":
                self._set_dir_meta(self.root, e)
            return
        parts = path.split("/")
        parent = self._parent(parts)
        assert parent.children is not None
        name = parts[-1]
        old = parent.children.get(name)
        if e.type == "hardlink":
            target = self._lookup(clean_path(e.linkname).split("/"))
            if target is None or target.is_dir or not clean_path(e.linkname):
                log.warning("skipping hard link %r: its target %r is missing or a directory",
                            e.name, e.linkname)
                return
            parent.children[name] = target
            return
        if e.type == "dir" and old is not None and old.is_dir:
            self._set_dir_meta(old, e)
            return
        parent.children[name] = Node.from_entry(e, layer)

    @staticmethod
    def _set_dir_meta(node: Node, e: Entry) -> None:
        node.perm, node.uid, node.gid = e.mode & 0o7777, e.uid, e.gid
        node.mtime_ns, node.xattrs = e.mtime_ns, dict(e.xattrs)

    # -- finishing

    def finish(self) -> Tree:
        """Numbers inodes (root is 1, hard links share one), sets link counts and builds the
        path table ("/" and "/a/b" keys, as FUSE hands paths over)."""
        links: dict[int, int] = {}
        seen: set[int] = set()
        ino = 0
        for path, node in self._walk():
            self.paths[path] = node
            key = id(node)
            links[key] = links.get(key, 0) + 1
            if key not in seen:
                seen.add(key)
                ino += 1
                node.ino = ino
        for node in self.paths.values():
            if node.is_dir:
                assert node.children is not None
                node.nlink = 2 + sum(1 for c in node.children.values() if c.is_dir)
            else:
                node.nlink = links[id(node)]
        self.inodes = ino
        return self

    def _walk(self) -> Iterator[tuple[str, Node]]:
        stack: list[tuple[str, Node]] = [("/", self.root)]
        while stack:
            path, node = stack.pop()
            yield path, node
            if node.children:
                prefix = path if path == "/" else path + "/"
                for name in reversed(node.names()):
                    stack.append((prefix + name, node.children[name]))

    def get(self, path: str) -> Node | None:
        return self.paths.get(path)


def build_tree(layers: Iterable[Iterable[Entry]], single_layer: bool = False) -> Tree:
    tree = Tree(single_layer)
    for entries in layers:
        tree.add_layer(entries)
    return tree.finish()
