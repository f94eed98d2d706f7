"""The FUSE filesystem (libfuse 3's high-level API through mfusepy, multithreaded loop).

Read-only. Metadata (lookup, getattr, readdir, readlink, xattrs, statfs) is answered from
the in-memory tree; only ``read`` of a regular file touches layer bytes.

The image never changes, so the kernel keeps what it learns (each FUSE request is tens of
microseconds of Python): entries and attributes for :data:`ATTR_TIMEOUT`, negative lookups
too, and file pages across opens. ``open`` of a regular file answers ENOSYS, which puts the
kernel in no-open mode: later opens, closes (release, flush) never reach us and the page
cache is kept (FOPEN_KEEP_CACHE is implied), so a warm open+read+close costs what it costs
on a local disk. ``readdir`` answers READDIRPLUS with every child's attributes, so listing
a directory also makes its lookups (no getattr round trip per file).

``/.soci-native/stats.json`` is a virtual file (not listed by ``readdir`` of ``/``, but
``stat``/``open`` work) holding :meth:`MountedImage.stats` as JSON, rendered when read. In
no-open mode its pages would stay cached, so after it is read its inode is invalidated
(:func:`fuse_invalidate_path`) at the next data read and at least every
:data:`STATS_REFRESH` seconds. It hides an image's own ``/.soci-native``, if it has one.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import mfusepy  # type: ignore[import-untyped]

from soci_native.mount.image import MountedImage
from soci_native.mount.spans import LocalLayer
from soci_native.mount.tree import Node

log = logging.getLogger("soci_native.mount")

STATS_DIR = ".soci-native"
STATS_FILE = "stats.json"
STATS_DIR_PATH = "/" + STATS_DIR
STATS_PATH = f"{STATS_DIR_PATH}/{STATS_FILE}"
ATTR_TIMEOUT = 86400.0  # nothing in a mounted image changes; stats.json is invalidated
STATS_REFRESH = 0.25
READ_AHEAD_KB = 1024  # the kernel's default for a FUSE mount is 128: 8x the requests
BLOCK = 4096
FUSE_READDIR_PLUS = 1  # libfuse 3: readdir's flags bit; the filler's is FUSE_FILL_DIR_PLUS
FUSE_FILL_DIR_PLUS = 2


def _err(code: int) -> mfusepy.FuseOSError:
    return mfusepy.FuseOSError(code)


class SociFS(mfusepy.Operations):
    use_ns = True  # times are integer nanoseconds

    def __init__(self, mounted: MountedImage,
                 on_ready: Callable[[], None] | None = None) -> None:
        self.m = mounted
        self.tree = mounted.tree
        self.on_ready = on_ready
        self._handles: dict[int, bytes] = {}
        self._next_fh = 1
        self._lock = threading.Lock()
        self._stats_dir_ino = self.tree.inodes + 1
        self._stats_ino = self.tree.inodes + 2
        self._fuse: Any = None  # libfuse's struct fuse *, for fuse_invalidate_path
        self._stats_cached = False  # the kernel may hold stats.json pages
        self._stats_snapshot = b""  # the render the last read from offset 0 got
        self._stats_size = 0
        self._done = threading.Event()

    # -- lifecycle

    def init_with_config(self, conn: Any, config: Any) -> None:
        if config is not None:
            config.use_ino = 1
            config.readdir_ino = 1
            config.entry_timeout = ATTR_TIMEOUT
            config.attr_timeout = ATTR_TIMEOUT
            config.negative_timeout = ATTR_TIMEOUT
        self._fuse = ctypes.c_void_p(mfusepy._libfuse.fuse_get_context().contents.fuse)
        threading.Thread(target=self._refresh_stats, name="soci-stats-refresh",
                         daemon=True).start()
        if self.on_ready is not None:
            self.on_ready()

    def destroy(self, path: str) -> None:
        self._done.set()

    def _refresh_stats(self) -> None:
        tuned = False
        while not self._done.wait(STATS_REFRESH):
            if not tuned:  # after our INIT reply: the kernel sets the window from it
                tuned = True
                tune_read_ahead(self.m.mountpoint)
            self._invalidate_stats()

    def _invalidate_stats(self) -> None:
        """Drops the kernel's pages and attributes of stats.json if it may hold them (a
        notification to the kernel; never from stats.json's own read, whose page is
        locked while we answer)."""
        if self._stats_cached and self._fuse is not None:
            self._stats_cached = False
            mfusepy._libfuse.fuse_invalidate_path(self._fuse, STATS_PATH.encode())

    # -- metadata

    def _node(self, path: str) -> Node:
        node = self.tree.get(path)
        if node is None:
            raise _err(errno.ENOENT)
        return node

    def _attrs(self, node: Node) -> dict[str, int]:
        t = node.mtime_ns
        return {"st_mode": node.mode, "st_ino": node.ino, "st_nlink": node.nlink,
                "st_uid": node.uid, "st_gid": node.gid, "st_size": node.size,
                "st_rdev": node.rdev, "st_blksize": BLOCK,
                "st_blocks": (node.size + BLOCK - 1) // BLOCK * (BLOCK // 512),
                "st_mtime": t, "st_atime": t, "st_ctime": t}

    def _stats_bytes(self) -> bytes:
        """The stats as JSON, padded with spaces to a size that only grows in 4 KiB steps: a
        cached read stops at the size the kernel last got from getattr, so a render a few
        digits longer than that one must not lose its end."""
        text = (json.dumps(self.m.stats(), indent=2) + "\n").encode()
        size = self._stats_size = max(self._stats_size, -(-(len(text) + 1024) // 4096) * 4096)
        return text[:-1] + b" " * (size - len(text)) + b"\n"

    def getattr(self, path: str, fh: Any = None) -> dict[str, int]:
        if path == STATS_DIR_PATH:
            return {"st_mode": stat.S_IFDIR | 0o555, "st_ino": self._stats_dir_ino,
                    "st_nlink": 2}
        if path == STATS_PATH:
            return {"st_mode": stat.S_IFREG | 0o444, "st_ino": self._stats_ino, "st_nlink": 1,
                    "st_size": len(self._stats_bytes())}
        return self._attrs(self._node(path))

    def readdir(self, path: str, fh: int) -> list[Any]:
        if path == STATS_DIR_PATH:
            return [".", "..", (STATS_FILE, {"st_mode": stat.S_IFREG | 0o444,
                                             "st_ino": self._stats_ino}, 0)]
        node = self._dir_node(path)
        out: list[Any] = [(".", {"st_mode": node.mode, "st_ino": node.ino}, 0), ".."]
        assert node.children is not None
        for name in node.names():
            c = node.children[name]
            out.append((name, {"st_mode": c.mode, "st_ino": c.ino}, 0))
        return out

    def readdir_plus(self, path: str, start: int) -> Iterator[tuple[str, dict[str, int]]]:
        """(name, full attributes) of a directory's entries from index ``start`` on, for
        READDIRPLUS: made as the reply buffer takes them (a few dozen per request), so a
        huge directory is not rendered whole for each piece."""
        if path == STATS_DIR_PATH:
            names, children = [STATS_FILE], {}
        else:
            node = self._dir_node(path)
            assert node.children is not None
            names, children = node.names(), node.children
        dots = [(".", self.getattr(path)), ("..", {"st_mode": stat.S_IFDIR | 0o755})]
        yield from dots[start:]
        for name in itertools.islice(names, max(start - 2, 0), None):
            node_ = children.get(name)
            yield name, self._attrs(node_) if node_ is not None else self.getattr(STATS_PATH)

    def _dir_node(self, path: str) -> Node:
        node = self._node(path)
        if node.children is None:
            raise _err(errno.ENOTDIR)
        return node

    def readlink(self, path: str) -> str:
        node = self._node(path)
        if node.kind != stat.S_IFLNK:
            raise _err(errno.EINVAL)
        return node.target

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        if path in (STATS_DIR_PATH, STATS_PATH):
            raise _err(mfusepy.ENOATTR)
        value = self._node(path).xattrs.get(name)
        if value is None:
            raise _err(mfusepy.ENOATTR)
        return value

    def listxattr(self, path: str) -> list[str]:
        if path in (STATS_DIR_PATH, STATS_PATH):
            return []
        return list(self._node(path).xattrs)

    def statfs(self, path: str) -> dict[str, int]:
        total = sum(layer.stats.size for layer in self.m.layers)
        return {"f_bsize": BLOCK, "f_frsize": BLOCK, "f_blocks": (total + BLOCK - 1) // BLOCK,
                "f_bfree": 0, "f_bavail": 0, "f_files": self.tree.inodes, "f_ffree": 0,
                "f_favail": 0, "f_namemax": 255}

    # -- data

    def open(self, path: str, fi: Any) -> int:
        if fi.flags & os.O_ACCMODE != os.O_RDONLY:
            raise _err(errno.EROFS)
        if path != STATS_PATH:
            node = self._node(path)
            if node.kind == stat.S_IFDIR:
                raise _err(errno.EISDIR)
            raise _err(errno.ENOSYS)  # no-open mode from now on (see the module docstring)
        with self._lock:
            fh = self._next_fh
            self._next_fh += 1
            self._handles[fh] = self._stats_bytes()
        fi.fh = fh
        fi.direct_io = 1
        return 0
        node = self._node(path)
        if node.kind == stat.S_IFDIR:
            raise _err(errno.EISDIR)
        fi.fh = 0
        fi.keep_cache = 1
        return 0

    def read(self, path: str, size: int, offset: int, fi: Any) -> bytes:
        if fi.fh:  # stats.json opened before no-open mode: direct I/O, one render per open
            with self._lock:
                data = self._handles.get(fi.fh, b"")
            return data[offset:offset + size]
        if path == STATS_PATH:  # a fresh render from offset 0; later pieces of the same one
            self._stats_cached = True
            if offset == 0 or not self._stats_snapshot:
                self._stats_snapshot = self._stats_bytes()
            return self._stats_snapshot[offset:offset + size]
        try:
            return self._read_file(path, size, offset)
        finally:
            if self._stats_cached:
                self._invalidate_stats()  # this read changed the counters

    def _read_file(self, path: str, size: int, offset: int) -> bytes:
        node = self._node(path)
        if node.kind != stat.S_IFREG:
            raise _err(errno.EINVAL)
        length = min(size, node.size - offset)
        if length <= 0:
            return b""
        layer = self.m.layers[node.layer]
        try:
            if node.entry is not None and node.entry.sparse and isinstance(layer, LocalLayer):
                return layer.read_sparse(node.entry.header_offset, node.size, offset, length)
            data = layer.read(node.offset + offset, length)
        except OSError as e:
            log.error("read %s [%d, +%d): %s", path, offset, length, e)
            raise _err(errno.EIO) from None
        except Exception:
            log.exception("read %s [%d, +%d) failed", path, offset, length)
            raise _err(errno.EIO) from None
        if len(data) != length:
            log.error("read %s [%d, +%d): got %d bytes", path, offset, length, len(data))
            raise _err(errno.EIO)
        return data

    def release(self, path: str, fi: Any) -> int:
        if fi.fh:
            with self._lock:
                self._handles.pop(fi.fh, None)
        return 0


def _mountinfo_escape(path: str) -> str:
    return "".join(f"\\{ord(c):03o}" if c in " \t\n\\" else c for c in path)


def tune_read_ahead(mountpoint: str, kb: int = READ_AHEAD_KB) -> bool:
    """Raises the mount's read-ahead window (its backing device in /sys/class/bdi, found by
    the device number /proc/self/mountinfo gives the mountpoint): sequential reads then
    come in 1 MiB requests instead of 128 KiB ones, a third off reading a tree from the
    span cache. Only after FUSE INIT is answered (the kernel lowers the window to what the
    reply says, and libfuse cannot offer more than the default). Needs root; otherwise (or
    if anything is missing) the default stays."""
    want = _mountinfo_escape(mountpoint)
    try:
        devs: list[str] = []
        for _ in range(50):  # the mount shows in mountinfo once mount(2) has returned
            with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
                devs = [fields[2] for fields in (line.split() for line in f)
                        if len(fields) > 4 and fields[4] == want]
            if devs:
                break
            time.sleep(0.1)
        else:
            log.debug("read-ahead of %s left as it was: not in mountinfo", mountpoint)
            return False
        with open(f"/sys/class/bdi/{devs[-1]}/read_ahead_kb", "w") as out:
            out.write(str(kb))
    except OSError as e:
        log.debug("read-ahead of %s left as it was: %s", mountpoint, e)
        return False
    return True


class _FUSE(mfusepy.FUSE):
    """mfusepy's FUSE with READDIRPLUS answered (mfusepy ignores the flag and sends names
    alone, so the kernel then looks every child up: one Python getattr per file)."""

    def readdir_fuse_3(self, path: bytes | None, buf: Any, filler: Any, offset: int,
                       fip: Any, flags: int) -> int:
        ops = self.operations
        if not flags & FUSE_READDIR_PLUS or path is None or not isinstance(ops, SociFS):
            return int(super().readdir_fuse_3(path, buf, filler, offset, fip, flags))
        st = mfusepy.c_stat()
        # Each entry carries its index + 1 as its offset: libfuse then replies with every
        # entry's attributes (with offset 0 its cached-listing path drops them), and a
        # listing that does not fit one reply resumes at ``offset``.
        start = max(offset, 0)
        for i, (name, attrs) in enumerate(ops.readdir_plus(
                path.decode(self.encoding, self.errors), start), start):
            ctypes.memset(ctypes.byref(st), 0, ctypes.sizeof(st))
            mfusepy.set_st_attrs(st, attrs, use_ns=True)
            if filler(buf, name.encode(self.encoding, self.errors), st, i + 1,
                      FUSE_FILL_DIR_PLUS) != 0:
                break
        return 0


def serve(mounted: MountedImage, mountpoint: str, *, allow_other: bool = False,
          debug: bool = False, on_ready: Callable[[], None] | None = None) -> None:
    """Mounts and runs the FUSE loop in this process until unmounted (``fusermount3 -u``) or
    sent SIGINT/SIGTERM/SIGHUP (libfuse then unmounts and the loop returns)."""
    mounted.mountpoint = mountpoint
    fs = SociFS(mounted, on_ready)
    _FUSE(fs, mountpoint, raw_fi=True, foreground=True, debug=debug, ro=True,
                 fsname="soci-native", subtype="soci-native", default_permissions=True,
                 allow_other=allow_other,
                 # libfuse 3.14 warns about its own "unset" default (UINT_MAX) otherwise
                 max_idle_threads=10)
