#!/usr/bin/env python3
"""The mount's span read path (ZtocLayer over a local blob, a fresh span cache) against one
core's raw zlib-ng inflate of the same layer, in the same run, without FUSE in between.

Rows: the raw inflate (`_core.raw_inflate_file`, the ceiling); a cold sequential read of the
whole layer in 128 KiB reads (what FUSE hands over for `cat`), timed until every span is in
the cache; the same with 8 threads each reading an eighth of the layer in order; a warm
re-read from the span cache. Each row gives the median of --rounds, MB/s of uncompressed
bytes, the ratio to the raw inflate and the inflate ratio (bytes inflated / distinct span
bytes: 1.00 when no span was inflated twice).

The layer: --layer PATH (a .tar.gz), else bench/data/big.tar.gz when make_layers.py built it,
else a tar.gz of this interpreter's stdlib written to bench/data/spans-stdlib.tar.gz.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import sysconfig
import tarfile
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from soci_native import _core, ztoc  # noqa: E402
from soci_native.mount.spans import (  # noqa: E402
    FileBlobReader,
    LayerStats,
    SpanCache,
    ZtocLayer,
)

READ = 128 << 10


def default_layer() -> Path:
    big = HERE / "data" / "big.tar.gz"
    if big.exists():
        return big
    out = HERE / "data" / "spans-stdlib.tar.gz"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(out, "w:gz") as tf:
            tf.add(sysconfig.get_paths()["stdlib"], arcname="stdlib")
    return out


def run_layer(z: ztoc.Ztoc, blob: Path, cache: Path, threads: int) -> tuple[float, LayerStats]:
    stats = LayerStats("sha256:" + "00" * 32, blob.stat().st_size, "lazy")
    zl = ZtocLayer(stats.digest, z, FileBlobReader(blob), SpanCache(cache, 8 << 30), stats)
    size = z.uncompressed_archive_size
    part = -(-size // threads)

    def reader(k: int) -> None:
        for off in range(k * part, min(size, (k + 1) * part), READ):
            zl.read(off, min(READ, (k + 1) * part - off))

    t = time.perf_counter()
    ts = [threading.Thread(target=reader, args=(k,)) for k in range(threads)]
    for th in ts:
        th.start()
    for th in ts:
        th.join()
    zl.drain()  # waits for the background fills: every span cached
    zl.close()
    return time.perf_counter() - t, stats


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layer", type=Path)
    ap.add_argument("--span-size", type=int, default=4 << 20)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    layer = args.layer or default_layer()
    z = ztoc.from_bytes(ztoc.build(str(layer), span_size=args.span_size)[1])
    size = z.uncompressed_archive_size
    rows: dict[str, list[float]] = {"raw inflate (1 core)": [], "cold sequential": [],
                                    "cold, 8 threads": [], "warm (span cache)": []}
    ratios: dict[str, float] = {}
    for _ in range(args.rounds):
        t = time.perf_counter()
        _core.raw_inflate_file(str(layer))
        rows["raw inflate (1 core)"].append(time.perf_counter() - t)
        with tempfile.TemporaryDirectory(prefix="bench-spans-") as td:
            el, st = run_layer(z, layer, Path(td) / "c1", 1)
            rows["cold sequential"].append(el)
            ratios["cold sequential"] = st.bytes_inflated / max(st.span_bytes_inflated, 1)
            el, st = run_layer(z, layer, Path(td) / "c2", 8)
            rows["cold, 8 threads"].append(el)
            ratios["cold, 8 threads"] = st.bytes_inflated / max(st.span_bytes_inflated, 1)
            el, _ = run_layer(z, layer, Path(td) / "c2", 1)
            rows["warm (span cache)"].append(el)
    raw = statistics.median(rows["raw inflate (1 core)"])
    print(f"layer {layer} ({layer.stat().st_size / 1e6:.1f} MB, {size / 1e6:.1f} MB "
          f"uncompressed, {z.num_spans} spans), median of {args.rounds}")
    print(f"{'':24} {'seconds':>8} {'MB/s':>8} {'x raw':>7} {'inflate ratio':>14}")
    for name, times in rows.items():
        m = statistics.median(times)
        r = f"{ratios[name]:.2f}" if name in ratios else ""
        print(f"{name:24} {m:8.3f} {size / m / 1e6:8.0f} {raw / m:7.2f} {r:>14}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
