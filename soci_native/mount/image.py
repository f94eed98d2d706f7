"""Setting up a mount: find the image's SOCI index in the local store, load its zTOCs, make
one reader per layer and the merged tree, and (optionally) prefetch.

Index discovery, by the platform image's manifest digest: ``--index`` if given; else the
manifest's ``com.amazon.soci.index-digest`` annotation (a SOCI-enabled image made by
``convert``, index v2) when the store holds that index; else the newest stored index whose
``original_digest`` is the manifest (``create``, index v1).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from soci_native import ztoc as ztoc_mod
from soci_native.images import (
    Descriptor,
    ImageError,
    ImageSource,
    Platform,
    layer_compression,
    open_image,
    resolve,
)
from soci_native.index import (
    ANN_INDEX_DIGEST,
    ANN_LAYER_DIGEST,
    PREFETCH_MEDIA_TYPE,
    ZTOC_MEDIA_TYPE,
)
from soci_native.layer import FormatError, index_layer
from soci_native.mount.spans import (
    BlobReader,
    FileBlobReader,
    FileObjBlobReader,
    Layer,
    LayerStats,
    LocalLayer,
    SourceRangeReader,
    SpanCache,
    ZtocLayer,
    fetch_blob,
)
from soci_native.mount.tree import Entry, MountTree, TreeBuilder
from soci_native.store import Store, StoreError

log = logging.getLogger("soci_native.mount")

DEFAULT_CACHE_SIZE = 1 << 30
LOCAL_SPAN_SIZE = 1 << 20
PREFETCH_WORKERS = 4  # spans fetched at once by a prefetch
PREFETCH_FILLERS = 2  # and inflated at once
PREFETCH_HELD = 8  # fetched spans waiting for their inflate, at most
SCRATCH_PREFIX = ".mount-"


class MountError(Exception):
    """A mount that cannot be set up; the message says why and what to do."""


@dataclass
class MountOptions:
    image: str
    store_root: Path
    platform: str | None = None
    layer: str | None = None
    index: str | None = None
    cache_dir: Path | None = None  # default <store root>/cache/spans
    cache_size: int = DEFAULT_CACHE_SIZE
    prefetch: bool = False
    registry: RegistryOptions | None = None  # how to reach a registry image
    background_fetch: float = 0.0  # spans per second fetched behind the reads; 0: off
    # resolve the prefetch artifacts' spans in a thread and return at once (the snapshotter's
    # mounts: the layer goes live while they load); else before returning (`mount`)
    prefetch_in_background: bool = False


@dataclass
class MountedImage:
    ref: str
    platform: str
    manifest_digest: str
    index_digest: str
    layers: list[Layer]
    tree: MountTree
    cache: SpanCache
    scratch: Path
    source: ImageSource
    single_layer: bool = False
    mountpoint: str = ""
    prefetched_spans: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def start_background_fetch(self, rate: float) -> None:
        """Fetches every span of the lazy layers behind the reads, ``rate`` spans per second
        at most (the reference snapshotter's background fetcher does ~2/s), so a long-running
        container ends up with the whole image local without crowding out foreground reads."""
        lazy = [x for x in self.layers if isinstance(x, ZtocLayer)]
        if rate > 0 and lazy:
            fetcher = BackgroundFetcher(lazy, rate, self.cache)
            self.extra["_fetcher"] = fetcher
            fetcher.start()

    def stats(self) -> dict[str, Any]:
        layers = [layer.stats.to_json() for layer in self.layers]
        total = {k: sum(int(str(x[k])) for x in layers)
                 for k in ("size", "spans_total", "spans_fetched", "bytes_fetched",
                           "cache_hits", "cache_misses", "errors", "bytes_inflated",
                           "span_bytes_inflated")}
        return {"image": self.ref, "platform": self.platform, "manifest": self.manifest_digest,
                "soci_index": self.index_digest, "mountpoint": self.mountpoint,
                "pid": os.getpid(), "single_layer": self.single_layer,
                "cache_dir": str(self.cache.root), "cache_bytes": self.cache.total,
                "prefetched_spans": self.prefetched_spans, "inodes": self.tree.inodes,
                "layers": layers, "totals": total,
                **{k: v for k, v in self.extra.items() if not k.startswith("_")}}

    def close(self) -> None:
        fetcher = self.extra.pop("_fetcher", None)
        if fetcher is not None:
            fetcher.stop()
        for layer in self.layers:
            with contextlib.suppress(OSError):
                layer.close()
        with contextlib.suppress(Exception):
            self.source.close()
        shutil.rmtree(self.scratch, ignore_errors=True)


def find_index(store: Store, manifest_digest: str, manifest_json: dict[str, Any],
               explicit: str | None = None) -> str:
    if explicit:
        if not store.has_blob(explicit):
            raise MountError(f"SOCI index {explicit} is not in the store at {store.root}")
        return explicit
    ann = (manifest_json.get("annotations") or {}).get(ANN_INDEX_DIGEST)
    if isinstance(ann, str) and store.has_blob(ann):
        return ann
    recs = [r for r in store.list_artifacts(type="soci_index", original_digest=manifest_digest)
            if store.has_blob(r.digest)]
    if recs:
        return recs[-1].digest
    hint = f" (its manifest names SOCI index {ann}, which is not stored)" if ann else ""
    raise MountError(f"no SOCI index for image manifest {manifest_digest} in the store at "
                     f"{store.root}{hint}; build one with `soci-native create IMAGE`")


def blob_reader(src: ImageSource, desc: Descriptor) -> BlobReader:
    """The cheapest way to read ranges of a layer blob: a local file, else the source's own
    ``read_range`` (a registry: one Range request per span), else a seekable stream."""
    path = src.blob_path(desc)
    if path is not None:
        reader = FileBlobReader(path)
        if reader.size != desc.size:
            reader.close()
            raise MountError(f"layer {desc.digest} has {reader.size} bytes at {path}, its "
                             f"descriptor says {desc.size}")
        return reader
    if callable(getattr(src, "read_range", None)):
        return SourceRangeReader(src, desc.digest, desc.size)  # type: ignore[arg-type]
    f = src.open_blob(desc)
    if not f.seekable():
        f.close()
        raise MountError(f"{src.ref}: layer {desc.digest} can only be streamed, not read by "
                         "ranges (this image source has no read_range)")
    return FileObjBlobReader(f, desc.size)


def _pick_layer(layers: list[Descriptor], want: str) -> Descriptor:
    hits = [d for d in layers if d.digest == want or d.digest.split(":", 1)[-1].startswith(
        want.split(":", 1)[-1]) and len(want.split(":", 1)[-1]) >= 12]
    if len(hits) != 1:
        listed = ", ".join(d.digest for d in layers)
        what = "matches several layers" if hits else "is not a layer of the image"
        raise MountError(f"--layer {want} {what} (layers: {listed})")
    return hits[0]


def _clean_scratch(cache_root: Path) -> None:
    """Removes scratch directories of mounts that are gone (named .mount-<pid>-...)."""
    for d in cache_root.glob(SCRATCH_PREFIX + "*"):
        try:
            pid = int(d.name[len(SCRATCH_PREFIX):].split("-", 1)[0])
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError):
            shutil.rmtree(d, ignore_errors=True)
        except PermissionError:
            pass


if TYPE_CHECKING:
    from soci_native.registry import RegistryOptions


def open_mount(opts: MountOptions) -> MountedImage:
    """Everything a mount serves, ready before the mount goes live. Raises MountError,
    ImageError, StoreError or FormatError."""
    cache_root = (opts.cache_dir or opts.store_root / "cache" / "spans").resolve()
    cache = SpanCache(cache_root, opts.cache_size)
    _clean_scratch(cache_root)
    scratch = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-", dir=cache_root))
    src: ImageSource | None = None
    layers: list[Layer] = []
    try:
        src = open_image(opts.image, registry=opts.registry)
        plats = [Platform.parse(opts.platform)] if opts.platform else None
        image = resolve(src, plats)[0]
        with Store(opts.store_root) as store:
            try:
                index_digest = find_index(store, image.manifest.digest, image.manifest_json,
                                          opts.index)
            except MountError:
                if opts.index:
                    raise
                # not built here: discover it in the image's source (a registry, or a
                # SOCI-enabled local image) as the snapshotter does, and fetch it
                from soci_native.discover import pull_index

                try:
                    index_digest = pull_index(src, store, image)[1].digest
                except ImageError as e2:
                    raise MountError(f"{e2} (nor is one in the store at {store.root})"
                                     ) from None
            info = _index_layers(store, index_digest)
            descs = [_pick_layer(image.layers, opts.layer)] if opts.layer else image.layers
            builder = TreeBuilder(single_layer=opts.layer is not None)
            for desc in descs:
                layers.append(_open_layer(src, store, desc, info, cache, scratch, builder))
            prefetch = _prefetch_plan(store, info, layers) if opts.prefetch else {}
        tree = builder.finish()
        mounted = MountedImage(opts.image, str(image.platform), image.manifest.digest,
                               index_digest, layers, tree, cache, scratch, src,
                               single_layer=opts.layer is not None)
        if prefetch and opts.prefetch_in_background:
            def background() -> None:
                mounted.prefetched_spans = run_prefetch(prefetch)

            threading.Thread(target=background, name="soci-prefetch", daemon=True).start()
        elif prefetch:
            mounted.prefetched_spans = run_prefetch(prefetch)
        return mounted
    except BaseException:
        for layer in layers:
            with contextlib.suppress(OSError):
                layer.close()
        if src is not None:
            src.close()
        shutil.rmtree(scratch, ignore_errors=True)
        raise


@dataclass
class _IndexInfo:
    ztocs: dict[str, str]  # layer digest -> zTOC digest
    prefetches: dict[str, list[str]]  # layer digest -> prefetch artifact digests


def _index_layers(store: Store, index_digest: str) -> _IndexInfo:
    from soci_native.store import parse_soci_index

    info = parse_soci_index(store.read_blob(index_digest))
    out = _IndexInfo({}, {})
    for d in info.layers:
        layer = (d.get("annotations") or {}).get(ANN_LAYER_DIGEST)
        if not isinstance(layer, str):
            continue
        if d.get("mediaType") == PREFETCH_MEDIA_TYPE:
            out.prefetches.setdefault(layer, []).append(str(d["digest"]))
        elif d.get("mediaType") == ZTOC_MEDIA_TYPE:
            out.ztocs.setdefault(layer, str(d["digest"]))
    return out


def _open_layer(src: ImageSource, store: Store, desc: Descriptor, info: _IndexInfo,
                cache: SpanCache, scratch: Path, tree: TreeBuilder) -> Layer:
    """The layer's reader; its entries go to ``tree`` (the next layer up)."""
    zd = info.ztocs.get(desc.digest)
    if zd is not None:
        try:
            # mapped, not copied into the heap; hashed on a thread while the tree is built
            raw, verified = store.map_verifying(zd)
            try:
                z = ztoc_mod.from_bytes(raw, files=False)  # the entries go straight to the tree
                tree.add_ztoc(raw)
            finally:
                verified()  # a corrupt blob is the store's error, whatever parsing said
        except (StoreError, ztoc_mod.ZtocError) as e:
            raise MountError(f"zTOC {zd} of layer {desc.digest}: {e}") from None
        reader = blob_reader(src, desc)
        try:
            stats = LayerStats(desc.digest, desc.size, "lazy", ztoc=zd)
            layer = ZtocLayer(desc.digest, z, reader, cache, stats)
        except (ValueError, FormatError) as e:
            reader.close()
            raise MountError(f"zTOC {zd} of layer {desc.digest}: {e}") from None
        return layer
    return _local_layer(src, desc, scratch, tree)


def _local_layer(src: ImageSource, desc: Descriptor, scratch: Path, tree: TreeBuilder) -> Layer:
    kind = layer_compression(desc.media_type)
    if kind == "zstd":
        raise MountError(f"layer {desc.digest} is zstd-compressed and has no zTOC: zstd "
                         "layers cannot be mounted")
    path = src.blob_path(desc)
    if path is None:  # an archive member or a remote blob: fetch a local copy
        dest = scratch / desc.digest.split(":", 1)[-1]
        log.info("fetching layer %s (%d bytes, no zTOC)", desc.digest, desc.size)
        fetch_blob(lambda: src.open_blob(desc), desc.digest, dest)
        path = str(dest)
    path = os.path.abspath(path)
    mode = {"gzip": "gzip", "uncompressed": "tar"}.get(kind, "auto")
    try:
        ix = index_layer(path, LOCAL_SPAN_SIZE, mode=mode, entries=True)
    except (FormatError, ValueError) as e:
        raise MountError(f"layer {desc.digest} (no zTOC) cannot be read: {e}") from None
    if ix.blob_digest != desc.digest:
        raise MountError(f"layer {desc.digest} does not match its digest (content hashes to "
                         f"{ix.blob_digest}): corrupt or tampered image")
    tree.add_entries([Entry.from_tar(e) for e in ix.entries])
    stats = LayerStats(desc.digest, desc.size, "local", bytes_fetched=desc.size)
    return LocalLayer(desc.digest, path, ix, stats, scratch)


def _prefetch_plan(store: Store, info: _IndexInfo,
                   layers: list[Layer]) -> dict[ZtocLayer, list[int]]:
    plan: dict[ZtocLayer, list[int]] = {}
    for layer in layers:
        if not isinstance(layer, ZtocLayer):
            continue
        for pd in info.prefetches.get(layer.digest, []):
            try:
                doc = json.loads(store.read_blob(pd))
                ranges = [(int(r["start_span"]), int(r["end_span"]))
                          for r in doc.get("prefetch_spans") or []]
            except (StoreError, ValueError, KeyError, TypeError, AttributeError) as e:
                log.warning("ignoring prefetch artifact %s: %s", pd, e)
                continue
            wanted = set(plan.get(layer, []))
            for lo, hi in ranges:
                wanted.update(range(max(lo, 0), min(hi, len(layer.spans) - 1) + 1))
            plan[layer] = sorted(wanted)
    return plan


class BackgroundFetcher:
    """One thread walking the layers' spans in order, round-robin across layers, resolving
    the ones not cached yet at a bounded rate; it stops at unmount or when the span cache is
    full (beyond that it would only evict what reads need)."""

    def __init__(self, layers: list[ZtocLayer], rate: float, cache: SpanCache) -> None:
        self.layers, self.interval, self.cache = layers, 1.0 / rate, cache
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soci-background-fetch")
        self.done = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        cursors = {layer: 0 for layer in self.layers}
        while cursors and not self._stop.is_set():
            for layer in list(cursors):
                i = cursors[layer]
                if i >= len(layer.spans) or layer.untrusted:  # done, or every read EIO
                    del cursors[layer]
                    continue
                cursors[layer] = i + 1
                if self.cache.total >= self.cache.limit * 0.9:
                    log.info("background fetch stopped: the span cache is full")
                    return
                try:
                    layer.resolve(i)
                    self.done += 1
                except OSError as e:
                    log.warning("background fetch of %s span %d failed: %s", layer.digest, i, e)
                if self._stop.wait(self.interval):
                    return


def run_prefetch(plan: dict[ZtocLayer, list[int]]) -> int:
    """Resolves the planned spans; failures are logged, not fatal. Two stages: a few threads
    fetch (and verify) spans, two inflate and cache the fetched ones, so transfers go on
    while spans are inflated (with fetch and inflate in one thread, twelve prefetch threads
    fetching at once over a 50 MB/s link all finished together and then left it idle for
    0.3 s while they inflated). At most :data:`PREFETCH_HELD` fetched spans wait."""
    done = 0
    lock = threading.Lock()
    held = threading.BoundedSemaphore(PREFETCH_HELD)

    def fill(layer: ZtocLayer, i: int) -> None:
        nonlocal done
        try:
            layer.resolve(i)
        except OSError as e:
            log.warning("prefetch of %s span %d failed: %s", layer.digest, i, e)
            return
        finally:
            held.release()
        with lock:
            done += 1

    with ThreadPoolExecutor(PREFETCH_FILLERS) as fillers:
        def fetch(layer: ZtocLayer, i: int) -> None:
            held.acquire()
            try:
                layer.fetch_only(i)
            except Exception as e:  # noqa: BLE001 - the fill's own fetch tries again, reports it
                log.info("prefetch fetch of %s span %d failed: %s", layer.digest, i, e)
            fillers.submit(fill, layer, i)

        with ThreadPoolExecutor(PREFETCH_WORKERS) as fetchers:
            for layer, spans in plan.items():
                for i in spans:
                    fetchers.submit(fetch, layer, i)
    return done


__all__ = ["DEFAULT_CACHE_SIZE", "ImageError", "MountError", "MountOptions", "MountedImage",
           "blob_reader", "find_index", "open_mount"]
