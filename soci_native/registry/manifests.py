"""Manifests (GET verified, HEAD, PUT, DELETE) and tags."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from soci_native.oci import (
    INDEX_TYPES,
    MANIFEST_TYPES,
    Descriptor,
    _structural_type,
    check_digest,
)
from soci_native.registry.errors import (
    DigestMismatch,
    NotFound,
    RegistryError,
)
from soci_native.registry.http import (
    MANIFEST_ACCEPT,
    MAX_MANIFEST_SIZE,
    _check_hash,
    _hash_of,
    _media_type,
    _quote_repo,
)
from soci_native.registry.transport import (
    Transport,
)


class Manifests(Transport):
    # -- manifests --

    def get_manifest(self, repo: str, reference: str,
                     accept: Sequence[str] = MANIFEST_ACCEPT) -> tuple[Descriptor, bytes]:
        """A manifest or index by tag or digest, verified: by digest it must hash to that
        digest; by tag its sha256 is computed and checked against ``Docker-Content-Digest``
        when the registry sends one."""
        url = self.url(f"/v2/{_quote_repo(repo)}/manifests/{reference}")
        by_digest = ":" in reference
        if by_digest:
            check_digest(reference)
        resp, raw = self._get_body(url, self._pull(repo), {"Accept": ", ".join(accept)},
                                   MAX_MANIFEST_SIZE, "manifest")
        announced = resp.headers.get("Docker-Content-Digest")
        if by_digest:
            digest = reference
        elif announced and ":" in announced and announced.split(":", 1)[0] != "sha256":
            digest = check_digest(announced)
        else:
            digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        h = _hash_of(digest)
        h.update(raw)
        _check_hash(h, digest, f"manifest {repo}:{reference}", url)
        if announced and announced != digest:
            raise DigestMismatch(f"GET {url}: the registry says the manifest is {announced} "
                                 f"but it hashes to {digest}", url=url)
        mt = _media_type(resp.headers.get("Content-Type"))
        if mt not in MANIFEST_TYPES and mt not in INDEX_TYPES:
            try:
                sniffed = _structural_type(json.loads(raw))
            except (ValueError, UnicodeDecodeError):
                sniffed = None
            if sniffed and (not mt or mt in ("application/json", "text/plain",
                                             "application/octet-stream")):
                mt = sniffed
        return Descriptor(mt, digest, len(raw)), raw

    def head_manifest(self, repo: str, reference: str) -> Descriptor | None:
        """The descriptor of a manifest (None when the registry does not have it). By tag,
        falls back to a GET when the registry sends no Docker-Content-Digest."""
        url = self.url(f"/v2/{_quote_repo(repo)}/manifests/{reference}")
        try:
            resp = self._request("HEAD", url, scopes=self._pull(repo),
                                 headers={"Accept": ", ".join(MANIFEST_ACCEPT)})
        except NotFound:
            return None
        announced = resp.headers.get("Docker-Content-Digest")
        length = resp.headers.get("Content-Length")
        mt = _media_type(resp.headers.get("Content-Type"))
        if ":" in reference:
            if announced and announced != reference:
                raise DigestMismatch(f"HEAD {url}: the registry says {announced}", url=url)
            announced = reference
        if not announced or length is None or not length.isdigit() or not mt:
            return self.get_manifest(repo, reference)[0]
        return Descriptor(mt, check_digest(announced), int(length))

    def put_manifest(self, repo: str, data: bytes, media_type: str,
                     reference: str | None = None) -> Descriptor:
        """Pushes a manifest under ``reference`` (a tag or its digest; default: its
        digest). Returns its descriptor."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        ref = reference or digest
        if ":" in ref and ref != digest:
            alg = ref.split(":", 1)[0]
            h = hashlib.new(alg, data)
            if f"{alg}:{h.hexdigest()}" != ref:
                raise DigestMismatch(f"manifest content does not hash to {ref}")
            digest = ref
        url = self.url(f"/v2/{_quote_repo(repo)}/manifests/{ref}")
        resp = self._request("PUT", url, scopes=self._push(repo), body=bytes(data),
                             headers={"Content-Type": media_type}, ok=(200, 201, 202, 204))
        got = resp.headers.get("Docker-Content-Digest")
        if got and got != digest:
            raise DigestMismatch(f"PUT {url}: the registry stored the manifest as {got}, "
                                 f"expected {digest}", url=url)
        return Descriptor(media_type, digest, len(data))

    def delete_manifest(self, repo: str, digest: str) -> None:
        url = self.url(f"/v2/{_quote_repo(repo)}/manifests/{check_digest(digest)}")
        self._request("DELETE", url, scopes=(f"repository:{repo}:delete",),
                      ok=(200, 202, 204))

    def list_tags(self, repo: str, page_size: int = 1000) -> list[str]:
        """Every tag of ``repo`` (following ``Link: <…>; rel="next"`` pages, bounded as
        :meth:`_pages` says)."""
        url = self.url(f"/v2/{_quote_repo(repo)}/tags/list?n={page_size}")
        tags: list[str] = []
        for _, _, body in self._pages(url, f"tags list of {repo}", self._pull(repo), {}):
            try:
                doc = json.loads(body)
            except (ValueError, UnicodeDecodeError) as e:
                raise RegistryError(f"GET {url}: invalid JSON: {e}", url=url) from None
            got = doc.get("tags") if isinstance(doc, dict) else None
            if got is not None and (not isinstance(got, list)
                                    or not all(isinstance(t, str) for t in got)):
                raise RegistryError(f"GET {url}: 'tags' is not a list of strings", url=url)
            tags += got or []
        return tags
