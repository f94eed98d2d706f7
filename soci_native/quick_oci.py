"""The path of a layer blob in a local OCI layout directory (``oci:DIR[:TAG]``), as
``images.open_image(ref).blob_path(digest)`` gives it, with nothing heavy imported: for
`ztoc get-file`'s fast path (soci_native/quick_getfile.py).

Like soci_native.catalog, it answers only where open_image would open the layout as it is
and raises :class:`~soci_native.catalog.Unsure` everywhere else (another transport, a
layout or index.json entry open_image would reject or read otherwise, a blob not there)."""

from __future__ import annotations

import os

from soci_native import quick_json
from soci_native.catalog import Unsure, is_digest

TYPE_CHECKING = False  # not typing's: see pathwalk.py
if TYPE_CHECKING:
    from typing import Any


def layer_blob(ref: object, digest: str) -> str:
    """The blob ``digest`` of the image ``ref`` when that is an ``oci:`` layout."""
    if not isinstance(ref, str) or not ref.startswith("oci:") or os.path.exists(ref):
        raise Unsure(f"image {ref!r}")
    rest = ref[len("oci:"):]
    # images._split_path; the tag names an image, which blob_path does not look at
    path = rest if os.path.exists(rest) or ":" not in rest else rest.partition(":")[0]
    if not path or not os.path.isdir(path):
        raise Unsure(path)
    layout = load(path, "oci-layout")
    index = load(path, "index.json")
    if not (isinstance(layout, dict) and isinstance(layout.get("imageLayoutVersion"), str)
            and isinstance(index, dict) and isinstance(index.get("manifests"), list)
            and all(descriptor_ok(m) for m in index["manifests"])):
        raise Unsure(path)
    if not is_digest(digest):
        raise Unsure(digest)
    blob = os.path.join(path, "blobs", "sha256", digest[len("sha256:"):])
    if not os.path.isfile(blob):
        raise Unsure(blob)
    return blob


def load(path: str, name: str) -> Any:
    p = os.path.join(path, name)
    if not os.path.isfile(p):
        raise Unsure(p)
    try:
        with open(p, "rb") as f:
            return quick_json.loads(f.read())
    except (OSError, ValueError):
        raise Unsure(p) from None


def strings(v: object) -> bool:
    return isinstance(v, list) and all(isinstance(s, str) for s in v)


def descriptor_ok(d: object) -> bool:
    """What oci.Descriptor.from_json accepts (sha256 digests only, no embedded data)."""
    if not isinstance(d, dict):
        return False
    size, ann, plat = d.get("size"), d.get("annotations"), d.get("platform")
    return (isinstance(d.get("mediaType", ""), str) and is_digest(d.get("digest"))
            and type(size) is int and size >= 0
            and (ann is None or isinstance(ann, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in ann.items()))
            and (d.get("urls") is None or strings(d["urls"])) and d.get("data") is None
            and (plat is None or platform_ok(plat))
            and (d.get("artifactType") is None or isinstance(d["artifactType"], str)))


def platform_ok(p: object) -> bool:
    """What oci.Platform.from_json accepts."""
    return (isinstance(p, dict) and isinstance(p.get("os"), str)
            and isinstance(p.get("architecture"), str)
            and all(p.get(k) is None or isinstance(p[k], str) for k in ("variant", "os.version"))
            and (p.get("os.features") is None or strings(p["os.features"])))
