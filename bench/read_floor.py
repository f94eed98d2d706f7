#!/usr/bin/env python3
"""What ``python3 -c "import numpy; print(numpy.__version__)"`` really reads from the
bench_snapshotter image, and the fewest registry bytes any span-granular lazy fetcher needs
for it: the floor under bench_snapshotter's "lazy/image" column.

The image (bench_snapshotter.build_image) is mounted with ``soci-native``'s own FUSE
filesystem in this process, from the local OCI layout, with a span cache too small to hold a
span: then no read is answered from the cache in C, every request the kernel makes reaches
:meth:`SociFS.read` and is logged as (file, offset, length). The command runs chrooted in the
mount with the image's environment (PATH only: Python then coerces the C locale to C.UTF-8
and reads its files, as in the container); the kernel's page cache of the fresh mount is
empty, so each page is asked for once.
Runs with the mount's read-ahead window at 1 MiB (what a mount sets), 128 KiB (the kernel's
FUSE default) and 0 (no read-ahead, read-around on page faults off: only the pages the
process touched, the true floor).

For each span size (``soci-native create --span-size``) the index is built and the spans
holding the requested bytes summed (compressed, as fetched: cend - cstart) with the zTOCs
(fetched whole before a layer mounts). Nothing else a fetcher of verified spans could skip.
Last, per span size, the same run on a mount as it serves (span cache, C-served reads, its
read-ahead, the next-span fills): what it fetched against what the kernel asked for.
Usage: python bench/read_floor.py [--span-sizes 4M,1M,512K,256K] [--files] [--spans]
"""

from __future__ import annotations

import argparse
import bisect
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import bench_snapshotter as bs  # noqa: E402
import ctr_env as ce  # noqa: E402
from tree_oracle import TreeView  # noqa: E402

READ_AHEAD_KB = (1024, 128, 0)
SEQUENCE = ""  # --sequence: print the requests for files whose path holds this
SIZES = {"K": 1 << 10, "M": 1 << 20}


def _size(text: str) -> int:
    return int(text[:-1]) * SIZES[text[-1].upper()] if text[-1].upper() in SIZES else int(text)


ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}  # the image's


def trace_reads(lay: Path, store: Path, ra_kb: int | None
                ) -> tuple[dict[int, list[tuple[int, int]]], dict[str, int], list[str],
                           dict[str, Any]]:
    """(layer index -> [(start, end)] of uncompressed tar offsets the kernel asked for,
    file -> bytes asked for, layer digests, the mount's fetch totals), one run of the
    command on a fresh mount. ``ra_kb`` None: the mount as it serves (its read-ahead, span
    cache, C-served reads: what it fetches, not what the kernel asks)."""
    from soci_native.mount import fs as fsmod
    from soci_native.mount.image import MountOptions, open_mount

    mp = Path(tempfile.mkdtemp(prefix="floor-mp-"))
    cache = Path(tempfile.mkdtemp(prefix="floor-cache-"))
    mounted = open_mount(MountOptions(f"oci:{lay}:t", store, cache_dir=cache,
                                      # else no span fits: every read comes to Python
                                      cache_size=1 << 30 if ra_kb is None else 64 << 10))
    reads: list[tuple[int, int, int]] = []
    lock = threading.Lock()
    orig = fsmod.SociFS.read

    def logged(self: fsmod.SociFS, ino: int, offset: int, length: int) -> bytes | int:
        with lock:
            reads.append((ino, offset, length))
        return orig(self, ino, offset, length)

    fsmod.SociFS.read = logged  # type: ignore[method-assign]
    from soci_native.mount import spans as spmod

    fetched: list[tuple[str, int]] = []
    orig_fetch = spmod.ZtocLayer._fetch

    def fetch(self: spmod.ZtocLayer, i: int) -> bytes:
        with lock:
            fetched.append((self.digest, i))
        return orig_fetch(self, i)

    spmod.ZtocLayer._fetch = fetch  # type: ignore[method-assign]
    ready = threading.Event()
    t = threading.Thread(target=fsmod.serve, args=(mounted, str(mp)),
                         kwargs={"on_ready": ready.set}, daemon=True)
    t.start()
    try:
        if not ready.wait(60):
            raise RuntimeError("the mount did not come up")
        time.sleep(2 * fsmod.STATS_REFRESH + 0.2)  # after the mount's own read-ahead tuning
        if ra_kb is not None and not fsmod.tune_read_ahead(str(mp), ra_kb):
            raise RuntimeError("cannot set the mount's read-ahead (needs root)")
        p = subprocess.run(["/usr/sbin/chroot", str(mp), "/usr/bin/python3", "-c", bs.CMD],
                           capture_output=True, text=True, timeout=300,
                           env=ENV)
        if p.returncode != 0:
            raise RuntimeError(f"the command failed: {p.stderr[-2000:]}")
        for layer in mounted.layers:
            if hasattr(layer, "drain"):
                layer.drain()  # the fills and reads ahead still under way count too
        totals = dict(mounted.stats()["totals"], fetched=sorted(set(fetched)))
    finally:
        fsmod.SociFS.read = orig  # type: ignore[method-assign]
        spmod.ZtocLayer._fetch = orig_fetch  # type: ignore[method-assign]
        subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True)
        t.join(30)
        os.rmdir(mp)
        subprocess.run(["rm", "-rf", str(cache)])
    tree = mounted.tree
    names: dict[int, str] = {}
    for path, node in TreeView(tree).walk():
        names.setdefault(node.ino, path)
    ranges: dict[int, list[tuple[int, int]]] = defaultdict(list)
    files: dict[str, int] = defaultdict(int)
    for ino, off, n in reads:
        li, start, _, _ = tree.file(ino)
        ranges[li].append((start + off, start + off + n))
        name = names.get(ino, f"inode {ino}")
        files[name] += n
        if SEQUENCE and SEQUENCE in name:
            print(f"      {ra_kb} KB {name} [{off}, +{n})")
    return ranges, files, [layer.digest for layer in mounted.layers], totals


def merged(rs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(rs):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def span_tables(lay: Path, span: int, base: Path) -> tuple[dict[str, list[object]],
                                                           dict[str, Any]]:
    """layer digest -> its span table, zTOC size, for an index built with ``span``."""
    from soci_native import ztoc
    from soci_native.index import ANN_LAYER_DIGEST
    from soci_native.mount.spans import span_table
    from soci_native.store import MEDIA_TYPE_ZTOC, Store, parse_soci_index

    store = base / f"store-{span}"
    ce.soci("create", f"oci:{lay}:t", "--span-size", str(span), "--force", "-q", root=store,
            timeout=1800)
    tables: dict[str, list[object]] = {}
    sizes: dict[str, int] = {}
    with Store(store) as st:
        rec = st.list_artifacts(type="soci_index")[-1]
        for d in parse_soci_index(st.read_blob(rec.digest)).layers:
            layer = (d.get("annotations") or {}).get(ANN_LAYER_DIGEST)
            if d.get("mediaType") == MEDIA_TYPE_ZTOC and isinstance(layer, str):
                raw = st.read_blob(str(d["digest"]))
                tables[layer] = span_table(ztoc.from_bytes(raw, files=False))
                sizes[layer] = len(raw)
    return tables, sizes


def spans_needed(table: list[object], ranges: list[tuple[int, int]]) -> set[int]:
    starts = [s.ustart for s in table]  # type: ignore[attr-defined]
    need: set[int] = set()
    for a, b in ranges:
        i = max(0, bisect.bisect_right(starts, a) - 1)
        while i < len(table) and table[i].ustart < b:  # type: ignore[attr-defined]
            need.add(i)
            i += 1
    return need


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--span-sizes", default="4M,1M,512K,256K")
    ap.add_argument("--files", action="store_true", help="bytes asked for per file")
    ap.add_argument("--spans", action="store_true", help="the spans needed, per layer")
    ap.add_argument("--sequence", metavar="TEXT", default="",
                    help="print, in arrival order, the requests for files whose path holds TEXT")
    args = ap.parse_args()
    global SEQUENCE
    SEQUENCE = args.sequence
    if os.geteuid() != 0:
        print("read_floor: needs root (FUSE allow_other-free mount, chroot)", file=sys.stderr)
        return 2
    lay, _, _ = bs.build_image()
    base = ce.short_tempdir()
    try:
        spans = [_size(s) for s in args.span_sizes.split(",")]
        tables = {s: span_tables(lay, s, base) for s in spans}
        first = tables[spans[0]][0]
        image = sum(int(t[-1].cend) for t in first.values())  # type: ignore[attr-defined]
        traces = {ra: trace_reads(lay, base / f"store-{spans[0]}", ra) for ra in READ_AHEAD_KB}
        print(f"image: {image / 1e6:.1f} MB compressed in {len(first)} layers; "
              f"`{bs.CMD}` chrooted in a soci-native mount")
        print(f"{'read-ahead':>10} {'asked MB':>9} {'span':>6} {'spans':>9} {'span MB':>8} "
              f"{'zTOC MB':>8} {'total MB':>9} {'of image':>9}")
        floor: dict[tuple[int, int], set[tuple[str, int]]] = {}
        for ra in READ_AHEAD_KB:
            ranges, files, digests, _ = traces[ra]
            asked = sum(b - a for rs in ranges.values() for a, b in merged(rs))
            for s in spans:
                tab, zsize = tables[s]
                need_all: set[tuple[str, int]] = set()
                tot = span_bytes = 0
                for li, d in enumerate(digests):
                    need = spans_needed(tab[d], merged(ranges.get(li, [])))
                    need_all |= {(d, i) for i in need}
                    tot += len(tab[d])
                    span_bytes += sum(tab[d][i].cend - tab[d][i].cstart  # type: ignore[attr-defined]
                                      for i in need)
                    if args.spans:
                        print(f"      {d[7:19]} spans {sorted(need)}")
                floor[ra, s] = need_all
                z = sum(zsize.values())
                print(f"{ra:>7} KB {asked / 1e6:>9.1f} {s >> 10:>5}K {len(need_all):>4}/{tot:<4} "
                      f"{span_bytes / 1e6:>8.1f} {z / 1e6:>8.1f} {(span_bytes + z) / 1e6:>9.1f} "
                      f"{(span_bytes + z) / image:>9.1%}")
            if args.files:
                for name, n in sorted(files.items(), key=lambda x: -x[1])[:40]:
                    print(f"      {n / 1e6:8.2f} MB  {name}")
        print("\nthe mount as it serves (span cache, its read-ahead, spans filled ahead): "
              "fetched vs needed at its read-ahead")
        print(f"{'span':>6} {'fetched':>8} {'needed':>7} {'span MB':>8} {'zTOC MB':>8} "
              f"{'total MB':>9} {'of image':>9}")
        for s in spans:
            totals = trace_reads(lay, base / f"store-{s}", None)[3]
            z = sum(tables[s][1].values())
            got = int(totals["bytes_fetched"])
            needed = len(floor[READ_AHEAD_KB[0], s])
            extra = sorted(set(totals["fetched"]) - floor[READ_AHEAD_KB[0], s])
            if args.spans and extra:
                print("      fetched, not needed: " + ", ".join(f"{d[7:19]} {i}"
                                                             for d, i in extra))
            print(f"{s >> 10:>5}K {totals['spans_fetched']:>8} {needed:>7} "
                  f"{got / 1e6:>8.1f} {z / 1e6:>8.1f} {(got + z) / 1e6:>9.1f} "
                  f"{(got + z) / image:>9.1%}")
    finally:
        ce.unmount_under(base)
        subprocess.run(["rm", "-rf", str(base)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
