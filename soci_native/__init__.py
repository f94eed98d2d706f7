"""soci-native: build and read SOCI (Seekable OCI) index data with a C core.

Two levels of API, both importable from here (see docs/api.md and docs/core-api.md):

- whole images: :func:`open_image` and :func:`resolve` read an image (OCI layout or archive,
  docker save archive, registry); :class:`Store` is the local store; :func:`build_index`
  builds an image's zTOCs and SOCI index into it (:class:`BuildOptions`); :func:`read_ztoc`,
  :func:`find_file` and :func:`stream_file` read and query zTOCs;
- one layer: :func:`index_layer` turns a gzip or plain tar layer into its tar entries,
  checkpoint blob and span digests in one pass; :func:`extract` and :func:`extract_span` read
  uncompressed ranges back through the checkpoints.

Names are loaded on first use, so importing soci_native loads neither the C extension nor
SQLite until they are needed.
"""

from __future__ import annotations

# Not typing.TYPE_CHECKING: importing typing costs the CLI's fast --help a few ms (mypy
# treats any TYPE_CHECKING as true)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from soci_native.build import BuildError, BuildOptions, IndexResult, LayerResult, build_index
    from soci_native.discover import pull_index
    from soci_native.getfile import stream_file
    from soci_native.images import (
        Descriptor,
        ImageError,
        ImageSource,
        Platform,
        ResolvedImage,
        open_image,
        resolve,
    )
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
    from soci_native.store import ArtifactRecord, Store, StoreError
    from soci_native.ztoc import FileMetadata, Ztoc, ZtocError, find_file
    from soci_native.ztoc import from_bytes as read_ztoc

# public name -> (module, name in it)
_EXPORTS: dict[str, tuple[str, str]] = {
    **{n: ("layer", n) for n in ("DEFAULT_SPAN_SIZE", "FormatError", "LayerIndex", "TarEntry",
                                 "extract", "extract_span", "index_layer", "span_range")},
    **{n: ("images", n) for n in ("Descriptor", "ImageError", "ImageSource", "Platform",
                                  "ResolvedImage", "open_image", "resolve")},
    **{n: ("build", n) for n in ("BuildError", "BuildOptions", "IndexResult", "LayerResult",
                                 "build_index")},
    **{n: ("store", n) for n in ("ArtifactRecord", "Store", "StoreError")},
    **{n: ("ztoc", n) for n in ("FileMetadata", "Ztoc", "ZtocError", "find_file")},
    "read_ztoc": ("ztoc", "from_bytes"),
    "stream_file": ("getfile", "stream_file"),
    "pull_index": ("discover", "pull_index"),
}

__all__ = [
    "ArtifactRecord", "BuildError", "BuildOptions", "DEFAULT_SPAN_SIZE", "Descriptor",
    "FileMetadata", "FormatError", "ImageError", "ImageSource", "IndexResult", "LayerIndex",
    "LayerResult", "Platform", "ResolvedImage", "Store", "StoreError", "TarEntry", "Ztoc",
    "ZtocError", "build_index", "extract", "extract_span", "find_file", "index_layer",
    "open_image", "pull_index", "read_ztoc", "resolve", "span_range", "stream_file",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """The API, loaded on first use: importing any soci_native module (the CLI's ``--help``
    too) need not load the C extension."""
    if name in _EXPORTS:
        import importlib

        module, attr = _EXPORTS[name]
        return getattr(importlib.import_module(f"soci_native.{module}"), attr)
    raise AttributeError(f"module 'soci_native' has no attribute {name!r}")
