"""SOCI indexes and registries: push a v1 index and make it discoverable, find an image's
index (v2 annotation, then the referrers API, then the referrers tag), pull it into the local
store, and push converted (v2) images (soci-format 3.2-3.4)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from soci_native import index
from soci_native.images import Descriptor, ImageError, ResolvedImage
from soci_native.registry import NotFound, RegistryClient, RegistrySource
from soci_native.store import ArtifactRecord, Store

if TYPE_CHECKING:
    from soci_native.progress import UploadSink

Log = Callable[[str], None]
# The largest zTOC or prefetch artifact fetched (zTOCs are refused past 2 GiB when built).
MAX_ARTIFACT_SIZE = 1 << 31


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


@dataclass
class PushedIndex:
    platform: str
    digest: str
    status: str  # "pushed" | "skipped"
    reason: str = ""
    discovery: str = ""  # "referrers-api" | "referrers-tag"


def local_index_for(store: Store, manifest_digest: str, version: int = 1) -> ArtifactRecord:
    """The newest stored SOCI index of that version for an image manifest."""
    recs = [r for r in store.list_artifacts(type="soci_index", original_digest=manifest_digest)
            if r.manifest_version == f"v{version}"]
    if not recs:
        raise ImageError(f"no SOCI index v{version} for image manifest {manifest_digest} in "
                         f"{store.root}: run `soci-native create` first")
    return recs[-1]


def _push_blobs(client: RegistryClient, repo: str, store: Store, digests: Sequence[str],
                jobs: int, uploads: UploadSink | None = None) -> None:
    def one(d: str) -> None:
        client.push_blob(repo, str(store.blob_path(d)), digest=d)
        if uploads is not None:
            uploads.sent(d, store.blob_path(d).stat().st_size)

    with ThreadPoolExecutor(max(1, jobs)) as pool:
        list(pool.map(one, digests))


def referrer_descriptor(raw: bytes, digest: str) -> Descriptor:
    """How a SOCI index is listed as a referrer: artifactType from its config, annotations."""
    soci = index.parse_index_manifest(raw)
    kind = index.INDEX_V1 if soci.version == 1 else index.INDEX_V2
    return Descriptor(index.OCI_MANIFEST, digest, len(raw), soci.annotations or None,
                      artifact_type=kind)


def push_index(src: RegistrySource, store: Store, image: ResolvedImage, existing: str = "warn",
               jobs: int = 3, log: Log = _stderr,
               uploads: Callable[[Sequence[int]], UploadSink] | None = None) -> PushedIndex:
    """Pushes the v1 SOCI index of one platform image and its zTOCs, then makes it
    discoverable: the registry's referrers API indexes the subject itself; without that API
    the referrers tag (``sha256-<hex>``) is updated, keeping the referrers listed there."""
    client, repo = src.client, src.repository
    subject = image.manifest.digest
    rec = local_index_for(store, subject)
    plat = str(image.platform)
    if existing != "allow":
        found = client.referrers(repo, subject, index.INDEX_V1)
        if found and existing == "skip":
            return PushedIndex(plat, rec.digest, "skipped",
                               f"a SOCI index already exists: {found[0].digest}")
        if found:
            log(f"warning: {plat}: {repo} already has SOCI index {found[0].digest} for "
                f"{subject}; pushing {rec.digest} too")
    raw = store.read_blob(rec.digest)
    soci = index.parse_index_manifest(raw)
    blobs = [index.EMPTY_CONFIG_DIGEST] + [d["digest"] for d in soci.ztocs + soci.prefetches]
    store.put_blob(index.EMPTY_CONFIG)
    sink = uploads([store.blob_path(d).stat().st_size for d in blobs]) if uploads else None
    try:
        _push_blobs(client, repo, store, blobs, jobs, sink)
    finally:
        if sink is not None:
            sink.close()
    client.put_manifest(repo, raw, index.OCI_MANIFEST)
    if client.referrers_api(repo, subject) is not None:
        return PushedIndex(plat, rec.digest, "pushed", discovery="referrers-api")
    client.add_referrer(repo, subject, referrer_descriptor(raw, rec.digest))
    return PushedIndex(plat, rec.digest, "pushed", discovery="referrers-tag")


ARTIFACT_FETCHES = 4  # zTOCs and prefetch artifacts fetched at once by pull_index


def _fetch_artifact(client: RegistryClient, repo: str, store: Store, digest: str,
                    size: int) -> None:
    """A zTOC or prefetch blob into the store, streamed (bounded memory): no more bytes than
    its descriptor in the index says, and at most :data:`MAX_ARTIFACT_SIZE`."""
    if not 0 <= size <= MAX_ARTIFACT_SIZE:
        raise ImageError(f"SOCI index lists {digest} with size {size}: not between 0 and "
                         f"{MAX_ARTIFACT_SIZE} bytes")
    store.put_blob_stream(client.read_blob_chunks(repo, digest, size), expected_digest=digest)


@dataclass
class FoundIndex:
    version: int
    digest: str
    how: str  # "v2-annotation" | "referrers"


def find_index(src: RegistrySource, image: ResolvedImage) -> FoundIndex | None:
    """The reference snapshotter's discovery order: the v2 annotation on the image manifest,
    then v1 referrers (API, else the fallback tag); the first one found wins."""
    ann = image.manifest_json.get("annotations") or {}
    if isinstance(ann, dict) and isinstance(ann.get(index.ANN_INDEX_DIGEST), str):
        return FoundIndex(2, ann[index.ANN_INDEX_DIGEST], "v2-annotation")
    refs = src.client.referrers(src.repository, image.manifest.digest, index.INDEX_V1)
    return FoundIndex(1, refs[0].digest, "referrers") if refs else None


def pull_index(src: RegistrySource, store: Store, image: ResolvedImage,
               image_digest: str | None = None) -> tuple[FoundIndex, ArtifactRecord]:
    """Fetches an image's SOCI index, its zTOCs and prefetch artifacts into the store."""
    found = find_index(src, image)
    if found is None:
        raise ImageError(f"no SOCI index found for {src.ref} ({image.platform}): neither a "
                         f"{index.ANN_INDEX_DIGEST} annotation nor a v1 referrer")
    client, repo = src.client, src.repository
    try:
        _, raw = client.get_manifest(repo, found.digest, accept=(index.OCI_MANIFEST,))
    except NotFound:
        raise ImageError(f"SOCI index {found.digest} of {src.ref} is missing from the "
                         "registry") from None
    soci = index.parse_index_manifest(raw)
    wanted = [d for d in soci.ztocs + soci.prefetches if not store.has_blob(d["digest"])]
    # a few at once: over a real network each zTOC costs round trips, not only bytes
    with ThreadPoolExecutor(min(ARTIFACT_FETCHES, len(wanted)) or 1) as pool:
        for f in [pool.submit(_fetch_artifact, client, repo, store, d["digest"], d["size"])
                  for d in wanted]:
            f.result()
    rec = store.add_index(raw, image_ref=src.ref, image_digest=image_digest,
                          original_digest=image.manifest.digest, platform=str(image.platform))
    return found, rec
