#!/usr/bin/env python3
"""`soci-native mount` from a registry against pulling and extracting the whole image:
time to first byte and to a start-up file set, bytes fetched, warm-cache read throughput.

The image is an OCI layout under bench/data/image-mount/image/ over the stdlib and big layers
bench/make_layers.py built (~290 MB compressed, ~780 MB uncompressed), copied with skopeo into
a real registry on 127.0.0.1 (tests/reg_server.py) and converted there to a SOCI-enabled tag
(`soci-native convert docker://... docker://...:bench-soci`, index v2).

The start-up set is what `python -c "import numpy"` opens in bench/data/sci-venv (strace, or a
`sys.addaudithook` "open" hook plus /proc/self/maps when strace is missing), mapped to image
paths the way make_layers.py tarred them (venv site-packages -> opt/venv/lib/python3/
site-packages, the stdlib -> usr/local/lib/pythonX.Y); a cached `__pycache__/*.pyc` counts as
its `.py` (the layers hold no bytecode, so a container reads the source). Files are read whole,
in the order they were first opened.

Each round, in an order that alternates between rounds:

* full pull: `skopeo copy docker://... oci:DIR` into a fresh directory, then every layer
  extracted in order into a fresh root (`tar -xzf`, or `umoci unpack --rootless` with
  --extract umoci), then the start-up set read from that root. Bytes = layers + config +
  manifest.
* soci mount: fresh store and span cache, `soci-native mount docker://...:bench-soci MP`
  (timed to "mounted": index discovery, zTOC download, tree build, FUSE live), the start-up set
  read through the mount, stats.json read (compressed span bytes fetched; the index and zTOCs
  the mount downloaded are counted from the fresh store), the set read again (kernel page
  cache), the big set read cold then warm; unmount; mount again on the same store and span
  cache (no download) and read both sets once more: reads served from the span cache.
* local dir: the start-up and big sets read twice from the extracted root, the second timed.

Every byte read through a mount is checked (sha256) against the extracted tree; a mismatch
stops the run with exit code 1. Mounts are always unmounted (`soci-native umount`, then
`fusermount3 -u -z`) and the registry stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import bench_create  # noqa: E402
import make_layers  # noqa: E402
import mnt_image  # noqa: E402
import reg_server  # noqa: E402

DATA = HERE / "data"
LAYERS = ["stdlib", "big"]
IMAGE_DIR = DATA / "image-mount"  # not data/image: bench_create/bench_registry use 3 layers
SITE = "opt/venv/lib/python3/site-packages"  # where make_layers.py puts the venv's tree
REPO = "bench/mount"
STARTUP_CMD = "import numpy"
BUF = 1 << 20


class Mismatch(Exception):
    pass


def soci(env: dict[str, str], *args: str) -> tuple[float, str]:
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "soci_native.cli", *args], env=env,
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"soci-native {' '.join(args)} failed ({p.returncode}):\n"
                           f"{p.stderr.strip()}")
    return time.perf_counter() - t, p.stdout


# ----------------------------------------------------------------------------- the image

def make_layout(names: list[str]) -> Path:
    """bench_create.make_image's layout over `names`, built in IMAGE_DIR/image (IMAGE_DIR
    holds symlinks to the layers and stands in for bench_create.DATA), so the 3-layer
    data/image the other benches use is not rebuilt back and forth."""
    IMAGE_DIR.mkdir(exist_ok=True)
    for n in names:
        link = IMAGE_DIR / f"{n}.tar.gz"
        if not link.is_symlink():
            link.unlink(missing_ok=True)
            link.symlink_to(DATA / f"{n}.tar.gz")
    saved = bench_create.DATA
    try:
        bench_create.DATA = IMAGE_DIR
        return bench_create.make_image(names)
    finally:
        bench_create.DATA = saved


# ------------------------------------------------------------------------ start-up file set

def _path_map() -> list[tuple[str, str]]:
    """(host prefix, image prefix), longest host prefix first."""
    out: list[tuple[str, str]] = []
    stdlib = json.loads((DATA / "stdlib.json").read_text())["params"]["src"].rstrip("/")
    out.append((os.path.realpath(stdlib), "usr/local/lib/" + os.path.basename(stdlib)))
    sp = sorted((DATA / "sci-venv" / "lib").glob("python3*/site-packages"))
    if sp:
        out.append((os.path.realpath(sp[0]), SITE))
    out += [(os.path.realpath(h), a) for h, a in make_layers.BIG_SOURCES if os.path.exists(h)]
    return sorted(out, key=lambda x: -len(x[0]))


_PYC = re.compile(r"^(.*)/__pycache__/([^/.]+)\.[^/]*\.pyc$")


def to_image_path(host: str, pmap: list[tuple[str, str]]) -> str | None:
    p = os.path.normpath(host)
    if m := _PYC.match(p):
        p = f"{m.group(1)}/{m.group(2)}.py"
    rp = os.path.realpath(p) if os.path.exists(p) else p
    for h, a in pmap:
        for cand in (p, rp):
            if cand == h or cand.startswith(h + "/"):
                return a + cand[len(h):]
    return None


_OPEN = re.compile(r'^\d+\s+(?:openat\((?:AT_FDCWD|\d+), |open\()"((?:[^"\\]|\\.)*)", ([^,)]+)')


def record_startup(py: Path) -> tuple[list[str], str]:
    """Host paths `py -c STARTUP_CMD` opens, first open first, and how they were recorded."""
    if shutil.which("strace"):
        with tempfile.NamedTemporaryFile(prefix="strace-", suffix=".txt") as tf:
            subprocess.run(["strace", "-f", "-qq", "-e", "trace=openat,open",
                            "-e", "status=successful", "-o", tf.name, str(py), "-c",
                            STARTUP_CMD], check=True, cwd="/", capture_output=True)
            seen: list[str] = []
            for line in Path(tf.name).read_text(errors="replace").splitlines():
                m = _OPEN.match(line)
                if m and "O_DIRECTORY" not in m.group(2):
                    seen.append(m.group(1).encode().decode("unicode_escape"))
        return list(dict.fromkeys(seen)), "strace"
    code = ("import sys, json\nL = []\n"
            "sys.addaudithook(lambda e, a: L.append(a[0]) if e == 'open' and "
            "isinstance(a[0], str) else None)\n" + STARTUP_CMD + "\n"
            "L += [l.split(None, 5)[5] for l in open('/proc/self/maps') "
            "if len(l.split(None, 5)) == 6 and l.split(None, 5)[5].startswith('/')]\n"
            "print(json.dumps([p.strip() for p in L]))\n")
    out = subprocess.run([str(py), "-c", code], check=True, cwd="/", capture_output=True,
                         text=True).stdout
    return list(dict.fromkeys(json.loads(out))), "audit hook + /proc/self/maps"


# --------------------------------------------------------------------------------- reading

def read_set(root: Path, rels: list[str], keep: bool = False
             ) -> tuple[float, float, int, list[bytes]]:
    """Reads every file whole; returns (first file s, all s, bytes, contents if keep)."""
    buf = bytearray(BUF)
    mv = memoryview(buf)
    datas: list[bytes] = []
    n = 0
    first = 0.0
    t = time.perf_counter()
    for i, rel in enumerate(rels):
        with open(root / rel, "rb", buffering=0) as f:
            if keep:
                d = f.read()
                n += len(d)
                datas.append(d)
            else:
                while k := f.readinto(mv):
                    n += k
        if i == 0:
            first = time.perf_counter() - t
    return first, time.perf_counter() - t, n, datas


def open_close(root: Path, rels: list[str]) -> float:
    """Seconds per open+close, no read: the per-file cost a mount adds."""
    t = time.perf_counter()
    for rel in rels:
        os.close(os.open(root / rel, os.O_RDONLY))
    return (time.perf_counter() - t) / len(rels)


def sha256_file(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(BUF):
            h.update(chunk)
    return h.hexdigest()


def verify(what: str, rels: list[str], got: list[str], want: dict[str, str]) -> None:
    bad = [r for r, g in zip(rels, got, strict=True) if g != want[r]]
    if bad:
        raise Mismatch(f"{what}: {len(bad)} of {len(rels)} files differ from the extracted "
                       f"tree, e.g. {bad[:5]}")


# ----------------------------------------------------------------------------- full pull

def oci_layers(oci: Path, tag: str) -> tuple[list[Path], int]:
    """Layer blob paths in order, and the bytes of manifest + config + layers."""
    idx = json.loads((oci / "index.json").read_text())
    desc = next(m for m in idx["manifests"]
                if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag)
    blob = lambda d: oci / "blobs" / d.split(":")[0] / d.split(":")[1]  # noqa: E731
    man = json.loads(blob(desc["digest"]).read_text())
    layers = [blob(x["digest"]) for x in man["layers"]]
    total = desc["size"] + man["config"]["size"] + sum(x["size"] for x in man["layers"])
    return layers, total


def full_pull(ref: str, work: Path, extract: str) -> tuple[float, float, int, Path]:
    """(pull s, extract s, bytes, extracted root)."""
    oci, rootdir = work / "oci", work / "root"
    t = time.perf_counter()
    subprocess.run(["skopeo", "copy", "-q", "--src-tls-verify=false", ref, f"oci:{oci}:img"],
                   check=True)
    t_pull = time.perf_counter() - t
    layers, nbytes = oci_layers(oci, "img")
    t = time.perf_counter()
    if extract == "umoci":
        subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{oci}:img",
                        str(work / "bundle")], check=True, capture_output=True)
        (work / "bundle" / "rootfs").rename(rootdir)
    else:
        rootdir.mkdir()
        for blob in layers:
            subprocess.run(["tar", "-xzf", str(blob), "-C", str(rootdir)], check=True)
    return t_pull, time.perf_counter() - t, nbytes, rootdir


# ------------------------------------------------------------------------------------ mount

class Mounts:
    """Mounts this benchmark made; unmounted on close whatever happened."""

    def __init__(self) -> None:
        self.live: dict[Path, tuple[dict[str, str], int | None]] = {}

    def mount(self, env: dict[str, str], ref: str, mp: Path, cache: Path) -> float:
        mp.mkdir(parents=True, exist_ok=True)
        self.live[mp] = (env, None)
        dt, _ = soci(env, "mount", ref, str(mp), "--cache-dir", str(cache))
        return dt

    def stats(self, mp: Path) -> dict[str, Any]:
        s = mnt_image.stats(mp)
        self.live[mp] = (self.live[mp][0], int(s["pid"]))
        return s

    def umount(self, mp: Path) -> float:
        env, pid = self.live.pop(mp)
        t = time.perf_counter()
        try:
            soci(env, "umount", str(mp))
        except RuntimeError as e:
            print(f"  ! umount {mp}: {e}; fusermount3 -u -z", file=sys.stderr)
            subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True)
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)  # the mount daemon this run started
        return time.perf_counter() - t

    def close(self) -> None:
        for mp in list(self.live):
            with contextlib.suppress(Exception):
                self.umount(mp)


def store_bytes(root: Path) -> int:
    blobs = root / "content" / "blobs"
    return sum(f.stat().st_size for f in blobs.rglob("*") if f.is_file()) if blobs.exists() else 0


# ------------------------------------------------------------------------------------- main

def med(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


@contextlib.contextmanager
def registry(td: Path) -> Iterator[reg_server.Registry]:
    reg = reg_server.Registry.start(td / "reg")
    try:
        yield reg
    finally:
        reg.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--extract", choices=["tar", "umoci"], default="tar",
                    help="how the full pull extracts layers (default: tar -xzf per layer)")
    ap.add_argument("--big-set", nargs="+", default=["scipy", "scipy.libs"],
                    help="directories under the image's site-packages read as the big set")
    ap.add_argument("--tmp", help="work directory (default: a temporary one)")
    ap.add_argument("--table", action="store_true",
                    help="instead: issue 10's table for the big layer, mounted locally, against "
                         "ratarmount and a plain directory (bench/mount_table.py)")
    ap.add_argument("--warm-tree", action="store_true",
                    help="with --table: only the tree on a fresh mount over a warm span cache, "
                         "against the plain directory, and the floor pieces beside it")
    ap.add_argument("--inode-load", type=int, default=0, metavar="N",
                    help="with --warm-tree: also list the floor fs while the kernel holds N more "
                         "inodes (a synthetic FUSE mount of N empty files, ~1 KiB of kernel "
                         "memory each while it stays)")
    args = ap.parse_args()
    if args.table:
        import mount_table

        if not (DATA / "big.tar.gz").exists():
            subprocess.run([sys.executable, str(HERE / "make_layers.py"), "--layers", "big"],
                           check=True)
        if args.warm_tree:
            return mount_table.run_warm_tree(make_layout(["big"]), args.repeat, args.tmp,
                                             args.inode_load)
        return mount_table.run_table(make_layout(["big"]), args.repeat, args.tmp)
    missing = [t for t in ("docker-registry", "skopeo", "fusermount3", "tar") if not
               shutil.which(t)] + (["umoci"] if args.extract == "umoci" and
                                   not shutil.which("umoci") else [])
    if missing or not os.path.exists("/dev/fuse"):
        print(f"needs {', '.join(missing) or '/dev/fuse'} (apt: docker-registry skopeo fuse3)")
        return 1
    need = [n for n in LAYERS if not (DATA / f"{n}.tar.gz").exists()]
    if need:
        subprocess.run([sys.executable, str(HERE / "make_layers.py"), "--layers",
                        ",".join(need)], check=True)
    py = DATA / "sci-venv" / "bin" / "python"
    if not py.exists():
        print(f"needs {py} (bench/make_layers.py --layers big makes it)")
        return 1
    lay = make_layout(LAYERS)
    host_paths, how = record_startup(py)
    pmap = _path_map()

    mounts = Mounts()
    with tempfile.TemporaryDirectory(prefix="bench-mount-", dir=args.tmp) as tds, \
            registry(Path(tds)) as reg:
        td = Path(tds)
        try:
            return run(args, td, reg, lay, host_paths, how, pmap, mounts)
        except Mismatch as e:
            print(f"CHECK FAILED: {e}")
            return 1
        finally:
            mounts.close()


def run(args: argparse.Namespace, td: Path, reg: reg_server.Registry, lay: Path,
        host_paths: list[str], how: str, pmap: list[tuple[str, str]], mounts: Mounts) -> int:
    plain = f"docker://{reg.host}/{REPO}:bench"
    ref = f"docker://{reg.host}/{REPO}:bench-soci"
    t = time.perf_counter()
    subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{lay}:bench",
                    plain], check=True)
    t_push = time.perf_counter() - t
    setup_env = dict(os.environ, SOCI_NATIVE_ROOT=str(td / "setup-store"))
    t_conv, out = soci(setup_env, "convert", plain, ref, "--json")
    conv = json.loads(out)["soci_indexes"][0]
    # the image's files (later layers win), from the zTOCs
    files: dict[str, tuple[str, int]] = {}
    for layer in conv["layers"]:
        _, info = soci(setup_env, "ztoc", "info", layer["ztoc"])
        for f in json.loads(info)["files"]:
            files[f["filename"].rstrip("/")] = (f["type"], f["size"])
    startup: list[str] = []
    for h in host_paths:
        rel = to_image_path(h, pmap)
        if rel and files.get(rel, ("",))[0] == "reg" and rel not in startup:
            startup.append(rel)
    big = sorted(r for r, (ty, _) in files.items() if ty == "reg" and any(
        r.startswith(f"{SITE}/{d}/") for d in args.big_set))
    if not startup or not big:
        print(f"empty file set (start-up {len(startup)}, big {len(big)}): is the sci venv in "
              "the big layer?")
        return 1
    s_bytes = sum(files[r][1] for r in startup)
    b_bytes = sum(files[r][1] for r in big)
    layer_bytes = sum(x["size"] for x in conv["layers"])
    ztoc_bytes = sum(x["ztoc_size"] for x in conv["layers"])
    print(f"== mount vs full pull: {len(conv['layers'])} layers, {layer_bytes / 1e6:.0f} MB "
          f"compressed, {len(files)} entries, zTOCs {ztoc_bytes / 1e6:.1f} MB; registry "
          f"{reg.host} (skopeo push {t_push:.1f} s, convert {t_conv:.1f} s)")
    print(f"   start-up set: `python -c \"{STARTUP_CMD}\"` ({how}): {len(host_paths)} opens -> "
          f"{len(startup)} image files, {s_bytes / 1e6:.1f} MB; first: {startup[0]}")
    print(f"   big set: {', '.join(args.big_set)} under site-packages: {len(big)} files, "
          f"{b_bytes / 1e6:.0f} MB; {args.repeat} rounds, interleaved, "
          f"load avg {os.getloadavg()[0]:.2f}", flush=True)

    T: dict[str, list[float]] = {}
    B: dict[str, list[int]] = {}
    add = lambda d, k, v: d.setdefault(k, []).append(v)  # noqa: E731
    want: dict[str, str] = {}
    local_root: Path | None = None

    def baseline(r: int) -> None:
        nonlocal local_root
        work = td / f"pull-{r}"
        work.mkdir()
        t_pull, t_ext, nbytes, root = full_pull(ref, work, args.extract)
        first, total, _, datas = read_set(root, startup, keep=True)
        add(T, "pull:setup", t_pull + t_ext)
        add(T, "pull:pull", t_pull)
        add(T, "pull:extract", t_ext)
        add(T, "pull:first", first)
        add(T, "pull:set", total)
        add(B, "pull", nbytes)
        if not want:
            want.update({r_: sha256_file(root / r_) for r_ in startup + big})
        verify("full pull start-up set", startup,
               [hashlib.sha256(d).hexdigest() for d in datas], want)
        # warm local reads: the second of two
        for name, rels in (("startup", startup), ("big", big)):
            read_set(root, rels)
            add(T, f"local:{name}", read_set(root, rels)[1])
        add(T, "local:open", open_close(root, big))
        if local_root is not None:
            shutil.rmtree(local_root.parent)
        local_root = root
        shutil.rmtree(work / "oci")

    def soci_mount(r: int) -> None:
        store, cache, mp = td / f"store-{r}", td / f"cache-{r}", td / "mp"
        env = dict(os.environ, SOCI_NATIVE_ROOT=str(store))
        add(T, "mount:setup", mounts.mount(env, ref, mp, cache))
        first, total, _, datas = read_set(mp, startup, keep=True)
        add(T, "mount:first", first)
        add(T, "mount:set", total)
        st = mounts.stats(mp)
        add(B, "mount:spans", st["totals"]["bytes_fetched"])
        add(B, "mount:index", store_bytes(store))
        add(B, "mount:nspans", st["totals"]["spans_fetched"])
        if st["totals"]["errors"]:
            raise Mismatch(f"mount reported errors: {st['layers']}")
        if want:
            verify("mount start-up set", startup,
                   [hashlib.sha256(d).hexdigest() for d in datas], want)
        del datas
        add(T, "mount:startup:page", read_set(mp, startup)[1])
        add(T, "mount:big:cold", read_set(mp, big)[1])
        add(T, "mount:big:page", read_set(mp, big)[1])
        add(T, "mount:open", open_close(mp, big))
        if want:
            verify("mount big set", big, [sha256_file(mp / x) for x in big], want)
        add(B, "mount:big", mounts.stats(mp)["totals"]["bytes_fetched"] - B["mount:spans"][-1])
        mounts.umount(mp)
        # again on the same store and span cache: no download, reads from the span cache
        add(T, "remount:setup", mounts.mount(env, ref, mp, cache))
        add(T, "mount:startup:span", read_set(mp, startup)[1])
        add(T, "mount:big:span", read_set(mp, big)[1])
        st = mounts.stats(mp)
        if st["totals"]["bytes_fetched"]:
            print(f"  ! remount on a warm span cache fetched "
                  f"{st['totals']['bytes_fetched']} bytes", file=sys.stderr)
        if want:
            verify("remount big set", big, [sha256_file(mp / x) for x in big], want)
        mounts.umount(mp)
        shutil.rmtree(store)
        shutil.rmtree(cache)

    for r in range(args.repeat):
        for step in ((baseline, soci_mount) if r % 2 == 0 else (soci_mount, baseline)):
            step(r)
        print(f"  round {r + 1}: full pull {T['pull:setup'][-1] + T['pull:set'][-1]:.2f} s "
              f"(extract {T['pull:extract'][-1]:.2f} s), "
              f"mount + start-up set {T['mount:setup'][-1] + T['mount:set'][-1]:.2f} s",
              flush=True)

    # ---- report
    pull_total = med([a + b for a, b in zip(T["pull:setup"], T["pull:set"], strict=True)])
    pull_bytes = med(B["pull"])
    rows = [
        ("full pull (skopeo + tar)" if args.extract == "tar" else "full pull (skopeo + umoci)",
         "pull", B["pull"]),
        ("soci mount (cold)", "mount",
         [a + b for a, b in zip(B["mount:spans"], B["mount:index"], strict=True)]),
    ]
    print(f"\n{'method':26} {'setup s':>8} {'1st file s':>10} {'set s':>7} {'TTFB s':>7} "
          f"{'total s':>8} {'MB fetched':>11} {'time/pull':>10} {'bytes/pull':>11}")
    for label, k, nb in rows:
        setup, first, sset = med(T[f"{k}:setup"]), med(T[f"{k}:first"]), med(T[f"{k}:set"])
        ttfb = med([a + b for a, b in zip(T[f"{k}:setup"], T[f"{k}:first"], strict=True)])
        tot = med([a + b for a, b in zip(T[f"{k}:setup"], T[f"{k}:set"], strict=True)])
        print(f"{label:26} {setup:8.2f} {first:10.3f} {sset:7.3f} {ttfb:7.2f} {tot:8.2f} "
              f"{med(nb) / 1e6:11.1f} {tot / pull_total:10.3f} {med(nb) / pull_bytes:11.3f}")
    print(f"  full pull setup = skopeo copy {med(T['pull:pull']):.2f} s + extract "
          f"{med(T['pull:extract']):.2f} s; mount setup = `soci-native mount` until live "
          f"(remount on a warm store: {med(T['remount:setup']):.2f} s)")
    print(f"  mount bytes = spans {med(B['mount:spans']) / 1e6:.1f} MB "
          f"({med(B['mount:nspans']):.0f} spans) + SOCI index and zTOCs "
          f"{med(B['mount:index']) / 1e6:.1f} MB; the big set then fetched "
          f"{med(B['mount:big']) / 1e6:.1f} MB more")
    print("  TTFB = setup + first file; total = setup + whole start-up set; time/pull, "
          "bytes/pull: vs the full pull (<1 = less)")

    print(f"\n{'warm read MB/s':34} {'start-up set':>13} {'big set':>9}")
    wrows = [("local dir (2nd read)", "local:startup", "local:big"),
             ("mount, page cache (2nd read)", "mount:startup:page", "mount:big:page"),
             ("mount, span cache (remount)", "mount:startup:span", "mount:big:span"),
             ("mount, cold (fetch + inflate)", "mount:set", "mount:big:cold")]
    for label, ks, kb in wrows:
        print(f"{label:34} {s_bytes / med(T[ks]) / 1e6:13.0f} {b_bytes / med(T[kb]) / 1e6:9.0f}")
    for label, ks, kb in wrows[1:3]:
        print(f"{label + ' / local':34} {med(T['local:startup']) / med(T[ks]):13.2f} "
              f"{med(T['local:big']) / med(T[kb]):9.2f}")
    print(f"  open+close of a file (big set, no read): local {med(T['local:open']) * 1e6:.0f} us, "
          f"mount {med(T['mount:open']) * 1e6:.0f} us")
    print(f"  sets: start-up {len(startup)} files / {s_bytes / 1e6:.1f} MB, big {len(big)} "
          f"files / {b_bytes / 1e6:.0f} MB, files read whole with 1 MiB reads")
    print(f"verified: every file read through the mounts is byte-identical (sha256) to the "
          f"{args.extract}-extracted tree ({len(startup)} + {len(big)} files, "
          f"{args.repeat} rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
