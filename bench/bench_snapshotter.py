#!/usr/bin/env python3
"""Container start through the soci-native snapshotter (lazy) against containerd's overlayfs
snapshotter after a full pull: seconds from the start of the pull to the container's first
line of output, and bytes fetched from the registry.

The image is Debian 12 + python3 + numpy, built once into bench/data/image-snapshotter/ with
umoci from this machine's installed Debian packages (dpkg -L: every file each installed,
plus what their maintainer scripts make that an image has: py3compile's byte-code, the
update-alternatives links numpy's BLAS/LAPACK are found through, ld.so.cache), as
``FROM debian:bookworm`` + ``apt-get install --no-install-recommends python3-numpy`` would:

1. debian: the Priority: required packages and apt, with their dependencies (merged /usr);
2. python3: what ``apt-get install python3`` adds;
3. numpy: what ``apt-get install python3-numpy`` adds (libblas3, liblapack3, libgfortran5).

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
* soci lazy: ``soci-native rpull --snapshotter soci`` (``--client ctr-remote``: ``ctr-remote
  images rpull``) then ``ctr run --snapshotter soci``.

The clock starts before the pull, once the daemons just started (containerd, the snapshotter
and its mount daemon) have gone idle, and stops at the first line the container prints (which
must be numpy's version). Medians over the rounds; ratio = lazy / overlayfs of the medians,
paired = the median of each round's own lazy / overlayfs (a round's two runs saw about the
same load). soci_native is byte-compiled first, as `pip install` leaves it. -v adds per round
the pull's share, the CPU each process used from the pull's start, and the spans each layer
fetched.
Usage: python bench/bench_snapshotter.py [--rounds 3] [--no-throttle]
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import json
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

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


MERGED_USR = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64"}


def _installed() -> dict[str, dict[str, str]]:
    """dpkg's installed packages of this machine's architecture (or ``all``): name -> version,
    priority, dependencies, provides, and ``pkg``, the name dpkg -L takes (arch-qualified: with
    a foreign architecture added, e.g. arm64 for ``make cross-aarch64``, a bare ``libc6`` is
    ambiguous)."""
    native = ce.run("dpkg", "--print-architecture").stdout.strip()
    fmt = "${Package}\t${Architecture}\t${Version}\t${Priority}\t${Pre-Depends}, ${Depends}\t" \
          "${Provides}\t${db:Status-Abbrev}\n"
    out: dict[str, dict[str, str]] = {}
    for line in ce.run("dpkg-query", "-W", "-f", fmt).stdout.splitlines():
        name, arch, version, prio, deps, provides, status = line.split("\t")
        if status.startswith("ii") and arch in (native, "all"):
            out[name] = {"version": version, "priority": prio, "deps": deps,
                         "provides": provides, "pkg": f"{name}:{arch}"}
    return out


def _closure(roots: list[str], pkgs: dict[str, dict[str, str]]) -> set[str]:
    """The installed packages ``apt-get install ROOTS`` needs (Pre-Depends and Depends; of
    alternatives the first installed one; virtual names through Provides)."""
    provider: dict[str, str] = {}
    for name, p in pkgs.items():
        for v in p["provides"].split(","):
            provider.setdefault(v.split("(")[0].strip(), name)

    def pick(alternatives: str) -> str | None:
        for alt in alternatives.split("|"):
            n = alt.split("(")[0].strip().removesuffix(":any")
            if n in pkgs:
                return n
            if n in provider:
                return provider[n]
        return None

    seen: set[str] = set()
    todo = list(roots)
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        for dep in pkgs[n]["deps"].split(","):
            if dep.strip():
                got = pick(dep)
                if got is None:
                    raise RuntimeError(f"{n}: no installed package for {dep.strip()!r}")
                todo.append(got)
    return seen


def debian_layers() -> list[tuple[str, list[str]]]:
    """The image's layers as Debian packages: the base a debian:bookworm image holds
    (Priority: required, and apt), then what ``apt-get install python3`` adds, then what
    ``apt-get install python3-numpy`` adds (recommends off, as in slim images)."""
    pkgs = _installed()
    for need in ("python3", "python3-numpy", "apt"):
        if need not in pkgs:
            raise RuntimeError(f"bench_snapshotter builds its image from the host's Debian "
                               f"packages: apt-get install {need}")
    base = _closure([n for n, p in pkgs.items() if p["priority"] == "required"] + ["apt"],
                    pkgs)
    py = _closure(["python3"], pkgs) - base
    np_ = _closure(["python3-numpy"], pkgs) - base - py
    return [(n, sorted(ps)) for n, ps in (("debian", base), ("python3", py), ("numpy", np_))]


def _copy_packages(names: list[str], root: Path) -> None:
    """Every path the packages installed (dpkg -L): directories, files, symlinks as is."""
    for n in names:
        for path in ce.run("dpkg", "-L", n).stdout.splitlines():
            if not path.startswith("/") or path == "/.":
                continue
            dst = root / path.lstrip("/")
            if os.path.islink(path):
                dst.parent.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(dst)
                os.symlink(os.readlink(path), dst)
            elif os.path.isdir(path):
                dst.mkdir(parents=True, exist_ok=True)
            elif os.path.isfile(path):
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, dst)
                if path.endswith(".py"):
                    _copy_pyc(Path(path), dst)


def _copy_pyc(src: Path, dst: Path) -> None:
    """The byte-code py3compile wrote for a module when the package was installed (its
    postinst; dpkg -L does not list it): a real image has it, so python3 does not compile."""
    pyc = src.parent / "__pycache__" / f"{src.stem}.cpython-311.pyc"  # Debian 12's python3
    if pyc.is_file():
        (dst.parent / "__pycache__").mkdir(exist_ok=True)
        shutil.copy2(pyc, dst.parent / "__pycache__" / pyc.name)


def _alternatives(root: Path) -> None:
    """The update-alternatives links (``Link -> /etc/alternatives/NAME -> Value``, slaves
    too) whose chosen file is in ``root``: maintainer scripts make them, dpkg -L does not list
    them (numpy finds libblas.so.3 and liblapack.so.3 through them)."""
    for line in ce.run("update-alternatives", "--get-selections").stdout.splitlines():
        name = line.split()[0]
        q = ce.run("update-alternatives", "--query", name).stdout
        value = re.search(r"^Value: (\S+)", q, re.M)
        link = re.search(r"^Link: (\S+)", q, re.M)
        if value is None or link is None or not (root / value[1].lstrip("/")).exists():
            continue
        pairs = [(name, link[1], value[1])]
        block = q.split(f"Alternative: {value[1]}\n", 1)[1].split("\n\n")[0]
        slaves = dict(re.findall(r"^ (\S+) (\S+)$", block, re.M))
        links = dict(re.findall(r"^ (\S+) (\S+)$", q.split("\n\n")[0], re.M))
        pairs += [(n, links[n], v) for n, v in slaves.items() if n in links]
        for n, lk, v in pairs:
            alt = root / "etc/alternatives" / n
            alt.parent.mkdir(parents=True, exist_ok=True)
            for path, target in ((alt, v), (root / lk.lstrip("/"), f"/etc/alternatives/{n}")):
                path.parent.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                os.symlink(target, path)


def build_image() -> tuple[Path, str, list[tuple[str, list[str]]]]:
    """(layout, numpy's version, the layers' packages); built once per package set."""
    layers = debian_layers()
    pkgs = _installed()
    version = ce.run("/usr/bin/python3", "-c", "import numpy; print(numpy.__version__)"
                     ).stdout.strip()
    marker = DATA / "image.json"
    want = {"debian": {n: {p: pkgs[p]["version"] for p in ps} for n, ps in layers},
            "numpy": version, "builder": 3}
    if marker.exists() and json.loads(marker.read_text()) == want:
        return DATA / "lay", version, layers
    shutil.rmtree(DATA, ignore_errors=True)
    DATA.mkdir(parents=True)
    lay = DATA / "lay"
    ce.run("umoci", "init", "--layout", str(lay))
    ce.run("umoci", "new", "--image", f"{lay}:t")
    ce.run("umoci", "config", "--image", f"{lay}:t", "--config.env",
           "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    bundle = DATA / "bundle"
    for i, (_, names) in enumerate(layers):
        ce.run("umoci", "unpack", "--image", f"{lay}:t", str(bundle), timeout=900)
        r = bundle / "rootfs"
        if i == 0:
            for link, target in MERGED_USR.items():  # bookworm's merged /usr
                (r / target).mkdir(parents=True, exist_ok=True)
                os.symlink(target, r / link)
        _copy_packages([pkgs[n]["pkg"] for n in names], r)
        _alternatives(r)
        ce.run("ldconfig", "-r", str(r))  # the ld.so.cache libc-bin's trigger writes
        ce.run("umoci", "repack", "--image", f"{lay}:t", str(bundle), timeout=900)
        shutil.rmtree(bundle)
    marker.write_text(json.dumps(want))
    return lay, version, layers


STARTUP_FILES = r"""
import os, sys
import numpy
paths = {os.path.realpath(sys.executable), "/etc/ld.so.cache"}
for m in list(sys.modules.values()):
    f = getattr(m, "__cached__", None) or getattr(m, "__file__", None)
    if f and os.path.exists(f):
        paths.add(os.path.realpath(f))
for line in open("/proc/self/maps"):
    parts = line.split()
    if len(parts) >= 6 and parts[5].startswith("/"):
        paths.add(os.path.realpath(parts[5]))
print("\n".join(sorted(p for p in paths if os.path.isfile(p))))
"""


def startup_files() -> list[str]:
    """The files ``import numpy`` reads, from the host's own run (the same packages): the
    interpreter, ld.so.cache, every module's byte-code or extension and every mapped
    library. An index built with them as prefetch paths is what a person profiling the
    container's start would build."""
    return ce.run("/usr/bin/python3", "-c", STARTUP_FILES).stdout.split()


def _cpu(pid: int) -> float:
    """User + system CPU seconds of a running process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _settle(pids: list[int], quiet: float = 0.3, limit: float = 15.0) -> None:
    """Waits until the daemons just started use no CPU for ``quiet`` seconds (at most
    ``limit``): containerd, the snapshotter and its mount daemon are long-running services,
    and what they do right after starting (the snapshotter imports what a pull will need in
    the background) is not part of a pull. Without this the lazy pull shared the 2 cores
    with the snapshotter's warm-up for its first 0.4 s."""
    deadline = time.monotonic() + limit
    last = sum(_cpu(p) for p in pids)
    still = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = sum(_cpu(p) for p in pids)
        if now != last:
            last, still = now, time.monotonic()
        elif time.monotonic() - still >= quiet:
            return


class Bench:
    def __init__(self, base: Path, lay: Path, create_opts: list[str],
                 prefetch: bool = False) -> None:
        self.base = base
        self.reg = reg_server.Registry.start(base / "reg")
        ref = f"{self.reg.host}/{REPO}:v1"
        ce.push(lay, ref)
        store = base / "store"
        t = time.perf_counter()
        if prefetch:
            files = base / "prefetch.json"
            files.write_text(json.dumps(startup_files()))
            create_opts = [*create_opts, "--prefetch-files-json", str(files)]
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
        self.client = "soci-native"

    def close(self) -> None:
        self.proxy.close()
        self.reg.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def once(self, mode: str, version: str) -> tuple[float, int]:
        d = ce.short_tempdir()
        sn = ctrd = None
        try:
            sock = d / "sn.sock"
            if mode == "lazy":
                sn = ce.Snapshotter.start(d / "sn", sock)
            ctrd = ce.Containerd.start(d / "ctrd", sock)
            daemons = [ctrd.proc.pid]
            if sn is not None:
                daemons += [sn.proc.pid, int((d / "sn" / "mountd" / "mountd.pid").read_text())]
            _settle(daemons)
            idle_cpu = [_cpu(p) for p in daemons]
            before = self.proxy.bytes
            children = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            if self.verbose:
                print(f"    pull starts at {time.time():.4f}", flush=True)
            if mode == "lazy" and self.client == "ctr-remote":
                ctrd.ctr_remote("images", "rpull", "--plain-http", "--snapshotter", "soci",
                                self.ref, timeout=1800)
            elif mode == "lazy":
                ce.run(sys.executable, "-m", "soci_native.cli", "rpull", "--plain-http",
                       "--address", str(ctrd.address), "-n", "t", "-q", self.ref,
                       timeout=1800)  # plain HTTP as `ctr images pull --plain-http`
            else:
                ctrd.ctr("images", "pull", "--plain-http", self.ref, timeout=1800)
            pulled = time.perf_counter() - t0
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            rpull_cpu = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
            snap = ["--snapshotter", "soci"] if mode == "lazy" else []
            proc = subprocess.Popen(
                ["ctr", "--address", str(ctrd.address), "-n", "t", "run", "--rm", *snap,
                 self.ref, "b1", "python3", "-c", CMD], stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True)
            assert proc.stdout is not None
            first = proc.stdout.readline()
            elapsed = time.perf_counter() - t0
            _, err = proc.communicate(timeout=600)
            if first.strip() != version:
                raise RuntimeError(f"{mode}: container printed {first!r} ({err[-2000:]})")
            if self.verbose:
                print(f"    pull {pulled:.2f} s, then first output {elapsed - pulled:.2f} s",
                      flush=True)
            if mode == "lazy" and self.verbose and sn is not None:
                used = [_cpu(p) - c for p, c in zip(daemons, idle_cpu, strict=True)]
                print(f"    CPU from pull start: rpull {rpull_cpu:.2f} s, containerd "
                      f"{used[0]:.2f} s, snapshotter {used[1]:.2f} s, mount daemon "
                      f"{used[2]:.2f} s", flush=True)
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
    ap.add_argument("--throttle-only", action="store_true", help="only the 50 MB/s variant")
    ap.add_argument("--span-size", type=int, help="create's --span-size (default: its 4 MiB)")
    ap.add_argument("--only", choices=["lazy", "overlayfs"], help="run one mode only")
    ap.add_argument("--log-dir", type=Path, help="keep the snapshotter and mount daemon logs")
    ap.add_argument("--prefetch", action="store_true",
                    help="index with prefetch artifacts for the files `import numpy` reads")
    ap.add_argument("--client", choices=["soci-native", "ctr-remote"], default="soci-native",
                    help="the lazy pull: `soci-native rpull` or `ctr-remote images rpull`")
    ap.add_argument("-v", "--verbose", action="store_true", help="per-layer span counts")
    args = ap.parse_args()
    missing = ce.missing_tools()
    if missing or os.geteuid() != 0:
        print(f"bench_snapshotter: needs root and {', '.join(missing) or 'nothing else'}",
              file=sys.stderr)
        return 2
    # Byte-compiled as `pip install` leaves it: under PYTHONDONTWRITEBYTECODE (set here) each
    # rpull, snapshotter and mount daemon start compiled ~130 modules from source (~0.27 s
    # of CPU, on the pull's critical path for rpull), which no installed copy pays.
    compileall.compile_dir(str(HERE.parent / "soci_native"), quiet=1)
    lay, version, layers = build_image()
    b = Bench(ce.short_tempdir(), lay,
              ["--span-size", str(args.span_size)] if args.span_size else [], args.prefetch)
    if args.log_dir:
        args.log_dir.mkdir(parents=True, exist_ok=True)
        b.log_dir = args.log_dir
    b.verbose = args.verbose
    b.client = args.client
    rows: list[tuple[str, float, float, float, int, int]] = []
    try:
        pf = ", prefetch artifacts" if args.prefetch else ""
        print(f"span size {args.span_size or 4 << 20}{pf}; image: {len(b.layer_sizes)} layers, "
              f"{b.image_bytes / 1e6:.1f} MB compressed "
              f"({', '.join(f'{s / 1e6:.1f}' for s in b.layer_sizes)} MB); index build + "
              f"push {b.index_seconds:.1f} s", flush=True)
        print("image: Debian 12 + python3 + numpy " + version + "; layers: " + "; ".join(
            f"{name} ({len(pkgs)} packages)" for name, pkgs in layers), flush=True)
        variants = [] if args.throttle_only else [("loopback", None)]
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
                    res[mode].append(b.once(mode, version))
                    print(f"  {name} round {i + 1} {mode}: {res[mode][-1][0]:.2f} s, "
                          f"{res[mode][-1][1] / 1e6:.1f} MB", flush=True)
            if args.only:
                continue
            full = statistics.median(t for t, _ in res["overlayfs"])
            lazy = statistics.median(t for t, _ in res["lazy"])
            # each round's two runs saw the same load: their ratio moves less than the medians
            paired = statistics.median(x[0] / y[0] for x, y in zip(res["lazy"], res["overlayfs"],
                                                                   strict=True))
            rows.append((name, full, lazy, paired,
                         int(statistics.median(n for _, n in res["overlayfs"])),
                         int(statistics.median(n for _, n in res["lazy"]))))
    finally:
        b.close()
    print(f"\npull start -> first output of `python3 -c \"{CMD}\"`, median of {args.rounds}")
    print(f"{'variant':<10} {'overlayfs s':>11} {'soci lazy s':>11} {'ratio':>6} {'paired':>6} "
          f"{'overlayfs MB':>12} {'lazy MB':>8} {'lazy/image':>10}")
    for name, full, lazy, paired, fb, lb in rows:
        print(f"{name:<10} {full:>11.2f} {lazy:>11.2f} {lazy / full:>6.2f} {paired:>6.2f} "
              f"{fb / 1e6:>12.1f} {lb / 1e6:>8.1f} {lb / b.image_bytes:>10.1%}")
    print(f"ratio: of the medians; paired: the median of each round's lazy/overlayfs; load "
          f"average {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
