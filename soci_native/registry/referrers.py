"""Referrers: the OCI 1.1 API and the ``sha256-<hex>`` fallback tag."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from soci_native.oci import (
    OCI_INDEX,
    Descriptor,
    check_digest,
    go_json,
)
from soci_native.registry.errors import (
    NotFound,
    RegistryError,
)
from soci_native.registry.http import (
    _json_object,
    _quote_repo,
)
from soci_native.registry.manifests import (
    Manifests,
)


class Referrers(Manifests):
    # -- referrers --

    def referrers_api(self, repo: str, digest: str,
                      artifact_type: str | None = None) -> list[Descriptor] | None:
        """The OCI 1.1 referrers API; None when the registry does not have it (404). Pages
        are bounded as :meth:`_pages` says; only referrers of ``artifact_type`` are kept
        (the registry may not have filtered: OCI-Filters-Applied)."""
        url = self.url(f"/v2/{_quote_repo(repo)}/referrers/{check_digest(digest)}")
        if artifact_type:
            url = f"{url}?{urlencode({'artifactType': artifact_type})}"
        out: list[Descriptor] = []
        page = 0
        pages = self._pages(url, f"referrers of {digest} in {repo}", self._pull(repo),
                            {"Accept": OCI_INDEX})
        try:
            for page, _, body in pages:
                try:
                    doc = json.loads(body)
                except (ValueError, UnicodeDecodeError):
                    # a 200 that is not an index: not the referrers API
                    return None if page == 1 else out
                if not isinstance(doc, dict) or not isinstance(doc.get("manifests"), list):
                    return None if page == 1 else out
                for i, m in enumerate(doc["manifests"]):
                    d = Descriptor.from_json(m, f"referrer {i} of {digest}")
                    if not artifact_type or d.artifact_type == artifact_type:
                        out.append(d)
        except NotFound:
            if page == 0:  # the first page: no referrers API here
                return None
            raise
        return out

    @staticmethod
    def referrers_tag(digest: str) -> str:
        """The fallback tag of a subject digest: ``<alg>-<hex>`` (truncated per the
        distribution spec)."""
        alg, enc = check_digest(digest).split(":", 1)
        return f"{alg[:32]}-{enc[:64]}"

    def referrers_tag_index(self, repo: str, digest: str) -> tuple[Descriptor, bytes] | None:
        """The fallback tag's index (descriptor and bytes), None when there is none."""
        try:
            return self.get_manifest(repo, self.referrers_tag(digest), accept=(OCI_INDEX,))
        except NotFound:
            return None

    def referrers_from_tag(self, repo: str, digest: str,
                           artifact_type: str | None = None) -> list[Descriptor]:
        got = self.referrers_tag_index(repo, digest)
        if got is None:
            return []
        doc = _json_object(got[1], f"referrers tag {self.referrers_tag(digest)} of {repo}")
        mans = doc.get("manifests")
        if not isinstance(mans, list):
            raise RegistryError(f"referrers tag {self.referrers_tag(digest)} of {repo} is not "
                                "an image index")
        out = [Descriptor.from_json(m, f"referrer {i} of {digest}") for i, m in enumerate(mans)]
        if artifact_type:
            out = [d for d in out if d.artifact_type == artifact_type]
        return out

    def referrers(self, repo: str, digest: str,
                  artifact_type: str | None = None) -> list[Descriptor]:
        """Referrers of a subject: the referrers API, else the fallback tag."""
        api = self.referrers_api(repo, digest, artifact_type)
        if api is not None:
            return api
        return self.referrers_from_tag(repo, digest, artifact_type)

    def add_referrer(self, repo: str, subject: str, descriptor: Descriptor) -> Descriptor:
        """Adds ``descriptor`` (a manifest whose ``subject`` is ``subject``, pushed already)
        to the fallback tag's index, creating it if missing; entries already there are kept,
        and nothing is pushed when the descriptor is listed already. Returns the index's
        descriptor."""
        tag = self.referrers_tag(subject)
        got = self.referrers_tag_index(repo, subject)
        if got is None:
            doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
        else:
            doc = _json_object(got[1], f"referrers tag {tag} of {repo}")
            if not isinstance(doc.get("manifests"), list):
                raise RegistryError(f"referrers tag {tag} of {repo} is not an image index")
            if any(isinstance(m, dict) and m.get("digest") == descriptor.digest
                   for m in doc["manifests"]):
                return got[0]
        doc["manifests"] = [*doc["manifests"], descriptor.to_json()]
        return self.put_manifest(repo, go_json(doc), OCI_INDEX, tag)
