"""soci-native: build and read SOCI (Seekable OCI) index data with a C core.

The core API (see docs/core-api.md): :func:`index_layer` turns a gzip or plain tar layer into
its tar entries, checkpoint blob and span digests in one pass; :func:`extract` and
:func:`extract_span` read uncompressed ranges back through the checkpoints.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from soci_native.layer import (
        DEFAULT_SPAN_SIZE,
        FormatError,
        LayerIndex,
        TarEntry,
        extract,
        extract_span,
        index_layer,
        span_range,
    )

__all__ = [
    "DEFAULT_SPAN_SIZE",
    "FormatError",
    "LayerIndex",
    "TarEntry",
    "extract",
    "extract_span",
    "index_layer",
    "span_range",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """The core API, loaded on first use: importing any soci_native module (the CLI's
    ``--help`` too) need not load the C extension."""
    if name in __all__:
        from soci_native import layer

        return getattr(layer, name)
    raise AttributeError(f"module 'soci_native' has no attribute {name!r}")
