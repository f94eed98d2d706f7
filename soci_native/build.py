"""Building SOCI indexes: one zTOC per large layer (in parallel; the C core releases the GIL),
then prefetch artifacts and the index manifest, all kept in the local store."""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import BinaryIO

from soci_native import _core, index, ztoc
from soci_native.imageref import normalize
from soci_native.images import Descriptor, ImageSource, ResolvedImage, layer_compression
from soci_native.layer import DEFAULT_SPAN_SIZE, LayerIndex, index_layer, span_range
from soci_native.store import ArtifactRecord, Store

Progress = Callable[[Descriptor, int], None]
"""Called with a layer and how many more of its compressed bytes were indexed."""

_CHUNK = 4 << 20
# zTOCs up to this size are never refused for outgrowing their layer: a small layer's zTOC
# may well be larger than the layer, and costs nothing that matters. Nor are zTOCs at the
# default span size or above (a very compressible layer has a large zTOC; so be it).
_SMALL_ZTOC = 1 << 20


class BuildError(Exception):
    """An index that cannot be built (every layer skipped, a corrupt layer, ...)."""


@dataclass(frozen=True)
class BuildOptions:
    span_size: int = DEFAULT_SPAN_SIZE
    min_layer_size: int = index.DEFAULT_MIN_LAYER_SIZE
    force: bool = False
    optimizations: frozenset[str] = frozenset()
    prefetch_paths: tuple[str, ...] = ()
    jobs: int = 1
    build_tool: str = index.BUILD_TOOL


@dataclass
class LayerResult:
    layer: Descriptor
    status: str  # "built" | "reused" | "skipped"
    reason: str = ""
    ztoc_digest: str | None = None
    ztoc_size: int = 0
    disable_xattrs: bool = False
    files: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (offset, size)
    checkpoints: bytes = b""
    compressed_size: int = 0


@dataclass
class IndexResult:
    image: ResolvedImage
    version: int
    digest: str
    size: int
    manifest: bytes
    layers: list[LayerResult]
    prefetch_digests: list[str]
    warnings: list[str] = field(default_factory=list)  # e.g. prefetch paths found nowhere


def _mode(media_type: str) -> str:
    # Docker's plain rootfs.diff.tar ("unknown") is sometimes gzip in practice: sniff it
    return {"gzip": "gzip", "uncompressed": "tar"}.get(layer_compression(media_type), "auto")


def _skip_reason(layer: Descriptor, opts: BuildOptions) -> str | None:
    if layer.size < opts.min_layer_size:
        return f"size {layer.size} is less than --min-layer-size {opts.min_layer_size}"
    kind = layer_compression(layer.media_type)
    if kind == "zstd":
        return "zstd-compressed: no zTOC format exists for zstd (pulled whole at runtime)"
    if kind not in ("gzip", "uncompressed", "unknown"):
        return f"unsupported layer media type {layer.media_type}"
    return None


def _check_span_size(layer: Descriptor, opts: BuildOptions) -> None:
    """Refuses before reading a gzip layer whose zTOC must outgrow it: every span keeps a
    32 KiB inflate window, and a layer has at least size/span_size spans."""
    if opts.force or layer_compression(layer.media_type) != "gzip" \
            or opts.span_size >= DEFAULT_SPAN_SIZE:  # only a lowered span size is refused
        return
    spans = -(-layer.size // opts.span_size)
    if spans * _core.WINDOW_SIZE > max(layer.size, _SMALL_ZTOC):
        raise BuildError(f"layer {layer.digest}: --span-size {opts.span_size} would make its "
                         f"zTOC larger than the layer ({layer.size} bytes; each span keeps a "
                         "32 KiB window): use a larger --span-size, or --force")


def _index_blob(src: ImageSource, layer: Descriptor, opts: BuildOptions,
                progress: Progress | None, hash_thread: bool,
                spare: _core.SpareCores | None) -> LayerIndex:
    entries = bool(opts.prefetch_paths)  # only prefetch needs the file list in Python
    path = src.blob_path(layer.digest) if progress is None else None
    if path is not None:  # read in C, no per-chunk round trip
        _check_size(layer, os.stat(path).st_size)  # before reading it: it may be huge
        return index_layer(path, opts.span_size, mode=_mode(layer.media_type),
                           build_tool=opts.build_tool, entries=entries,
                           hash_thread=hash_thread, spare_cores=spare)
    with src.open_blob(layer) as f:  # the Descriptor: open_blob checks its size
        reader: BinaryIO | _Counting = f if progress is None else _Counting(f, layer, progress)
        return index_layer(reader, opts.span_size, mode=_mode(layer.media_type),
                           chunk_size=_CHUNK, build_tool=opts.build_tool, entries=entries)


def _check_size(layer: Descriptor, size: int) -> None:
    if size != layer.size:
        raise BuildError(f"layer {layer.digest}: the blob has {size} bytes, its descriptor "
                         f"says {layer.size}")


class _Counting:
    """A file object that reports how far a layer has been read."""

    def __init__(self, f: BinaryIO, layer: Descriptor, progress: Progress) -> None:
        self.f, self.layer, self.progress = f, layer, progress

    def readinto(self, buf: memoryview) -> int:
        n = self.f.readinto(buf)  # type: ignore[attr-defined]
        if n:
            self.progress(self.layer, n)
        return int(n or 0)

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.progress(self.layer, len(data))
        return data


def _files(entries: Sequence[tuple[str, int, int]]) -> dict[str, tuple[int, int]]:
    return {name: (off, size) for name, off, size in entries}


def usable_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else os.cpu_count() or 1


def hash_on_thread(jobs: int, cores: int | None = None) -> bool:
    """Whether a layer's span hashing gets a thread of its own from the start: while a core
    is left over by ``jobs`` indexers at once. With every core inflating, a hasher thread
    just shares one with an inflater, and the hand-offs cost more CPU than hashing inline
    (measured: 3-5% of a two-layer --jobs 2 create's CPU). Such a layer still moves its
    hashing to a thread once a job runs out of layers and gives its core up (SpareCores)."""
    if cores is None:
        cores = usable_cores()
    return cores > 1 and jobs < cores


def build_layer(src: ImageSource, store: Store, layer: Descriptor, opts: BuildOptions,
                progress: Progress | None = None, hash_thread: bool = True,
                spare: _core.SpareCores | None = None) -> LayerResult:
    reason = _skip_reason(layer, opts)
    if reason:
        return LayerResult(layer, "skipped", reason)
    if not opts.force:
        rec = store.find_ztoc(layer.digest, opts.span_size)
        if rec is not None:
            if progress:
                progress(layer, layer.size)
            reused = LayerResult(layer, "reused", ztoc_digest=rec.digest, ztoc_size=rec.size)
            if "xattr" in opts.optimizations or opts.prefetch_paths:  # they need the TOC
                z = ztoc.from_bytes(store.read_blob(rec.digest))
                reused.disable_xattrs = index.should_disable_xattrs(
                    (f.name, f.xattrs) for f in z.files)
                reused.files = _files([(f.name, f.uncompressed_offset, f.uncompressed_size)
                                       for f in z.files])
                reused.checkpoints = z.checkpoints
                reused.compressed_size = z.compressed_archive_size
            return reused
    _check_span_size(layer, opts)
    try:
        ix = _index_blob(src, layer, opts, progress, hash_thread, spare)
    except ValueError as e:
        raise BuildError(f"layer {layer.digest}: {e}") from None
    _check_size(layer, ix.compressed_size)  # what was read, whatever the source claimed
    if ix.blob_digest != layer.digest:
        raise BuildError(f"layer {layer.digest}: content does not match its digest "
                         f"(read {ix.compressed_size} bytes with digest {ix.blob_digest})")
    if ix.ztoc is None:
        return LayerResult(layer, "skipped", ix.ztoc_error or "no zTOC")
    if (len(ix.checkpoints) > max(layer.size, _SMALL_ZTOC) and not opts.force
            and opts.span_size < DEFAULT_SPAN_SIZE):
        # the windows alone outgrow the layer: the span size, not the file list, is at fault
        raise BuildError(f"layer {layer.digest}: its zTOC at --span-size {opts.span_size} "
                         f"would be {len(ix.ztoc)} bytes, larger than the layer "
                         f"({layer.size}): use a larger --span-size, or --force to keep it")
    dgst, size = store.put_blob(ix.ztoc)
    store.add_artifact(ArtifactRecord(dgst, size, "soci_layer", index.ZTOC_MEDIA_TYPE,
                                      original_digest=layer.digest, span_size=opts.span_size,
                                      image_ref=normalize(src.ref)))
    return LayerResult(
        layer, "built", ztoc_digest=dgst, ztoc_size=size,
        disable_xattrs=ix.xattr_free,
        files=_files([(e.name, e.offset, e.size) for e in ix.entries]),
        checkpoints=ix.checkpoints, compressed_size=ix.compressed_size)


def build_layers(src: ImageSource, store: Store, layers: Sequence[Descriptor],
                 opts: BuildOptions, progress: Progress | None = None,
                 on_layer: Callable[[Descriptor], None] | None = None) -> list[LayerResult]:
    """zTOCs for each distinct layer, ``opts.jobs`` at a time (the largest first), results
    in layer order.

    The layers run on worker threads even with one job, so the calling thread stays free to
    take a KeyboardInterrupt: then queued layers are dropped and running ones stop at their
    next buffer (the C indexer's stop flag). zTOCs already stored stay, for a rerun to reuse.
    """
    lock = threading.Lock()
    safe: Progress | None = None
    if progress is not None:
        report = progress

        def safe(layer: Descriptor, n: int) -> None:
            with lock:
                report(layer, n)
    workers = max(1, min(opts.jobs, len(layers)))
    pool = ThreadPoolExecutor(workers)
    cores = usable_cores()
    threaded = hash_on_thread(workers, cores)
    # A job that finds no layer left gives its core to the layers still running: those
    # hashing inline move their hashing to a thread (the last layer's tail runs on both).
    # Only a core no other job inflates on is given: with more jobs than cores (--jobs
    # counts every CPU, the affinity may allow fewer) the first ones to finish free none.
    # A hasher gives its core back itself when its layer ends.
    spare = _core.SpareCores()
    queued, running = len(layers), 0

    def run(i: int) -> LayerResult:
        nonlocal queued, running
        with lock:
            queued -= 1
            running += 1
        try:
            return build_layer(src, store, layers[i], opts, safe, threaded, spare)
        finally:
            with lock:
                running -= 1
                if queued == 0 and running < cores:
                    spare.give()
    try:
        # Largest first: a big layer started last would run alone at the end while the other
        # jobs' cores idle (with equal layers the order changes nothing).
        order = sorted(range(len(layers)), key=lambda i: -layers[i].size)
        started = {i: pool.submit(run, i) for i in order}
        futures = [started[i] for i in range(len(layers))]
        if on_layer is not None:
            done = on_layer

            def finished(layer: Descriptor, f: Future[LayerResult]) -> None:
                if not f.cancelled() and f.exception() is None:
                    done(layer)
            for fut, layer in zip(futures, layers, strict=True):
                fut.add_done_callback(functools.partial(finished, layer))
        return [f.result() for f in futures]
    except BaseException:
        stop_indexing()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)
        stop_indexing(False)


def stop_indexing(on: bool = True) -> None:
    """Make indexing in every thread stop at its next buffer with InterruptedError (``on``),
    or allow it again."""
    _core.request_stop(on)


def _prefetch(results: Sequence[LayerResult], paths: Sequence[str]
              ) -> tuple[dict[str, list[tuple[int, int]]], list[str]]:
    """Span ranges per layer digest for the prefetch paths (first match from the top layer,
    names compared cleaned, as the snapshotter does: "./usr/bin/x" is "usr/bin/x"), and the
    paths found in no layer."""
    spans: dict[str, list[tuple[int, int]]] = {}
    missing: list[str] = []
    cleaned = [{index.clean_prefetch_path(n): v for n, v in r.files.items()}
               if r.ztoc_digest is not None else {} for r in results]
    for raw in paths:
        path = index.clean_prefetch_path(raw)
        for r, files in zip(reversed(results), reversed(cleaned), strict=True):
            if path not in files:
                continue
            off, size = files[path]
            first = span_range(r.checkpoints, off, 0, r.compressed_size)[0]
            last = span_range(r.checkpoints, off + size, 0, r.compressed_size)[0]
            spans.setdefault(r.layer.digest, []).append((first, max(first, last)))
            break
        else:
            missing.append(raw)
    return spans, missing


def build_index(src: ImageSource, store: Store, image: ResolvedImage, opts: BuildOptions,
                version: int = 1, image_digest: str | None = None,
                progress: Progress | None = None,
                on_layer: Callable[[Descriptor], None] | None = None) -> IndexResult:
    """Builds (or reuses) the zTOCs of one platform image and writes its SOCI index.
    ``progress(layer, n)``: n more compressed bytes of a layer were read (asking for it makes
    layers stream through Python); ``on_layer(layer)``: a layer is done."""
    results = build_layers(src, store, image.layers, opts, progress, on_layer)
    xattr_opt = "xattr" in opts.optimizations
    blobs = [index.ztoc_descriptor(r.ztoc_digest, r.ztoc_size, r.layer.media_type,
                                   r.layer.digest, opts.span_size,
                                   xattr_opt and r.disable_xattrs)
             for r in results if r.ztoc_digest is not None]
    prefetch_digests = []
    by_layer, missing = _prefetch(results, opts.prefetch_paths) if opts.prefetch_paths \
        else ({}, [])
    for r in results:  # prefetch artifacts follow the zTOCs, in layer order
        if r.layer.digest in by_layer:
            raw = index.prefetch_artifact(by_layer[r.layer.digest])
            desc = index.prefetch_descriptor(raw, r.layer.digest)
            store.put_blob(raw)
            store.add_artifact(ArtifactRecord(desc["digest"], len(raw), "soci_prefetch",
                                              index.PREFETCH_MEDIA_TYPE,
                                              original_digest=r.layer.digest))
            blobs.append(desc)
            prefetch_digests.append(desc["digest"])
    if not any(r.ztoc_digest for r in results):
        raise BuildError(f"no zTOCs created for {image.platform}: every layer was skipped ("
                         + "; ".join(f"{r.layer.digest[:19]}: {r.reason}" for r in results)
                         + ")")
    subject = {"mediaType": image.manifest.media_type, "digest": image.manifest.digest,
               "size": image.manifest.size} if version == 1 else None
    manifest = index.index_manifest(version, blobs, subject, opts.build_tool)
    rec = store.add_index(manifest, image_ref=image.source_ref,
                          image_digest=image_digest or image.manifest.digest,
                          original_digest=image.manifest.digest, platform=str(image.platform))
    warnings = [f"{image.platform}: prefetch path {p} is in no layer with a zTOC"
                for p in missing]
    return IndexResult(image, version, rec.digest, rec.size, manifest, results, prefetch_digests,
                       warnings)
