"""A client for the OCI distribution API (registry v2), and a registry :class:`ImageSource`.

The package's parts: ``transport`` (connections, redirects, retries, deadlines; ``http``
holds the plumbing), ``auth`` and ``credentials``, ``manifests``, ``blobs`` (reads),
``uploads``, ``referrers``; ``client`` puts them together as :class:`RegistryClient`, and
``source`` is the image source. Everything public is importable from here.

:class:`RegistryClient` talks to one registry host over urllib3 (a bounded pool of reused
connections per host): HTTPS first, with certificate verification (the system's CAs plus
``--cert-dir`` or the host's ``certs.d`` directory: ``tls``) unless ``insecure``; plain HTTP
with ``plain_http``, or for loopback hosts that turn out not to speak TLS:

* auth: anonymous, Basic, and Bearer tokens from the ``WWW-Authenticate`` challenge (cached
  per scope; a 401 fetches a token and retries once). Credentials come from ``creds`` or the
  Docker/Podman auth files and Docker's credential helpers (:func:`find_credentials`);
* manifests: GET (by tag or digest, every byte verified), HEAD, PUT;
* blobs: a streaming reader that resumes an interrupted body with a Range request at the byte
  it stopped at and can verify the digest at the end (:class:`BlobReader`); single and
  multi-range reads (``multipart/byteranges``), falling back for good to single ranges when
  the registry refuses multi-range requests; HEAD; monolithic and chunked uploads, skipped
  when the registry already has the blob, cross-repository mounts;
* referrers: the OCI 1.1 API (404: unsupported) and the ``sha256-<hex>`` fallback tag;
* tags list.

Transient failures (connection errors, 429, 500, 502, 503, 504) are retried with capped
exponential backoff and full jitter (``Retry-After`` honoured), at most ``max_attempts``
tries, and every operation has a deadline (``timeout``, enforced by a watchdog that shuts
the connection down). Bodies read into memory are capped. Redirects are followed here; the
``Authorization`` header is only ever sent to the registry's own origin (scheme, host,
port). Errors are :class:`RegistryError` subclasses (themselves :class:`ImageError`) naming
the method, URL and status.

:class:`RegistrySource` is the :class:`ImageSource` for ``docker://HOST/REPO[:TAG][@DIGEST]``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from soci_native.registry.auth import _parse_challenge
    from soci_native.registry.blobs import BlobReader, _parse_multipart
    from soci_native.registry.client import RegistryClient
    from soci_native.registry.credentials import Credentials, auth_file_paths, find_credentials
    from soci_native.registry.errors import (
        AuthError,
        DigestMismatch,
        NotFound,
        RangeNotSatisfiable,
        RegistryError,
        SizeMismatch,
        TLSError,
        TransientError,
    )
    from soci_native.registry.http import (
        MANIFEST_ACCEPT,
        MAX_LIST_PAGES,
        MAX_LIST_SIZE,
        MAX_LIST_TOTAL,
        MAX_MANIFEST_SIZE,
        _Retry,
        _retry_after,
    )
    from soci_native.registry.options import RegistryOptions
    from soci_native.registry.source import RegistrySource, open_registry
    from soci_native.registry.uploads import PushResult

_WHERE = {  # name -> submodule: imported on first use, so that a command that only
    # needs RegistryOptions (every local-image `create`) does not pay for urllib3
    "_parse_challenge": "auth",
    "BlobReader": "blobs",
    "_parse_multipart": "blobs",
    "RegistryClient": "client",
    "Credentials": "credentials",
    "auth_file_paths": "credentials",
    "find_credentials": "credentials",
    "AuthError": "errors",
    "DigestMismatch": "errors",
    "NotFound": "errors",
    "RangeNotSatisfiable": "errors",
    "RegistryError": "errors",
    "SizeMismatch": "errors",
    "TLSError": "errors",
    "TransientError": "errors",
    "MANIFEST_ACCEPT": "http",
    "MAX_LIST_PAGES": "http",
    "MAX_LIST_SIZE": "http",
    "MAX_LIST_TOTAL": "http",
    "MAX_MANIFEST_SIZE": "http",
    "_Retry": "http",
    "_retry_after": "http",
    "RegistryOptions": "options",
    "RegistrySource": "source",
    "open_registry": "source",
    "PushResult": "uploads",
}

__all__ = [
    "MANIFEST_ACCEPT", "MAX_LIST_PAGES", "MAX_LIST_SIZE", "MAX_LIST_TOTAL", "MAX_MANIFEST_SIZE",
    "AuthError", "BlobReader", "Credentials", "DigestMismatch", "NotFound", "PushResult",
    "RangeNotSatisfiable", "RegistryClient", "RegistryError", "RegistryOptions",
    "RegistrySource", "SizeMismatch", "TLSError", "TransientError", "_Retry",
    "_parse_challenge", "_parse_multipart", "_retry_after", "auth_file_paths",
    "find_credentials", "open_registry",
]


def __getattr__(name: str) -> Any:
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value
