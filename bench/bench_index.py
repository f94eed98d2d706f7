#!/usr/bin/env python3
"""Index-build throughput and random-access latency of soci_native against its baselines.

Runs on the layers bench/make_layers.py wrote to bench/data/. All methods read the same file in
the same run, measurements are interleaved (round-robin over methods, --repeat rounds) and the
median is reported with ratios, because the machine is shared and noisy.

Build methods (per layer):
  soci index_layer        soci_native.index_layer(path, span_size=S): the whole public call
  soci _core.index_file   soci_native._core.index_file(path, S): the C indexer, entries as tuples
  soci C only (no entries) the same without making Python objects for the entries (what create
                          does): the C indexer's own throughput
  raw zlib-ng inflate     soci_native._core.raw_inflate_file(path): inflate only, same zlib-ng
                          build (the one-core ceiling for any gzip index build)
  zlib decompressobj      stdlib zlib, decompressobj(31), 1 MiB reads, member after member
  gzip -dc                `gzip -dc FILE > /dev/null` in a subprocess
  indexed_gzip            IndexedGzipFile(path, spacing=4 MiB).build_full_index()
  rapidgzip p=N           rapidgzip.open(path, parallelization=N).block_offsets() (blocks until
                          its full index is built; the fastest of read-to-end, seek-to-end,
                          export_index and block_offsets when measured here)

Random access (one layer, default big): --ra-count random 64 KiB ranges (seeded), each read
through every method in turn (rotating the order), latency per read; the bytes of every method
are checked against indexed_gzip's.

Needs: pip install -r bench/requirements.txt (indexed_gzip, rapidgzip) and soci_native; the
soci rows are skipped with a note when soci_native does not import.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
MiB = 1 << 20
IGZ_SPACING = 4 * MiB
RA_LEN = 65536
ALL_LAYERS = ["stdlib", "big", "big-pigz", "big-multi"]
RSS_LAYERS = ["stdlib", "big"]

# --------------------------------------------------------------------------- optional imports

notes: list[str] = []

try:
    import soci_native as sn
    from soci_native import _core
    SOCI_ERR = None
except Exception as e:  # noqa: BLE001 - any failure means: skip the soci rows
    sn = _core = None
    SOCI_ERR = f"{type(e).__name__}: {e}"

try:
    import indexed_gzip
    IGZ_ERR = None
except Exception as e:  # noqa: BLE001
    indexed_gzip = None
    IGZ_ERR = f"{type(e).__name__}: {e}"

try:
    import rapidgzip
    RGZ_ERR = None
except Exception as e:  # noqa: BLE001
    rapidgzip = None
    RGZ_ERR = f"{type(e).__name__}: {e}"


class Skip(Exception):
    """A method that cannot run here (missing module or function)."""


def need(mod, err, what):
    if mod is None:
        raise Skip(f"{what} not importable ({err})")
    return mod


def need_core_fn(name):
    need(_core, SOCI_ERR, "soci_native")
    fn = getattr(_core, name, None)
    if fn is None:
        raise Skip(f"soci_native._core has no {name}")
    return fn


# --------------------------------------------------------------------------- build methods
# Each returns a small dict of facts (checked / reported), never the uncompressed data.


def m_soci_index_layer(path, span):
    need(sn, SOCI_ERR, "soci_native")
    idx = sn.index_layer(str(path), span_size=span)
    return {"uncompressed_size": idx.uncompressed_size, "num_spans": idx.num_spans,
            "entries": len(idx.entries), "checkpoints_bytes": len(idx.checkpoints),
            "_idx": idx}


def m_soci_index_file(path, span):
    fn = need_core_fn("index_file")
    d = fn(str(path), span)
    return {"uncompressed_size": d["uncompressed_size"], "num_spans": len(d["span_digests"]),
            "entries": len(d["entries"])}


def m_soci_index_file_noentries(path, span):
    fn = need_core_fn("index_file")
    d = fn(str(path), span, "auto", None, False)  # what `create` does: no Python entry objects
    return {"uncompressed_size": d["uncompressed_size"], "num_spans": len(d["span_digests"]),
            "entries": d["num_entries"]}


def m_raw_zlib_ng(path, span):
    fn = need_core_fn("raw_inflate_file")
    return {"out": int(fn(str(path)))}


def m_zlib(path, span):
    out = 0
    d = zlib.decompressobj(31)
    with open(path, "rb", buffering=0) as f:
        while True:
            buf = f.read(MiB)
            if not buf:
                break
            while buf:
                out += len(d.decompress(buf))
                if d.eof:  # next gzip member (multi-member files)
                    buf = d.unused_data
                    d = zlib.decompressobj(31)
                else:
                    buf = b""
    out += len(d.flush())
    return {"out": out}


def m_gzip_dc(path, span):
    subprocess.run(["gzip", "-dc", str(path)], stdout=subprocess.DEVNULL, check=True)
    return {}


def m_igz(path, span):
    need(indexed_gzip, IGZ_ERR, "indexed_gzip")
    with indexed_gzip.IndexedGzipFile(str(path), spacing=IGZ_SPACING) as f:
        f.build_full_index()
    return {}


def m_rgz(par):
    def run(path, span):
        need(rapidgzip, RGZ_ERR, "rapidgzip")
        with rapidgzip.open(str(path), parallelization=par) as f:
            f.block_offsets()
            assert f.block_offsets_complete()
            size = f.size()
        return {"out": size}
    return run


BUILD_METHODS = [
    ("soci index_layer", m_soci_index_layer),
    ("soci _core.index_file", m_soci_index_file),
    ("soci C only (no entries)", m_soci_index_file_noentries),
    ("raw zlib-ng inflate", m_raw_zlib_ng),
    ("zlib decompressobj(31)", m_zlib),
    ("gzip -dc", m_gzip_dc),
    ("indexed_gzip (4 MiB)", m_igz),
    ("rapidgzip p=1", m_rgz(1)),
    ("rapidgzip p=2", m_rgz(2)),
]
RAW = "raw zlib-ng inflate"
ZLIB = "zlib decompressobj(31)"


# --------------------------------------------------------------------------- helpers


def warm(path: Path) -> None:
    """Read the file once so every method sees it in the page cache."""
    with open(path, "rb", buffering=0) as f:
        while f.read(8 * MiB):
            pass


def pct(xs, q):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def fmt(x, f="{:.3f}"):
    return "-" if x is None else f.format(x)


def table(headers, rows, aligns=None):
    cols = list(zip(*([headers] + rows), strict=True)) if rows else [[h] for h in headers]
    w = [max(len(str(c)) for c in col) for col in cols]
    aligns = aligns or (["<"] + [">"] * (len(headers) - 1))

    def line(r):
        return "  ".join(f"{str(c):{a}{n}}" for c, a, n in zip(r, aligns, w, strict=True))

    out = [line(headers), "  ".join("-" * n for n in w)]
    out += [line(r) for r in rows]
    return "\n".join(out)


def layer_meta(name: str) -> dict:
    mp = DATA / f"{name}.json"
    return json.loads(mp.read_text()) if mp.exists() else {}


def tool_versions() -> dict:
    v = {"python": platform.python_version(), "zlib (stdlib)": zlib.ZLIB_RUNTIME_VERSION,
         "nproc": os.cpu_count(), "machine": platform.machine()}
    try:
        g = subprocess.run(["gzip", "--version"], capture_output=True, text=True)
        v["gzip"] = g.stdout.splitlines()[0]
    except OSError:
        pass
    if indexed_gzip is not None:
        v["indexed_gzip"] = getattr(indexed_gzip, "__version__", "?")
    if rapidgzip is not None:
        v["rapidgzip"] = getattr(rapidgzip, "__version__", "?")
    v["soci_native"] = getattr(sn, "__version__", "present") if sn is not None else None
    return v


# --------------------------------------------------------------------------- build bench


def bench_build(name: str, path: Path, span: int, repeat: int) -> dict:
    warm(path)
    times = {m: [] for m, _ in BUILD_METHODS}
    errors: dict[str, str] = {}
    facts: dict[str, dict] = {}
    methods = list(BUILD_METHODS)
    for r in range(repeat):
        # rotate the order each round so no method always runs first / after the same one
        k = r % len(methods)
        for mname, fn in methods[k:] + methods[:k]:
            if mname in errors:
                continue
            try:
                t0 = time.perf_counter()
                res = fn(path, span)
                dt = time.perf_counter() - t0
            except Skip as e:
                errors[mname] = f"skipped: {e}"
                continue
            except Exception as e:  # noqa: BLE001 - report, don't stop the other rows
                errors[mname] = f"failed: {type(e).__name__}: {e}"
                continue
            times[mname].append(dt)
            facts[mname] = res
            print(f"  [{name}] round {r + 1}/{repeat} {mname:<24} {dt:8.3f} s", file=sys.stderr,
                  flush=True)

    usize = facts.get(ZLIB, {}).get("out")
    checks = []
    for m in (RAW, "rapidgzip p=1", "rapidgzip p=2"):
        o = facts.get(m, {}).get("out")
        if o is not None and usize is not None and o != usize:
            checks.append(f"{m} produced {o} bytes, zlib {usize}")
    for m in ("soci index_layer", "soci _core.index_file"):
        u = facts.get(m, {}).get("uncompressed_size")
        if u is not None and usize is not None and not (0 < u <= usize):
            checks.append(f"{m} uncompressed_size {u} not in (0, {usize}]")
    if usize is None:
        usize = facts.get(RAW, {}).get("out")

    med = {m: statistics.median(t) for m, t in times.items() if t}
    res = {"file": str(path), "compressed_size": path.stat().st_size,
           "uncompressed_size": usize, "span_size": span, "methods": {}, "checks": checks}
    meta = layer_meta(name)
    for k in ("entries", "members", "sha256"):
        if k in meta:
            res[k] = meta[k]
    for m, _ in BUILD_METHODS:
        e = {"times_s": times[m]}
        if m in med:
            e["median_s"] = med[m]
            e["min_s"] = min(times[m])
            e["mb_s"] = usize / med[m] / 1e6 if usize else None
            e["vs_raw"] = med[RAW] / med[m] if RAW in med else None
            e["vs_zlib"] = med[ZLIB] / med[m] if ZLIB in med else None
        if m in errors:
            e["error"] = errors[m]
        f = {k: v for k, v in facts.get(m, {}).items() if not k.startswith("_")}
        if f:
            e["facts"] = f
        res["methods"][m] = e
    res["_idx"] = facts.get("soci index_layer", {}).get("_idx")
    return res


def print_build(name: str, res: dict) -> None:
    u = res["uncompressed_size"]
    head = f"== index build: {name}  ({Path(res['file']).name}: "
    head += f"{res['compressed_size'] / 1e6:.1f} MB gzip"
    if u:
        head += f" -> {u / 1e6:.1f} MB"

    extra = []
    if "entries" in res:
        extra.append(f"{res['entries']} tar entries")
    if "members" in res:
        extra.append(f"{res['members']} gzip members")
    extra.append(f"span {res['span_size'] / MiB:g} MiB")
    print(head + ", " + ", ".join(extra) + ")")
    rows = []
    for m, e in res["methods"].items():
        if "median_s" in e:
            rows.append([m, fmt(e["median_s"]), fmt(e["min_s"]), fmt(e["mb_s"], "{:.0f}"),
                         fmt(e["vs_raw"], "{:.2f}"), fmt(e["vs_zlib"], "{:.2f}"),
                         str(len(e["times_s"]))])
        else:
            rows.append([m, "-", "-", "-", "-", "-", "0"])
    print(table(["method", "median s", "min s", "MB/s", "vs raw-ng", "vs zlib", "runs"], rows))
    print("  MB/s = uncompressed bytes / median s / 1e6; vs X = X's median s / this median s"
          " (>1: faster than X)")
    for m, e in res["methods"].items():
        if "error" in e:
            print(f"  note: {m}: {e['error']}")
    sf = res["methods"]["soci index_layer"].get("facts")
    if sf:
        print(f"  soci: {sf['num_spans']} spans, {sf['entries']} entries, tar size "
              f"{sf['uncompressed_size']}, checkpoint blob {sf['checkpoints_bytes']} B")
    for c in res["checks"]:
        print(f"  CHECK FAILED: {c}")
    print()


# --------------------------------------------------------------------------- peak RSS

RSS_CHILD = r"""
import json, resource, sys


def hwm_kib():
    # VmHWM: peak RSS of this process image since exec. ru_maxrss is not used for the number:
    # Linux carries the parent's RSS at fork into the child's ru_maxrss across exec, so a child
    # of a big benchmark process would report the parent's size.
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


meth, path, span = sys.argv[1], sys.argv[2], int(sys.argv[3])
if meth.startswith("soci"):
    import soci_native as sn
    from soci_native import _core
elif meth == "indexed_gzip":
    import indexed_gzip
elif meth.startswith("rapidgzip"):
    import rapidgzip
r0 = hwm_kib()
if meth == "soci index_layer":
    idx = sn.index_layer(path, span_size=span)
    n = len(idx.entries)
elif meth == "soci _core.index_file":
    d = _core.index_file(path, span)
    n = len(d["entries"])
elif meth == "soci C only (no entries)":
    d = _core.index_file(path, span, "auto", None, False)
    n = d["num_entries"]
elif meth == "indexed_gzip":
    with indexed_gzip.IndexedGzipFile(path, spacing=4 << 20) as f:
        f.build_full_index()
elif meth.startswith("rapidgzip"):
    with rapidgzip.open(path, parallelization=int(meth[-1])) as f:
        f.block_offsets()
print(json.dumps({"after_import_kib": r0, "peak_kib": hwm_kib(),
                  "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""
RSS_METHODS = ["import only", "soci index_layer", "soci _core.index_file",
               "soci C only (no entries)", "indexed_gzip",
               "rapidgzip p=2"]


def bench_rss(path: Path, span: int) -> dict:
    out = {}
    for m in RSS_METHODS:
        if m.startswith("soci") and sn is None:
            out[m] = {"error": f"skipped: soci_native not importable ({SOCI_ERR})"}
            continue
        if (m == "indexed_gzip" and indexed_gzip is None) or (
                m.startswith("rapidgzip") and rapidgzip is None):
            out[m] = {"error": "skipped: not importable"}
            continue
        p = subprocess.Popen([sys.executable, "-c", RSS_CHILD, m, str(path), str(span)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        so, se = p.communicate()
        if p.returncode != 0:
            out[m] = {"error": f"failed (rc {p.returncode}): {se.strip()[-300:]}"}
            continue
        out[m] = json.loads(so.strip().splitlines()[-1])
    return out


def print_rss(results: dict) -> None:
    names = list(results)
    print("== peak RSS of one index build in a fresh subprocess (VmHWM, MiB; 'import only' ="
          " interpreter + modules)")
    rows = []
    for m in RSS_METHODS:
        row = [m]
        for n in names:
            d = results[n].get(m, {})
            if "peak_kib" in d:
                row += [f"{d['peak_kib'] / 1024:.1f}",
                        f"{(d['peak_kib'] - d['after_import_kib']) / 1024:.1f}"]
            else:
                row += ["-", "-"]
        rows.append(row)
    print(table(["method"] + [h for n in names for h in (f"{n} peak", f"{n} +build")], rows))
    for n in names:
        for m, d in results[n].items():
            if "error" in d and not d["error"].startswith("skipped"):
                print(f"  note: {n}/{m}: {d['error']}")
    print()


# --------------------------------------------------------------------------- random access


def bench_random(name: str, path: Path, span: int, count: int, seed: int, naive: int,
                 usize: int, idx) -> dict:
    warm(path)
    hi = max(1, usize - RA_LEN - 20480)  # stay clear of the end-of-archive padding
    rng = random.Random(seed)
    offsets = [rng.randrange(0, hi) for _ in range(count)]
    # how many reads fall into a span an earlier read already touched (rapidgzip caches chunks)
    seen, fresh = set(), []
    for o in offsets:
        ss = set(range(o // span, (o + RA_LEN - 1) // span + 1))
        fresh.append(not (ss & seen))
        seen |= ss
    repeats = fresh.count(False)

    readers = {}  # name -> callable(off) -> bytes
    closers = []
    errors = {}
    setup = {}

    t0 = time.perf_counter()
    with indexed_gzip.IndexedGzipFile(str(path), spacing=IGZ_SPACING) as f:
        f.build_full_index()
        ibuf = io.BytesIO()
        f.export_index(fileobj=ibuf)
    setup["indexed_gzip"] = time.perf_counter() - t0
    ibuf.seek(0)
    # buffer_size=64 KiB: the default (4 x spacing) would inflate 16 MiB per seek
    igz = indexed_gzip.IndexedGzipFile(str(path), spacing=IGZ_SPACING, buffer_size=RA_LEN)
    igz.import_index(fileobj=ibuf)
    closers.append(igz.close)

    def r_igz(o):
        igz.seek(o)
        return igz.read(RA_LEN)

    if sn is not None:
        try:
            if idx is None:
                t0 = time.perf_counter()
                idx = sn.index_layer(str(path), span_size=span)
                setup["soci extract"] = time.perf_counter() - t0
            blob = idx.checkpoints
            spath = str(path)
            readers["soci extract"] = lambda o: sn.extract(spath, blob, o, RA_LEN)
        except Exception as e:  # noqa: BLE001
            errors["soci extract"] = f"failed: {type(e).__name__}: {e}"
    else:
        errors["soci extract"] = f"skipped: soci_native not importable ({SOCI_ERR})"
    readers["indexed_gzip seek+read"] = r_igz

    if rapidgzip is not None:
        t0 = time.perf_counter()
        with rapidgzip.open(str(path), parallelization=2) as f:
            f.block_offsets()
            rbuf = io.BytesIO()
            f.export_index(rbuf)
        setup["rapidgzip"] = time.perf_counter() - t0
        for par in (1, 2):
            rbuf.seek(0)
            rf = rapidgzip.open(str(path), parallelization=par)
            rf.import_index(rbuf)
            closers.append(rf.close)

            def r_rgz(o, rf=rf):
                rf.seek(o)
                return rf.read(RA_LEN)
            readers[f"rapidgzip p={par} seek+read"] = r_rgz
    else:
        errors["rapidgzip"] = f"skipped: not importable ({RGZ_ERR})"

    lat = {m: [] for m in readers}
    lat_fresh = {m: [] for m in readers}
    mismatches = []
    names = list(readers)
    try:
        for i, o in enumerate(offsets):
            k = i % len(names)
            got = {}
            for m in names[k:] + names[:k]:
                if m in errors:
                    continue
                try:
                    t0 = time.perf_counter()
                    b = readers[m](o)
                    dt = time.perf_counter() - t0
                    lat[m].append(dt)
                    if fresh[i]:
                        lat_fresh[m].append(dt)
                except Exception as e:  # noqa: BLE001
                    errors[m] = f"failed at offset {o}: {type(e).__name__}: {e}"
                    continue
                got[m] = b
            ref = got.get("indexed_gzip seek+read")
            if ref is None or len(ref) != RA_LEN:
                mismatches.append(f"indexed_gzip read {len(ref or b'')} bytes at {o}")
            for m, b in got.items():
                if b != ref:
                    mismatches.append(f"{m} differs from indexed_gzip at offset {o}")
    finally:
        for c in closers:
            c()

    # the no-index baseline: inflate from the start of the file up to the range (a few only)
    naive_lat = []
    for o in offsets[:naive]:
        t0 = time.perf_counter()
        need_ = o + RA_LEN
        d = zlib.decompressobj(31)
        produced = b""
        with open(path, "rb") as f:
            done = 0
            while done < need_:
                buf = f.read(MiB)
                if not buf:
                    break
                while buf and done < need_:
                    chunk = d.decompress(buf)
                    if done + len(chunk) >= o:
                        produced += chunk[max(0, o - done):]
                    done += len(chunk)
                    if d.eof:
                        buf = d.unused_data
                        d = zlib.decompressobj(31)
                    else:
                        buf = b""
        naive_lat.append(time.perf_counter() - t0)
        if produced[:RA_LEN] != got_ref(path, o, ibuf):
            mismatches.append(f"zlib-from-start differs at offset {o}")
    if naive_lat:
        lat[f"zlib from start (first {len(naive_lat)})"] = naive_lat

    base = "soci extract" if lat.get("soci extract") else "indexed_gzip seek+read"
    bmed = statistics.median(lat[base])
    res = {"layer": name, "file": str(path), "count": count, "seed": seed, "length": RA_LEN,
           "span_size": span, "igz_spacing": IGZ_SPACING, "reads_in_already_touched_span": repeats,
           "setup_s": setup, "mismatches": mismatches, "baseline": base, "methods": {}}
    for m, xs in lat.items():
        e = {"n": len(xs)}
        if xs:
            e.update(median_ms=statistics.median(xs) * 1e3, p90_ms=pct(xs, 0.9) * 1e3,
                     mean_ms=statistics.fmean(xs) * 1e3, vs_base=statistics.median(xs) / bmed)
        if lat_fresh.get(m):
            e["fresh_n"] = len(lat_fresh[m])
            e["fresh_median_ms"] = statistics.median(lat_fresh[m]) * 1e3
        if m in errors:
            e["error"] = errors[m]
        res["methods"][m] = e
    for m, er in errors.items():
        res["methods"].setdefault(m, {"n": 0, "error": er})
    return res


def got_ref(path: Path, o: int, ibuf: io.BytesIO) -> bytes:
    ibuf.seek(0)
    with indexed_gzip.IndexedGzipFile(str(path), spacing=IGZ_SPACING, buffer_size=RA_LEN) as f:
        f.import_index(fileobj=ibuf)
        f.seek(o)
        return f.read(RA_LEN)


def print_random(res: dict) -> None:
    print(f"== random access: {res['layer']}  ({res['count']} reads of {res['length'] // 1024} KiB,"
          f" seed {res['seed']}; soci span {res['span_size'] / MiB:g} MiB, indexed_gzip spacing"
          f" {res['igz_spacing'] / MiB:g} MiB)")
    rows = []
    for m, e in res["methods"].items():
        if e.get("n"):
            rows.append([m, str(e["n"]), fmt(e["median_ms"], "{:.2f}"), fmt(e["p90_ms"], "{:.2f}"),
                         fmt(e["mean_ms"], "{:.2f}"), fmt(e["vs_base"], "{:.2f}"),
                         fmt(e.get("fresh_median_ms"), "{:.2f}")])
        else:
            rows.append([m, "0", "-", "-", "-", "-", "-"])
    print(table(["method", "reads", "median ms", "p90 ms", "mean ms", f"/ {res['baseline']}",
                 "median ms, new span"], rows))
    for m, e in res["methods"].items():
        if "error" in e:
            print(f"  note: {m}: {e['error']}")
    print(f"  / {res['baseline']} = this median / its median (>1: slower)")
    print(f"  {res['reads_in_already_touched_span']} of {res['count']} reads touch a span an "
          "earlier read touched; 'new span' = the median over the others. rapidgzip keeps "
          "decoded chunks cached (and prefetches with p=2); soci extract and indexed_gzip "
          "inflate from a checkpoint on every read")
    print("  index setup (not in the latencies): " + ", ".join(
        f"{k} {v:.2f} s" for k, v in res["setup_s"].items()))
    if res["mismatches"]:
        for mm in res["mismatches"][:10]:
            print(f"  MISMATCH: {mm}")
    else:
        n = sum(e.get("n", 0) for m, e in res["methods"].items()
                if m != "indexed_gzip seek+read")
        print(f"  verified: {n} reads byte-identical to indexed_gzip's")
    print()


# --------------------------------------------------------------------------- main


def main() -> int:
    global DATA
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.split("\n")[1:]))
    ap.add_argument("--layers", default=None,
                    help="comma list of " + ",".join(ALL_LAYERS) + " (default: all present)")
    ap.add_argument("--repeat", type=int, default=3, help="rounds per build method (default 3)")
    ap.add_argument("--span-size", type=int, default=4 * MiB,
                    help="soci span size in bytes (default 4 MiB)")
    ap.add_argument("--quick", action="store_true",
                    help="small layer only (stdlib), random access on it too")
    ap.add_argument("--json", metavar="FILE", help="also write results as JSON")
    ap.add_argument("--ra-layer", default=None, help="layer for random access (default big)")
    ap.add_argument("--ra-count", type=int, default=200, help="random reads (default 200)")
    ap.add_argument("--ra-naive", type=int, default=5,
                    help="reads also done by inflating from the file start (default 5)")
    ap.add_argument("--seed", type=int, default=20240611)
    ap.add_argument("--no-rss", action="store_true", help="skip the peak-RSS subprocesses")
    ap.add_argument("--no-random", action="store_true", help="skip random access")
    ap.add_argument("--data-dir", default=str(DATA))
    a = ap.parse_args()

    DATA = Path(a.data_dir)
    if a.quick:
        layers = ["stdlib"]
    elif a.layers:
        layers = [x for x in a.layers.split(",") if x]
    else:
        layers = [n for n in ALL_LAYERS if (DATA / f"{n}.tar.gz").exists()]
    if not layers:  # nothing built yet: build them all (once; cached afterwards)
        layers = list(ALL_LAYERS)
    missing = [n for n in layers if not (DATA / f"{n}.tar.gz").exists()]
    if missing and DATA != HERE / "data":
        print(f"missing layers {missing} in {DATA}", file=sys.stderr)
        return 2
    if missing:
        print(f"building missing layers {missing} with make_layers.py (once)", file=sys.stderr)
        r = subprocess.run([sys.executable, str(HERE / "make_layers.py"),
                            "--layers", ",".join(missing)])
        if r.returncode != 0:
            return r.returncode
        # big-pigz is skipped without pigz
        layers = [n for n in layers if (DATA / f"{n}.tar.gz").exists()]
    ra_layer = a.ra_layer or ("big" if "big" in layers else layers[-1])

    vers = tool_versions()
    load = os.getloadavg()
    print(f"soci-native benchmarks  span {a.span_size / MiB:g} MiB, repeat {a.repeat}, "
          f"load avg {load[0]:.2f} {load[1]:.2f}")
    print("  " + ", ".join(f"{k} {v}" for k, v in vers.items() if v is not None))
    if SOCI_ERR:
        print(f"  note: soci_native not importable, its rows are skipped ({SOCI_ERR})")
    print()

    out = {"versions": vers, "load_avg": load, "span_size": a.span_size, "repeat": a.repeat,
           "layers": {}, "rss": {}, "random_access": None}
    idxs = {}
    for n in layers:
        res = bench_build(n, DATA / f"{n}.tar.gz", a.span_size, a.repeat)
        idxs[n] = res.pop("_idx")
        out["layers"][n] = res
        print_build(n, res)

    if not a.no_rss:
        for n in [x for x in RSS_LAYERS if x in layers] or layers[:1]:
            out["rss"][n] = bench_rss(DATA / f"{n}.tar.gz", a.span_size)
        print_rss(out["rss"])

    rc = 0
    if not a.no_random and indexed_gzip is None:
        print(f"random access skipped: it needs indexed_gzip as the reference ({IGZ_ERR})\n")
    elif not a.no_random:
        usize = out["layers"].get(ra_layer, {}).get("uncompressed_size")
        if usize is None:
            usize = layer_meta(ra_layer).get("tar_size")
        ra = bench_random(ra_layer, DATA / f"{ra_layer}.tar.gz", a.span_size, a.ra_count,
                          a.seed, a.ra_naive, usize, idxs.get(ra_layer))
        out["random_access"] = ra
        print_random(ra)
        if ra["mismatches"]:
            rc = 1
    if any(r["checks"] for r in out["layers"].values()):
        rc = 1

    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2, default=str) + "\n")
        print(f"wrote {a.json}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
