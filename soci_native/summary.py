"""Human and JSON summaries of a layer's index data."""

from __future__ import annotations

import random
import tarfile
from collections import Counter
from typing import Any

from soci_native.layer import LayerIndex, extract


def summarize(ix: LayerIndex, seconds: float) -> dict[str, Any]:
    types = Counter(e.type for e in ix.entries)
    ztoc_windows = len(ix.checkpoints)
    return {
        "compression": ix.compression,
        "compressed_size": ix.compressed_size,
        "uncompressed_size": ix.uncompressed_size,
        "span_size": ix.span_size,
        "num_spans": ix.num_spans,
        "num_entries": len(ix.entries),
        "entry_types": dict(sorted(types.items())),
        "checkpoints_bytes": ztoc_windows,
        "seconds": round(seconds, 4),
        "throughput_mb_s": round(ix.uncompressed_size / seconds / 1e6, 1) if seconds > 0 else None,
    }


def verify_sample(layer: str, ix: LayerIndex, tar_path: str | None, count: int = 25,
                  seed: int = 0) -> int:
    """Extracts ``count`` random regular files through the checkpoints and compares them
    with Python's tarfile reading the same layer; returns how many matched (raises on a
    mismatch)."""
    files = [e for e in ix.entries if e.type == "reg" and not e.sparse]
    picked = {e.offset: e for e in random.Random(seed).sample(files, min(count, len(files)))}
    checked = 0
    # one streaming pass ("r|*"): seeking in a gzip stream re-inflates from the start each time
    with tarfile.open(tar_path or layer, "r|*") as tf:
        for m in tf:
            e = picked.get(m.offset_data)
            if e is None or not m.isfile():
                continue
            want = tf.extractfile(m)
            assert want is not None
            got = extract(layer, ix.checkpoints, e.offset, e.size)
            if m.name != e.name.rstrip("/") or got != want.read():
                raise AssertionError(f"extracted bytes of {e.name} differ from tarfile's")
            checked += 1
    if checked != len(picked):
        raise AssertionError(f"tarfile found {checked} of the {len(picked)} sampled files")
    return checked


def render(summary: dict[str, Any]) -> str:
    s = summary
    mib = 1 << 20
    lines = [
        f"compression        {s['compression']}",
        f"layer size         {s['compressed_size'] / mib:,.1f} MiB compressed, "
        f"{s['uncompressed_size'] / mib:,.1f} MiB tar",
        f"entries            {s['num_entries']:,} "
        + "(" + ", ".join(f"{k} {v:,}" for k, v in s["entry_types"].items()) + ")",
        f"spans              {s['num_spans']} of {s['span_size'] / mib:g} MiB",
        f"checkpoint data    {s['checkpoints_bytes'] / 1024:,.0f} KiB",
        f"index time         {s['seconds']:.3f} s ({s['throughput_mb_s']} MB/s uncompressed)",
    ]
    if "verified_files" in s:
        lines.append(f"verified           {s['verified_files']} files extracted through "
                     "checkpoints match tarfile")
    return "\n".join(lines)
