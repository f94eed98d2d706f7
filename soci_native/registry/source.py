"""The :class:`~soci_native.oci.ImageSource` of a registry image."""

from __future__ import annotations

import dataclasses
import io
import json
from typing import BinaryIO, cast

from soci_native.oci import (
    INDEX_TYPES,
    MANIFEST_TYPES,
    Descriptor,
    DigestLike,
    ImageError,
    ImageSource,
    _digest_of,
    _structural_type,
)
from soci_native.refs import InvalidReference, Reference
from soci_native.registry.client import (
    RegistryClient,
)
from soci_native.registry.errors import (
    NotFound,
)
from soci_native.registry.http import (
    _json_object,
)
from soci_native.registry.options import (
    RegistryOptions,
)

# ---- the image source ------------------------------------------------------------------------

class RegistrySource(ImageSource):
    """An image in a registry: ``docker://HOST/REPO[:TAG][@DIGEST]`` (or the same without
    ``docker://`` when HOST is explicit). Nothing is fetched until :meth:`root`.

    Manifests are fetched from ``/manifests/`` (a descriptor with a manifest or index media
    type, or a digest seen in an index), everything else from ``/blobs/``. ``open_blob``
    streams (resuming interrupted transfers); ``read_blob`` verifies; ``blob_path`` is None.
    """

    def __init__(self, ref: str, options: RegistryOptions | None = None, *,
                 client: RegistryClient | None = None, verify_streams: bool = False) -> None:
        super().__init__(ref)
        try:
            self.reference = Reference.parse(ref)
        except InvalidReference as e:
            raise ImageError(str(e)) from None
        self.repository = self.reference.repository
        self.client = client or RegistryClient(self.reference.api_host, options,
                                               credential_scope=self.repository)
        self._own_client = client is None
        self.verify_streams = verify_streams
        self._manifests: dict[str, bytes] = {}
        self._child_manifests: set[str] = set()
        self._not_manifests: set[str] = set()
        self._root: tuple[Descriptor, bytes] | None = None

    def root(self) -> tuple[Descriptor, bytes]:
        if self._root is None:
            desc, raw = self.client.get_manifest(self.repository, self.reference.reference)
            if desc.media_type not in MANIFEST_TYPES and desc.media_type not in INDEX_TYPES:
                sniffed = _structural_type(_json_object(raw, f"manifest of {self.ref}"))
                if sniffed:
                    desc = dataclasses.replace(desc, media_type=sniffed)
            self._manifests[desc.digest] = raw
            self._note_children(raw)
            self._root = (desc, raw)
        return self._root

    def _note_children(self, raw: bytes) -> None:
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return
        if isinstance(doc, dict) and isinstance(doc.get("manifests"), list):
            self._child_manifests.update(
                m["digest"] for m in doc["manifests"]
                if isinstance(m, dict) and isinstance(m.get("digest"), str))

    def _is_manifest(self, d: DigestLike) -> bool:
        if isinstance(d, Descriptor) and d.media_type:
            return d.media_type in MANIFEST_TYPES or d.media_type in INDEX_TYPES
        dg = _digest_of(d)
        return dg in self._manifests or dg in self._child_manifests

    def _manifest(self, d: DigestLike) -> bytes | None:
        dg = _digest_of(d)
        if dg not in self._manifests:
            try:
                _, raw = self.client.get_manifest(self.repository, dg)
            except NotFound:
                return None
            self._manifests[dg] = raw
            self._note_children(raw)
        return self._manifests[dg]

    def has_blob(self, digest: DigestLike) -> bool:
        dg = _digest_of(digest)
        if dg in self._virtual or dg in self._manifests:
            return True
        if self._is_manifest(digest):
            return self._manifest(digest) is not None
        return self._blob_size(dg) is not None

    def _blob_size(self, digest: str) -> int | None:
        if digest in self._manifests:
            return len(self._manifests[digest])
        size = self.client.head_blob(self.repository, digest)
        if size is None and digest not in self._not_manifests:
            desc = self.client.head_manifest(self.repository, digest)
            if desc is not None:
                return desc.size
            self._not_manifests.add(digest)
        return size

    def _missing(self, digest: str) -> ImageError:
        return ImageError(f"missing blob {digest} in {self.ref}: the registry "
                          f"{self.client.base_url} does not have it in {self.repository}")


    def read_range(self, digest: str, offset: int, length: int) -> bytes:
        """``length`` bytes of a blob at ``offset``: one Range request (lazy loading)."""
        return self.client.read_range(self.repository, digest, offset, length)
    def open_blob(self, digest: DigestLike) -> BinaryIO:
        dg = _digest_of(digest)
        if dg in self._virtual:
            return super().open_blob(digest)
        if self._is_manifest(digest) or dg in self._manifests:
            raw = self._manifest(digest)
            if raw is None:
                raise self._missing(dg)
            self._check_size(digest, len(raw))
            return io.BytesIO(raw)
        size = digest.size if isinstance(digest, Descriptor) else None
        try:
            reader = self.client.open_blob(self.repository, dg, size=size,
                                           verify=self.verify_streams)
        except NotFound:
            if size is None and self._manifest(dg) is not None:
                return io.BytesIO(self._manifests[dg])
            raise self._missing(dg) from None
        return cast(BinaryIO, io.BufferedReader(reader, buffer_size=1 << 16))

    def _open_stored(self, digest: str) -> BinaryIO:
        return self.open_blob(digest)

    def read_blob(self, desc_or_digest: DigestLike) -> bytes:
        dg = _digest_of(desc_or_digest)
        if self._is_manifest(desc_or_digest) or dg in self._virtual:
            return super().read_blob(desc_or_digest)
        size = desc_or_digest.size if isinstance(desc_or_digest, Descriptor) else None
        try:
            with self.client.open_blob(self.repository, dg, size=size, verify=True) as r:
                data = r.readall()
        except NotFound:
            if size is None and self._manifest(dg) is not None:
                return super().read_blob(desc_or_digest)
            raise self._missing(dg) from None
        self._check_size(desc_or_digest, len(data))
        return data

    def close(self) -> None:
        if self._own_client:
            self.client.close()


def open_registry(ref: str, options: RegistryOptions | None = None) -> RegistrySource:
    """A :class:`RegistrySource` for ``docker://…`` or ``HOST/REPO…``."""
    return RegistrySource(ref, options)
