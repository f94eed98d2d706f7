"""Errors of the registry client: :class:`RegistryError` and what it is (all of them
:class:`~soci_native.oci.ImageError`s)."""

from __future__ import annotations

from collections.abc import Sequence

from soci_native.oci import (
    ImageError,
)

# ---- errors ----------------------------------------------------------------------------------

class RegistryError(ImageError):
    """A registry request that failed; ``url``, ``status`` (None for connection errors) and
    ``codes`` (the distribution error codes in the body) say which and how."""

    def __init__(self, message: str, *, url: str | None = None, status: int | None = None,
                 codes: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.url = url
        self.status = status
        self.codes = tuple(codes)


class AuthError(RegistryError):
    """Authentication failed or access was denied (401/403, token server refusals, missing
    credentials)."""


class NotFound(RegistryError):
    """404: no such repository, manifest, blob or upload."""


class DigestMismatch(RegistryError):
    """Downloaded content does not hash to the digest it was asked for (or announced)."""


class RangeNotSatisfiable(RegistryError):
    """416: the requested byte range is outside the blob."""


class SizeMismatch(RegistryError):
    """A blob's size is not the one its descriptor gives."""


class TransientError(RegistryError):
    """A connection error or 429/5xx that outlasted the retry budget."""


class TLSError(RegistryError):
    """The TLS handshake failed (certificate verification, protocol)."""
