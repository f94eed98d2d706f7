"""``soci-native rpull``: pull an image into containerd so that its layers come up lazily.

This is what containerd's own pull does (content, unpack, image record), done through its
gRPC services, with the target-layer labels a remote snapshotter needs on every Prepare:

1. inside a lease (nothing is collected half-way), the image's index (if any), platform
   manifest and config go into containerd's content store with the GC labels a pull sets
   (``containerd.io/gc.ref.content.*``);
2. for each layer, in order, with its chain ID: already there -> nothing to do; else a
   Prepare ``extract-<nonce> <chain>`` on the parent chain carrying ``containerd.io/
   snapshot.ref`` and the CRI plugin's ``containerd.io/snapshot/cri.*`` labels (image ref,
   layer digest, manifest digest, the layers still to come). ALREADY_EXISTS (and the chain
   now found) means the snapshotter committed a lazy snapshot: the layer blob is never
   fetched. Otherwise the layer is streamed into the content store (containerd checks its
   digest), applied with containerd's diff service onto the prepared mounts (the applied
   digest must be the config's diff ID) and committed under the chain ID;
3. the config is labelled with the top snapshot (``containerd.io/gc.ref.snapshot.NAME``), as
   containerd's unpacker does, and the image record is created or updated.

Through any other snapshotter this is an ordinary full pull.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from soci_native.images import ImageError, ResolvedImage
from soci_native.oci import Platform
from soci_native.refs import Reference
from soci_native.snapshotter.containerd import Containerd, ContainerdError, descriptor
from soci_native.snapshotter.remote import (
    CRI_IMAGE_REF_LABEL,
    CRI_LAYER_LABEL,
    INDEX_LABEL,
    LABEL_REF,
    MANIFEST_LABEL,
)

LABEL_LAYERS = "containerd.io/snapshot/cri.image-layers"
LABEL_MAX = 4096  # containerd's limit on one label's key + value
READ_CHUNK = 1 << 20


class RpullError(Exception):
    pass


@dataclass
class LayerResult:
    digest: str
    chain_id: str
    how: str  # "lazy" (the snapshotter mounts it), "unpacked" (fetched), "present"


@dataclass
class PullResult:
    image: str
    manifest: str
    snapshotter: str
    layers: list[LayerResult] = field(default_factory=list)

    def count(self, how: str) -> int:
        return sum(1 for r in self.layers if r.how == how)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def image_name(ref: Reference) -> str:
    """containerd's name for the image: the full reference, ``:latest`` when untagged."""
    return str(ref if ref.tag or ref.digest else ref.with_tag("latest"))


def chain_ids(diff_ids: list[str]) -> list[str]:
    out: list[str] = []
    for d in diff_ids:
        out.append(d if not out else
                   "sha256:" + hashlib.sha256(f"{out[-1]} {d}".encode()).hexdigest())
    return out


def layers_label(digests: list[str]) -> str:
    """The layers from this one on, as many as fit containerd's label limit (as CRI does)."""
    out: list[str] = []
    for d in digests:
        if len(LABEL_LAYERS) + len(",".join([*out, d])) > LABEL_MAX:
            break
        out.append(d)
    return ",".join(out)


def _diff_ids(img: ResolvedImage) -> list[str]:
    rootfs = img.config.get("rootfs")
    ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(ids, list) or not all(isinstance(d, str) for d in ids):
        raise ImageError(f"config {img.config_desc.digest}: no rootfs.diff_ids list")
    if len(ids) != len(img.layers):
        raise ImageError(f"config {img.config_desc.digest}: {len(ids)} diff IDs for "
                         f"{len(img.layers)} layers")
    return ids


class Puller:
    def __init__(self, ctrd: Containerd, src: Any, snapshotter: str,
                 platform: Platform | None = None, index_digest: str = "",
                 log: Callable[[str], None] = lambda m: None) -> None:
        self.ctrd = ctrd
        self.src = src  # a RegistrySource
        self.snapshotter = snapshotter
        self.platform = platform
        self.index_digest = index_digest
        self.log = log
        ref: Reference = src.reference
        self.ref = ref
        self.source_label = {f"containerd.io/distribution.source.{ref.host}": ref.repository}

    def pull(self) -> PullResult:
        from soci_native.images import resolve

        root_desc, root_raw = self.src.root()
        img = resolve(self.src, [self.platform] if self.platform else None)[0]
        diff_ids = _diff_ids(img)
        res = PullResult(image_name(self.ref), img.manifest.digest, self.snapshotter)
        with self.ctrd.lease():
            self._put_metadata(root_desc, root_raw, img)
            parent = ""
            digests = [d.digest for d in img.layers]
            for i, (layer, chain) in enumerate(zip(img.layers, chain_ids(diff_ids),
                                                   strict=True)):
                labels = {LABEL_REF: chain, CRI_IMAGE_REF_LABEL: str(self.ref),
                          CRI_LAYER_LABEL: layer.digest, MANIFEST_LABEL: img.manifest.digest,
                          LABEL_LAYERS: layers_label(digests[i:])}
                if self.index_digest:
                    labels[INDEX_LABEL] = self.index_digest
                how = self._layer(layer, diff_ids[i], chain, parent, labels)
                self.log(f"layer {layer.digest}: {how}")
                res.layers.append(LayerResult(layer.digest, chain, how))
                parent = chain
            if parent:
                self.ctrd.set_labels(img.config_desc.digest, {
                    f"containerd.io/gc.ref.snapshot.{self.snapshotter}": parent})
            self.ctrd.put_image(res.image, descriptor(
                root_desc.media_type or img.manifest.media_type, root_desc.digest,
                root_desc.size))
        return res

    def _put_metadata(self, root_desc: Any, root_raw: bytes, img: ResolvedImage) -> None:
        """Config, manifest and (for an index) the index, each with the GC references a
        pull sets, so the image keeps them once the lease is gone."""
        cfg_raw = self.src.read_blob(img.config_desc)
        self._put(img.config_desc.digest, cfg_raw, {})
        refs = {"containerd.io/gc.ref.content.config": img.config_desc.digest}
        for i, d in enumerate(img.layers):
            refs[f"containerd.io/gc.ref.content.l.{i}"] = d.digest
        self._put(img.manifest.digest, img.manifest_bytes, refs)
        if root_desc.digest != img.manifest.digest:
            self._put(root_desc.digest, root_raw,
                      {"containerd.io/gc.ref.content.m.0": img.manifest.digest})

    def _put(self, digest: str, data: bytes, labels: dict[str, str]) -> None:
        self.ctrd.write_content(digest, len(data), [data], {**self.source_label, **labels})

    def _layer(self, layer: Any, diff_id: str, chain: str, parent: str,
               labels: dict[str, str]) -> str:
        sn = self.snapshotter
        if self.ctrd.stat_snapshot(sn, chain):
            return "present"
        key = f"extract-{secrets.token_hex(6)} {chain}"  # containerd's unpack key format
        try:
            mounts = self.ctrd.prepare(sn, key, parent, labels)
        except ContainerdError as e:
            # the snapshotter committed the chain itself (a lazy mount): nothing to fetch
            if e.code == "ALREADY_EXISTS" and self.ctrd.stat_snapshot(sn, chain):
                return "lazy"
            raise
        try:
            with self.src.open_blob(layer) as f:
                self.ctrd.write_content(layer.digest, layer.size,
                                        iter(lambda: f.read(READ_CHUNK), b""),
                                        self.source_label)
            applied = self.ctrd.apply(
                descriptor(layer.media_type, layer.digest, layer.size), mounts)
            if applied.digest != diff_id:
                raise RpullError(f"layer {layer.digest} unpacks to {applied.digest}, but the "
                                 f"config says {diff_id}")
            self.ctrd.commit(sn, chain, key, labels)
        except ContainerdError as e:
            with contextlib.suppress(ContainerdError):
                self.ctrd.remove(sn, key)
            if e.code == "ALREADY_EXISTS":  # committed meanwhile by another pull
                return "present"
            raise
        except BaseException:
            with contextlib.suppress(ContainerdError):
                self.ctrd.remove(sn, key)
            raise
        self.ctrd.set_labels(layer.digest, {"containerd.io/uncompressed": diff_id})
        return "unpacked"
