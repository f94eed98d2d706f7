"""The FUSE filesystem: libfuse 3's low-level (inode) API, served by ``soci_native._fuse``.

Read-only. At mount the merged tree is handed to the C frontend once, as a flat inode table
(:mod:`soci_native.mount.inodes`); lookup, getattr, readdir(plus), readlink, xattrs, statfs,
open and opendir are then answered in C without the GIL, by libfuse's multithreaded loop. A
read of a regular file whose spans are all whole in the span cache is answered from the cache
files (pread, or a mapping for parts over 256 KiB), also in C:
:class:`~soci_native.mount.spans.ZtocLayer` tells the frontend each span it has verified and
committed (``on_cached``), the span cache each one it evicts (``on_evict``: read here
again), and a span removed behind its back is found missing and read here instead; likewise
how far a span being filled is in its temp file (``on_filling``), so
reads of what is inflated so far are answered in C too. The frontend also decides which spans
to fill ahead of a reader (:meth:`SociFS.read_ahead`). A read of spans not cached yet, or
not filled that far, has Python make its bytes final in the temp files (:meth:`SociFS.fill`,
inflating in the reading thread if no other is) and is then answered in C from them too.
Every other read comes back to Python (:meth:`SociFS.read`, with the GIL): uncacheable
spans, tar layers' spans, sparse files, layers without a zTOC, and the virtual stats file.
Errors are EIO, never wrong bytes.

The image never changes, so the kernel keeps what it learns: entries and attributes (negative
lookups too) for a day, directory listings, symlink targets, and file pages across opens.
``open`` of a regular file answers ENOSYS, which puts the kernel in no-open mode: later opens,
closes (release, flush) never reach us and the page cache is kept, so a warm
open+read+close costs what it costs on a local disk; ``opendir`` likewise (no-opendir mode:
no opendir/releasedir pair per directory, listings kept). ``readdir`` always answers
READDIRPLUS with every child's attributes, so listing a directory also makes its lookups.

``/.soci-native/stats.json`` is a virtual file (not listed by ``readdir`` of ``/``, but
``stat``/``open`` work) holding :meth:`MountedImage.stats` as JSON, rendered when read. In
no-open mode its pages would stay cached, so after it is read its inode is invalidated
(``fuse_lowlevel_notify_inval_inode``) at the next data read and at least every
:data:`STATS_REFRESH` seconds. It hides an image's own ``/.soci-native``, if it has one.
Cache hits served in C (``direct_reads``) and the spans they read are folded into the layer
stats and the span cache's LRU order at the same ticks.

Once a directory's listing is done, its files, and when C first serves a read from a span,
the other files wholly inside that span, are put into the kernel's page cache
(``fuse_lowlevel_notify_store``, on a thread of its own; counted as ``pushed_files`` and
``pushed_bytes``): a walk over a warm span cache then reads them with no FUSE round trip.
Only files the kernel has an inode for are pushed (the frontend keeps the kernel's lookup
count per inode from its LOOKUP and READDIRPLUS replies and the FORGETs); the others are
counted in ``push_skipped`` (``unknown``; ``failed``: stores the kernel refused anyway).
Only files whose spans are all whole and verified in the cache are pushed, up to
``push_max`` bytes each (``--page-cache-push``), twice that per listing and the cache size
per mount (caps counted in the pages the files take); nothing more is fetched. ``requests``
counts the FUSE requests answered, per kind; ``push_jobs`` the pusher's jobs queued and done;
``python_calls`` the frontend's calls of :meth:`SociFS.fill` and :meth:`SociFS.read_ahead`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import signal
import threading
import time
from array import array
from collections.abc import Callable
from functools import partial

from soci_native import _fuse
from soci_native.mount.image import MountedImage
from soci_native.mount.spans import LocalLayer, SpanError, ZtocLayer

log = logging.getLogger("soci_native.mount")

STATS_DIR = ".soci-native"
STATS_FILE = "stats.json"
STATS_PATH = f"/{STATS_DIR}/{STATS_FILE}"
STATS_REFRESH = 0.25
INIT_WAIT = 2.0  # seconds the mount waits for the kernel to take its INIT reply
READ_AHEAD_KB = 1024  # the kernel's default for a FUSE mount is 128: 8x the requests
MAX_IDLE_THREADS = 10
MAX_THREADS = 16
FILL_NEVER = -2  # SociFS.fill: only read serves this span (csrc/fuse_ll.cpp's FILL_NEVER)
PUSH_MAX = 32 << 20  # the largest file a listing pushes into the page cache (--page-cache-push)


def _logged(e: OSError) -> bool:
    """A SpanError already logged where it was found (the span's failure is logged once)."""
    return isinstance(e, SpanError) and e.logged


class SociFS:
    """The Python side of a mount: the inode table handed to the C frontend, the reads it
    hands back, and stats.json."""

    def __init__(self, mounted: MountedImage,
                 on_ready: Callable[[], None] | None = None, push_max: int = PUSH_MAX) -> None:
        self.m = mounted
        self.on_ready = on_ready
        table = mounted.tree.table
        total = sum(layer.stats.size for layer in mounted.layers)
        self.front = _fuse.Frontend(*table, len(mounted.layers), total, self)
        # more than the span cache holds would push what it has evicted meanwhile
        self.front.set_push_limits(push_max, 2 * push_max, mounted.cache.limit)
        self._lazy: list[tuple[int, ZtocLayer]] = []
        self._span_at: dict[str, tuple[int, int]] = {}  # a cached span's path: (layer, span)
        mounted.cache.on_evict = self._span_evicted
        for li, layer in enumerate(mounted.layers):
            if isinstance(layer, ZtocLayer):
                starts = [s.ustart for s in layer.spans]
                starts.append(layer.spans[-1].uend if layer.spans else 0)
                self.front.set_spans(li, array("q", starts).tobytes())
                layer.on_cached = partial(self._span_cached, li)
                layer.on_filling = partial(self.front.span_filling, li)
                for i, path in layer.cached_spans():  # served in C from the first read
                    self._span_cached(li, i, path)
                layer.on_untrusted = partial(self.front.untrust, li)
                layer.on_ahead_done = partial(self.front.ahead_done, li)
                if layer.untrusted:
                    self.front.untrust(li)
                self._lazy.append((li, layer))
        self._handles: dict[int, bytes] = {}
        self._next_fh = 1
        self._lock = threading.Lock()  # the handles
        self._fold_lock = threading.Lock()
        self._stats_snapshot = b""  # the render the last read from offset 0 got
        self._stats_size = 0
        self._done = threading.Event()
        mounted.extra["direct_reads"] = 0
        mounted.extra["pushed_files"] = 0  # put into the page cache before anyone read them
        mounted.extra["pushed_bytes"] = 0
        mounted.extra["push_jobs"] = {"queued": 0, "done": 0}  # the pusher's listings and spans
        # files the pusher left out as the kernel had no inode for them (never looked up, or
        # forgotten: evicted), and stores the kernel refused all the same
        mounted.extra["push_skipped"] = {"unknown": 0, "failed": 0}
        mounted.extra["python_calls"] = {"fill": 0, "read_ahead": 0}  # calls from C (GIL trips)
        mounted.extra["requests"] = {}  # FUSE requests served, per kind: count, time answering

    def _span_cached(self, li: int, i: int, path: str) -> None:
        self._span_at[path] = (li, i)
        self.front.span_cached(li, i, path)

    def _span_evicted(self, path: str) -> None:
        """The span cache evicted ``path``: the frontend reads that span here again, and asks
        for it to be filled ahead again when a reader heads there."""
        at = self._span_at.pop(path, None)
        if at is not None:
            self.front.span_evicted(at[0], at[1], path)

    # -- called by the frontend (from libfuse's threads, with the GIL)

    def init(self) -> None:
        threading.Thread(target=self._refresh, name="soci-stats-refresh", daemon=True).start()

    def read(self, ino: int, offset: int, length: int) -> bytes | int:
        """``length`` bytes (the frontend clipped it to the file) at ``offset`` of regular
        file ``ino``, or an errno."""
        li, start, size, header = self.m.tree.file(ino)
        if li < 0:
            return errno.EINVAL
        layer = self.m.layers[li]
        try:
            if header >= 0 and isinstance(layer, LocalLayer):  # sparse: not one range
                data = layer.read_sparse(header, size, offset, length)
            elif isinstance(layer, ZtocLayer):
                data = layer.read(start + offset, length)
            else:
                data = layer.read(start + offset, length)
        except OSError as e:
            if not _logged(e):
                log.error("read of inode %d [%d, +%d): %s", ino, offset, length, e)
            return errno.EIO
        except Exception:
            log.exception("read of inode %d [%d, +%d) failed", ino, offset, length)
            return errno.EIO
        if len(data) != length:
            log.error("read of inode %d [%d, +%d): got %d bytes", ino, offset, length, len(data))
            return errno.EIO
        return data

    def fill(self, layer: int, span: int, need: int) -> int:
        """The frontend is about to reply with the first ``need`` bytes of a span not cached
        yet from the span's temp file itself: 0 once they are there (inflated here, or by the
        fill under way), -1 when it should ask :meth:`read` instead, FILL_NEVER when it always
        should for this span (the frontend then skips this call), else an errno."""
        lazy = self.m.layers[layer]
        if not isinstance(lazy, ZtocLayer):
            return -1
        if not lazy.fills_in_place(span):
            return FILL_NEVER
        try:
            return 0 if lazy.fill_to(span, need) else -1
        except OSError as e:
            if not _logged(e):
                log.error("filling span %d of layer %d: %s", span, layer, e)
            return errno.EIO
        except Exception:
            log.exception("filling span %d of layer %d failed", span, layer)
            return errno.EIO

    def read_ahead(self, layer: int, span: int) -> bool:
        """The frontend saw a read that will want span ``span`` soon (the file read goes on
        into it, or a sequential reader is heading there), and it is not cached: fill it in
        the background. False: not now (the read-ahead budget is full), ask again later."""
        lazy = self.m.layers[layer]
        return lazy.read_ahead(span) if isinstance(lazy, ZtocLayer) else True

    def stats_size(self) -> int:
        return len(self._stats_bytes())

    def stats_open(self) -> int:
        data = self._stats_bytes()
        with self._lock:
            fh = self._next_fh
            self._next_fh += 1
            self._handles[fh] = data
        return fh

    def stats_release(self, fh: int) -> None:
        with self._lock:
            self._handles.pop(fh, None)

    def stats_read(self, fh: int, offset: int, size: int) -> bytes:
        """stats.json opened before no-open mode (``fh``): that open's render; otherwise a
        fresh render from offset 0, later pieces of the same one."""
        if fh:
            with self._lock:
                data = self._handles.get(fh, b"")
            return data[offset:offset + size]
        if offset == 0 or not self._stats_snapshot:
            self._stats_snapshot = self._stats_bytes()
        return self._stats_snapshot[offset:offset + size]

    # -- stats

    def _stats_bytes(self) -> bytes:
        """The stats as JSON, padded with spaces to a size that only grows in 4 KiB steps: a
        cached read stops at the size the kernel last got from getattr, so a render a few
        digits longer than that one must not lose its end."""
        self.fold()
        text = (json.dumps(self.m.stats(), indent=2) + "\n").encode()
        size = self._stats_size = max(self._stats_size, -(-(len(text) + 1024) // 4096) * 4096)
        return text[:-1] + b" " * (size - len(text)) + b"\n"

    def fold(self) -> None:
        """Adds the cache hits served in C to the layer stats and moves the spans they read
        up the span cache's LRU order."""
        hits = self.front.take_hits()
        for li, n in enumerate(hits):
            if n:
                self.m.layers[li].stats.add(cache_hits=n)
        with self._fold_lock:  # reads answered from span cache files without Python
            self.m.extra["direct_reads"] = self.m.extra.get("direct_reads", 0) + sum(hits)
            self.m.extra["pushed_files"] = self.front.pushed_files
            self.m.extra["pushed_bytes"] = self.front.pushed_bytes
            queued, done = self.front.push_jobs
            self.m.extra["push_jobs"] = {"queued": queued, "done": done}
            self.m.extra["push_skipped"] = self.front.push_skipped
            self.m.extra["python_calls"] = self.front.python_calls
            self.m.extra["requests"] = {
                kind: {"count": n, "us": ns // 1000}
                for kind, (n, ns) in self.front.requests().items()}
        for li, layer in self._lazy:
            for i in self.front.take_touched(li):
                self.m.cache.touch(layer.span_path(i))

    def _refresh(self) -> None:
        self._tune()
        if self.on_ready is not None:
            self.on_ready()
        while not self._done.wait(STATS_REFRESH):
            self.front.invalidate_stats()
            self.fold()

    def _tune(self) -> None:
        """Raises the read-ahead window before the mount is reported ready (the first reads
        are then 1 MiB too), but after the kernel has our INIT reply, which sets the window:
        a stat of the mountpoint waits for that (bounded, should the loop never answer)."""
        mp = self.m.mountpoint
        t = threading.Thread(target=_stat_quietly, args=(mp,), name="soci-init-wait",
                             daemon=True)
        t.start()
        t.join(INIT_WAIT)
        tune_read_ahead(mp)

    def close(self) -> None:
        self._done.set()
        self.fold()
        self.m.cache.on_evict = None
        for _, layer in self._lazy:
            layer.on_cached = layer.on_untrusted = layer.on_filling = None


def _stat_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.stat(path)


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


def serve(mounted: MountedImage, mountpoint: str, *, allow_other: bool = False,
          debug: bool = False, on_ready: Callable[[], None] | None = None,
          push_max: int = PUSH_MAX) -> None:
    """Mounts and runs the FUSE loop in this thread until unmounted (``fusermount3 -u``) or
    sent SIGINT/SIGTERM/SIGHUP (libfuse then unmounts and the loop returns). libfuse takes
    only signals still at their default: in the main thread Python's SIGINT handler (which
    could not run while the loop holds the thread) steps aside for the loop; a program that
    set its own handlers (the snapshotter's mount daemon) keeps them."""
    mounted.mountpoint = mountpoint
    fs = SociFS(mounted, on_ready, push_max)
    opts = "ro,default_permissions,fsname=soci-native,subtype=soci-native"
    if allow_other:
        opts += ",allow_other"
    main = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGINT, signal.SIG_DFL) \
        if main and signal.getsignal(signal.SIGINT) is signal.default_int_handler else None
    try:
        rc = fs.front.serve(mountpoint, opts, debug, True, MAX_IDLE_THREADS, MAX_THREADS)
        log.debug("FUSE loop for %s returned %d", mountpoint, rc)
    finally:
        if old is not None:
            signal.signal(signal.SIGINT, old)
        fs.close()
