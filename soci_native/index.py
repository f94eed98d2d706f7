"""SOCI index manifests (soci-format 3.1-3.3) and prefetch artifacts (5.6), as JSON the
reference writes byte for byte (Go encoding/json field order, sorted map keys, compact)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from soci_native import gojson, pathwalk
from soci_native.ztoc import digest

INDEX_V1 = "application/vnd.amazon.soci.index.v1+json"
INDEX_V2 = "application/vnd.amazon.soci.index.v2+json"
ZTOC_MEDIA_TYPE = "application/octet-stream"
PREFETCH_MEDIA_TYPE = "application/vnd.amazon.soci.prefetch.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
EMPTY_CONFIG = b"{}"
EMPTY_CONFIG_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"

ANN_LAYER_MEDIA_TYPE = "com.amazon.soci.image-layer-mediaType"
ANN_LAYER_DIGEST = "com.amazon.soci.image-layer-digest"
ANN_SPAN_SIZE = "com.amazon.soci.span-size"
ANN_DISABLE_XATTRS = "com.amazon.soci.disable-xattrs"
ANN_BUILD_TOOL = "com.amazon.soci.build-tool-identifier"
ANN_INDEX_DIGEST = "com.amazon.soci.index-digest"  # on a v2 image manifest
ANN_IMAGE_MANIFEST_DIGEST = "com.amazon.soci.image-manifest-digest"  # on a v2 index entry
BUILD_TOOL = "AWS SOCI CLI v0.2"
DEFAULT_MIN_LAYER_SIZE = 10 << 20
WHITEOUT_OPAQUE = ".wh..wh..opq"


class SociIndexError(ValueError):
    """A SOCI index manifest that cannot be built or parsed."""


def descriptor(media_type: str, dgst: str, size: int,
               annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """An OCI descriptor in Go's field order (mediaType, digest, size, annotations)."""
    d: dict[str, Any] = {"mediaType": media_type, "digest": dgst, "size": size}
    if annotations:
        d["annotations"] = gojson.gomap(annotations)
    return d


def ztoc_descriptor(ztoc_digest: str, ztoc_size: int, layer_media_type: str, layer_digest: str,
                    span_size: int, disable_xattrs: bool = False) -> dict[str, Any]:
    ann = {ANN_LAYER_MEDIA_TYPE: layer_media_type, ANN_LAYER_DIGEST: layer_digest,
           ANN_SPAN_SIZE: str(span_size)}
    if disable_xattrs:
        ann[ANN_DISABLE_XATTRS] = "true"
    return descriptor(ZTOC_MEDIA_TYPE, ztoc_digest, ztoc_size, ann)


def should_disable_xattrs(names_and_pax: Iterable[tuple[str, dict[str, str]]]) -> bool:
    """The reference's xattr optimisation (3.5): no SCHILY.xattr record and no opaque-dir
    whiteout anywhere in the layer."""
    for name, pax in names_and_pax:
        if name.endswith(WHITEOUT_OPAQUE) or any(k.startswith("SCHILY.xattr.") for k in pax):
            return False
    return True


def index_manifest(version: int, blobs: Sequence[dict[str, Any]],
                   subject: dict[str, Any] | None, build_tool: str = BUILD_TOOL) -> bytes:
    """A SOCI index manifest: v1 has a subject (the image manifest), v2 has none."""
    if not blobs:
        raise SociIndexError("no zTOCs: every layer was skipped")
    if version == 1 and subject is None:
        raise SociIndexError("a v1 SOCI index needs a subject")
    m: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(INDEX_V1 if version == 1 else INDEX_V2, EMPTY_CONFIG_DIGEST, 2),
        "layers": list(blobs),
    }
    if version == 1:
        assert subject is not None
        m["subject"] = descriptor(subject["mediaType"], subject["digest"], subject["size"])
    m["annotations"] = gojson.gomap({ANN_BUILD_TOOL: build_tool})
    return gojson.marshal(m)


@dataclass(frozen=True)
class SociIndex:
    version: int  # 1 or 2
    ztocs: list[dict[str, Any]]
    prefetches: list[dict[str, Any]]
    subject: dict[str, Any] | None
    annotations: dict[str, str]
    raw: bytes

    @property
    def digest(self) -> str:
        return digest(self.raw)


def parse_index_manifest(raw: bytes) -> SociIndex:
    try:
        m = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise SociIndexError(f"SOCI index is not JSON: {e}") from None
    if not isinstance(m, dict):
        raise SociIndexError("SOCI index is not a JSON object")
    cfg = m.get("config") or {}
    kind = cfg.get("mediaType") if isinstance(cfg, dict) else None
    if kind not in (INDEX_V1, INDEX_V2):
        raise SociIndexError(f"not a SOCI index manifest (config media type {kind!r})")
    layers = m.get("layers") or []
    if not isinstance(layers, list) or not all(isinstance(d, dict) for d in layers):
        raise SociIndexError("SOCI index layers are malformed")
    for d in layers:
        if not isinstance(d.get("digest"), str) or not isinstance(d.get("size"), int):
            raise SociIndexError(f"SOCI index has a malformed descriptor: {d!r}")
    return SociIndex(
        1 if kind == INDEX_V1 else 2,
        [d for d in layers if d.get("mediaType") != PREFETCH_MEDIA_TYPE],
        [d for d in layers if d.get("mediaType") == PREFETCH_MEDIA_TYPE],
        m.get("subject"), dict(m.get("annotations") or {}), raw)


# ------------------------------------------------------------------------------- prefetch

clean_prefetch_path = pathwalk.clean
"""Go's filepath.Clean("/" + path) without the leading slash, as the reference does."""


def merge_spans(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, with overlapping or adjacent ranges coalesced."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def prefetch_artifact(spans: Iterable[tuple[int, int]]) -> bytes:
    items = [{"start_span": s, "end_span": e} for s, e in merge_spans(spans)]
    if not items:
        raise SociIndexError("empty prefetch artifact")
    return gojson.marshal({"version": "1.0", "prefetch_spans": items})


def prefetch_descriptor(raw: bytes, layer_digest: str) -> dict[str, Any]:
    return descriptor(PREFETCH_MEDIA_TYPE, digest(raw), len(raw), {ANN_LAYER_DIGEST: layer_digest})
