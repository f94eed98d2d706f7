"""The OCI (and Docker) types every part of soci-native shares: media types, digests,
descriptors, platforms, :class:`ImageError` and the :class:`ImageSource` interface. Image
sources (``images``) and the registry client (``registry``) both build on this module and
on nothing of each other's."""

from __future__ import annotations

import base64
import hashlib
import io
import platform as _platform
import re
import sys
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, BinaryIO, Literal, TypeVar

from soci_native import gojson

# ---- media types -----------------------------------------------------------------------------

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = OCI_LAYER + "+gzip"
OCI_LAYER_ZSTD = OCI_LAYER + "+zstd"
OCI_LAYER_NONDIST = "application/vnd.oci.image.layer.nondistributable.v1.tar"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = DOCKER_LAYER + ".gzip"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar"
DOCKER_FOREIGN_LAYER_GZIP = DOCKER_FOREIGN_LAYER + ".gzip"
DOCKER_SCHEMA1 = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)

MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
CONFIG_TYPES = (OCI_CONFIG, DOCKER_CONFIG)

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_CONTAINERD_NAME = "io.containerd.image.name"
ANNOTATION_DOCKER_REFERENCE_TYPE = "vnd.docker.reference.type"  # buildx attestations

Compression = Literal["gzip", "uncompressed", "zstd", "unknown"]


class ImageError(Exception):
    """Anything wrong with an image reference or its content; the message says what to do."""


# ---- Go-compatible JSON ----------------------------------------------------------------------

def go_json(obj: Any) -> bytes:
    """Compact JSON as Go's ``encoding/json`` writes it for the same value (this is
    :func:`soci_native.gojson.marshal`). Key order is the dicts' own: build them in Go struct
    field order and sort map keys, as :meth:`Descriptor.to_json` does."""
    return gojson.marshal(obj)


# ---- platforms -------------------------------------------------------------------------------

_KNOWN_OS = frozenset({
    "aix", "android", "darwin", "dragonfly", "freebsd", "illumos", "ios", "js", "linux",
    "netbsd", "openbsd", "plan9", "solaris", "wasip1", "windows",
})
_KNOWN_ARCH = frozenset({
    "386", "amd64", "amd64p32", "arm", "armbe", "arm64", "arm64be", "loong64", "mips",
    "mipsle", "mips64", "mips64le", "ppc", "ppc64", "ppc64le", "riscv64", "s390x", "sparc64",
    "wasm", "i386", "x86_64", "x86-64", "aarch64", "armhf", "armel",
})


def _norm_os(os_name: str) -> str:
    o = os_name.lower()
    return "darwin" if o == "macos" else o


def _norm_arch(arch: str, variant: str | None) -> tuple[str, str]:
    """containerd's normalisation: the canonical (architecture, variant) pair."""
    a, v = arch.lower(), (variant or "").lower()
    if a == "i386":
        return "386", ""
    if a in ("x86_64", "x86-64", "amd64"):
        return "amd64", "" if v == "v1" else v
    if a in ("aarch64", "arm64"):
        if v in ("8", "v8", "v8.0"):
            v = ""
        elif v in ("9", "9.0", "v9.0"):
            v = "v9"
        return "arm64", v
    if a == "armhf":
        return "arm", "v7"
    if a == "armel":
        return "arm", "v6"
    if a == "arm":
        if v in ("", "7"):
            v = "v7"
        elif v in ("5", "6", "8"):
            v = "v" + v
        return "arm", v
    return a, v


def _arch_alias(arch: str) -> str:
    a = arch.lower()
    return {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64", "i386": "386"}.get(a, a)


@dataclass(frozen=True)
class Platform:
    """An OCI platform. ``str()`` gives ``os/arch[/variant]``; :meth:`matches` compares the
    containerd-normalised forms (``arm64`` matches ``arm64/v8``, ``x86_64`` matches ``amd64``)."""

    os: str
    architecture: str
    variant: str | None = None
    os_version: str | None = None
    os_features: tuple[str, ...] | None = None

    @classmethod
    def parse(cls, spec: str) -> Platform:
        """``os/arch[/variant]``, ``os(osversion)/arch``, or a lone OS or architecture (the
        other part taken from the host), like containerd's ``platforms.Parse``."""
        s = spec.strip()
        parts = s.split("/")
        if not s or len(parts) > 3 or any(not p for p in parts):
            raise ImageError(
                f"invalid platform {spec!r}: expected os/arch[/variant], e.g. linux/arm64/v8")
        m = re.fullmatch(r"([^()]+)(?:\(([^()]*)\))?", parts[0])
        if m is None:
            raise ImageError(f"invalid platform {spec!r}: bad os part {parts[0]!r}")
        first, os_version = m.group(1), m.group(2) or None
        if len(parts) == 1:
            host = cls.host()
            if _norm_os(first) in _KNOWN_OS:
                return cls(_norm_os(first), host.architecture, host.variant, os_version)
            if first.lower() in _KNOWN_ARCH and os_version is None:
                arch = _arch_alias(first)
                variant = "v8" if arch == "arm64" else None
                return cls(host.os, arch, variant)
            raise ImageError(f"invalid platform {spec!r}: unknown OS or architecture "
                             f"(expected os/arch[/variant], e.g. linux/amd64)")
        variant = parts[2].lower() if len(parts) == 3 else None
        return cls(_norm_os(first), _arch_alias(parts[1]), variant, os_version)

    @classmethod
    def host(cls) -> Platform:
        """The platform of this machine, as containerd's default platform spec gives it."""
        if sys.platform.startswith("linux"):
            os_name = "linux"
        elif sys.platform == "darwin":
            os_name = "darwin"
        elif sys.platform in ("win32", "cygwin"):
            os_name = "windows"
        else:
            os_name = re.sub(r"\d+$", "", sys.platform)
        m = _platform.machine().lower()
        arch: str
        variant: str | None = None
        if m in ("x86_64", "amd64", "x64"):
            arch = "amd64"
        elif m in ("aarch64", "arm64", "armv8b", "aarch64_be"):
            arch, variant = "arm64", "v8"
        elif m.startswith("armv") and m[4:5].isdigit():
            arch, variant = "arm", "v" + m[4]
        elif m in ("i386", "i486", "i586", "i686", "x86"):
            arch = "386"
        elif m == "ppc64le":
            arch = "ppc64le"
        else:
            arch = m or "unknown"
        return cls(os_name, arch, variant)

    def normalized(self) -> Platform:
        """containerd's normalised form (lower case; ``arm64/v8`` → ``arm64``, ``arm`` →
        ``arm/v7``, ``x86_64`` → ``amd64``...)."""
        arch, variant = _norm_arch(self.architecture, self.variant)
        return Platform(_norm_os(self.os), arch, variant or None, self.os_version,
                        self.os_features)

    def matches(self, other: Platform) -> bool:
        """True when both name the same os/architecture/variant after normalisation."""
        a, b = self.normalized(), other.normalized()
        return (a.os, a.architecture, a.variant) == (b.os, b.architecture, b.variant)

    def __str__(self) -> str:
        s = f"{self.os}/{self.architecture}"
        return f"{s}/{self.variant}" if self.variant else s

    def to_json(self) -> dict[str, Any]:
        """OCI ``platform`` object in Go field order: architecture, os, os.version,
        os.features, variant (empty optional fields omitted)."""
        d: dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        if self.os_version:
            d["os.version"] = self.os_version
        if self.os_features:
            d["os.features"] = list(self.os_features)
        if self.variant:
            d["variant"] = self.variant
        return d

    @classmethod
    def from_json(cls, d: Any, what: str = "platform") -> Platform:
        """From an OCI ``platform`` object (or an image config: same os/architecture keys)."""
        if not isinstance(d, Mapping):
            raise ImageError(f"invalid {what}: expected a JSON object, got {_kind_of(d)}")
        os_name, arch = d.get("os"), d.get("architecture")
        if not isinstance(os_name, str) or not isinstance(arch, str):
            raise ImageError(f"invalid {what}: 'os' and 'architecture' must be strings")
        variant = _opt_str(d, "variant", what)
        os_version = _opt_str(d, "os.version", what)
        feats = d.get("os.features")
        if feats is not None and (not isinstance(feats, list)
                                  or not all(isinstance(f, str) for f in feats)):
            raise ImageError(f"invalid {what}: 'os.features' must be a list of strings")
        return cls(os_name, arch, variant or None, os_version or None,
                   tuple(feats) if feats else None)


def _kind_of(v: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(v), type(v).__name__)


def _opt_str(d: Mapping[str, Any], key: str, what: str) -> str | None:
    v = d.get(key)
    if v is not None and not isinstance(v, str):
        raise ImageError(f"invalid {what}: {key!r} must be a string")
    return v


# ---- descriptors -----------------------------------------------------------------------------

_DIGEST_RE = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
_HASH_HEX = {"sha256": 64, "sha512": 128}


def check_digest(digest: str) -> str:
    """Returns ``digest`` if it is a well-formed sha256/sha512 digest, else raises ImageError."""
    if not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest):
        raise ImageError(f"invalid digest {digest!r}: expected sha256:<64 hex digits>")
    alg, enc = digest.split(":", 1)
    if alg not in _HASH_HEX:
        raise ImageError(f"unsupported digest algorithm {alg!r} in {digest} (sha256 and "
                         "sha512 are supported)")
    if len(enc) != _HASH_HEX[alg] or not re.fullmatch(r"[0-9a-f]+", enc):
        raise ImageError(f"invalid digest {digest!r}: {alg} needs {_HASH_HEX[alg]} lowercase "
                         "hex digits")
    return digest


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor. ``to_json`` writes Go's field order (mediaType, digest, size,
    urls, annotations, data, platform, artifactType), so re-marshalled indexes match Go."""

    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] | None = None
    platform: Platform | None = None
    artifact_type: str | None = None
    urls: tuple[str, ...] | None = None
    data: bytes | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest,
                             "size": self.size}
        if self.urls:
            d["urls"] = list(self.urls)
        if self.annotations:
            d["annotations"] = dict(sorted(self.annotations.items()))
        if self.data:
            d["data"] = base64.b64encode(self.data).decode("ascii")
        if self.platform is not None:
            d["platform"] = self.platform.to_json()
        if self.artifact_type:
            d["artifactType"] = self.artifact_type
        return d

    @classmethod
    def from_json(cls, d: Any, what: str = "descriptor") -> Descriptor:
        if not isinstance(d, Mapping):
            raise ImageError(f"invalid {what}: expected a JSON object, got {_kind_of(d)}")
        mt = d.get("mediaType", "")
        if not isinstance(mt, str):
            raise ImageError(f"invalid {what}: 'mediaType' must be a string")
        digest = d.get("digest")
        if not isinstance(digest, str):
            raise ImageError(f"invalid {what}: missing 'digest'")
        try:
            check_digest(digest)
        except ImageError as e:
            raise ImageError(f"invalid {what}: {e}") from None
        size = d.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ImageError(f"invalid {what} {digest}: 'size' must be a non-negative integer")
        ann = d.get("annotations")
        if ann is not None and (not isinstance(ann, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in ann.items())):
            raise ImageError(f"invalid {what} {digest}: 'annotations' must map strings to "
                             "strings")
        urls = d.get("urls")
        if urls is not None and (not isinstance(urls, list)
                                 or not all(isinstance(u, str) for u in urls)):
            raise ImageError(f"invalid {what} {digest}: 'urls' must be a list of strings")
        data = d.get("data")
        raw: bytes | None = None
        if data is not None:
            if not isinstance(data, str):
                raise ImageError(f"invalid {what} {digest}: 'data' must be base64 text")
            try:
                raw = base64.b64decode(data, validate=True)
            except ValueError:
                raise ImageError(f"invalid {what} {digest}: 'data' is not valid base64") \
                    from None
        plat = d.get("platform")
        return cls(
            media_type=mt, digest=digest, size=size,
            annotations=dict(ann) if ann else None,
            platform=Platform.from_json(plat, f"platform of {what} {digest}")
            if plat is not None else None,
            artifact_type=_opt_str(d, "artifactType", what) or None,
            urls=tuple(urls) if urls else None,
            data=raw or None,
        )

    @property
    def ref_name(self) -> str | None:
        return (self.annotations or {}).get(ANNOTATION_REF_NAME)


def _docker_desc_json(d: Descriptor) -> dict[str, Any]:
    """A descriptor in docker/distribution's field order (mediaType, size, digest, urls)."""
    out: dict[str, Any] = {"mediaType": d.media_type, "size": d.size, "digest": d.digest}
    if d.urls:
        out["urls"] = list(d.urls)
    return out


def layer_compression(media_type: str) -> Compression:
    """The compression of a layer media type as the reference sees it (containerd's
    ``DiffCompression``, soci-format.md 1.5): OCI ``…layer.v1.tar`` → "uncompressed", Docker
    ``…rootfs.diff.tar`` → "unknown" (callers treat it as tar; the bytes may still be gzip),
    ``+gzip``/``.tar.gzip`` → "gzip", ``+zstd`` → "zstd". Other layer types (encrypted, not a
    layer at all) raise :class:`ImageError`."""
    base, _, ext = media_type.partition(";")[0].strip().partition("+")
    if base in (DOCKER_LAYER, DOCKER_FOREIGN_LAYER) and not ext:
        return "unknown"
    if base in (DOCKER_LAYER_GZIP, DOCKER_FOREIGN_LAYER_GZIP) and not ext:
        return "gzip"
    if base in (OCI_LAYER, OCI_LAYER_NONDIST):
        if not ext:
            return "uncompressed"
        if ext == "gzip":
            return "gzip"
        if ext == "zstd":
            return "zstd"
    raise ImageError(f"unsupported layer media type {media_type!r} (expected an OCI "
                     f"{OCI_LAYER}[+gzip|+zstd] or Docker {DOCKER_LAYER}[.gzip] layer)")


# ---- image sources ---------------------------------------------------------------------------

DigestLike = str | Descriptor
_S = TypeVar("_S", bound="ImageSource")


def _digest_of(d: DigestLike) -> str:
    return check_digest(d.digest if isinstance(d, Descriptor) else d)


class ImageSource(ABC):
    """Where an image's manifests and blobs come from.

    Subclasses supply :meth:`root`, :meth:`_blob_size` and :meth:`_open_stored` (and
    :meth:`blob_path` when blobs are plain local files); reading, verification and the
    context-manager protocol live here. A registry source fits the same shape: ``root`` GETs
    the manifest, ``_open_stored`` streams or spools the blob, ``blob_path`` returns None.
    """

    ref: str

    def __init__(self, ref: str) -> None:
        self.ref = ref
        self._virtual: dict[str, bytes] = {}  # documents made here (no stored blob)

    @abstractmethod
    def root(self) -> tuple[Descriptor, bytes]:
        """The top-level manifest or index the reference names, and its raw bytes."""

    @abstractmethod
    def _blob_size(self, digest: str) -> int | None:
        """Stored size of a blob, None if the source does not have it."""

    @abstractmethod
    def _open_stored(self, digest: str) -> BinaryIO:
        """A file object over exactly the stored blob (only called when it exists)."""

    def blob_path(self, digest: DigestLike) -> str | None:
        """A plain local file holding exactly the blob, or None when there is none (archive
        members, synthesised documents, remote blobs). The file is not verified here."""
        return None

    def close(self) -> None:
        return None

    def has_blob(self, digest: DigestLike) -> bool:
        dg = _digest_of(digest)
        return dg in self._virtual or self._blob_size(dg) is not None

    def _missing(self, digest: str) -> ImageError:
        return ImageError(f"missing blob {digest} in {self.ref} (the image is incomplete: "
                          "re-export it with all its layers)")

    def _check_size(self, desc: DigestLike, actual: int) -> None:
        if isinstance(desc, Descriptor) and desc.size != actual:
            raise ImageError(f"size mismatch for blob {desc.digest} in {self.ref}: the "
                             f"descriptor says {desc.size} bytes, the blob has {actual}")

    def open_blob(self, digest: DigestLike) -> BinaryIO:
        """A readable, seekable binary file over exactly the blob's bytes (not verified: use
        :meth:`read_blob` for that, or hash while reading). Given a Descriptor, its size is
        checked against the stored blob's."""
        dg = _digest_of(digest)
        if dg in self._virtual:
            data = self._virtual[dg]
            self._check_size(digest, len(data))
            return io.BytesIO(data)
        size = self._blob_size(dg)
        if size is None:
            raise self._missing(dg)
        self._check_size(digest, size)
        return self._open_stored(dg)

    def read_blob(self, desc_or_digest: DigestLike) -> bytes:
        """The blob's bytes, verified against its digest (and the descriptor's size). Reads the
        whole blob into memory: meant for manifests and configs; stream layers with
        :meth:`open_blob` or index them from :meth:`blob_path`."""
        dg = _digest_of(desc_or_digest)
        with self.open_blob(desc_or_digest) as f:
            data = f.read()
        self._check_size(desc_or_digest, len(data))
        alg, want = dg.split(":", 1)
        got = hashlib.new(alg, data).hexdigest()
        if got != want:
            raise ImageError(f"digest mismatch for blob {dg} in {self.ref}: its content "
                             f"hashes to {alg}:{got} (corrupt or tampered image)")
        return data

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.ref!r})"


def _structural_type(doc: Any) -> str | None:
    """The media type a document declares, or the OCI type its shape implies."""
    if not isinstance(doc, dict):
        return None
    mt = doc.get("mediaType")
    if isinstance(mt, str) and mt:
        return mt
    if "manifests" in doc:
        return OCI_INDEX
    if "config" in doc and "layers" in doc:
        return OCI_MANIFEST
    return None
