"""Image sources: read OCI / Docker images from local layouts and archives, no daemon.

References use skopeo's transport syntax:

* ``oci:PATH[:TAG]``: an OCI image layout directory;
* ``oci-archive:PATH[:TAG]``: a tar of an OCI image layout, read in place (blobs are windows
  into the tar at their member offsets, nothing is extracted);
* ``docker-archive:PATH[:NAME]``: ``docker save`` output. When the archive also holds an OCI
  layout (Docker 25+) that layout is used; otherwise a Docker v2 schema2 manifest is made from
  ``manifest.json`` (deterministic JSON, layer media type chosen by sniffing each layer file);
* a bare ``PATH[:TAG]`` that is one of those (a directory with ``oci-layout`` → oci, a tar with
  ``oci-layout`` → oci-archive, a tar or directory with ``manifest.json`` → docker-archive).

``TAG`` picks an ``index.json`` entry by its ``org.opencontainers.image.ref.name`` annotation
(or, failing that, by its ``io.containerd.image.name`` as docker save writes it); ``@N`` picks
entry N.

Registry images: ``docker://HOST[:PORT]/REPO[:TAG][@DIGEST]`` (Docker Hub short names are
normalised: ``docker://alpine`` is ``docker.io/library/alpine``), or the same without
``docker://`` when it names its host explicitly (``host.name/…``, ``host:port/…``,
``localhost/…``) and is not an existing path. They are read by
:class:`soci_native.registry.RegistrySource`; how to reach the registry (plain HTTP, TLS
verification, credentials) is given as ``open_image(ref, registry=RegistryOptions(...))``.

:func:`resolve` walks from the reference's top-level manifest or index to the platform images
a caller asked for: manifest, config and layer descriptors, verified by digest and size.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import posixpath
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

from soci_native.oci import (  # the shared types, re-exported here as before
    ANNOTATION_CONTAINERD_NAME,
    ANNOTATION_DOCKER_REFERENCE_TYPE,
    ANNOTATION_REF_NAME,
    CONFIG_TYPES,
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    DOCKER_SCHEMA1,
    INDEX_TYPES,
    MANIFEST_TYPES,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
    Descriptor,
    DigestLike,
    ImageError,
    ImageSource,
    Platform,
    _digest_of,
    _docker_desc_json,
    _structural_type,
    check_digest,
    go_json,
    layer_compression,
    sha256_digest,
)
from soci_native.refs import looks_like_registry_ref

if TYPE_CHECKING:
    from soci_native.registry import RegistryOptions

# ---- blob storage: a directory or a tar read in place ----------------------------------------

class _Store(ABC):
    """Named files of a layout: a directory or the members of an uncompressed tar."""

    location: str

    @abstractmethod
    def size(self, name: str) -> int | None:
        """Size of the file, None when there is no such (regular) file."""

    @abstractmethod
    def open(self, name: str) -> BinaryIO: ...

    @abstractmethod
    def path(self, name: str) -> str | None: ...

    def read(self, name: str) -> bytes:
        with self.open(name) as f:
            return f.read()

    def exists(self, name: str) -> bool:
        return self.size(name) is not None

    def hint(self) -> str:
        """Text to add to a "file not found" error (why it may be missing)."""
        return ""

    def close(self) -> None:
        return None


def _clean_name(name: str) -> str | None:
    """A relative member/file name normalised, or None if it escapes the root."""
    n = posixpath.normpath("/" + name.replace("\\", "/")).lstrip("/")
    if not n or n == ".":
        return None
    return n


class _DirStore(_Store):
    def __init__(self, root: str) -> None:
        self.location = root
        self.root = root

    def _full(self, name: str) -> str | None:
        n = posixpath.normpath(name)
        if n.startswith(("/", "../")) or n == "..":
            return None
        return os.path.join(self.root, *n.split("/"))

    def size(self, name: str) -> int | None:
        p = self._full(name)
        if p is None or not os.path.isfile(p):
            return None
        return os.path.getsize(p)

    def open(self, name: str) -> BinaryIO:
        p = self._full(name)
        if p is None or not os.path.isfile(p):
            raise FileNotFoundError(name)
        return open(p, "rb")

    def path(self, name: str) -> str | None:
        p = self._full(name)
        return p if p is not None and os.path.isfile(p) else None


class _Window(io.RawIOBase):
    """A read-only, seekable view of ``length`` bytes at ``offset`` of a file descriptor
    (pread: several windows over one tar read independently)."""

    def __init__(self, fd: int, offset: int, length: int, name: str) -> None:
        super().__init__()
        self._fd = fd
        self._offset = offset
        self._length = length
        self._pos = 0
        self.name = name

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        if whence == io.SEEK_SET:
            new = pos
        elif whence == io.SEEK_CUR:
            new = self._pos + pos
        elif whence == io.SEEK_END:
            new = self._length + pos
        else:
            raise ValueError(f"invalid whence {whence}")
        if new < 0:
            raise OSError(22, "negative seek position")
        self._pos = new
        return new

    def readinto(self, b: Any) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        view = memoryview(b).cast("B")
        n = min(len(view), self._length - self._pos)
        if n <= 0:
            return 0
        got = os.preadv(self._fd, [view[:n]], self._offset + self._pos)
        self._pos += got
        return got

    def readall(self) -> bytes:
        n = max(0, self._length - self._pos)
        out = bytearray(n)
        view = memoryview(out)
        done = 0
        while done < n:
            got = self.readinto(view[done:])
            if not got:
                break
            done += got
        return bytes(out[:done])

    def close(self) -> None:
        if not self.closed:
            try:
                os.close(self._fd)
            finally:
                super().close()


_COMPRESSED_MAGIC = {
    b"\x1f\x8b": ("gzip", "gunzip"),
    b"\x28\xb5\x2f\xfd": ("zstd", "unzstd"),
    b"\xfd7zXZ\x00": ("xz", "unxz"),
    b"BZh": ("bzip2", "bunzip2"),
}


def _sniff_compression(head: bytes) -> tuple[str, str] | None:
    for magic, info in _COMPRESSED_MAGIC.items():
        if head.startswith(magic):
            return info
    return None


class _TarStore(_Store):
    """An uncompressed tar archive, indexed once by member name; files are read in place."""

    _MAX_LINKS = 16

    def __init__(self, path: str) -> None:
        self.location = path
        try:
            self._fd = os.open(path, os.O_RDONLY)
        except OSError as e:
            raise ImageError(f"cannot open archive {path}: {e.strerror or e}") from None
        try:
            self._members: dict[str, tuple[int, int]] = {}
            self._links: dict[str, str] = {}
            self._scan(path)
        except BaseException:
            os.close(self._fd)
            raise

    def _scan(self, path: str) -> None:
        import tarfile  # archives only: an oci: layout does not pay for it

        file_size = os.fstat(self._fd).st_size
        head = os.pread(self._fd, 8, 0)
        comp = _sniff_compression(head)
        if comp is not None:
            raise ImageError(f"{path} is a {comp[0]}-compressed archive; images are read in "
                             f"place from plain tar archives: decompress it first ({comp[1]})")
        f = os.fdopen(os.dup(self._fd), "rb")
        try:
            with tarfile.open(fileobj=f, mode="r:") as tf:
                for ti in tf:
                    name = _clean_name(ti.name)
                    if name is None:
                        continue
                    if ti.isreg() and not ti.issparse():
                        if ti.offset_data + ti.size > file_size:
                            raise ImageError(
                                f"unreadable archive {path}: truncated (member {ti.name!r} "
                                f"needs {ti.offset_data + ti.size} bytes, the file has "
                                f"{file_size})")
                        self._members[name] = (ti.offset_data, ti.size)
                        self._links.pop(name, None)
                    elif ti.issym():
                        target = posixpath.join(posixpath.dirname(name), ti.linkname)
                        t = _clean_name(target) if not ti.linkname.startswith("/") else \
                            _clean_name(ti.linkname)
                        if t is not None:
                            self._links[name] = t
                            self._members.pop(name, None)
                    elif ti.islnk():
                        t = _clean_name(ti.linkname)
                        if t is not None:
                            self._links[name] = t
                            self._members.pop(name, None)
                end = tf.offset
        except (tarfile.TarError, EOFError, UnicodeError, ValueError) as e:
            raise ImageError(f"unreadable archive {path}: {e or type(e).__name__} (is it a "
                             "tar file?)") from None
        finally:
            f.close()
        if not self._members:
            raise ImageError(f"unreadable archive {path}: no files in it (is it a tar file?)")
        # Writers end a tar with zero blocks; a scan that ran into the end of the file instead
        # most likely means the archive was cut short at a member boundary.
        tail = os.pread(self._fd, 512, end)
        self.truncated = len(tail) < 512 or any(tail)

    def hint(self) -> str:
        if not self.truncated:
            return ""
        return (f"; unreadable archive {self.location}: it looks truncated (it ends without "
                "the tar end-of-archive marker)")

    def _lookup(self, name: str) -> tuple[int, int] | None:
        n = _clean_name(name)
        for _ in range(self._MAX_LINKS):
            if n is None:
                return None
            if n in self._members:
                return self._members[n]
            n = self._links.get(n)
        return None

    def size(self, name: str) -> int | None:
        m = self._lookup(name)
        return None if m is None else m[1]

    def open(self, name: str) -> BinaryIO:
        m = self._lookup(name)
        if m is None:
            raise FileNotFoundError(name)
        win = _Window(os.dup(self._fd), m[0], m[1], f"{self.location}!{name}")
        return io.BufferedReader(win, buffer_size=1 << 16)

    def read(self, name: str) -> bytes:
        m = self._lookup(name)
        if m is None:
            raise FileNotFoundError(name)
        data = os.pread(self._fd, m[1], m[0])
        if len(data) != m[1]:
            raise ImageError(f"unreadable archive {self.location}: short read of {name!r}")
        return data

    def path(self, name: str) -> str | None:
        return None

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _load_json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ImageError(f"invalid JSON in {what}: {e}") from None


def _blob_name(digest: str) -> str:
    alg, enc = check_digest(digest).split(":", 1)
    return f"blobs/{alg}/{enc}"


def _docker_name(ref: str) -> str:
    """A docker image name in canonical form: ``img:v1`` → ``docker.io/library/img:v1``."""
    name, at, dg = ref.partition("@")
    slash, colon = name.rfind("/"), name.rfind(":")
    repo, tag = (name[:colon], name[colon + 1:]) if colon > slash else (name, "")
    first, sep, _ = repo.partition("/")
    if not sep or ("." not in first and ":" not in first and first != "localhost"):
        repo = "docker.io/" + repo
    if repo.startswith("docker.io/") and repo.count("/") == 1:
        repo = "docker.io/library/" + repo[len("docker.io/"):]
    if not tag and not at:
        tag = "latest"
    return repo + (":" + tag if tag else "") + (at + dg if at else "")


def _names_of(d: Descriptor) -> list[str]:
    ann = d.annotations or {}
    return [v for v in (ann.get(ANNOTATION_REF_NAME), ann.get(ANNOTATION_CONTAINERD_NAME)) if v]


def _pick_index(tag: str, count: int, where: str) -> int | None:
    if not tag.startswith("@"):
        return None
    try:
        i = int(tag[1:])
    except ValueError:
        raise ImageError(f"invalid image index {tag!r} for {where}: expected @N") from None
    if not 0 <= i < count:
        raise ImageError(f"image index {tag} out of range for {where}: it has {count} "
                         f"image(s) (@0..@{count - 1})")
    return i


class OCILayoutSource(ImageSource):
    """An OCI image layout: a directory (``oci:``) or a tar of one (``oci-archive:``)."""

    def __init__(self, ref: str, store: _Store, tag: str | None) -> None:
        super().__init__(ref)
        self._store = store
        self.tag = tag
        where = store.location
        try:
            layout_raw = store.read("oci-layout")
        except FileNotFoundError:
            raise ImageError(f"{where} is not an OCI image layout: no oci-layout file"
                             f"{store.hint()}") from None
        layout = _load_json(layout_raw, f"{where}/oci-layout")
        if not isinstance(layout, dict) or not isinstance(layout.get("imageLayoutVersion"), str):
            raise ImageError(f"{where}/oci-layout: missing imageLayoutVersion")
        try:
            self._index_raw = store.read("index.json")
        except FileNotFoundError:
            raise ImageError(f"{where} is not an OCI image layout: no index.json"
                             f"{store.hint()}") from None
        index = _load_json(self._index_raw, f"{where}/index.json")
        if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
            raise ImageError(f"{where}/index.json: not an image index (no 'manifests' list)")
        self.entries = [Descriptor.from_json(m, f"index.json entry {i}")
                        for i, m in enumerate(index["manifests"])]
        self._root: tuple[Descriptor, bytes] | None = None

    def _tags(self) -> str:
        names = sorted({n for e in self.entries for n in _names_of(e)[:1]})
        return ", ".join(names) if names else "none"

    def _select(self) -> Descriptor:
        where, tag, entries = self._store.location, self.tag, self.entries
        if not entries:
            raise ImageError(f"no images in {where}: its index.json lists no manifests")
        if tag is None:
            if len(entries) == 1:
                return entries[0]
            if all(not _names_of(e) and e.media_type in MANIFEST_TYPES for e in entries):
                # index.json itself is the (multi-platform) image index
                dg = sha256_digest(self._index_raw)
                self._virtual[dg] = self._index_raw
                return Descriptor(OCI_INDEX, dg, len(self._index_raw))
            raise ImageError(f"{where} holds {len(entries)} images; name one as "
                             f"{self.ref}:TAG (tags: {self._tags()})")
        i = _pick_index(tag, len(entries), where)
        if i is not None:
            return entries[i]
        hits = [e for e in entries if e.ref_name == tag]
        if not hits:
            want = _docker_name(tag)
            hits = [e for e in entries
                    if any(n == tag or _docker_name(n) == want for n in _names_of(e))]
        if not hits:
            raise ImageError(f"no image tagged {tag!r} in {where} (tags: {self._tags()})")
        if len(hits) == 1:
            return hits[0]
        if all(e.media_type in MANIFEST_TYPES for e in hits):
            # several platform manifests under one tag: an index of them
            raw = go_json({"schemaVersion": 2, "mediaType": OCI_INDEX,
                           "manifests": [e.to_json() for e in hits]})
            dg = sha256_digest(raw)
            self._virtual[dg] = raw
            return Descriptor(OCI_INDEX, dg, len(raw))
        raise ImageError(f"tag {tag!r} names {len(hits)} entries in {where}; pick one with "
                         f"@N (N = 0..{len(entries) - 1}, position in index.json)")

    def root(self) -> tuple[Descriptor, bytes]:
        if self._root is None:
            desc = self._select()
            raw = self.read_blob(desc)
            if not desc.media_type:
                desc = dataclasses.replace(desc, media_type=_sniff_media_type(raw, desc))
            self._root = (desc, raw)
        return self._root

    def _blob_size(self, digest: str) -> int | None:
        return self._store.size(_blob_name(digest))

    def _missing(self, digest: str) -> ImageError:
        hint = self._store.hint()
        return ImageError(super()._missing(digest).args[0] + hint) if hint else \
            super()._missing(digest)

    def _open_stored(self, digest: str) -> BinaryIO:
        try:
            return self._store.open(_blob_name(digest))
        except FileNotFoundError:
            raise self._missing(digest) from None

    def blob_path(self, digest: DigestLike) -> str | None:
        dg = _digest_of(digest)
        if dg in self._virtual:
            return None
        return self._store.path(_blob_name(dg))

    def close(self) -> None:
        self._store.close()


class DockerArchiveSource(ImageSource):
    """``docker save`` output without an OCI layout: ``manifest.json`` + config + layer tars.

    The manifest is synthesised as Docker v2 schema2 JSON (docker/distribution field order,
    compact): config media type ``…container.image.v1+json``; each layer's digest and size are
    those of the layer file as stored, media type ``…rootfs.diff.tar.gzip`` when the file is
    gzip, ``…layer.v1.tar+zstd`` when zstd, else ``…rootfs.diff.tar``.
    """

    def __init__(self, ref: str, store: _Store, name: str | None) -> None:
        super().__init__(ref)
        self._store = store
        where = store.location
        try:
            raw = store.read("manifest.json")
        except FileNotFoundError:
            raise ImageError(f"{where} is not a docker save archive: no manifest.json"
                             f"{store.hint()}") from None
        items = _load_json(raw, f"{where}/manifest.json")
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise ImageError(f"{where}/manifest.json: expected a list of images")
        if not items:
            raise ImageError(f"no images in {where}: manifest.json is empty")
        self._item = self._choose(items, name, where)
        self._names: dict[str, str] = {}  # digest -> member name
        self._root: tuple[Descriptor, bytes] | None = None

    @staticmethod
    def _choose(items: list[dict[str, Any]], name: str | None, where: str) -> dict[str, Any]:
        def tags(i: dict[str, Any]) -> list[str]:
            t = i.get("RepoTags")
            return [x for x in t if isinstance(x, str)] if isinstance(t, list) else []

        all_tags = ", ".join(t for i in items for t in tags(i)) or "none"
        if name is None:
            if len(items) == 1:
                return items[0]
            raise ImageError(f"{where} holds {len(items)} images; name one as "
                             f"docker-archive:{where}:NAME or @N (names: {all_tags})")
        i = _pick_index(name, len(items), where)
        if i is not None:
            return items[i]
        want = _docker_name(name)
        hits = [i for i in items if any(t == name or _docker_name(t) == want for t in tags(i))]
        if not hits:
            raise ImageError(f"no image named {name!r} in {where} (names: {all_tags})")
        return hits[0]

    def _member_desc(self, member: Any, kind: str) -> tuple[str, int, bytes]:
        if not isinstance(member, str):
            raise ImageError(f"{self._store.location}/manifest.json: {kind} must be a file name")
        size = self._store.size(member)
        if size is None:
            raise ImageError(f"missing {kind} file {member!r} in {self._store.location} (listed "
                             f"in manifest.json){self._store.hint()}")
        h = hashlib.sha256()
        head = b""
        with self._store.open(member) as f:
            while chunk := f.read(1 << 20):
                if not head:
                    head = chunk[:8]
                h.update(chunk)
        dg = "sha256:" + h.hexdigest()
        self._names[dg] = member
        return dg, size, head

    def root(self) -> tuple[Descriptor, bytes]:
        if self._root is None:
            item = self._item
            cdg, csize, _ = self._member_desc(item.get("Config"), "config")
            layers = item.get("Layers")
            if not isinstance(layers, list):
                raise ImageError(f"{self._store.location}/manifest.json: 'Layers' must be a "
                                 "list")
            ldescs = []
            for member in layers:
                dg, size, head = self._member_desc(member, "layer")
                comp = _sniff_compression(head)
                mt = {"gzip": DOCKER_LAYER_GZIP, "zstd": OCI_LAYER_ZSTD}.get(
                    comp[0] if comp else "", DOCKER_LAYER)
                ldescs.append(Descriptor(mt, dg, size))
            doc = {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
                   "config": _docker_desc_json(Descriptor(DOCKER_CONFIG, cdg, csize)),
                   "layers": [_docker_desc_json(d) for d in ldescs]}
            raw = go_json(doc)
            dg = sha256_digest(raw)
            self._virtual[dg] = raw
            self._root = (Descriptor(DOCKER_MANIFEST, dg, len(raw)), raw)
        return self._root

    def _blob_size(self, digest: str) -> int | None:
        self.root()
        member = self._names.get(digest)
        return None if member is None else self._store.size(member)

    def _open_stored(self, digest: str) -> BinaryIO:
        return self._store.open(self._names[digest])

    def blob_path(self, digest: DigestLike) -> str | None:
        dg = _digest_of(digest)
        self.root()
        member = self._names.get(dg)
        return None if member is None else self._store.path(member)

    def close(self) -> None:
        self._store.close()


def _sniff_media_type(raw: bytes, desc: Descriptor) -> str:
    mt = _structural_type(_load_json(raw, f"blob {desc.digest}"))
    if mt:
        return mt
    raise ImageError(f"cannot tell what blob {desc.digest} is: no mediaType in its descriptor "
                     "or content")


# ---- opening references ----------------------------------------------------------------------

Opener = Callable[[str, str], ImageSource]
"""(full reference, the part after ``transport:``) -> source."""


def _split_path(rest: str) -> tuple[str, str | None]:
    """skopeo's ``PATH[:REF]`` split: at the first colon, unless the whole text is a path."""
    if os.path.exists(rest) or ":" not in rest:
        return rest, None
    path, _, tag = rest.partition(":")
    return path, tag or None


def _need(path: str, ref: str) -> None:
    if not path:
        raise ImageError(f"invalid image reference {ref!r}: empty path")
    if not os.path.exists(path):
        raise ImageError(f"no such file or directory: {path!r} (from {ref!r})")


def _open_oci(ref: str, rest: str) -> ImageSource:
    path, tag = _split_path(rest)
    _need(path, ref)
    if not os.path.isdir(path):
        raise ImageError(f"{path} is not a directory; for a tar of an OCI layout use "
                         f"oci-archive:{rest}")
    return OCILayoutSource(ref, _DirStore(path), tag)


def _open_oci_archive(ref: str, rest: str) -> ImageSource:
    path, tag = _split_path(rest)
    _need(path, ref)
    if os.path.isdir(path):
        raise ImageError(f"{path} is a directory; for an OCI layout directory use oci:{rest}")
    store = _TarStore(path)
    try:
        return OCILayoutSource(ref, store, tag)
    except BaseException:
        store.close()
        raise


def _open_docker_archive(ref: str, rest: str) -> ImageSource:
    path, name = _split_path(rest)
    _need(path, ref)
    store: _Store = _DirStore(path) if os.path.isdir(path) else _TarStore(path)
    try:
        if store.exists("oci-layout") and store.exists("index.json"):
            return OCILayoutSource(ref, store, name)
        if isinstance(store, _DirStore) and not store.exists("manifest.json"):
            raise ImageError(f"docker-archive:{path} is a directory without manifest.json: "
                             "docker-archive: takes a `docker save` tar file (or one unpacked); "
                             f"for an OCI layout directory use oci:{path}")
        return DockerArchiveSource(ref, store, name)
    except BaseException:
        store.close()
        raise


def _open_registry(ref: str, rest: str, options: RegistryOptions | None = None) -> ImageSource:
    from soci_native.registry import RegistrySource  # urllib3 only when a registry is used

    return RegistrySource(ref, options)


_TRANSPORTS: dict[str, Opener] = {
    "oci": _open_oci,
    "oci-archive": _open_oci_archive,
    "docker-archive": _open_docker_archive,
    "docker": _open_registry,  # docker://host/repo:tag (and bare host/repo:tag)
}
_UNSUPPORTED_TRANSPORTS = ("dir", "docker-daemon", "containers-storage", "ostree", "sif",
                           "tarball")


def _open_bare(ref: str, registry: RegistryOptions | None = None) -> ImageSource:
    path, tag = ref, None
    if not os.path.exists(path):  # PATH:TAG, split at the first colon that leaves a path
        for i, c in enumerate(ref):
            if c == ":" and i and os.path.exists(ref[:i]):
                path, tag = ref[:i], ref[i + 1:] or None
                break
    if not os.path.exists(path):
        if looks_like_registry_ref(ref):
            return _open_registry(ref, ref, registry)
        raise ImageError(f"no such file or directory: {ref!r} (local images: oci:DIR[:TAG], "
                         "oci-archive:FILE[:TAG] or docker-archive:FILE; registry images: "
                         "docker://HOST/REPO[:TAG], or docker://NAME for Docker Hub)")
    if os.path.isdir(path):
        store: _Store = _DirStore(path)
        if store.exists("oci-layout"):
            return OCILayoutSource(ref, store, tag)
        if store.exists("manifest.json"):
            return DockerArchiveSource(ref, store, tag)
        raise ImageError(f"{path} is neither an OCI image layout (no oci-layout file) nor an "
                         "unpacked docker save archive (no manifest.json)")
    tstore = _TarStore(path)
    try:
        if tstore.exists("oci-layout"):
            return OCILayoutSource(ref, tstore, tag)
        if tstore.exists("manifest.json"):
            return DockerArchiveSource(ref, tstore, tag)
        raise ImageError(f"{path} is a tar archive but not an image: it has neither oci-layout "
                         f"(OCI layout) nor manifest.json (docker save){tstore.hint()}")
    except BaseException:
        tstore.close()
        raise


def open_image(ref: str, *, registry: RegistryOptions | None = None) -> ImageSource:
    """Opens an image reference (see the module docstring for the forms). ``registry`` says
    how to reach a registry (ignored for local images). Close the result, or use it as a
    context manager."""
    if not isinstance(ref, str) or not ref:
        raise ImageError("empty image reference")
    if ref.startswith("docker://"):
        return _open_registry(ref, ref[len("docker://"):], registry)
    m = re.match(r"([a-z][a-z0-9-]*):(.*)\Z", ref, re.S)
    if m is not None and not os.path.exists(ref):
        transport, rest = m.group(1), m.group(2)
        if transport in _TRANSPORTS and transport != "docker":
            return _TRANSPORTS[transport](ref, rest)
        if transport in _UNSUPPORTED_TRANSPORTS:
            raise ImageError(f"unsupported transport {transport!r} in {ref!r}: use oci:, "
                             "oci-archive:, docker-archive: or docker://")
        path_like = "/" in rest or os.path.exists(rest.partition(":")[0])  # not NAME:TAG
        if path_like and not looks_like_registry_ref(ref) and not os.path.exists(transport):
            raise ImageError(f"unknown transport {transport!r} in {ref!r}: use oci:DIR[:TAG], "
                             "oci-archive:FILE[:TAG], docker-archive:FILE or "
                             "docker://HOST/REPO[:TAG]")
    return _open_bare(ref, registry)


# ---- resolving platform images ---------------------------------------------------------------

@dataclass
class ResolvedImage:
    """One platform image: its manifest (descriptor with platform filled), config, layers."""

    source_ref: str
    manifest: Descriptor
    manifest_bytes: bytes
    manifest_json: dict[str, Any]
    config: dict[str, Any]
    config_desc: Descriptor
    platform: Platform
    layers: list[Descriptor]


_MAX_INDEX_DEPTH = 4


def _doc_kind(desc: Descriptor, doc: Any, what: str) -> Literal["index", "manifest"]:
    if not isinstance(doc, dict):
        raise ImageError(f"{what} is not a JSON object")
    inner = doc.get("mediaType")
    if inner is not None and not isinstance(inner, str):
        raise ImageError(f"{what}: 'mediaType' must be a string")
    mt = desc.media_type or inner or ""
    if inner and desc.media_type and inner != desc.media_type:
        raise ImageError(f"{what}: descriptor says media type {desc.media_type} but the "
                         f"document says {inner}")
    if mt in DOCKER_SCHEMA1 or doc.get("schemaVersion") == 1:
        raise ImageError(f"{what} is a Docker schema 1 manifest, which is not supported; "
                         "convert it (skopeo copy --format v2s2 ...)")
    if not mt:
        mt = _structural_type(doc) or ""
    if mt in INDEX_TYPES:
        return "index"
    if mt in MANIFEST_TYPES:
        return "manifest"
    raise ImageError(f"{what}: unsupported media type {mt!r} (expected an OCI or Docker v2 "
                     "image manifest or index)")


def _is_image_entry(d: Descriptor) -> bool:
    if d.artifact_type:
        return False
    if (d.annotations or {}).get(ANNOTATION_DOCKER_REFERENCE_TYPE):
        return False
    p = d.platform
    if p is not None and (p.os == "unknown" or p.architecture == "unknown"):
        return False
    return d.media_type in MANIFEST_TYPES or d.media_type in INDEX_TYPES


def _image_entries(src: ImageSource, doc: dict[str, Any], what: str,
                   depth: int) -> list[Descriptor]:
    mans = doc.get("manifests")
    if not isinstance(mans, list):
        raise ImageError(f"{what}: no 'manifests' list")
    out: list[Descriptor] = []
    for i, m in enumerate(mans):
        d = Descriptor.from_json(m, f"{what} entry {i}")
        if not _is_image_entry(d):
            continue
        if d.media_type in INDEX_TYPES:
            if depth >= _MAX_INDEX_DEPTH or not src.has_blob(d):
                continue
            sub = _load_json(src.read_blob(d), f"index {d.digest}")
            if _doc_kind(d, sub, f"index {d.digest}") == "index":
                out.extend(_image_entries(src, sub, f"index {d.digest}", depth + 1))
            continue
        out.append(d)
    return out


def _load_image(src: ImageSource, desc: Descriptor, raw: bytes, doc: dict[str, Any],
                platform: Platform | None) -> ResolvedImage:
    what = f"manifest {desc.digest}"
    cfg_json = doc.get("config")
    layers_json = doc.get("layers")
    if not isinstance(layers_json, list):
        raise ImageError(f"{what}: no 'layers' list")
    config_desc = Descriptor.from_json(cfg_json, f"config of {what}")
    if config_desc.media_type not in CONFIG_TYPES:
        raise ImageError(f"{what} is not a container image: config media type "
                         f"{config_desc.media_type!r} (expected {OCI_CONFIG} or {DOCKER_CONFIG})")
    layers = [Descriptor.from_json(x, f"layer {i} of {what}") for i, x in enumerate(layers_json)]
    for lay in layers:
        layer_compression(lay.media_type)  # raises for unsupported layer types
    config = _load_json(src.read_blob(config_desc), f"config {config_desc.digest}")
    if not isinstance(config, dict):
        raise ImageError(f"config {config_desc.digest} is not a JSON object")
    if platform is None:
        platform = Platform.from_json(config, f"config {config_desc.digest}")
    return ResolvedImage(src.ref, dataclasses.replace(desc, platform=platform), raw, doc,
                         config, config_desc, platform, layers)


def resolve(src: ImageSource, platforms: Iterable[Platform] | None = None,
            all_platforms: bool = False) -> list[ResolvedImage]:
    """The platform images of ``src``'s reference.

    For an index (or Docker manifest list): the host platform by default, else one image per
    platform in ``platforms`` (first matching entry each), or with ``all_platforms`` every
    image entry whose manifest is present (attestations — ``unknown/unknown``, entries with an
    artifactType or a ``vnd.docker.reference.type`` annotation — are skipped). For a single
    manifest: that image, its platform from the config (an error if ``platforms`` are given
    and none matches it). Manifests and configs are verified by digest and size.
    """
    wanted = list(platforms) if platforms is not None else []
    root_desc, root_raw = src.root()
    root_what = f"{src.ref} ({root_desc.digest})"
    doc = _load_json(root_raw, root_what)
    if _doc_kind(root_desc, doc, root_what) == "manifest":
        img = _load_image(src, root_desc, root_raw, doc, root_desc.platform)
        missing = [str(p) for p in wanted if not p.matches(img.platform)]
        if missing and not all_platforms:
            raise ImageError(f"{src.ref} is a single-platform image for {img.platform}: it has "
                             f"no {', '.join(missing)} image")
        return [img]

    entries = _image_entries(src, doc, root_what, 0)
    for i, e in enumerate(entries):
        if e.platform is None and src.has_blob(e):  # fill from the config
            raw = src.read_blob(e)
            m = _load_json(raw, f"manifest {e.digest}")
            if _doc_kind(e, m, f"manifest {e.digest}") == "manifest":
                img = _load_image(src, e, raw, m, None)
                entries[i] = dataclasses.replace(e, platform=img.platform)
    if not entries:
        raise ImageError(f"{src.ref} is an index with no image manifests in it")

    def label(e: Descriptor) -> str:
        return str(e.platform) if e.platform else f"unknown platform ({e.digest})"

    available = ", ".join(dict.fromkeys(label(e) for e in entries))
    chosen: list[Descriptor] = []
    if all_platforms:
        chosen = [e for e in entries if src.has_blob(e)]
        if not chosen:
            raise ImageError(f"none of the platform manifests of {src.ref} are present "
                             f"(listed: {available})")
    else:
        for p in wanted or [Platform.host()]:
            hit = next((e for e in entries if e.platform and p.matches(e.platform)), None)
            if hit is None:
                raise ImageError(f"no image for platform {p} in {src.ref} (available: "
                                 f"{available}); choose one with a platform option")
            if not src.has_blob(hit):
                raise ImageError(f"the {p} image of {src.ref} is listed in its index but its "
                                 f"manifest {hit.digest} is not in the archive (was it saved "
                                 "for another platform only?)")
            chosen.append(hit)

    out: list[ResolvedImage] = []
    seen: set[str] = set()
    for e in chosen:
        if e.digest in seen:
            continue
        seen.add(e.digest)
        raw = src.read_blob(e)
        what = f"manifest {e.digest}"
        m = _load_json(raw, what)
        if _doc_kind(e, m, what) != "manifest":
            raise ImageError(f"{what}: expected an image manifest")
        out.append(_load_image(src, e, raw, m, e.platform))
    return out


__all__ = [
    "CONFIG_TYPES", "DOCKER_CONFIG", "DOCKER_LAYER", "DOCKER_LAYER_GZIP", "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST", "INDEX_TYPES", "MANIFEST_TYPES", "OCI_CONFIG", "OCI_INDEX",
    "OCI_LAYER", "OCI_LAYER_GZIP", "OCI_LAYER_ZSTD", "OCI_MANIFEST", "Descriptor",
    "DockerArchiveSource", "ImageError", "ImageSource", "OCILayoutSource", "Platform",
    "ResolvedImage", "check_digest", "go_json", "layer_compression", "open_image", "resolve",
    "sha256_digest",
]
