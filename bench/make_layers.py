#!/usr/bin/env python3
"""Build realistic container-layer blobs from real files on this machine into bench/data/.

Layers (each ``<name>.tar.gz`` with a ``<name>.json`` sidecar holding the parameters it was
built with, its sizes and sha256; a layer whose sidecar matches the requested parameters is
kept as is):

  stdlib      the running interpreter's stdlib dir (no site-packages, no __pycache__),
              tarred as PAX, compressed with ``gzip -6 -n`` (one member, like docker's)
  big         ~250 MB compressed: pip-installed numpy/scipy/pandas (a venv under
              bench/data/sci-venv, pinned versions) then /usr/share, /usr/lib/..., taken in a
              fixed, sorted order until the tar reaches --big-mib; ``gzip -6 -n``
  big-pigz    the same tar through ``pigz -p 2 -6 -n`` (one member, many independently
              flushed blocks); only if pigz is installed
  big-multi   the same tar cut into --slice-bytes slices, each ``gzip -6 -n`` on its own,
              concatenated (a multi-member gzip file, like mgzip/concatenated output)
  pylib       (only when asked for) the running interpreter's whole lib/ tree under its base
              prefix, site-packages and __pycache__ included (with pyenv's 3.11: ~290 MB
              gzip, ~1 GB tar, ~65k entries: the many-entries layer of the memory goals)

Nothing is deduplicated; hardlinks, symlinks and directories are stored as tar stores them.
Usage: python bench/make_layers.py [--layers stdlib,big,big-pigz,big-multi,pylib] [--force]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import tarfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"

# Real scientific package data for the big layer, pinned so the layer is the same next time.
SCI_PACKAGES = ["numpy==2.4.6", "scipy==1.17.1", "pandas==3.1.1"]

# Sources of the big layer after the sci venv, in this order; missing ones are skipped.
BIG_SOURCES = [
    ("/usr/share", "usr/share"),
    ("/usr/lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu"),
    ("/usr/lib/aarch64-linux-gnu", "usr/lib/aarch64-linux-gnu"),
    ("/usr/lib/gcc", "usr/lib/gcc"),
    ("/usr/lib/python3", "usr/lib/python3"),
    ("/usr/lib/llvm-14", "usr/lib/llvm-14"),
    ("/usr/lib/jvm", "usr/lib/jvm"),
    ("/root/.pyenv/versions", "root/.pyenv/versions"),
]

LAYER_NAMES = ["stdlib", "big", "big-pigz", "big-multi"]
EXTRA_LAYERS = ["pylib"]  # built only when named: ~1 minute


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            h.update(b)
    return "sha256:" + h.hexdigest()


# --------------------------------------------------------------------------- tar writing


class Budget(Exception):
    """Raised when the next file would take the tar past its size budget."""


def _tar_size_of(info: tarfile.TarInfo) -> int:
    # header block(s) + data padded to 512; PAX headers add a few blocks, ignored here
    return 512 + ((info.size + 511) // 512) * 512 if info.isreg() else 512


def walk_sorted(root: str, exclude_dirs: set[str]):
    """Yield (path, relpath) for root's tree: a directory, then its entries in sorted order."""
    yield root, ""
    stack = [(root, "")]
    while stack:
        d, rel = stack.pop()
        try:
            names = sorted(os.listdir(d))
        except OSError as e:
            log(f"  skip unreadable dir {d}: {e}")
            continue
        subdirs = []
        for n in names:
            p = os.path.join(d, n)
            r = f"{rel}/{n}" if rel else n
            try:
                st = os.lstat(p)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                if n in exclude_dirs:
                    continue
                yield p, r
                subdirs.append((p, r))
            else:
                yield p, r
        # depth-first in sorted order, like tar: push in reverse so the first is popped first
        for item in reversed(subdirs):
            stack.append(item)


def add_tree(tf: tarfile.TarFile, src: str, arc: str, exclude_dirs: set[str],
             budget: int | None, stats: dict) -> None:
    for path, rel in walk_sorted(src, exclude_dirs):
        name = f"{arc}/{rel}" if rel else arc
        try:
            info = tf.gettarinfo(path, arcname=name)
        except OSError as e:
            log(f"  skip {path}: {e}")
            continue
        if info is None:  # sockets
            continue
        # whole seconds, as docker/moby writes layers: PAX records only where ustar can't say
        # it (long names, non-ASCII, big ids)
        info.mtime = int(info.mtime)
        if budget is not None and stats["bytes"] + _tar_size_of(info) > budget:
            raise Budget()
        if info.isreg():
            try:
                with open(path, "rb") as f:
                    tf.addfile(info, f)
            except OSError as e:
                log(f"  skip {path}: {e}")
                continue
        else:
            tf.addfile(info)
        stats["bytes"] += _tar_size_of(info)
        stats["entries"] += 1


def write_tar(out: Path, sources: list[tuple[str, str]], exclude_dirs: set[str],
              budget: int | None) -> dict:
    stats = {"bytes": 0, "entries": 0, "sources": []}
    tmp = out.with_suffix(out.suffix + ".tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tf:
        for src, arc in sources:
            if not os.path.isdir(src):
                log(f"  source {src} missing, skipped")
                continue
            stats["sources"].append(src)
            try:
                add_tree(tf, src, arc, exclude_dirs, budget, stats)
            except Budget:
                break
    os.replace(tmp, out)
    stats["tar_size"] = out.stat().st_size
    return stats


# --------------------------------------------------------------------------- compressing


def gzip_file(src: Path, dst: Path, cmd: list[str]) -> None:
    tmp = dst.with_suffix(dst.suffix + ".tmp")
    with open(src, "rb") as fi, open(tmp, "wb") as fo:
        subprocess.run(cmd, stdin=fi, stdout=fo, check=True)
    os.replace(tmp, dst)


def gzip_multi(src: Path, dst: Path, level: int, slice_bytes: int) -> int:
    """Cut src into slices and gzip each separately; concatenate the members. Returns #members."""
    tmp = dst.with_suffix(dst.suffix + ".tmp")
    n = 0
    with open(src, "rb") as fi, open(tmp, "wb") as fo:
        while True:
            chunk = fi.read(slice_bytes)
            if not chunk:
                break
            p = subprocess.run(["gzip", f"-{level}", "-n", "-c"], input=chunk,
                               stdout=subprocess.PIPE, check=True)
            fo.write(p.stdout)
            n += 1
    os.replace(tmp, dst)
    return n


# --------------------------------------------------------------------------- cache


def meta_path(name: str) -> Path:
    return DATA / f"{name}.json"


def cached(name: str, params: dict) -> dict | None:
    blob = DATA / f"{name}.tar.gz"
    mp = meta_path(name)
    if not blob.exists() or not mp.exists():
        return None
    try:
        meta = json.loads(mp.read_text())
    except ValueError:
        return None
    if meta.get("params") != params or meta.get("compressed_size") != blob.stat().st_size:
        return None
    return meta


def save_meta(name: str, params: dict, info: dict) -> dict:
    blob = DATA / f"{name}.tar.gz"
    meta = {"name": name, "file": blob.name, "params": params,
            "compressed_size": blob.stat().st_size, "sha256": sha256_file(blob), **info}
    meta_path(name).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


# --------------------------------------------------------------------------- layers


def stdlib_dir() -> str:
    return sysconfig.get_paths()["stdlib"]


def build_stdlib(level: int, force: bool) -> dict:
    src = stdlib_dir()
    return build_dir_layer("stdlib", src, "usr/local/lib/" + os.path.basename(src.rstrip("/")),
                           ["site-packages", "__pycache__"], level, force)


def build_pylib(level: int, force: bool) -> dict:
    return build_dir_layer("pylib", os.path.join(sys.base_prefix, "lib"), "usr/local/lib", [],
                           level, force)


def build_dir_layer(name: str, src: str, arc: str, exclude: list[str], level: int,
                    force: bool) -> dict:
    """One directory tree as layer NAME (PAX tar under ARC, without the EXCLUDE names,
    `gzip -LEVEL -n`), unless the cached one has the same parameters."""
    params = {"src": src, "exclude": exclude, "level": level, "format": "pax", "tool": "gzip"}
    if not force and (m := cached(name, params)):
        log(f"{name}: cached")
        return m
    log(f"{name}: tarring {src}")
    t0 = time.monotonic()
    tar = DATA / f"{name}.tar"
    st = write_tar(tar, [(src, arc)], set(exclude), None)
    gzip_file(tar, DATA / f"{name}.tar.gz", ["gzip", f"-{level}", "-n", "-c"])
    tar.unlink()
    log(f"{name}: done in {time.monotonic() - t0:.1f}s")
    return save_meta(name, params, {"tar_size": st["tar_size"], "entries": st["entries"]})


def sci_site_packages() -> str | None:
    """A venv with the pinned scientific packages; returns its site-packages, or None."""
    venv = DATA / "sci-venv"
    marker = venv / "installed.txt"
    want = "\n".join(SCI_PACKAGES) + "\n"
    if not (marker.exists() and marker.read_text() == want):
        log(f"big: creating {venv} with {' '.join(SCI_PACKAGES)}")
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        py = venv / "bin" / "python"
        r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-compile",
                            *SCI_PACKAGES])
        if r.returncode != 0:
            log("big: pip install of the scientific packages failed; going on without them")
            return None
        marker.write_text(want)
    sp = list((venv / "lib").glob("python3*/site-packages"))
    return str(sp[0]) if sp else None


def build_big_tar(budget: int) -> tuple[Path, dict]:
    tar = DATA / "big.tar"
    sources = []
    sp = sci_site_packages()
    if sp:
        sources.append((sp, "opt/venv/lib/python3/site-packages"))
    sources += BIG_SOURCES
    meta_tar = DATA / "big.tar.json"
    key = {"budget": budget, "sources": [s for s, _ in sources], "sci": SCI_PACKAGES}
    if tar.exists() and meta_tar.exists():
        m = json.loads(meta_tar.read_text())
        if m.get("key") == key and m.get("tar_size") == tar.stat().st_size:
            return tar, m
    log(f"big: tarring up to {budget / 2**20:.0f} MiB from {len(sources)} sources")
    t0 = time.monotonic()
    st = write_tar(tar, sources, {"__pycache__"}, budget)
    m = {"key": key, "tar_size": st["tar_size"], "entries": st["entries"],
         "sources_used": st["sources"]}
    meta_tar.write_text(json.dumps(m, indent=2) + "\n")
    log(f"big: tar {st['tar_size'] / 1e6:.0f} MB, {st['entries']} entries "
        f"in {time.monotonic() - t0:.1f}s")
    return tar, m


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", default=",".join(LAYER_NAMES),
                    help="comma list of: " + ",".join(LAYER_NAMES + EXTRA_LAYERS)
                    + f" (default: {','.join(LAYER_NAMES)})")
    ap.add_argument("--level", type=int, default=6, help="gzip level (default 6)")
    ap.add_argument("--big-mib", type=int, default=660,
                    help="uncompressed tar budget of the big layer in MiB (default 660, "
                         "~250 MB gzip -6 on a Debian + pyenv machine)")
    ap.add_argument("--slice-bytes", type=int, default=10_000_000,
                    help="uncompressed bytes per member of big-multi (default 10,000,000: "
                         "not a multiple of any span size)")
    ap.add_argument("--keep-tar", action="store_true", help="keep bench/data/big.tar")
    ap.add_argument("--force", action="store_true", help="rebuild even if cached")
    a = ap.parse_args()

    wanted = [x for x in a.layers.split(",") if x]
    for w in wanted:
        if w not in LAYER_NAMES + EXTRA_LAYERS:
            ap.error(f"unknown layer {w!r}")
    DATA.mkdir(parents=True, exist_ok=True)
    have_pigz = shutil.which("pigz") is not None
    if "big-pigz" in wanted and not have_pigz:
        log("big-pigz: pigz not installed (apt-get install pigz), skipped")
        wanted.remove("big-pigz")

    metas = []
    if "stdlib" in wanted:
        metas.append(build_stdlib(a.level, a.force))
    if "pylib" in wanted:
        metas.append(build_pylib(a.level, a.force))

    budget = a.big_mib << 20
    big_variants = {
        "big": {"tool": "gzip", "cmd": ["gzip", f"-{a.level}", "-n", "-c"]},
        "big-pigz": {"tool": "pigz -p 2", "cmd": ["pigz", "-p", "2", f"-{a.level}", "-n", "-c"]},
        "big-multi": {"tool": "gzip per slice", "slice_bytes": a.slice_bytes},
    }
    todo = []
    for name, v in big_variants.items():
        if name not in wanted:
            continue
        params = {"budget_mib": a.big_mib, "level": a.level, "sci": SCI_PACKAGES,
                  "sources": [s for s, _ in BIG_SOURCES], "format": "pax",
                  **{k: v[k] for k in v if k != "cmd"}}
        if not a.force and (m := cached(name, params)):
            log(f"{name}: cached")
            metas.append(m)
        else:
            todo.append((name, v, params))
    if todo:
        tar, tm = build_big_tar(budget)
        info = {"tar_size": tm["tar_size"], "entries": tm["entries"],
                "sources_used": tm["sources_used"]}
        for name, v, params in todo:
            log(f"{name}: compressing with {v['tool']}")
            t0 = time.monotonic()
            dst = DATA / f"{name}.tar.gz"
            extra = {}
            if "cmd" in v:
                gzip_file(tar, dst, v["cmd"])
            else:
                extra["members"] = gzip_multi(tar, dst, a.level, v["slice_bytes"])
            log(f"{name}: done in {time.monotonic() - t0:.1f}s")
            metas.append(save_meta(name, params, {**info, **extra}))
        if not a.keep_tar:
            tar.unlink()
            (DATA / "big.tar.json").unlink(missing_ok=True)

    print(f"{'layer':<10} {'compressed':>12} {'tar':>12} {'ratio':>6} {'entries':>8}  file")
    for m in metas:
        print(f"{m['name']:<10} {m['compressed_size'] / 1e6:>9.1f} MB "
              f"{m['tar_size'] / 1e6:>9.1f} MB "
              f"{m['tar_size'] / m['compressed_size']:>6.2f} {m['entries']:>8}  "
              f"{DATA / m['file']}" + (f"  ({m['members']} members)" if "members" in m else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
