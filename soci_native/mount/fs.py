"""The FUSE filesystem (libfuse 3's high-level API through mfusepy, multithreaded loop).

Read-only. Metadata (lookup, getattr, readdir, readlink, xattrs, statfs) is answered from
the in-memory tree; only ``read`` of a regular file touches layer bytes. Files are opened
with ``keep_cache`` (their content never changes), and the kernel may cache entries and
attributes for :data:`ATTR_TIMEOUT` seconds.

``/.soci-native/stats.json`` is a virtual file (not listed by ``readdir`` of ``/``, but
``stat``/``open`` work) holding :meth:`MountedImage.stats` as JSON, rendered at each open and
read with direct I/O. It hides an image's own ``/.soci-native``, if it has one.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import threading
from collections.abc import Callable
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
ATTR_TIMEOUT = 60.0
BLOCK = 4096


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

    # -- lifecycle

    def init_with_config(self, conn: Any, config: Any) -> None:
        if config is not None:
            config.use_ino = 1
            config.readdir_ino = 1
            config.entry_timeout = ATTR_TIMEOUT
            config.attr_timeout = ATTR_TIMEOUT
            config.negative_timeout = ATTR_TIMEOUT
        if self.on_ready is not None:
            self.on_ready()

    def destroy(self, path: str) -> None:
        return None

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
        return (json.dumps(self.m.stats(), indent=2) + "\n").encode()

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
        node = self._node(path)
        if node.children is None:
            raise _err(errno.ENOTDIR)
        out: list[Any] = [(".", {"st_mode": node.mode, "st_ino": node.ino}, 0), ".."]
        for name in node.names():
            c = node.children[name]
            out.append((name, {"st_mode": c.mode, "st_ino": c.ino}, 0))
        return out

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
        if path == STATS_PATH:
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
        if fi.fh:
            with self._lock:
                data = self._handles.get(fi.fh, b"")
            return data[offset:offset + size]
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


def serve(mounted: MountedImage, mountpoint: str, *, allow_other: bool = False,
          debug: bool = False, on_ready: Callable[[], None] | None = None) -> None:
    """Mounts and runs the FUSE loop in this process until unmounted (``fusermount3 -u``) or
    sent SIGINT/SIGTERM/SIGHUP (libfuse then unmounts and the loop returns)."""
    mounted.mountpoint = mountpoint
    fs = SociFS(mounted, on_ready)
    mfusepy.FUSE(fs, mountpoint, raw_fi=True, foreground=True, debug=debug, ro=True,
                 fsname="soci-native", subtype="soci-native", default_permissions=True,
                 allow_other=allow_other,
                 # libfuse 3.14 warns about its own "unset" default (UINT_MAX) otherwise
                 max_idle_threads=10)
