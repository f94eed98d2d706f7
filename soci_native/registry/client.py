"""The registry client: every part of the distribution API in one class."""

from __future__ import annotations

from soci_native.registry.referrers import (
    Referrers,
)
from soci_native.registry.uploads import (
    Uploads,
)


class RegistryClient(Referrers, Uploads):
    """The distribution API of one registry host (``host[:port]``). Thread-safe."""
