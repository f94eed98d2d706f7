#!/usr/bin/env python3
"""Container start through the soci-native snapshotter (lazy) against containerd's overlayfs
snapshotter after a full pull: seconds from the start of the pull to the container's first
line of output, and bytes fetched from the registry.

The image (built once into bench/data/image-snapshotter/ with umoci from this machine's files):

1. base: dash, cat, this interpreter's binary (pyenv/CPython, with libpython) and every shared
   library that it, its lib-dynload modules and numpy/scipy's extensions link to (ldd);
2. stdlib: its standard library (without site-packages and test/; __pycache__ kept);
3. sci: numpy, numpy.libs, scipy, scipy.libs from its site-packages.

There is no Debian python3-numpy here to build from, so this is the closest realistic stand-in.
The command is ``python3 -c "import numpy; print(numpy.__version__)"``.

Setup: docker-registry on 127.0.0.1 (tests/reg_server.py), the image pushed with skopeo, a
SOCI index built (`soci-native create`, default 4 MiB spans and 10 MiB minimum layer size) and
pushed (referrers tag); every pull then goes through a TCP relay on 127.0.0.1 that counts the
bytes the registry sends (HTTP headers included) and, in the throttled variant, paces them to
50 MB/s in all (one token bucket across connections: a realistic pull rate).
Each round, in alternating order, with a fresh containerd (private root/state) and, for the
lazy path, a fresh snapshotter root:

* overlayfs: ``ctr images pull`` (containerd's overlayfs snapshotter unpacks every layer) then
  ``ctr run``;
* soci lazy: ``ctr-remote images rpull --snapshotter soci`` then ``ctr run --snapshotter soci``.

The clock starts before the pull and stops at the first line the container prints (which
must be numpy's version). Medians over the rounds; ratio = lazy / overlayfs.
Usage: python bench/bench_snapshotter.py [--rounds 3] [--no-throttle]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import ctr_env as ce  # noqa: E402
import reg_server  # noqa: E402

DATA = HERE / "data" / "image-snapshotter"
REPO = "bench/sci"
CMD = "import numpy; print(numpy.__version__)"
THROTTLE = 50e6  # bytes per second, all connections together


class TcpProxy:
    """A TCP relay from 127.0.0.1:port to the registry that counts the bytes sent back and,
    with ``rate`` set, paces them with one token bucket shared by every connection: the
    whole pull, however many layers containerd fetches at once, gets ``rate`` bytes/s."""

    CHUNK = 64 << 10

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.rate: float | None = None
        self.bytes = 0
        self._lock = threading.Lock()
        self._next = time.monotonic()  # when the bucket allows the next chunk
        self._srv = socket.create_server(("127.0.0.1", 0))
        self.port = self._srv.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                c, _ = self._srv.accept()
            except OSError:
                return
            u = socket.create_connection(self.upstream)
            threading.Thread(target=self._pump, args=(c, u, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(u, c, True), daemon=True).start()

    def _pace(self, n: int) -> None:
        with self._lock:
            self.bytes += n
            if not self.rate:
                return
            now = time.monotonic()
            self._next = max(self._next, now) + n / self.rate
            wait = self._next - now - n / self.rate
        if wait > 0:
            time.sleep(wait)

    def _pump(self, src: socket.socket, dst: socket.socket, count: bool) -> None:
        try:
            while True:
                data = src.recv(self.CHUNK)
                if not data:
                    break
                if count:
                    self._pace(len(data))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def close(self) -> None:
        self._stop = True
        self._srv.close()


def _ldd(path: str) -> set[str]:
    p = subprocess.run(["ldd", path], capture_output=True, text=True)
    out: set[str] = set()
    for line in p.stdout.splitlines():
        parts = line.split()
        for tok in parts:
            if tok.startswith("/") and os.path.exists(tok):
                out.add(tok)
    return out


def _copy(src: str, root: Path) -> None:
    dst = root / src.lstrip("/")
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(os.path.realpath(src), dst)


def build_image() -> tuple[Path, str, str]:
    """(layout, the interpreter's path inside the image, numpy's version); built once."""
    exe = os.path.realpath(sys._base_executable)  # the interpreter behind any venv
    out = ce.run(exe, "-c", "import numpy, sysconfig; p = sysconfig.get_paths(); "
                 "print(numpy.__version__, p['stdlib'], p['purelib'])").stdout.split()
    version, stdlib, site = out[0], Path(out[1]), Path(out[2])
    pkgs = [p for p in ("numpy", "numpy.libs", "scipy", "scipy.libs") if (site / p).exists()]
    marker = DATA / "image.json"
    want = {"exe": exe, "stdlib": str(stdlib), "pkgs": pkgs, "numpy": version}
    if marker.exists() and json.loads(marker.read_text()) == want:
        return DATA / "lay", exe, version
    shutil.rmtree(DATA, ignore_errors=True)
    DATA.mkdir(parents=True)
    lay = DATA / "lay"
    ce.run("umoci", "init", "--layout", str(lay))
    ce.run("umoci", "new", "--image", f"{lay}:t")
    bundle = DATA / "bundle"

    def layer(fill: Any) -> None:
        ce.run("umoci", "unpack", "--image", f"{lay}:t", str(bundle), timeout=900)
        fill(bundle / "rootfs")
        ce.run("umoci", "repack", "--image", f"{lay}:t", str(bundle), timeout=900)
        shutil.rmtree(bundle)

    def base(r: Path) -> None:
        libs: set[str] = set()
        for tool in ("dash", "cat"):
            path = shutil.which(tool) or f"/bin/{tool}"
            (r / "bin").mkdir(parents=True, exist_ok=True)
            shutil.copy(path, r / "bin" / ("sh" if tool == "dash" else tool))
            libs |= _ldd(path)
        _copy(exe, r)
        (r / "usr/bin").mkdir(parents=True, exist_ok=True)
        os.symlink(exe, r / "usr/bin/python3")
        libs |= _ldd(exe)
        for d in [stdlib / "lib-dynload", *(site / p for p in pkgs)]:
            for so in d.rglob("*.so*"):
                libs |= {x for x in _ldd(str(so)) if not x.startswith(str(site))}
        for lib in libs:
            _copy(lib, r)

    def std(r: Path) -> None:
        shutil.copytree(stdlib, r / str(stdlib).lstrip("/"), symlinks=True,
                        ignore=shutil.ignore_patterns("site-packages", "test"))

    def sci(r: Path) -> None:
        for p in pkgs:
            shutil.copytree(site / p, r / str(site).lstrip("/") / p, symlinks=True)

    for fill in (base, std, sci):
        layer(fill)
    marker.write_text(json.dumps(want))
    return lay, exe, version


class Bench:
    def __init__(self, base: Path, lay: Path, create_opts: list[str]) -> None:
        self.base = base
        self.reg = reg_server.Registry.start(base / "reg")
        ref = f"{self.reg.host}/{REPO}:v1"
        ce.push(lay, ref)
        store = base / "store"
        t = time.perf_counter()
        ce.soci("create", f"docker://{ref}", *create_opts, root=store, timeout=1800)
        ce.soci("push", f"docker://{ref}", root=store)
        self.index_seconds = time.perf_counter() - t
        manifest = json.loads(subprocess.run(
            ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
            check=True, capture_output=True).stdout)
        self.image_bytes = sum(int(d["size"]) for d in manifest["layers"])
        self.layer_sizes = [int(d["size"]) for d in manifest["layers"]]
        self.proxy = TcpProxy(self.reg.port)
        self.ref = f"127.0.0.1:{self.proxy.port}/{REPO}:v1"
        self.log_dir: Path | None = None
        self.verbose = False

    def close(self) -> None:
        self.proxy.close()
        self.reg.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def once(self, mode: str, exe: str, version: str) -> tuple[float, int]:
        d = ce.short_tempdir()
        sn = ctrd = None
        try:
            sock = d / "sn.sock"
            if mode == "lazy":
                sn = ce.Snapshotter.start(d / "sn", sock)
            ctrd = ce.Containerd.start(d / "ctrd", sock)
            before = self.proxy.bytes
            t0 = time.perf_counter()
            if mode == "lazy":
                ctrd.ctr_remote("images", "rpull", "--plain-http", "--snapshotter", "soci",
                                self.ref, timeout=1800)
            else:
                ctrd.ctr("images", "pull", "--plain-http", self.ref, timeout=1800)
            snap = ["--snapshotter", "soci"] if mode == "lazy" else []
            proc = subprocess.Popen(
                ["ctr", "--address", str(ctrd.address), "-n", "t", "run", "--rm", *snap,
                 self.ref, "b1", exe, "-c", CMD], stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True)
            assert proc.stdout is not None
            first = proc.stdout.readline()
            elapsed = time.perf_counter() - t0
            _, err = proc.communicate(timeout=600)
            if first.strip() != version:
                raise RuntimeError(f"{mode}: container printed {first!r} ({err[-2000:]})")
            if mode == "lazy" and self.verbose:
                p = subprocess.run([sys.executable, "-m", "soci_native.cli", "snapshotter",
                                    "--root", str(d / "sn"), "mounts"], capture_output=True,
                                   text=True)
                for m in json.loads(p.stdout or "[]"):
                    tot = m.get("totals", {})
                    print(f"    layer {m['layer'][7:19]}: spans {tot.get('spans_fetched')}/"
                          f"{tot.get('spans_total')}, {tot.get('bytes_fetched', 0) / 1e6:.1f} "
                          f"MB fetched", flush=True)
            return elapsed, self.proxy.bytes - before
        finally:
            if ctrd is not None:
                ctrd.stop()
            if sn is not None:
                sn.stop()
                if self.log_dir is not None:
                    n = len(list(self.log_dir.glob("*.log")))
                    shutil.copy(sn.log, self.log_dir / f"{n:02d}-snapshotter.log")
                    with_mountd = d / "sn" / "mountd" / "mountd.log"
                    if with_mountd.exists():
                        shutil.copy(with_mountd, self.log_dir / f"{n:02d}-mountd.log")
                sn.stop_mounts()
            ce.unmount_under(d)
            shutil.rmtree(d, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-throttle", action="store_true")
    ap.add_argument("--span-size", type=int, help="create's --span-size (default: its 4 MiB)")
    ap.add_argument("--only", choices=["lazy", "overlayfs"], help="run one mode only")
    ap.add_argument("--log-dir", type=Path, help="keep the snapshotter and mount daemon logs")
    ap.add_argument("-v", "--verbose", action="store_true", help="per-layer span counts")
    args = ap.parse_args()
    missing = ce.missing_tools()
    if missing or os.geteuid() != 0:
        print(f"bench_snapshotter: needs root and {', '.join(missing) or 'nothing else'}",
              file=sys.stderr)
        return 2
    lay, exe, version = build_image()
    b = Bench(ce.short_tempdir(), lay,
              ["--span-size", str(args.span_size)] if args.span_size else [])
    if args.log_dir:
        args.log_dir.mkdir(parents=True, exist_ok=True)
        b.log_dir = args.log_dir
    b.verbose = args.verbose
    rows: list[tuple[str, float, float, int, int]] = []
    try:
        print(f"span size {args.span_size or 4 << 20}; image: {len(b.layer_sizes)} layers, "
              f"{b.image_bytes / 1e6:.1f} MB compressed "
              f"({', '.join(f'{s / 1e6:.1f}' for s in b.layer_sizes)} MB); index build + "
              f"push {b.index_seconds:.1f} s", flush=True)
        variants = [("loopback", None)]
        if not args.no_throttle:
            variants.append(("50 MB/s", THROTTLE))
        for name, rate in variants:
            b.proxy.rate = rate
            res: dict[str, list[tuple[float, int]]] = {"overlayfs": [], "lazy": []}
            for i in range(args.rounds):
                order = ["overlayfs", "lazy"] if i % 2 == 0 else ["lazy", "overlayfs"]
                if args.only:
                    order = [args.only]
                for mode in order:
                    res[mode].append(b.once(mode, exe, version))
                    print(f"  {name} round {i + 1} {mode}: {res[mode][-1][0]:.2f} s, "
                          f"{res[mode][-1][1] / 1e6:.1f} MB", flush=True)
            if args.only:
                continue
            full = statistics.median(t for t, _ in res["overlayfs"])
            lazy = statistics.median(t for t, _ in res["lazy"])
            rows.append((name, full, lazy, int(statistics.median(n for _, n in res["overlayfs"])),
                         int(statistics.median(n for _, n in res["lazy"]))))
    finally:
        b.close()
    print(f"\npull start -> first output of `python3 -c \"{CMD}\"`, median of {args.rounds}")
    print(f"{'variant':<10} {'overlayfs s':>11} {'soci lazy s':>11} {'ratio':>6} "
          f"{'overlayfs MB':>12} {'lazy MB':>8} {'lazy/image':>10}")
    for name, full, lazy, fb, lb in rows:
        print(f"{name:<10} {full:>11.2f} {lazy:>11.2f} {lazy / full:>6.2f} {fb / 1e6:>12.1f} "
              f"{lb / 1e6:>8.1f} {lb / b.image_bytes:>10.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
