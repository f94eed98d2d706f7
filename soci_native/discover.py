"""Finding the SOCI index of an image wherever it is: a registry (soci_native.remote) or a
local image (oci:, oci-archive:, docker-archive:) written by `convert` or copied with its
index, and fetching the index with its zTOCs into the local store.

Local discovery follows the snapshotter's order: the ``com.amazon.soci.index-digest``
annotation on the image manifest (index v2), else an entry of the image index that is a
SOCI index (v2 by its image-manifest-digest annotation, v1 by its subject).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

from soci_native import index
from soci_native.images import Descriptor, ImageError, ImageSource, ResolvedImage
from soci_native.store import ArtifactRecord, Store

MAX_ZTOC_SIZE = 1 << 31  # the bound the registry pull uses too


@dataclass
class FoundIndex:
    version: int
    digest: str
    how: str  # "v2-annotation" | "referrers" | "image-index"


def is_registry(src: ImageSource) -> bool:
    # A RegistrySource can only exist once soci_native.registry is imported: checking
    # sys.modules keeps urllib3 out of local-only runs.
    reg = sys.modules.get("soci_native.registry")
    return reg is not None and isinstance(src, reg.RegistrySource)


def _index_entries(src: ImageSource) -> list[Descriptor]:
    desc, raw = src.root()
    if desc.media_type not in (index.OCI_INDEX,
                               "application/vnd.docker.distribution.manifest.list.v2+json"):
        return []
    try:
        doc = json.loads(raw)
    except ValueError:
        return []
    out = []
    for e in doc.get("manifests") or [] if isinstance(doc, dict) else []:
        try:
            d = Descriptor.from_json(e, "image index entry")
        except ImageError:
            continue
        if d.artifact_type in (index.INDEX_V1, index.INDEX_V2):
            out.append(d)
    return out


def find_local_index(src: ImageSource, image: ResolvedImage) -> FoundIndex | None:
    ann = image.manifest_json.get("annotations") or {}
    if isinstance(ann, dict) and isinstance(ann.get(index.ANN_INDEX_DIGEST), str):
        return FoundIndex(2, ann[index.ANN_INDEX_DIGEST], "v2-annotation")
    want = image.manifest.digest
    for d in _index_entries(src):
        if (d.annotations or {}).get(index.ANN_IMAGE_MANIFEST_DIGEST) == want:
            return FoundIndex(2, d.digest, "image-index")
        if d.artifact_type == index.INDEX_V1 and src.has_blob(d):
            try:
                soci = index.parse_index_manifest(src.read_blob(d))
            except index.SociIndexError:
                continue
            if (soci.subject or {}).get("digest") == want:
                return FoundIndex(1, d.digest, "image-index")
    return None


def _pull_local(src: ImageSource, store: Store, image: ResolvedImage,
                image_digest: str | None) -> tuple[FoundIndex, ArtifactRecord]:
    found = find_local_index(src, image)
    if found is None:
        raise ImageError(f"no SOCI index in {src.ref} ({image.platform}): neither a "
                         f"{index.ANN_INDEX_DIGEST} annotation on its manifest nor a SOCI "
                         "index in its image index; build one with `soci-native create`")
    if not src.has_blob(found.digest):
        raise ImageError(f"{src.ref} names SOCI index {found.digest} but does not hold it")
    raw = src.read_blob(found.digest)
    soci = index.parse_index_manifest(raw)
    for d in soci.ztocs + soci.prefetches:
        if store.has_blob(d["digest"]):
            continue
        if d["size"] > MAX_ZTOC_SIZE:
            raise ImageError(f"{src.ref}: {d['digest']} in SOCI index {found.digest} claims "
                             f"{d['size']} bytes, more than a zTOC may have")
        if not src.has_blob(d["digest"]):
            raise ImageError(f"{src.ref}: SOCI index {found.digest} names {d['digest']}, "
                             "which the image does not hold")
        store.put_blob(src.read_blob(Descriptor(d.get("mediaType") or "", d["digest"],
                                                d["size"])))
    rec = store.add_index(raw, image_ref=src.ref, image_digest=image_digest,
                          original_digest=image.manifest.digest, platform=str(image.platform))
    return found, rec


def pull_index(src: ImageSource, store: Store, image: ResolvedImage,
               image_digest: str | None = None) -> tuple[FoundIndex, ArtifactRecord]:
    """Finds ``image``'s SOCI index in its source (a registry or a local image) and stores it
    with its zTOCs and prefetch artifacts. Raises ImageError when there is none."""
    if is_registry(src):
        from soci_native import remote

        found, rec = remote.pull_index(src, store, image, image_digest)  # type: ignore[arg-type]
        return FoundIndex(found.version, found.digest, found.how), rec
    return _pull_local(src, store, image, image_digest)
