"""`convert`: a SOCI-enabled image (index manifest v2, soci-format 3.3) written as an OCI
layout directory or archive. The image's manifests are re-marshalled as OCI manifests carrying
the SOCI index digest; the new OCI image index lists them, then one SOCI index per platform."""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from soci_native import gojson, index
from soci_native.build import BuildError, BuildOptions, IndexResult, build_index
from soci_native.images import (
    Descriptor,
    ImageError,
    ImageSource,
    Platform,
    ResolvedImage,
    resolve,
)
from soci_native.store import Store

if TYPE_CHECKING:
    from soci_native.progress import UploadSink
    from soci_native.registry import RegistryOptions
from soci_native.ztoc import digest as sha256_digest

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"


@dataclass
class ConvertResult:
    index_digest: str  # the new OCI image index
    index_size: int
    soci_indexes: list[IndexResult]
    destination: str


def parse_destination(dst: str, fmt: str | None) -> tuple[str, Path, str | None]:
    """(format, path, tag) from oci:DIR[:TAG], oci-archive:FILE[:TAG], a registry reference
    (docker://HOST/REPO:TAG or HOST/REPO:TAG; format "registry", path unused) or a bare
    path."""
    from soci_native.refs import looks_like_registry_ref

    if dst.startswith("docker://") or (looks_like_registry_ref(dst) and not Path(dst).exists()):
        if fmt:
            raise ImageError(f"--format {fmt} does not apply to a registry destination")
        return "registry", Path(), None
    for prefix, kind in (("oci:", "oci-dir"), ("oci-archive:", "oci-archive")):
        if dst.startswith(prefix):
            path, _, tag = dst[len(prefix):].partition(":")
            if fmt and fmt != kind:
                raise ImageError(f"--format {fmt} contradicts destination {dst!r}")
            return kind, Path(path), tag or None
    path, sep, tag = dst.rpartition(":")
    if not sep or "/" in tag:
        path, tag = dst, ""
    return fmt or "oci-archive", Path(path), tag or None


def _go_manifest(m: dict[str, Any], annotations: dict[str, str] | None) -> dict[str, Any]:
    """An image manifest as Go's ocispec.Manifest marshals it, forced to OCI media types."""
    out: dict[str, Any] = {"schemaVersion": 2, "mediaType": index.OCI_MANIFEST}
    if m.get("artifactType"):
        out["artifactType"] = m["artifactType"]
    config = Descriptor.from_json(m.get("config"), "config")
    out["config"] = Descriptor(OCI_CONFIG, config.digest, config.size, config.annotations,
                               config.platform, config.artifact_type, config.urls,
                               config.data).to_json()
    out["layers"] = [Descriptor.from_json(d, "layer").to_json() for d in m.get("layers") or []]
    if m.get("subject"):
        out["subject"] = Descriptor.from_json(m["subject"], "subject").to_json()
    if annotations:
        out["annotations"] = gojson.gomap(annotations)
    return out


def _go_index(entries: list[dict[str, Any]], src_index: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"schemaVersion": 2, "mediaType": index.OCI_INDEX}
    if src_index.get("artifactType"):
        out["artifactType"] = src_index["artifactType"]
    out["manifests"] = entries
    if src_index.get("subject"):
        out["subject"] = Descriptor.from_json(src_index["subject"], "subject").to_json()
    if src_index.get("annotations"):
        out["annotations"] = gojson.gomap(src_index["annotations"])
    return out


def _source_index(src: ImageSource, images: list[ResolvedImage]) -> tuple[dict[str, Any],
                                                                            list[Descriptor]]:
    desc, raw = src.root()
    if desc.media_type in (index.OCI_INDEX,
                           "application/vnd.docker.distribution.manifest.list.v2+json"):
        doc = json.loads(raw)
        return doc, [Descriptor.from_json(d, "manifest") for d in doc.get("manifests") or []]
    # a single manifest: wrapped in a new index, its entry carrying the config's platform
    plat = images[0].platform
    return {}, [Descriptor(desc.media_type, desc.digest, desc.size, platform=plat)]


class _Blobs:
    """What the destination layout holds: digest -> bytes or a source blob to copy."""

    def __init__(self, src: ImageSource, store: Store) -> None:
        self.src, self.store = src, store
        self.items: dict[str, tuple[int, bytes | None, str]] = {}
        self.manifests: list[tuple[str, bytes]] = []  # (media type, bytes), children first

    def add_bytes(self, data: bytes, manifest_type: str | None = None) -> str:
        d = sha256_digest(data)
        self.items[d] = (len(data), data, "")
        if manifest_type:
            self.manifests.append((manifest_type, data))
        return d

    def add_source(self, d: Descriptor) -> None:
        self.items.setdefault(d.digest, (d.size, None, "src"))

    def add_store(self, d: str, size: int) -> None:
        self.items.setdefault(d, (size, None, "store"))

    def open(self, d: str) -> BinaryIO:
        size, data, where = self.items[d]
        if data is not None:
            return io.BytesIO(data)
        if where == "store":
            return self.store.open_blob(d)
        return self.src.open_blob(d)


def _annotate(src: ImageSource, blobs: _Blobs, entries: list[Descriptor],
              by_manifest: dict[str, IndexResult]
              ) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The index entries with re-marshalled manifests, and for each SOCI index digest the
    digest of the image manifest that now names it."""
    out, new_digest = [], {}
    for e in entries:
        r = by_manifest.get(e.digest)
        try:
            raw = src.read_blob(e)
        except ImageError:
            if r is not None:
                raise
            out.append(e.to_json())  # not held locally (another platform): kept as it was
            continue
        m = json.loads(raw)
        ann = dict(m.get("annotations") or {})
        if r is not None:
            ann[index.ANN_INDEX_DIGEST] = r.digest
        new = gojson.marshal(_go_manifest(m, ann))
        d = blobs.add_bytes(new, index.OCI_MANIFEST)
        blobs.add_source(Descriptor.from_json(m["config"], "config"))
        for layer in m.get("layers") or []:
            blobs.add_source(Descriptor.from_json(layer, "layer"))
        entry = Descriptor(index.OCI_MANIFEST, d, len(new), ann or None, e.platform,
                           e.artifact_type, e.urls, e.data)
        out.append(entry.to_json())
        if r is not None:
            new_digest[r.digest] = d
    return out, new_digest


def _soci_entries(blobs: _Blobs, entries: list[dict[str, Any]], results: list[IndexResult],
                  manifest_of: dict[str, str]) -> list[dict[str, Any]]:
    for r in results:
        sub = index.parse_index_manifest(r.manifest)
        blobs.add_bytes(r.manifest, index.OCI_MANIFEST)
        blobs.add_bytes(index.EMPTY_CONFIG)
        for d in sub.ztocs + sub.prefetches:
            blobs.add_store(d["digest"], d["size"])
        desc = Descriptor(index.OCI_MANIFEST, r.digest, r.size,
                          {index.ANN_IMAGE_MANIFEST_DIGEST: manifest_of[r.digest]},
                          r.image.platform, index.INDEX_V2)
        same = [i for i, e in enumerate(entries) if e.get("artifactType") == index.INDEX_V2
                and Platform.from_json(e.get("platform") or {}, "platform") == r.image.platform]
        if same:
            entries[same[0]] = desc.to_json()
        else:
            entries.append(desc.to_json())
    return entries


def convert(src: ImageSource, store: Store, dst: str, fmt: str | None, opts: BuildOptions,
            platforms: list[Platform] | None = None, all_platforms: bool = False,
            progress: Any = None, registry: RegistryOptions | None = None,
            on_layer: Any = None,
            uploads: Callable[[Sequence[int]], UploadSink] | None = None) -> ConvertResult:
    kind, path, tag = parse_destination(dst, fmt)
    images = resolve(src, platforms, all_platforms)
    root_desc, _ = src.root()
    results: list[IndexResult] = []
    skipped: list[str] = []
    for image in images:
        try:
            results.append(build_index(src, store, image, opts, version=2,
                                       image_digest=root_desc.digest, progress=progress,
                                       on_layer=on_layer))
        except BuildError as e:
            if "every layer was skipped" not in str(e):
                raise
            skipped.append(str(e))
    if not results:
        raise BuildError("no SOCI index built: " + "; ".join(skipped))
    doc, entries = _source_index(src, images)
    blobs = _Blobs(src, store)
    annotated, manifest_of = _annotate(src, blobs, entries,
                                       {r.image.manifest.digest: r for r in results})
    final = _soci_entries(blobs, annotated, results, manifest_of)
    raw_index = gojson.marshal(_go_index(final, doc))
    if kind == "registry":
        pushed = _push(src, blobs, dst, raw_index, opts.jobs, registry, uploads)
        return ConvertResult(pushed.digest, pushed.size, results, dst)
    index_digest = blobs.add_bytes(raw_index)
    top: dict[str, Any] = {"mediaType": index.OCI_INDEX, "digest": index_digest,
                           "size": len(raw_index)}
    if tag:
        top["annotations"] = {REF_NAME: tag}
    if kind == "oci-dir":
        _write_dir(path, blobs, top)
    else:
        _write_archive(path, blobs, _layout_index([top]))
    return ConvertResult(index_digest, len(raw_index), results, f"{kind}:{path}")


def _layout_index(entries: list[dict[str, Any]], base: dict[str, Any] | None = None) -> bytes:
    doc = dict(base or {"schemaVersion": 2, "mediaType": index.OCI_INDEX})
    doc["manifests"] = entries
    return json.dumps(doc).encode()


def _push(src: ImageSource, blobs: _Blobs, dst: str, raw_index: bytes, jobs: int,
          registry: RegistryOptions | None,
          uploads: Callable[[Sequence[int]], UploadSink] | None = None) -> Descriptor:
    """Pushes the converted image: blobs (layers mounted across repositories when the source
    is the same registry), the manifests by digest, then the image index under DST's tag."""
    from soci_native.refs import Reference
    from soci_native.registry import RegistryClient, RegistrySource

    ref = Reference.parse(dst)
    if ref.digest or not ref.tag:
        raise ImageError(f"a convert destination must be REPO:TAG (no digest): {dst!r}")
    if isinstance(src, RegistrySource) and src.reference.api_host == ref.api_host:
        client, mount_from = src.client, src.repository  # same registry: mount, don't copy
    else:
        client, mount_from = RegistryClient(ref.api_host, registry,
                                            credential_scope=ref.repository), None
    manifest_digests = {sha256_digest(raw) for _, raw in blobs.manifests}
    todo = [d for d in sorted(blobs.items) if d not in manifest_digests]

    sink = uploads([blobs.items[d][0] for d in todo]) if uploads else None

    def one(d: str) -> None:
        size, data, where = blobs.items[d]
        with blobs.open(d) as f:
            client.push_blob(ref.repository, data if data is not None else f, digest=d,
                             size=size, mount_from=mount_from if where == "src" else None)
        if sink is not None:
            sink.sent(d, size)

    from concurrent.futures import ThreadPoolExecutor
    try:
        with ThreadPoolExecutor(max(1, min(jobs, 4))) as pool:
            list(pool.map(one, todo))
    finally:
        if sink is not None:
            sink.close()
    for media_type, raw in blobs.manifests:
        client.put_manifest(ref.repository, raw, media_type)
    return client.put_manifest(ref.repository, raw_index, index.OCI_INDEX, ref.tag)


def _layout_files(blobs: _Blobs, layout_index: bytes) -> Iterator[tuple[str, int, BinaryIO]]:
    """Blobs first, index.json last: a reader never sees an index naming missing blobs."""
    for d in sorted(blobs.items):
        size = blobs.items[d][0]
        yield _blob_member(d), size, blobs.open(d)
    yield "oci-layout", 30, io.BytesIO(b'{"imageLayoutVersion":"1.0.0"}')
    yield "index.json", len(layout_index), io.BytesIO(layout_index)


def _blob_member(digest: str) -> str:
    return "blobs/sha256/" + digest.split(":", 1)[1]


def _existing_index(path: Path) -> dict[str, Any] | None:
    """The index.json of an OCI layout at ``path``; None when there is no layout yet."""
    if not path.exists() or not any(path.iterdir()):
        return None
    if not (path / "oci-layout").exists():
        raise ImageError(f"{path} exists and is not an OCI layout: refusing to write into it")
    try:
        doc = json.loads((path / "index.json").read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ImageError(f"{path}/index.json is unreadable ({e}): refusing to replace it"
                         ) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("manifests"), list):
        raise ImageError(f"{path}/index.json is not an image index: refusing to replace it")
    return doc


def _write_new(target: Path, f: BinaryIO) -> None:
    """Writes ``target`` through a temporary name; mode 0666 less the umask, as cp would."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        with f, os.fdopen(fd, "wb") as out:
            while chunk := f.read(1 << 20):
                out.write(chunk)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _write_dir(path: Path, blobs: _Blobs, top: dict[str, Any]) -> None:
    """Adds the image to the layout at ``path`` (made if need be), as skopeo and umoci do:
    blobs already there are left alone, and index.json gains the new entry, replacing only
    an entry with the same tag (an untagged image replaces nothing)."""
    doc = _existing_index(path)
    tag = (top.get("annotations") or {}).get(REF_NAME)
    entries = [e for e in (doc or {}).get("manifests", [])
               if not (tag and isinstance(e, dict)
                       and (e.get("annotations") or {}).get(REF_NAME) == tag)]
    entries.append(top)
    for d in sorted(blobs.items):
        target = path / _blob_member(d)
        size = blobs.items[d][0]
        with contextlib.suppress(OSError):
            if target.stat().st_size == size:  # content-addressed: already the same bytes
                continue
        _write_new(target, blobs.open(d))
    if not (path / "oci-layout").exists():
        _write_new(path / "oci-layout", io.BytesIO(b'{"imageLayoutVersion":"1.0.0"}'))
    _write_new(path / "index.json", io.BytesIO(_layout_index(entries, doc)))


def _write_archive(path: Path, blobs: _Blobs, layout_index: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)  # umask
    try:
        with os.fdopen(fd, "wb") as out, \
                tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
            for name, size, f in _layout_files(blobs, layout_index):
                info = tarfile.TarInfo(name)
                info.size, info.mode = size, 0o644
                with f:
                    tf.addfile(info, f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
