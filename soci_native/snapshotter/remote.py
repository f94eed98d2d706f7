"""Which layer a remote Prepare asks for, and whether it can be mounted lazily.

containerd passes the target layer in the Prepare labels (only ``containerd.io/snapshot.ref``
and ``containerd.io/snapshot/*`` reach a proxy snapshotter): the CRI plugin sends
``cri.image-ref``, ``cri.layer-digest``, ``cri.image-layers`` and (1.7+)
``cri.manifest-digest``; ``ctr-remote images rpull`` sends its ``remote/stargz.*`` labels too.

:class:`Resolver` turns that into a :class:`Plan` (the image pinned by manifest digest, its
SOCI index in the local store, the layer's zTOC) or None, which means: let containerd unpack
this layer normally. The index is found as ``soci-native mount`` finds it: the local store
first, then the registry (v2 annotation, referrers API, referrers tag), and is pulled into the
store once per image manifest; the answer is remembered per image for a minute, so the other
layers of the same pull cost no registry round trip.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from soci_native.registry import RegistryOptions

log = logging.getLogger("soci_native.snapshotter")

LABEL_REF = "containerd.io/snapshot.ref"
LABEL_PREFIX = "containerd.io/snapshot/"
CRI_IMAGE_REF_LABEL = "containerd.io/snapshot/cri.image-ref"
CRI_LAYER_LABEL = "containerd.io/snapshot/cri.layer-digest"
IMAGE_REF_LABELS = (CRI_IMAGE_REF_LABEL, "containerd.io/snapshot/remote/stargz.reference")
LAYER_LABELS = (CRI_LAYER_LABEL, "containerd.io/snapshot/remote/stargz.digest")
MANIFEST_LABEL = "containerd.io/snapshot/cri.manifest-digest"
INDEX_LABEL = "containerd.io/snapshot/remote/soci.index.digest"
REMOTE_LABEL = "containerd.io/snapshot/soci-native.remote"

CACHE_TTL = 60.0
CACHE_ENTRIES = 64


@dataclass(frozen=True)
class Target:
    chain: str  # the chain id containerd wants the committed snapshot named by
    image_ref: str
    layer: str
    manifest: str = ""
    index: str = ""


def _first(labels: dict[str, str], keys: tuple[str, ...]) -> str:
    for k in keys:
        v = labels.get(k, "").strip()
        if v:
            return v
    return ""


def target_of(labels: dict[str, str]) -> Target | None:
    """The remote target of a Prepare, or None for an ordinary one."""
    chain = labels.get(LABEL_REF, "").strip()
    ref = _first(labels, IMAGE_REF_LABELS)
    layer = _first(labels, LAYER_LABELS)
    if not (chain and ref and layer):
        return None
    return Target(chain, ref, layer, labels.get(MANIFEST_LABEL, "").strip(),
                  labels.get(INDEX_LABEL, "").strip())


@dataclass(frozen=True)
class Plan:
    image: str  # docker://HOST/REPO@sha256:MANIFEST
    manifest: str
    index: str
    layer: str
    layer_size: int
    ztoc: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _ImageInfo:
    pinned: str
    manifest: str
    index: str  # "" when the image has no SOCI index
    layers: dict[str, int]  # layer digest -> size
    ztocs: dict[str, str]  # layer digest -> zTOC digest
    at: float


class Resolver:
    def __init__(self, store_root: Path, registry: RegistryOptions,
                 min_layer_size: int = 0) -> None:
        self.store_root = store_root
        self.registry = registry
        self.min_layer_size = min_layer_size
        self._cache: OrderedDict[tuple[str, str, str], _ImageInfo] = OrderedDict()
        self._lock = threading.Lock()
        self._key_locks: dict[tuple[str, str, str], threading.Lock] = {}

    def registry_json(self) -> dict[str, Any]:
        return asdict(self.registry)

    def plan(self, t: Target) -> Plan | None:
        key = (t.image_ref, t.manifest, t.index)
        with self._lock:
            klock = self._key_locks.setdefault(key, threading.Lock())
        with klock:  # one lookup per image, however many of its layers arrive at once
            with self._lock:
                info = self._cache.get(key)
                if info is not None and time.monotonic() - info.at > CACHE_TTL:
                    info = None
            if info is None:
                info = self._image_info(t)
                with self._lock:
                    self._cache[key] = info
                    while len(self._cache) > CACHE_ENTRIES:
                        old, _ = self._cache.popitem(last=False)
                        self._key_locks.pop(old, None)
        return self._plan_for(info, t.layer)

    def siblings(self, t: Target) -> list[Plan]:
        """Plans for the image's other lazily mountable layers (after :meth:`plan`): the
        mount daemon can load their zTOCs while containerd works through the chain."""
        with self._lock:
            info = self._cache.get((t.image_ref, t.manifest, t.index))
        if info is None:
            return []
        plans = (self._plan_for(info, d, quiet=True) for d in info.ztocs if d != t.layer)
        return [p for p in plans if p is not None]

    def _plan_for(self, info: _ImageInfo, layer: str, quiet: bool = False) -> Plan | None:
        """The plan, or None with the reason logged (unless ``quiet``)."""
        why = ""
        if layer not in info.layers:
            why = f"layer {layer} is not in {info.pinned}"
        elif not info.index:
            return None
        elif layer not in info.ztocs:
            why = f"layer {layer} of {info.pinned} has no zTOC"
        elif info.layers[layer] < self.min_layer_size:
            why = f"layer {layer} ({info.layers[layer]} bytes) is below min_layer_size"
        if why:
            if not quiet:
                log.info("%s: normal unpack", why)
            return None
        return Plan(info.pinned, info.manifest, info.index, layer, info.layers[layer],
                    info.ztocs[layer])

    def _image_info(self, t: Target) -> _ImageInfo:
        from soci_native.images import ImageError, open_image, resolve
        from soci_native.mount.image import MountError, find_index
        from soci_native.refs import Reference
        from soci_native.registry import RegistrySource
        from soci_native.remote import pull_index
        from soci_native.store import Store

        ref = Reference.parse(t.image_ref.removeprefix("docker://"))
        if t.manifest:
            ref = ref.with_tag(None).with_digest(t.manifest)
        with open_image("docker://" + str(ref), registry=self.registry) as src:
            image = resolve(src, None)[0]
            manifest = image.manifest.digest
            if t.manifest and manifest != t.manifest:
                raise ImageError(f"{ref} resolved to {manifest}, not {t.manifest}")
            pinned = "docker://" + str(ref.with_tag(None).with_digest(manifest))
            layers = {d.digest: d.size for d in image.layers}
            with Store(self.store_root, create=True) as store:
                try:
                    index = find_index(store, manifest, image.manifest_json, t.index or None)
                except MountError:
                    index = ""
                if not index and isinstance(src, RegistrySource):
                    try:
                        index = pull_index(src, store, image)[1].digest
                    except ImageError as e:
                        log.info("%s: %s: normal unpack", pinned, e)
                ztocs = _ztocs(store.read_blob(index)) if index else {}
        log.info("%s: SOCI index %s, %d of %d layers with a zTOC", pinned, index or "none",
                 len(ztocs), len(layers))
        return _ImageInfo(pinned, manifest, index, layers, ztocs, time.monotonic())


def _ztocs(raw: bytes) -> dict[str, str]:
    from soci_native.index import ANN_LAYER_DIGEST
    from soci_native.store import MEDIA_TYPE_ZTOC, parse_soci_index

    out: dict[str, str] = {}
    for d in parse_soci_index(raw).layers:
        layer = (d.get("annotations") or {}).get(ANN_LAYER_DIGEST)
        if isinstance(layer, str) and d.get("mediaType") == MEDIA_TYPE_ZTOC:
            out.setdefault(layer, str(d["digest"]))
    return out
