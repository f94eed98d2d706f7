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
  (a mismatch is an EIO and a log line, never wrong bytes), inflated whole from its
  checkpoint and written to the :class:`SpanCache`; plain tar layers' spans are the fetched
  bytes themselves.
* :class:`LocalLayer` serves a layer without a zTOC from a complete local copy, indexed in
  memory (checkpoints every 1 MiB, so a read inflates at most that much before its data).
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import logging
import os
import secrets
import tarfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from soci_native import tarzinfo
from soci_native.layer import FormatError, LayerIndex, checkpoint_table, extract, extract_span
from soci_native.ztoc import Ztoc

log = logging.getLogger("soci_native.mount")

TEMP_PREFIX = ".tmp-"


class SpanError(OSError):
    """A span that cannot be served (fetch failed, digest mismatch, corrupt data): EIO."""

    def __init__(self, message: str) -> None:
        super().__init__(5, message)  # EIO


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
        out = bytearray()
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
            }


# ------------------------------------------------------------------------------- span cache

class SpanCache:
    """Uncompressed spans as files ``<root>/<layer hex>/<start>+<length>``, written
    atomically (temp file + rename), evicted least-recently-used first once their total
    passes ``limit`` bytes. Names depend only on the layer and the uncompressed range, so any
    zTOC of a layer finds what another one cached. Several mounts may share a root; each
    accounts only for the files it has seen (existing ones are adopted at start, oldest
    modification first)."""

    def __init__(self, root: str | os.PathLike[str], limit: int) -> None:
        self.root = Path(root)
        self.limit = limit
        self._lru: OrderedDict[str, int] = OrderedDict()
        self._total = 0
        self._lock = threading.Lock()
        self.root.mkdir(parents=True, exist_ok=True)
        self._adopt()

    def _adopt(self) -> None:
        found: list[tuple[float, str, int]] = []
        now = time.time()
        for sub in self.root.iterdir():
            if not sub.is_dir():
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
                if f.is_file() and "+" in f.name:
                    found.append((st.st_mtime, str(f), st.st_size))
        for _, path, size in sorted(found):
            self._lru[path] = size
            self._total += size
        with self._lock:
            self._evict()

    @property
    def total(self) -> int:
        return self._total

    def path(self, layer_digest: str, start: int, length: int) -> str:
        return str(self.root / layer_digest.split(":", 1)[-1] / f"{start}+{length}")

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
                self._lru[path] = expect_size
                self._total += expect_size
        return data

    def put(self, path: str, data: bytes) -> None:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.parent / f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(6)}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, p)
        except OSError as e:  # a full or read-only cache disk only costs refetches
            with contextlib.suppress(OSError):
                tmp.unlink()
            log.warning("cannot cache span %s: %s", path, e)
            return
        with self._lock:
            old = self._lru.pop(path, None)
            if old is not None:
                self._total -= old
            self._lru[path] = len(data)
            self._total += len(data)
            self._evict()

    def _evict(self) -> None:
        while self._total > self.limit and self._lru:
            path, size = self._lru.popitem(last=False)
            self._total -= size
            with contextlib.suppress(OSError):
                os.unlink(path)


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


class ZtocLayer:
    """A layer read lazily through its zTOC, span by span."""

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
        self._starts = [s.ustart for s in self.spans]
        self._locks = [threading.Lock() for _ in self.spans]
        self._fetched: set[int] = set()
        # Verified compressed spans whose full inflate (for the cache) is still running:
        # readers meanwhile inflate just their part from these bytes instead of re-fetching.
        self._pending: dict[int, bytes] = {}
        self._filler: ThreadPoolExecutor | None = None
        self._filler_lock = threading.Lock()
        stats.spans_total = len(self.spans)
        self.size = z.uncompressed_archive_size

    def read(self, offset: int, length: int) -> bytes:
        end = min(offset + length, self.size)
        if offset >= end:
            return b""
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

    def _span_slice(self, i: int, rel: int, length: int) -> bytes:
        """Bytes [rel, rel+length) of span ``i``. A miss fetches and verifies the span once,
        inflates only as far as this read needs, and leaves the whole span to be inflated
        and cached in the background."""
        s = self.spans[i]
        path = self.cache.path(self.digest, s.ustart, s.uend - s.ustart)
        data = self.cache.read(path, rel, length, s.uend - s.ustart)
        if data is not None:
            self.stats.add(cache_hits=1)
            return data
        with self._locks[i]:  # one fetch per span, however many readers want it
            data = self.cache.read(path, rel, length, s.uend - s.ustart)
            if data is not None:
                self.stats.add(cache_hits=1)
                return data
            comp = self._pending.get(i)
            if comp is None:
                self.stats.add(cache_misses=1)
                comp = self._fetch(i)
                if self.ztoc.compression_algorithm == "uncompressed":
                    self.cache.put(path, comp)  # a tar span is its own uncompressed bytes
                    return comp[rel:rel + length]
                self._pending[i] = comp
                self._fill_later(i, comp, path)
        return self._inflate(i, comp, rel, length)

    def _fill_later(self, i: int, comp: bytes, path: str) -> None:
        with self._filler_lock:
            if self._filler is None:
                self._filler = ThreadPoolExecutor(1, thread_name_prefix="soci-span-fill")
            self._filler.submit(self._fill, i, comp, path)

    def _fill(self, i: int, comp: bytes, path: str) -> None:
        s = self.spans[i]
        try:
            self.cache.put(path, self._inflate(i, comp, 0, s.uend - s.ustart))
        except (SpanError, OSError) as e:
            log.warning("caching span %d of %s failed: %s", i, self.digest, e)
        finally:
            with self._locks[i]:
                self._pending.pop(i, None)

    def _inflate(self, i: int, comp: bytes, rel: int, length: int) -> bytes:
        s = self.spans[i]
        if length == 0:
            return b""
        try:
            return extract_span(self.ztoc.checkpoints, i, comp, s.ustart + rel, length)
        except (FormatError, ValueError) as e:
            msg = f"layer {self.digest} span {i}: cannot inflate: {e}"
            self.stats.error(msg)
            log.error("%s", msg)
            raise SpanError(msg) from None

    def resolve(self, i: int) -> None:
        """Fetch, verify, inflate and cache span ``i`` unless it is cached (prefetch)."""
        s = self.spans[i]
        if s.uend > s.ustart:
            self._span_slice(i, 0, 0)

    def _fetch(self, i: int) -> bytes:
        """The compressed bytes of span ``i``, checked against its digest."""
        s = self.spans[i]
        try:
            comp = self.reader.read_range(s.cstart, s.cend)
        except OSError as e:
            msg = f"layer {self.digest} span {i}: fetching bytes [{s.cstart}, {s.cend}) " \
                  f"failed: {e}"
            self.stats.error(msg)
            log.error("%s", msg)
            raise SpanError(msg) from None
        with self.stats.lock:
            self.stats.bytes_fetched += len(comp)
            if i not in self._fetched:
                self._fetched.add(i)
                self.stats.spans_fetched += 1
        got = "sha256:" + hashlib.sha256(comp).hexdigest()
        want = self.ztoc.span_digests[i]
        if got != want:
            msg = f"layer {self.digest} span {i}: digest mismatch (bytes [{s.cstart}, " \
                  f"{s.cend}) hash to {got}, the zTOC says {want}): refusing to serve them"
            self.stats.error(msg)
            log.error("%s", msg)
            raise SpanError(msg)
        return comp

    def close(self) -> None:
        if self._filler is not None:
            self._filler.shutdown(wait=True)
        self.reader.close()


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
        self._sparse: dict[int, str] = {}

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
        """A sparse member's bytes (holes as zeros), expanded once with tarfile into the
        scratch directory."""
        with self._sparse_lock:
            path = self._sparse.get(header_offset)
            if path is None:
                path = self._expand_sparse(header_offset, size)
                self._sparse[header_offset] = path
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(length)

    def _expand_sparse(self, header_offset: int, size: int) -> str:
        self.scratch.mkdir(parents=True, exist_ok=True)
        out = self.scratch / f"sparse-{self.digest.split(':')[-1][:16]}-{header_offset}"
        try:
            with tarfile.open(self.path, "r:*") as tf:
                m = next((m for m in tf if m.offset == header_offset), None)
                src = tf.extractfile(m) if m is not None else None
                if m is None or src is None or m.size != size:
                    raise FormatError(f"no sparse member at offset {header_offset}")
                tmp = out.with_name(out.name + f"{TEMP_PREFIX}{secrets.token_hex(4)}")
                with src, open(tmp, "wb") as dst:
                    while chunk := src.read(1 << 20):
                        dst.write(chunk)
                os.replace(tmp, out)
        except (OSError, tarfile.TarError, ValueError) as e:
            msg = f"layer {self.digest}: cannot expand the sparse file at {header_offset}: {e}"
            self.stats.error(msg)
            log.error("%s", msg)
            raise SpanError(msg) from None
        return str(out)

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
