"""Image references as the store keeps and compares them.

A reference is stored normalized, so that the same image named two ways is one image: a
local path becomes absolute (``create img.tar`` in one directory is found by ``get-file`` in
another), a registry reference gets its full form with ``docker://`` (``HOST/R:T``,
``docker://HOST/R:T`` and, for Docker Hub, ``docker://alpine`` and
``docker://docker.io/library/alpine:latest`` are the same). Filters compare normalized forms.
"""

from __future__ import annotations

import os

_LOCAL = ("oci:", "oci-archive:", "docker-archive:")


def _local(rest: str) -> str:
    """PATH[:TAG] with PATH made absolute; the split as the image sources make it (at the
    first colon that leaves an existing path, else the first colon)."""
    if os.path.exists(rest) or ":" not in rest:
        return os.path.abspath(rest) if rest else rest
    for i, c in enumerate(rest):
        if c == ":" and i and os.path.exists(rest[:i]):
            return os.path.abspath(rest[:i]) + rest[i:]
    path, _, tag = rest.partition(":")
    return (os.path.abspath(path) if path else path) + ":" + tag


def normalize(ref: str) -> str:
    """The stored, comparable form of an image reference (unchanged if it does not parse)."""
    from soci_native.refs import InvalidReference, Reference, looks_like_registry_ref

    for prefix in _LOCAL:
        if ref.startswith(prefix):
            return prefix + _local(ref[len(prefix):])
    is_path = os.path.exists(ref) or os.path.exists(ref.partition(":")[0])
    if ref.startswith("docker://") or (looks_like_registry_ref(ref) and not is_path):
        try:
            r = Reference.parse(ref)
        except (InvalidReference, ValueError):
            return ref
        return f"docker://{r}" + ("" if r.tag or r.digest else ":latest")
    return _local(ref)


def same(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and normalize(a) == normalize(b)
