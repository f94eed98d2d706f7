"""Where a mount's file bytes come from: spans fetched through a zTOC, or whole local layers.

* :class:`BlobReader` is the one thing a lazily read layer needs from its blob: byte ranges.
  :class:`FileBlobReader` preads a local file (an ``oci:`` layout's blob),
  :class:`FileObjBlobReader` reads a seekable file object (a blob inside an ``oci-archive:``
  tar), :class:`SourceRangeReader` asks an image source with a ``read_range(digest, offset,
  length)`` method: that is how a registry source plugs in (one HTTP ``Range`` GET per span,
  what the reference snapshotter does, soci-format 5.4).
* :class:`ZtocLayer` serves uncompressed ranges of one zTOC-indexed layer. A read maps to
  spans (soci-format 1.3); each missing span's compressed range is fetched once (a per-span
  lock makes concurrent readers wait for the first), checked against the zTOC's span digest
  (a mismatch is an EIO and a log line, never wrong bytes) and inflated by one resumable C
  inflate (``_core.SpanInflater``) that every reader of the span continues: into a cache
  temp file, renamed into the :class:`SpanCache` once whole and its window chain checked, or,
  for a span too big to cache, straight into the replies. Plain tar layers' spans are the
  fetched bytes themselves. The FUSE frontend starts the next span's fill in the background
  (:meth:`ZtocLayer.read_ahead`) when a read of a file goes on into it, before the read is
  served, so fetch and inflate overlap serving, and a few more ahead of a reader it sees
  reading sequentially. Fills run on a few worker threads per layer (:class:`_Workers`:
  a span a reader waits on first, then the ones ahead in stream order), 1 MiB at a time,
  and readers of a span still being filled read what is there so far.
* :class:`LocalLayer` serves a layer without a zTOC from a complete local copy, indexed in
  memory (checkpoints every 1 MiB, so a read inflates at most that much before its data);
  sparse members from their sparse map (holes are zeros made on the fly).
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import heapq
import io
import itertools
import logging
import os
import secrets
import stat
import tarfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from soci_native import _core, tarzinfo
from soci_native.layer import (
    FormatError,
    LayerIndex,
    checkpoint_record,
    checkpoint_table,
    checkpoint_window,
    extract,
)
from soci_native.ztoc import Ztoc

log = logging.getLogger("soci_native.mount")

TEMP_PREFIX = ".tmp-"


class SpanError(OSError):
    """A span that cannot be served (fetch failed, digest mismatch, corrupt data): EIO."""

    def __init__(self, message: str, logged: bool = False) -> None:
        super().__init__(5, message)  # EIO
        self.logged = logged  # already logged where it was found (log it once)


# ----------------------------------------------------------------------------- blob readers

class BlobReader(Protocol):
    """Random access to one layer blob's compressed bytes."""

    size: int

    def read_range(self, start: int, end: int) -> bytes:
        """Exactly the bytes ``[start, end)``; raises OSError if they cannot be had."""
        ...

    def close(self) -> None: ...


class FileBlobReader:
    """A local blob file, read with pread (thread-safe, no shared file position)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        self.size = os.fstat(self._fd).st_size

    def read_range(self, start: int, end: int) -> bytes:
        data = os.pread(self._fd, end - start, start)  # whole, but for a short read
        if len(data) == end - start:
            return data  # (no copy: a span is megabytes, fetched on the cold read path)
        out = bytearray(data)
        while start + len(out) < end:
            chunk = os.pread(self._fd, end - start - len(out), start + len(out))
            if not chunk:
                raise OSError(5, f"{self.path}: ends at {start + len(out)}, wanted up to {end}")
            out += chunk
        return bytes(out)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class FileObjBlobReader:
    """A blob behind a seekable file object (e.g. a member of an archive read in place);
    seek+read pairs are serialised."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self._f = f
        self.size = size
        self._lock = threading.Lock()

    def read_range(self, start: int, end: int) -> bytes:
        with self._lock:
            self._f.seek(start)
            data = self._f.read(end - start)
        if len(data) != end - start:
            raise OSError(5, f"blob ends before byte {end} (read {len(data)} of {end - start})")
        return data

    def close(self) -> None:
        self._f.close()


class RangeSource(Protocol):
    def read_range(self, digest: str, offset: int, length: int) -> bytes: ...


class SourceRangeReader:
    """A blob read through its image source's ``read_range(digest, offset, length)`` — the
    shape a registry source offers (``RegistryClient.read_range`` bound to the repository):
    each span costs one ranged GET, retried and checked by the client."""

    def __init__(self, source: RangeSource, digest: str, size: int) -> None:
        self._source = source
        self.digest = digest
        self.size = size

    def read_range(self, start: int, end: int) -> bytes:
        data = self._source.read_range(self.digest, start, end - start)
        if len(data) != end - start:
            raise OSError(5, f"{self.digest}: got {len(data)} bytes for range "
                             f"[{start}, {end})")
        return data

    def close(self) -> None:
        return None


# ------------------------------------------------------------------------------------ stats

@dataclass
class LayerStats:
    """What the mount did for one layer (reported in .soci-native/stats.json)."""

    digest: str
    size: int  # compressed blob size
    mode: str  # "lazy" (zTOC spans) | "local" (fetched whole)
    spans_total: int = 0
    spans_fetched: int = 0
    bytes_fetched: int = 0  # compressed bytes read from the blob
    cache_hits: int = 0
    cache_misses: int = 0
    errors: int = 0
    last_error: str | None = None
    bytes_inflated: int = 0  # everything inflated, skipped bytes and repeats included
    span_bytes_inflated: int = 0  # distinct span bytes inflated (each counted once)
    spans_read_ahead: int = 0  # span fills queued ahead of a reader
    # ... of which over (their bytes made final, or found needless; the budget freed and the
    # frontend told): equal to spans_read_ahead once nothing is queued or filling ahead
    spans_read_ahead_done: int = 0
    ztoc: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self.lock:
            for k, v in counts.items():
                setattr(self, k, getattr(self, k) + v)

    def error(self, message: str) -> None:
        with self.lock:
            self.errors += 1
            self.last_error = message

    def to_json(self) -> dict[str, object]:
        with self.lock:
            return {
                "digest": self.digest, "size": self.size, "mode": self.mode, "ztoc": self.ztoc,
                "spans_total": self.spans_total, "spans_fetched": self.spans_fetched,
                "bytes_fetched": self.bytes_fetched,
                "fetched_percent": round(100 * self.bytes_fetched / self.size, 2)
                if self.size else 100.0,
                "cache_hits": self.cache_hits, "cache_misses": self.cache_misses,
                "errors": self.errors, "last_error": self.last_error,
                "bytes_inflated": self.bytes_inflated,
                "span_bytes_inflated": self.span_bytes_inflated,
                "spans_read_ahead": self.spans_read_ahead,
                "spans_read_ahead_done": self.spans_read_ahead_done,
                # 1.0 when no span was inflated twice (issue: one inflate per span per mount)
                "inflate_ratio": round(self.bytes_inflated / self.span_bytes_inflated, 4)
                if self.span_bytes_inflated else None,
            }


# ------------------------------------------------------------------------------- span cache

class SpanCache:
    """Uncompressed spans as files ``<root>/<layer hex>/<start>+<length>-<key>``, evicted
    least-recently-used first once their total passes ``limit`` bytes.

    ``key`` hashes everything that determines a span's bytes: its compressed bytes (through
    the span digest they were verified against) and its checkpoint record (in, out, bits,
    window) and ranges. Two zTOCs of a layer share a cached span only when both would inflate
    it to the same bytes, so no index, however crafted, changes what another mount serves.

    A span is filled into a temp file (0600, directories 0700: cached spans are private image
    content) whose final size is reserved against the bound first, then renamed into place.
    Spans larger than :attr:`max_span` (half the bound) are never cached. Several mounts may
    share a root; each accounts only for the files it has seen (existing ones are adopted at
    start, oldest modification first; names without a key, from before keys, are removed)."""

    def __init__(self, root: str | os.PathLike[str], limit: int) -> None:
        self.root = Path(root)
        self.limit = limit
        self.max_span = limit // 2
        self._lru: OrderedDict[str, int] = OrderedDict()
        self._total = 0
        self._lock = threading.Lock()
        self._found: set[str] = set()  # span files seen, up to their keys
        # Called (under the cache's lock) with each span file's path as it is evicted: the
        # FUSE frontend then stops reading that span from its file and may fill it again.
        self.on_evict: Callable[[str], None] | None = None
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._adopt()

    def _adopt(self) -> None:
        """Accounts for the spans already in the cache, removing stale temp files and unkeyed
        names: the one scan of it, which :meth:`found` and :meth:`holds` answer from."""
        found: list[tuple[float, str, int]] = []
        now = time.time()
        for sub in self.root.iterdir():
            if not sub.is_dir() or sub.name.startswith("."):
                continue
            for f in sub.iterdir():
                try:
                    st = f.stat()
                except OSError:
                    continue
                if f.name.startswith(TEMP_PREFIX):
                    if now - st.st_mtime > 3600:  # left by a killed mount
                        with contextlib.suppress(OSError):
                            f.unlink()
                    continue
                if not stat.S_ISREG(st.st_mode) or "+" not in f.name:
                    continue
                if "-" not in f.name:
                    with contextlib.suppress(OSError):  # unkeyed: any zTOC could have made it
                        f.unlink()
                    continue
                found.append((st.st_mtime, str(f), st.st_size))
        for _, path, size in sorted(found):
            self._account(path, size)
        with self._lock:
            self._evict()

    @property
    def total(self) -> int:
        return self._total

    def _unkeyed(self, layer_digest: str, start: int, length: int) -> str:
        """A span file's path up to its key (a key is hex: the last ``-`` comes before it)."""
        return str(self.root / layer_digest.split(":", 1)[-1] / f"{start}+{length}")

    def path(self, layer_digest: str, start: int, length: int, key: str) -> str:
        return f"{self._unkeyed(layer_digest, start, length)}-{key}"

    def _account(self, path: str, size: int) -> None:
        """(Under the lock, or before the cache is shared.) A span file is in the cache."""
        old = self._lru.pop(path, None)
        if old is not None:
            self._total -= old
        self._lru[path] = size
        self._total += size
        self._found.add(path.rpartition("-")[0])

    def found(self, layer_digest: str, start: int, length: int) -> bool:
        """Whether a file for this span's range was seen under some key (by the scan at start,
        or committed or read since): only then can :meth:`holds` be true for its path, so a
        caller looks for the warm spans without working out every span's key."""
        return self._unkeyed(layer_digest, start, length) in self._found

    def holds(self, path: str, size: int) -> bool:
        """Whether a span file of ``size`` bytes at ``path`` is accounted for in the cache
        (adopted at start, or committed or read since, and not evicted)."""
        with self._lock:
            return self._lru.get(path) == size

    def read(self, path: str, offset: int, length: int, expect_size: int) -> bytes | None:
        """``length`` bytes at ``offset`` of a cached span, or None when it is not cached."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            if os.fstat(fd).st_size != expect_size:
                return None
            data = os.pread(fd, length, offset)
        finally:
            os.close(fd)
        if len(data) != length:
            return None
        with self._lock:
            if path in self._lru:
                self._lru.move_to_end(path)
            else:  # written by another mount sharing the cache
                self._account(path, expect_size)
        return data

    def touch(self, path: str) -> None:
        """Marks a cached span as just read (the FUSE frontend reads some spans' files
        itself and reports them here)."""
        with self._lock:
            if path in self._lru:
                self._lru.move_to_end(path)

    def open_temp(self, path: str, size: int) -> tuple[int, str] | None:
        """A new temp file beside ``path`` with ``size`` bytes reserved against the bound
        (others evicted to make room), or None when the cache cannot take it."""
        if size > self.max_span:
            return None
        p = Path(path)
        try:
            p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = p.parent / f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(6)}"
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as e:  # a full or read-only cache disk only costs refetches
            log.warning("cannot cache span %s: %s", path, e)
            return None
        with self._lock:
            self._total += size
            self._evict()
        return fd, str(tmp)

    def commit(self, fd: int, tmp: str, path: str, size: int) -> None:
        """Moves a filled temp file into place; its reservation becomes the entry's size."""
        os.close(fd)
        try:
            os.replace(tmp, path)
        except OSError as e:
            self.abort(-1, tmp, size)
            log.warning("cannot cache span %s: %s", path, e)
            return
        with self._lock:
            self._total -= size
            self._account(path, size)
            self._evict()

    def abort(self, fd: int, tmp: str, size: int) -> None:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        with self._lock:
            self._total -= size

    def put(self, path: str, data: bytes) -> None:
        got = self.open_temp(path, len(data))
        if got is None:
            return
        fd, tmp = got
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except OSError as e:
            self.abort(fd, tmp, len(data))
            log.warning("cannot cache span %s: %s", path, e)
            return
        self.commit(fd, tmp, path, len(data))

    def _evict(self) -> None:
        while self._total > self.limit and self._lru:
            path, size = self._lru.popitem(last=False)
            self._total -= size
            with contextlib.suppress(OSError):
                os.unlink(path)
            hook = self.on_evict
            if hook is not None:
                try:  # the loop must finish: the cache's total is over its bound until then
                    hook(path)
                except Exception:
                    log.exception("eviction hook for %s failed", path)


# ---------------------------------------------------------------------------------- layers

class Layer(Protocol):
    digest: str
    stats: LayerStats

    def read(self, offset: int, length: int) -> bytes: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Span:
    cstart: int
    cend: int
    ustart: int
    uend: int


def span_table(z: Ztoc) -> list[Span]:
    """Each span's compressed and uncompressed ranges (soci-format 1.3, 1.5), checked for
    consistency with the zTOC's sizes and digest count."""
    n = z.num_spans
    spans: list[Span] = []
    if z.compression_algorithm == "uncompressed":
        tz = tarzinfo.decode(z.checkpoints)
        if tz.num_spans != n:
            raise FormatError(f"zTOC lists {n} span digests for {tz.num_spans} tar spans")
        for i in range(n):
            lo, hi = i * tz.span_size, min((i + 1) * tz.span_size, tz.size)
            spans.append(Span(lo, hi, lo, hi))
        if tz.size > z.compressed_archive_size:
            raise FormatError(f"tar size {tz.size} exceeds the blob size "
                              f"{z.compressed_archive_size}")
        return spans
    table = checkpoint_table(z.checkpoints)
    if len(table) != n:
        raise FormatError(f"zTOC has {len(table)} checkpoints for {n} spans")
    for i, (cin, out, bits) in enumerate(table):
        cend = table[i + 1][0] if i + 1 < n else z.compressed_archive_size
        uend = table[i + 1][1] if i + 1 < n else z.uncompressed_archive_size
        s = Span(cin - (1 if bits else 0), cend, out, uend)
        if not (0 <= s.cstart <= s.cend <= z.compressed_archive_size and s.ustart <= s.uend) \
                or (spans and (s.ustart != spans[-1].uend or s.cstart < spans[-1].cstart)):
            raise FormatError(f"zTOC span {i} has inconsistent offsets {s}")
        spans.append(s)
    return spans


class _Fill:
    """A span being inflated: its verified compressed bytes and the one inflate of them that
    every reader continues, writing into a cache temp file (``fd``) or, for a span too big to
    cache, keeping the last :data:`RECENT` bytes in ``recent`` for reads that arrive slightly
    out of order (that one advances under ``lock``).

    A cached span's inflate runs outside the lock, by one thread at a time (``busy``), a
    :data:`FILL_STEP` at a time: ``done`` grows after each step and ``cond`` wakes the readers
    waiting for it, who read what is there under the lock meanwhile (the fd stays open while
    ``busy``: only its owner closes it then)."""

    __slots__ = ("i", "comp", "inf", "fd", "tmp", "size", "done", "recent", "recent_start",
                 "state", "error", "scheduled", "busy", "lock", "cond")

    def __init__(self, i: int, comp: bytes, inf: _core.SpanInflater | None, size: int) -> None:
        self.i, self.comp, self.inf, self.size = i, comp, inf, size
        self.fd, self.tmp = -1, ""
        self.done = 0  # span bytes inflated so far
        self.recent: list[bytes] = []
        self.recent_start = 0  # span offset of recent[0]
        self.state = "filling"  # | "committed" | "failed"
        self.error: SpanError | None = None
        self.scheduled = False
        self.busy = False
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)


FILLERS = 2  # threads per layer finishing spans and reading ahead: the next span's fetch and
#             inflate run beside the rest of the current one's (one thread made them take turns)
FILL_STEP = 1 << 20  # a fill advances this far between wake-ups of the span's readers
READ_AHEAD = 1 << 20  # a reader of a filling span inflates at least this far past the fill
RECENT = 4 << 20  # an uncacheable span's bytes kept behind its inflater
UNCACHED_FILLS = 2  # uncacheable spans per layer whose inflater is kept between reads
MAX_COMPRESSED_SPAN = 256 << 20  # held in memory while the span is read


class _Workers:
    """A few threads running queued jobs, the most urgent first: finishing a span a reader
    is on goes before filling the spans ahead of it, and those go in stream order. Threads
    start as jobs come; :meth:`shutdown` stops them (dropping what is still queued, or
    running it first)."""

    def __init__(self, n: int, name: str) -> None:
        self._n, self._name = n, name
        self._heap: list[tuple[tuple[int, int], int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._cv = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._stop = False

    def submit(self, prio: tuple[int, int], job: Callable[[], None]) -> None:
        with self._cv:
            if self._stop:
                return
            heapq.heappush(self._heap, (prio, next(self._seq), job))
            if self._idle == 0 and len(self._threads) < self._n:
                t = threading.Thread(target=self._run, daemon=True,
                                     name=f"{self._name}_{len(self._threads)}")
                self._threads.append(t)
                t.start()
            self._cv.notify()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._heap and not self._stop:
                    self._idle += 1
                    self._cv.wait()
                    self._idle -= 1
                if not self._heap:
                    return
                job = heapq.heappop(self._heap)[2]
            try:
                job()
            except Exception:  # noqa: BLE001 - a job's failure is its reader's EIO, not ours
                log.exception("background span job failed")

    def shutdown(self, cancel: bool) -> None:
        """Stops taking jobs and waits for the threads: after the queued jobs, or (cancel)
        after only the ones running."""
        with self._cv:
            self._stop = True
            if cancel:
                self._heap.clear()
            self._cv.notify_all()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join()


def _slice_chunks(chunks: list[bytes], start: int, lo: int, hi: int) -> bytes:
    """Bytes [lo, hi) of consecutive chunks, the first at offset ``start``: only the chunks
    the range touches are copied."""
    out: list[bytes] = []
    pos = start
    for c in chunks:
        end = pos + len(c)
        if end > lo and pos < hi:
            out.append(c[max(lo - pos, 0):min(hi, end) - pos])
        pos = end
    return out[0] if len(out) == 1 else b"".join(out)


class ZtocLayer:
    """A layer read lazily through its zTOC, span by span. Every span is fetched and inflated
    at most once while its bytes are cached or being cached: readers of a span still being
    inflated continue that inflate (or wait for it) rather than starting from the checkpoint
    again. Once span i is inflated, its last 32 KiB must be checkpoint i+1's window; a
    mismatch marks the zTOC untrustworthy and every later read of the layer an EIO."""

    def __init__(self, digest: str, z: Ztoc, reader: BlobReader, cache: SpanCache,
                 stats: LayerStats) -> None:
        if reader.size != z.compressed_archive_size:
            raise FormatError(f"layer {digest} has {reader.size} bytes but its zTOC says "
                              f"{z.compressed_archive_size}")
        self.digest = digest
        self.ztoc = z
        self.reader = reader
        self.cache = cache
        self.stats = stats
        self.spans = span_table(z)
        self.gzip = z.compression_algorithm != "uncompressed"
        self._starts = [s.ustart for s in self.spans]
        self._locks = [threading.Lock() for _ in self.spans]
        self._keys: list[str | None] = [None] * len(self.spans)
        self._fetched: set[int] = set()
        self._reached: dict[int, int] = {}  # how far each span was ever inflated
        self._fills: dict[int, _Fill] = {}
        self._uncached: OrderedDict[int, None] = OrderedDict()
        self._filler: _Workers | None = None
        self._filler_lock = threading.Lock()
        self._ahead: set[int] = set()  # spans queued by read_ahead
        self._ahead_bytes = 0  # their uncompressed size
        self._held: dict[int, bytes] = {}  # verified compressed spans kept for their fill
        self._untrusted: str | None = None
        self._closing = False
        # Set by the FUSE frontend: span i is whole and verified in the cache at this path
        # (it then reads the file itself), and the zTOC was found lying (it stops doing so).
        self.on_cached: Callable[[int, str], None] | None = None
        # ... and span i is being filled into temp file path, its first `done` bytes there
        # (done 0: the fill is over), so the frontend reads those without coming here.
        self.on_filling: Callable[[int, str, int], None] | None = None
        self.on_untrusted: Callable[[], None] | None = None
        # ... and a fill ahead of a reader ended: the read-ahead budget has room again.
        self.on_ahead_done: Callable[[], None] | None = None
        stats.spans_total = len(self.spans)
        self.size = z.uncompressed_archive_size
        if self.gzip and self.spans and self.spans[0].ustart == 0 and any(
                checkpoint_window(z.checkpoints, 0)):
            self._distrust("checkpoint 0 (at the start of the stream) has a non-zero window")

    # -- trust

    def _distrust(self, why: str) -> None:
        with self.stats.lock:
            first = self._untrusted is None
            if first:
                named = f" {self.stats.ztoc}" if self.stats.ztoc else ""
                self._untrusted = (f"layer {self.digest}: its zTOC{named} is untrustworthy "
                                   f"({why}); reads of this layer fail")
        if first:
            if self.on_untrusted is not None:
                self.on_untrusted()
            self.stats.error(self._untrusted or why)
            log.error("%s", self._untrusted)

    @property
    def untrusted(self) -> bool:
        """Whether a check found the zTOC lying (every read of the layer is an EIO)."""
        return self._untrusted is not None

    def _check_trusted(self) -> None:
        if self._untrusted is not None:
            raise SpanError(self._untrusted)

    def _check_previous(self, i: int) -> None:
        """Window i against span i-1's cached tail: free when span i-1 is cached."""
        if i == 0 or not self.gzip:
            return
        p = self.spans[i - 1]
        plen = p.uend - p.ustart
        if not plen:
            return
        n = min(plen, _core.WINDOW_SIZE)
        tail = self.cache.read(self._path(i - 1), plen - n, n, plen)
        if tail is None:
            return
        cps = self.ztoc.checkpoints
        want = checkpoint_window(cps, i)
        if n < _core.WINDOW_SIZE:
            tail = checkpoint_window(cps, i - 1)[n:] + tail
        if tail != want:
            self._distrust(f"checkpoint {i}'s window is not the last 32 KiB of span {i - 1}")

    # -- reading

    def _key(self, i: int) -> str:
        key = self._keys[i]
        if key is None:
            s = self.spans[i]
            h = hashlib.sha256(f"{self.ztoc.span_digests[i]} {s.cstart} {s.cend} {s.ustart} "
                               f"{s.uend}\n".encode())
            if self.gzip:
                h.update(checkpoint_record(self.ztoc.checkpoints, i))
            key = self._keys[i] = h.hexdigest()[:40]
        return key

    def _path(self, i: int) -> str:
        s = self.spans[i]
        return self.cache.path(self.digest, s.ustart, s.uend - s.ustart, self._key(i))

    def span_path(self, i: int) -> str:
        """Where span ``i`` is kept in the span cache once whole."""
        return self._path(i)

    def cached_spans(self) -> list[tuple[int, str]]:
        """(index, path) of the spans already whole in the cache, as a mount over a warm
        cache starts: a file at a span's keyed path with the span's size is what a mount
        verified and committed (the read path trusts it as much). The cache's scan at start
        says which spans have a file for their range at all, so the keys of the others (a
        hash each, ~60 ms of a 240-span layer's mount start, though the cache is usually
        cold) are not needed."""
        out: list[tuple[int, str]] = []
        for i, s in enumerate(self.spans):
            size = s.uend - s.ustart
            if 0 < size <= self.cache.max_span and self.cache.found(self.digest, s.ustart, size):
                path = self._path(i)
                if self.cache.holds(path, size):
                    out.append((i, path))
        return out

    def _filling(self, i: int, tmp: str, done: int) -> None:
        hook = self.on_filling
        if hook is not None:
            hook(i, tmp, done)

    def _cached(self, i: int, path: str) -> None:
        """Span ``i`` was just found whole in the cache (or put there)."""
        hook = self.on_cached
        if hook is not None:
            hook(i, path)

    def read(self, offset: int, length: int) -> bytes:
        """Bytes [offset, offset+length) of the tar stream. (Which spans to fill ahead of
        the reader is the FUSE frontend's call, made before it hands a read here.)"""
        end = min(offset + length, self.size)
        if offset >= end:
            return b""
        self._check_trusted()
        parts: list[bytes] = []
        i = max(0, bisect.bisect_right(self._starts, offset) - 1)
        pos = offset
        while pos < end:
            s = self.spans[i]
            take = min(end, s.uend) - pos
            if take > 0:
                parts.append(self._span_slice(i, pos - s.ustart, take))
                pos += take
            i += 1
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def read_ahead(self, i: int) -> bool:
        """Starts filling span ``i`` into the cache in the background (a reader of a file is
        about to need it), unless it is cached, being filled or too big to cache: its fetch
        and inflate then overlap serving the span before it. Asked for by the FUSE frontend:
        for the span after a read in the same file, and a few spans ahead of a sequential
        reader. What is queued or filling ahead stays within a quarter of the cache's bound:
        False if span ``i`` did not fit in that now (asking again later may), else True."""
        if not 0 <= i < len(self.spans) or self._closing or self._untrusted is not None:
            return True
        s = self.spans[i]
        size = s.uend - s.ustart
        if not 0 < size <= self.cache.max_span:
            return True
        with self._filler_lock:
            if i in self._ahead or i in self._fills:
                return True
            # what is being read ahead stays within a quarter of the cache: it must not
            # evict the spans the reader is still on
            if self._ahead and self._ahead_bytes + size > self.cache.limit // 4:
                return False
            self._ahead.add(i)
            self._ahead_bytes += size
            self.stats.add(spans_read_ahead=1)
            self._workers().submit((1, i), partial(self._fill_ahead, i))
        return True

    def _fill_ahead(self, i: int) -> None:
        try:
            if not self._closing and i not in self._fills and not os.path.exists(self._path(i)):
                self.resolve(i)
        except Exception as e:  # noqa: BLE001 - a reader that needs the span gets the error
            log.debug("reading span %d of %s ahead failed: %s", i, self.digest, e)
        finally:
            with self._filler_lock:
                self._ahead.discard(i)
                self._ahead_bytes -= self.spans[i].uend - self.spans[i].ustart
            hook = self.on_ahead_done
            if hook is not None:
                hook()
            self.stats.add(spans_read_ahead_done=1)  # (after the hook: the frontend knows)

    def fills_in_place(self, i: int) -> bool:
        """Whether :meth:`fill_to` can ever take span ``i`` (a gzip layer's span no bigger
        than the cache takes); if not, only :meth:`read` serves it."""
        size = self.spans[i].uend - self.spans[i].ustart
        return bool(self.gzip) and 0 < size <= self.cache.max_span

    def fill_to(self, i: int, need: int) -> bool:
        """For the FUSE frontend, which then replies with the bytes itself (from the span's
        temp file or cache file, with no copy through Python): makes span ``i``'s first
        ``need`` bytes final in its temp file, or finds the span whole in the cache, as a read
        of them would (starting its fetch and inflate, or continuing the one under way).
        False if the frontend cannot serve the span that way (too big to cache, a tar
        layer's, the cache could not take it): :meth:`read` it then. A failure is the
        SpanError a read would raise."""
        s = self.spans[i]
        if not (0 < need <= s.uend - s.ustart and self.fills_in_place(i)):
            return False
        self._check_trusted()
        path = self._path(i)
        for _ in range(3):  # a fill may be committed (and evicted) under us
            fill = self._fill_or_cached(i, path, 0, 0)
            if not isinstance(fill, _Fill):
                return True  # whole in the cache
            with fill.lock:
                if fill.fd < 0 and fill.state == "filling":
                    return False  # kept for reads, not cached
            if self._serve(fill, 0, need, read=False) is not None:
                return True
        raise SpanError(f"layer {self.digest} span {i}: evicted while being read, three times")

    def _fill_or_cached(self, i: int, path: str, rel: int, length: int) -> _Fill | bytes:
        """Bytes [rel, rel+length) of span ``i`` if it is whole in the cache, else its fill
        (started here if none is under way)."""
        size = self.spans[i].uend - self.spans[i].ustart
        data = self.cache.read(path, rel, length, size)
        if data is None:
            with self._locks[i]:  # one fetch per span, however many readers want it
                fill = self._fills.get(i)
                if fill is not None:
                    return fill
                data = self.cache.read(path, rel, length, size)
                if data is None:
                    self.stats.add(cache_misses=1)
                    return self._start(i, path)
        self.stats.add(cache_hits=1)
        self._cached(i, path)
        return data

    def _span_slice(self, i: int, rel: int, length: int) -> bytes:
        """Bytes [rel, rel+length) of span ``i``: from the cache, else from the span's one
        inflate (started here if none is under way: fetch and verify once, then inflate only
        as far as this read needs; the rest is filled into the cache in the background)."""
        path = self._path(i)
        for _ in range(3):  # a fill may be committed (and evicted) under us
            fill = self._fill_or_cached(i, path, rel, length)
            if not isinstance(fill, _Fill):
                return fill
            data = self._serve(fill, rel, length)
            if data is not None:
                return data
        raise SpanError(f"layer {self.digest} span {i}: evicted while being read, three times")

    def _start(self, i: int, path: str) -> _Fill:
        """(Under the span lock.) Fetches span i and sets up its fill."""
        s = self.spans[i]
        size = s.uend - s.ustart
        comp = self._held.pop(i, None)  # fetched ahead (prefetch), already verified
        if comp is None:
            comp = self._fetch(i)
        if not self.gzip:  # a tar span is its own uncompressed bytes
            fill = _Fill(i, comp, None, size)
            fill.done = size
            fill.recent = [comp]
            if size <= self.cache.max_span:
                self.cache.put(path, comp)
                self._cached(i, path)
            self._keep(fill)
            return fill
        self._check_previous(i)
        self._check_trusted()
        try:
            inf = _core.SpanInflater(self.ztoc.checkpoints, i, comp, s.uend)
        except ValueError as e:
            raise self._fail_msg(i, f"cannot inflate: {e}") from None
        fill = _Fill(i, comp, inf, size)
        got = self.cache.open_temp(path, size)
        if got is None:
            self._keep(fill)
        else:
            fill.fd, fill.tmp = got
            self._fills[i] = fill
        return fill

    def _keep(self, fill: _Fill) -> None:
        """Keeps an uncacheable span's fill for the next reads, a few per layer."""
        self._fills[fill.i] = fill
        self._uncached[fill.i] = None
        self._uncached.move_to_end(fill.i)
        while len(self._uncached) > UNCACHED_FILLS:
            old, _ = self._uncached.popitem(last=False)
            self._fills.pop(old, None)

    def _fail_msg(self, i: int, what: str) -> SpanError:
        msg = f"layer {self.digest} span {i}: {what}"
        self.stats.error(msg)
        log.error("%s", msg)
        return SpanError(msg, logged=True)

    def _serve(self, fill: _Fill, rel: int, length: int, read: bool = True) -> bytes | None:
        """The bytes from the fill (waiting for, or else advancing, its inflate as far as
        needed), or None once it has been committed to the cache (read them there). Not
        ``read``: b"" once they are in the temp file (the frontend reads them there)."""
        need = rel + length
        while True:
            with fill.lock:
                while True:
                    if fill.state == "failed":
                        assert fill.error is not None
                        raise fill.error
                    if fill.state == "committed":
                        return None
                    if fill.fd < 0:
                        return self._serve_uncached(fill, rel, length) if read else None
                    if fill.done >= need:
                        return self._pread_fill(fill, rel, length) if read else b""
                    if not fill.busy:
                        break
                    fill.cond.wait()  # another thread's inflate is on its way there
                fill.busy = True
            self._inflate(fill, min(fill.size, max(need, fill.done + READ_AHEAD)))

    def _pread_fill(self, fill: _Fill, rel: int, length: int) -> bytes:
        """(Under the fill lock.) Inflated bytes of the span's temp file."""
        data = os.pread(fill.fd, length, rel)
        if len(data) != length:
            self._fail(fill, self._fail_msg(fill.i, f"short read of the span being cached "
                                                    f"({len(data)} of {length} at {rel})"))
            assert fill.error is not None
            raise fill.error
        return data

    def _serve_uncached(self, fill: _Fill, rel: int, length: int) -> bytes:
        """(Under the fill lock.) A span too big to cache: inflate on, from where the last
        read left off; only a read before the kept bytes inflates from the checkpoint again."""
        need = rel + length
        if rel < fill.recent_start:  # behind what is kept: inflate from the checkpoint again
            s = self.spans[fill.i]
            fill.inf = _core.SpanInflater(self.ztoc.checkpoints, fill.i, fill.comp, s.uend)
            fill.done, fill.recent, fill.recent_start = 0, [], 0
        if need > fill.done:
            assert fill.inf is not None
            before = fill.inf.inflated
            try:
                if rel - fill.done > RECENT:  # far ahead: drop the bytes in between
                    fill.inf.skip(rel - fill.done)
                    fill.done, fill.recent, fill.recent_start = rel, [], rel
                # (a short gap is kept: FUSE threads hand over readahead out of order)
                fill.recent.append(fill.inf.read(need - fill.done))
            except (ValueError, OSError) as e:
                self._fail(fill, self._fail_msg(fill.i, f"cannot inflate: {e}"))
                assert fill.error is not None
                raise fill.error from None
            fill.done = need
            self._count(fill, fill.inf.inflated - before)
            if fill.done == fill.size:
                self._chain(fill)
        data = _slice_chunks(fill.recent, fill.recent_start, rel, need)
        while len(fill.recent) > 1 and fill.done - fill.recent_start - len(fill.recent[0]) \
                >= max(RECENT, length):
            fill.recent_start += len(fill.recent.pop(0))
        return data

    def _count(self, fill: _Fill, inflated: int) -> None:
        reached = self._reached.get(fill.i, 0)
        self._reached[fill.i] = max(reached, fill.done)
        self.stats.add(bytes_inflated=inflated, span_bytes_inflated=max(0, fill.done - reached))

    def _chain(self, fill: _Fill) -> None:
        assert fill.inf is not None
        try:
            fill.inf.check_chain()
        except ValueError as e:
            self._distrust(str(e))
            self._fail(fill, SpanError(self._untrusted or str(e)))
            assert fill.error is not None
            raise fill.error from None

    def _fail(self, fill: _Fill, err: SpanError) -> None:
        """(Under the fill lock.) The fill is over: later readers get ``err``. The temp file
        goes now, or when the thread inflating into it is done with its step."""
        fill.state, fill.error = "failed", err
        fill.cond.notify_all()
        self._filling(fill.i, "", 0)
        if fill.fd >= 0 and not fill.busy:
            self.cache.abort(fill.fd, fill.tmp, fill.size)
            fill.fd = -1
        with self._locks[fill.i]:
            if self._fills.get(fill.i) is fill:
                del self._fills[fill.i]
            self._uncached.pop(fill.i, None)

    def _inflate(self, fill: _Fill, target: int) -> None:
        """(By the fill's owner: ``busy`` set, the lock not held.) Inflates the span into its
        temp file up to ``target``, a step at a time, waking the readers of what is there
        after each; once whole, checks the window chain and moves the file into the cache.
        Stops at unmount. Leaves the rest to a background completion."""
        assert fill.inf is not None
        while True:
            start = fill.done  # only the owner moves it
            stop = min(target, start + FILL_STEP)
            err: SpanError | None = None
            try:
                if self._closing:
                    raise SpanError(f"layer {self.digest}: unmounted")
                fill.inf.write_to(fill.fd, start, stop - start)
            except SpanError as e:
                err = e
            except (ValueError, OSError) as e:
                err = self._fail_msg(fill.i, f"cannot inflate: {e}")
            with fill.lock:
                if err is None and fill.state == "filling":
                    fill.done = stop
                    self._count(fill, stop - start)
                    if stop == fill.size:
                        with contextlib.suppress(SpanError):  # _chain has failed the fill
                            self._finish(fill)
                    else:
                        self._filling(fill.i, fill.tmp, stop)
                elif err is not None and fill.state == "filling":
                    self._fail(fill, err)
                over = fill.state != "filling" or stop >= target
                if over:
                    fill.busy = False
                    if fill.state == "failed" and fill.fd >= 0:
                        self.cache.abort(fill.fd, fill.tmp, fill.size)
                        fill.fd = -1
                    elif fill.state == "filling" and not fill.scheduled:
                        fill.scheduled = True
                        self._fill_later(fill)
                fill.cond.notify_all()
                if fill.state == "failed":
                    assert fill.error is not None
                    raise fill.error
            if over:
                return

    def _finish(self, fill: _Fill) -> None:
        """(Under the fill lock, by its owner, the span inflated whole.) Checks the window
        chain and moves the file into the cache."""
        self._chain(fill)
        path = self._path(fill.i)
        self.cache.commit(fill.fd, fill.tmp, path, fill.size)
        fill.fd, fill.state, fill.inf, fill.comp = -1, "committed", None, b""
        with self._locks[fill.i]:
            if self._fills.get(fill.i) is fill:
                del self._fills[fill.i]
        self._cached(fill.i, path)

    def _fill_later(self, fill: _Fill) -> None:
        with self._filler_lock:
            self._workers().submit((0, fill.i), partial(self._complete, fill))

    def _workers(self) -> _Workers:
        """(Under the filler lock.)"""
        if self._filler is None:
            self._filler = _Workers(FILLERS, "soci-span-fill")
        return self._filler

    def _complete(self, fill: _Fill) -> None:
        """Inflates the rest of a span into the cache (readers of the span wait for it, or
        read what is there, between its steps)."""
        with fill.lock:
            while fill.busy and fill.state == "filling":
                fill.cond.wait()
            if fill.state != "filling" or self._closing:
                return
            fill.busy = True
        try:
            self._inflate(fill, fill.size)
        except SpanError as e:
            log.warning("caching span %d of %s failed: %s", fill.i, self.digest, e)

    def fetch_only(self, i: int) -> bool:
        """Fetches and verifies span ``i``'s compressed bytes and keeps them for its fill
        (:meth:`resolve` next): a prefetch then has the next spans' transfers under way
        while the ones fetched are inflated, instead of each thread leaving the link idle
        while it inflates. False if there is nothing to fetch (cached, filling, too big to
        cache). The caller bounds how many are held."""
        s = self.spans[i]
        if not 0 < s.uend - s.ustart <= self.cache.max_span or self._closing:
            return False
        self._check_trusted()
        with self._locks[i]:
            if i in self._fills or i in self._held or os.path.exists(self._path(i)):
                return False
            comp = self._fetch(i)
            if self._closing:
                return False
            self._held[i] = comp
            return True

    def resolve(self, i: int) -> None:
        """Fetch, verify, inflate and cache span ``i`` unless it is cached (prefetch and
        background fetch). A span too big to cache is left for the reads that need it."""
        s = self.spans[i]
        size = s.uend - s.ustart
        if size == 0 or size > self.cache.max_span or self._closing:  # unmounted: fetch no more
            return
        self._check_trusted()
        self._span_slice(i, size - 1, 1)  # fills it to the end and commits it

    def _fetch(self, i: int) -> bytes:
        """The compressed bytes of span ``i``, checked against its digest."""
        s = self.spans[i]
        if s.cend - s.cstart > MAX_COMPRESSED_SPAN:
            raise self._fail_msg(i, f"its {s.cend - s.cstart} compressed bytes are more than "
                                    f"a span may hold in memory ({MAX_COMPRESSED_SPAN})")
        try:
            comp = self.reader.read_range(s.cstart, s.cend)
        except Exception as e:  # noqa: BLE001 - any fetch failure (OSError, RegistryError) is an EIO
            raise self._fail_msg(i, f"fetching bytes [{s.cstart}, {s.cend}) failed: "
                                    f"{e or type(e).__name__}") from None
        with self.stats.lock:
            self.stats.bytes_fetched += len(comp)
            if i not in self._fetched:
                self._fetched.add(i)
                self.stats.spans_fetched += 1
        got = "sha256:" + hashlib.sha256(comp).hexdigest()
        want = self.ztoc.span_digests[i]
        if got != want:
            raise self._fail_msg(i, f"digest mismatch (bytes [{s.cstart}, {s.cend}) hash to "
                                    f"{got}, the zTOC says {want}): refusing to serve them")
        return comp

    def drain(self) -> None:
        """Waits until every span whose fill is under way is in the cache (or failed)."""
        with self._filler_lock:
            filler, self._filler = self._filler, None
        if filler is not None:
            filler.shutdown(cancel=False)

    def close(self) -> None:
        """Stops the background fills (unmount does not wait for spans nobody reads any
        more: their temp files and reservations are dropped) and closes the blob."""
        self._closing = True
        with self._filler_lock:
            filler, self._filler = self._filler, None
        if filler is not None:
            filler.shutdown(cancel=True)
        self._held.clear()
        for fill in list(self._fills.values()):
            with fill.lock:
                while fill.busy:  # its owner stops after the step it is in
                    fill.cond.wait()
                self._filling(fill.i, "", 0)
                if fill.fd >= 0:
                    self.cache.abort(fill.fd, fill.tmp, fill.size)
                    fill.fd, fill.state = -1, "failed"
                    fill.error = SpanError(f"layer {self.digest}: unmounted")
        self._fills.clear()
        self.reader.close()


@dataclass
class _SparseMap:
    data_offset: int  # where the member's stored data starts in the tar stream
    starts: list[int]  # each data region's offset in the file
    sizes: list[int]
    stored: list[int]  # its offset within the stored data


class _LayerStream(io.RawIOBase):
    """A local layer's uncompressed tar stream as a seekable file (for tarfile)."""

    def __init__(self, layer: LocalLayer) -> None:
        self._layer, self._pos = layer, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._layer.ix.uncompressed_size}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, b: Any) -> int:
        data = self._layer.read(self._pos, len(b))
        b[:len(data)] = data
        self._pos += len(data)
        return len(data)


class LocalLayer:
    """A layer without a zTOC, served from a complete, digest-checked local copy."""

    def __init__(self, digest: str, path: str, ix: LayerIndex, stats: LayerStats,
                 scratch: str | os.PathLike[str]) -> None:
        self.digest = digest
        self.path = path
        self.ix = ix
        self.stats = stats
        self.scratch = Path(scratch)
        self._sparse_lock = threading.Lock()
        self._sparse: dict[int, _SparseMap] = {}

    def read(self, offset: int, length: int) -> bytes:
        end = min(offset + length, self.ix.uncompressed_size)
        if offset >= end:
            return b""
        try:
            return extract(self.path, self.ix.checkpoints, offset, end - offset)
        except (OSError, ValueError) as e:
            msg = f"layer {self.digest}: reading [{offset}, {end}) failed: {e}"
            self.stats.error(msg)
            log.error("%s", msg)
            raise SpanError(msg) from None

    def read_sparse(self, header_offset: int, size: int, offset: int, length: int) -> bytes:
        """A sparse member's bytes, served from its sparse map: data regions are read from
        the layer, holes are zeros made on the fly (nothing is expanded to disk)."""
        with self._sparse_lock:
            smap = self._sparse.get(header_offset)
            if smap is None:
                smap = self._sparse[header_offset] = self._sparse_map(header_offset, size)
        end = min(offset + length, size)
        out = bytearray(max(end - offset, 0))
        k = max(0, bisect.bisect_right(smap.starts, offset) - 1)
        while k < len(smap.starts) and smap.starts[k] < end:
            lo, hi = max(offset, smap.starts[k]), min(end, smap.starts[k] + smap.sizes[k])
            if lo < hi:
                out[lo - offset:hi - offset] = self.read(
                    smap.data_offset + smap.stored[k] + lo - smap.starts[k], hi - lo)
            k += 1
        return bytes(out)

    def _sparse_map(self, header_offset: int, size: int) -> _SparseMap:
        """The member's map (old GNU or PAX 0.0/0.1/1.0), read by tarfile from the member's
        headers through this layer's random access, checked to lie inside the file."""
        raw = _LayerStream(self)
        try:
            raw.seek(header_offset)
            with tarfile.open(fileobj=io.BufferedReader(raw, 1 << 16), mode="r:") as tf:
                m = tf.next()
            if m is None or m.size != size or m.sparse is None:
                raise FormatError(f"no sparse member at offset {header_offset}")
            smap = _SparseMap(m.offset_data, [], [], [])
            stored = pos = 0
            regions: list[Any] = list(m.sparse)  # (offset, size) pairs; typeshed says ints
            for region in regions:
                start, n = int(region[0]), int(region[1])
                if n == 0:  # unused header slots and the end marker carry no data
                    continue
                if start < pos or n < 0 or start + n > size:
                    raise FormatError(f"sparse map region ({start}, {n}) overlaps, goes "
                                      f"backwards or runs past the file's size {size}")
                smap.starts.append(start)
                smap.sizes.append(n)
                smap.stored.append(stored)
                stored += n
                pos = start + n
            if m.offset_data + stored > self.ix.uncompressed_size:
                raise FormatError("the sparse data runs past the end of the layer")
        except (OSError, tarfile.TarError, ValueError) as e:
            msg = f"layer {self.digest}: cannot read the sparse file at {header_offset}: {e}"
            self.stats.error(msg)
            log.error("%s", msg)
            raise SpanError(msg) from None
        return smap

    def close(self) -> None:
        return None


def fetch_blob(opener: Callable[[], BinaryIO], digest: str, dest: Path) -> None:
    """Copies a blob to ``dest`` atomically, checking its sha256 on the way."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(6)}")
    h = hashlib.sha256()
    try:
        with opener() as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 20):
                h.update(chunk)
                dst.write(chunk)
        if "sha256:" + h.hexdigest() != digest:
            raise SpanError(f"layer {digest}: downloaded content hashes to "
                            f"sha256:{h.hexdigest()}")
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
