"""`bench_mount.py --table`: issue 10's table. The big layer (bench/make_layers.py: the
pip-installed numpy/scipy/pandas tree first, then system files) read through `soci-native
mount` of a local OCI layout, through ratarmount on the same .tar.gz, and as a plain
directory (`tar -xzf`), in the same run:

* one big file (the largest under the scipy.libs directory, ~25 MB), cold, MB/s: a fresh
  mount (and, for soci-native, an empty span cache); ratarmount's gzip index is built
  before, at mount time, as soci-native's zTOC is;
* the tree (every file under site-packages read whole), cold: likewise;
* the tree on a fresh mount with the span cache already warm (soci-native only);
* a small file's open+read+close, warm, p50 (microseconds; files under 8 KiB, each read once
  before timing).

Plus one core's raw inflate of the layer (zlib-ng in the C core, once per round: on a shared
machine the ceiling moves too) as the ceiling for cold reads. Each round runs the three in a
rotating order; medians over --repeat rounds and ratios are printed. The big file read
through each mount is checked (sha256) against the plain directory's; a mismatch stops the
run.

`--table --warm-tree` runs only the warm-cache tree row (no ratarmount), with what a fresh
mount cannot avoid beside it: the FUSE requests the walk made (stats.json), the walk's
listing alone (every directory is new to the kernel: a READDIRPLUS pair per directory and an
inode per entry; on a mount that pushes nothing) against the plain directory's, and one FUSE
round trip (a stat of a missing name). The same three on bench/fuse_floor.c, a minimal
libfuse filesystem serving the plain directory from tables in memory with no work per
request (its files pushed into the page cache from the plain files as each listing ends, as
soci-native pushes them from its span cache): the floor of any FUSE daemon on this kernel and
machine, in the same run. Last, the kernel's inode cache load (cached inodes per inode-hash
bucket), which sets what each new inode costs a fresh mount.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import mnt_image  # tests/ (bench_mount puts it on sys.path)

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
SITE = "opt/venv/lib/python3/site-packages"
BUF = 1 << 20
SMALL = 8192


def read_all(path: str) -> int:
    n = 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(BUF):
            n += len(chunk)
    return n


def files_under(root: Path) -> list[str]:
    out = []
    for dp, _dirs, names in os.walk(root):
        for n in sorted(names):
            p = os.path.join(dp, n)
            if not os.path.islink(p) and os.path.isfile(p):
                out.append(p)
    return out


def read_tree(root: Path) -> float:
    t = time.perf_counter()
    for p in files_under(root):
        read_all(p)
    return time.perf_counter() - t


def big_file(root: Path) -> str:
    libs = root / SITE / "scipy.libs"
    return max(files_under(libs), key=os.path.getsize)


def cold_big(root: Path, rel: str) -> tuple[float, str]:
    """(MB/s, sha256) of reading ``rel`` under ``root`` once (hashed after the clock stops:
    sha256 runs slower than a page-cache read)."""
    chunks = []
    t = time.perf_counter()
    with open(root / rel, "rb", buffering=0) as f:
        while chunk := f.read(BUF):
            chunks.append(chunk)
    dt = time.perf_counter() - t
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    return sum(map(len, chunks)) / 1e6 / dt, h.hexdigest()


def small_p50(root: Path) -> float:
    """Median µs of open+read+close of small files, warm (each read once before)."""
    files = [p for p in files_under(root / SITE / "numpy") if os.path.getsize(p) < SMALL][:300]
    for p in files:
        read_all(p)
    ts = []
    for _ in range(5):
        for p in files:
            t = time.perf_counter_ns()
            fd = os.open(p, os.O_RDONLY)
            os.read(fd, SMALL)
            os.close(fd)
            ts.append(time.perf_counter_ns() - t)
    return statistics.median(ts) / 1000


class Setup:
    """The layer as a soci-native store, a ratarmount index and an extracted directory."""

    def __init__(self, td: Path, layout: Path) -> None:
        self.td, self.layout = td, layout
        self.blob = DATA / "big.tar.gz"
        self.store = td / "store"
        self.env = dict(os.environ, SOCI_NATIVE_ROOT=str(self.store))
        self.cli = [sys.executable, "-m", "soci_native.cli"]
        self.plain = td / "plain"
        self.rat_index = td / "rat-index.sqlite"
        self.mp = td / "mp"
        self.mp.mkdir()

    def prepare(self, ratarmount: bool = True) -> None:
        self.plain.mkdir()
        subprocess.run(["tar", "-xzf", str(self.blob), "-C", str(self.plain)], check=True)
        subprocess.run([*self.cli, "create", f"oci:{self.layout}", "-q"], env=self.env,
                       check=True, capture_output=True)
        if ratarmount:
            with self.ratarmount():  # builds its index once
                pass

    def mount_soci(self, fresh_cache: bool, *opts: str) -> float:
        if fresh_cache:
            shutil.rmtree(self.store / "cache", ignore_errors=True)
        t = time.perf_counter()
        subprocess.run([*self.cli, "mount", f"oci:{self.layout}", str(self.mp), *opts],
                       env=self.env, check=True, capture_output=True)
        return time.perf_counter() - t

    def umount_soci(self) -> None:
        p = subprocess.run([*self.cli, "umount", str(self.mp)], env=self.env,
                           capture_output=True)
        if p.returncode != 0:
            mnt_image.force_unmount(self.mp)

    @contextlib.contextmanager
    def soci(self, fresh_cache: bool, *opts: str) -> Iterator[Path]:
        self.mount_soci(fresh_cache, *opts)
        try:
            yield self.mp
        finally:
            self.umount_soci()

    @contextlib.contextmanager
    def ratarmount(self) -> Iterator[Path]:
        exe = shutil.which("ratarmount") or str(Path(sys.executable).parent / "ratarmount")
        subprocess.run([exe, "--index-file", str(self.rat_index), str(self.blob),
                        str(self.mp)], check=True, capture_output=True)
        try:
            yield self.mp
        finally:
            subprocess.run(["fusermount3", "-u", str(self.mp)], capture_output=True)
            for _ in range(100):
                if not os.path.ismount(self.mp):
                    break
                time.sleep(0.05)

    @contextlib.contextmanager
    def plain_dir(self) -> Iterator[Path]:
        yield self.plain


def raw_inflate_mbs(blob: Path) -> float:
    from soci_native import _core

    t = time.perf_counter()
    n = _core.raw_inflate_file(str(blob))
    return n / 1e6 / (time.perf_counter() - t)


def one_round(s: Setup, rel: str, want: str, order: list[str],
              res: dict[str, dict[str, list[float]]]) -> None:
    tree = Path(SITE)
    kinds: dict[str, Callable[[], contextlib.AbstractContextManager[Path]]] = {
        "soci": lambda: s.soci(True), "ratarmount": s.ratarmount, "plain": s.plain_dir}
    for name in order:
        r = res[name]
        with kinds[name]() as root:  # cold big file
            mbs, got = cold_big(root, rel)
            if got != want:
                raise SystemExit(f"CHECK FAILED: {name} read {rel} as sha256 {got}")
            r["big"].append(mbs)
        with kinds[name]() as root:  # cold tree, then warm small files on the same mount
            r["tree"].append(read_tree(root / tree))
            r["small"].append(small_p50(root))
        if name == "soci":
            with s.soci(False) as root:
                r["tree_warm_cache"].append(read_tree(root / tree))
        elif name == "plain":
            r["tree_warm_cache"].append(read_tree(s.plain / tree))


def run_table(layout: Path, repeat: int, tmp: str | None) -> int:
    missing = [t for t in ("fusermount3", "tar") if not shutil.which(t)]
    if not (shutil.which("ratarmount") or (Path(sys.executable).parent / "ratarmount").exists()):
        missing.append("ratarmount (pip install -r bench/requirements.txt)")
    if missing:
        print(f"needs {', '.join(missing)}")
        return 1
    names = ["soci", "ratarmount", "plain"]
    res: dict[str, dict[str, list[float]]] = {
        n: {"big": [], "tree": [], "tree_warm_cache": [], "small": []} for n in names}
    with tempfile.TemporaryDirectory(prefix="bench-mount-table-", dir=tmp) as tds:
        s = Setup(Path(tds), layout)
        s.prepare()
        rel = os.path.relpath(big_file(s.plain), s.plain)
        want = cold_big(s.plain, rel)[1]
        mount_s, inflates = [], []
        for r in range(repeat):
            order = names[r % 3:] + names[:r % 3]
            print(f"round {r + 1}/{repeat}: {' '.join(order)}", file=sys.stderr)
            one_round(s, rel, want, order, res)
            mount_s.append(s.mount_soci(False))
            s.umount_soci()
            inflates.append(raw_inflate_mbs(s.blob))
        inflate = statistics.median(inflates)
    print_table(res, rel, inflate, statistics.median(mount_s), repeat)
    return 0


def print_table(res: dict[str, dict[str, list[float]]], rel: str, inflate: float,
                mount_s: float, repeat: int) -> None:
    def m(name: str, key: str) -> float:
        xs = res[name][key]
        return statistics.median(xs) if xs else float("nan")

    size = os.path.basename(rel)
    rows = [
        (f"one big file ({size}), cold, MB/s", "big", "{:.0f}"),
        ("the tree (every site-packages file), cold, s", "tree", "{:.2f}"),
        ("the tree, fresh mount, span cache warm, s", "tree_warm_cache", "{:.2f}"),
        ("small file open+read+close, warm, p50, µs", "small", "{:.1f}"),
    ]
    print(f"\nmedians of {repeat} rounds; one core's raw inflate of the layer: {inflate:.0f} "
          f"MB/s; soci-native mount (span cache warm) ready in {mount_s:.2f} s\n")
    head = f"{'':48} {'soci-native':>12} {'ratarmount':>11} {'plain dir':>10} " \
           f"{'soci/rat':>9} {'soci/plain':>10}"
    print(head)
    for label, key, fmt in rows:
        vals = [m(n, key) for n in ("soci", "ratarmount", "plain")]
        cells = ["" if v != v else fmt.format(v) for v in vals]
        ratios = ["" if b != b or not b else f"{vals[0] / b:.2f}" for b in vals[1:]]
        print(f"{label:48} {cells[0]:>12} {cells[1]:>11} {cells[2]:>10} "
              f"{ratios[0]:>9} {ratios[1]:>10}")
    big = m("soci", "big")
    print(f"\ncold big file: soci-native at {big / inflate:.2f}x one core's raw inflate "
          f"(goal >= 0.7x) and {big / m('ratarmount', 'big'):.2f}x ratarmount (goal >= 2x)")


# ------------------------------------------------------------------- --warm-tree: one row

def list_tree(root: Path) -> float:
    t = time.perf_counter()
    files_under(root)
    return time.perf_counter() - t


def round_trip_us(d: Path, tag: str, n: int = 2000) -> float:
    """Mean µs of a stat of a name that is not there: one LOOKUP round trip each (names never
    asked before, so the kernel's negative entries do not answer)."""
    t = time.perf_counter_ns()
    for i in range(n):
        with contextlib.suppress(FileNotFoundError):
            os.stat(d / f".no-such-{tag}-{i}")
    return (time.perf_counter_ns() - t) / n / 1000


class FloorFS:
    """bench/fuse_floor.c, compiled into ``td`` (cc + libfuse3's pkg-config), mounted over
    a directory at ``mp`` for one measure at a time (``synthetic``: N empty files at
    ``td``/syn, listed, so the kernel holds N more inodes while it stays)."""

    def __init__(self, td: Path, mp: Path) -> None:
        self.exe, self.mp, self.syn = td / "fuse_floor", mp, td / "syn"
        self.syn.mkdir(exist_ok=True)
        self.last: dict[str, int] = {}  # the counts the last mount printed at its exit
        cflags = subprocess.run(["pkg-config", "--cflags", "--libs", "fuse3"],
                                capture_output=True, text=True, check=True).stdout.split()
        subprocess.run(["cc", "-O2", str(HERE / "fuse_floor.c"), *cflags, "-lpthread", "-o",
                        str(self.exe)], check=True)

    def mount(self, src: Path, push: bool, plus: bool = True
              ) -> contextlib.AbstractContextManager[Path]:
        mode = ["--push"] if push else [] if plus else ["--readdir"]
        return self._run([str(src), str(self.mp), *mode], self.mp)

    @contextlib.contextmanager
    def synthetic(self, n: int) -> Iterator[int]:
        """Yields how many inodes the kernel holds with the N more listed."""
        with self._run(["--synthetic", str(n), str(self.syn)], self.syn):
            files_under(self.syn)
            yield cached_inodes()

    @contextlib.contextmanager
    def _run(self, args: list[str], mp: Path) -> Iterator[Path]:
        p = subprocess.Popen([str(self.exe), *args], stdout=subprocess.PIPE, text=True)
        try:
            for _ in range(1000):
                if os.path.ismount(mp) or p.poll() is not None:
                    break
                time.sleep(0.01)
            if not os.path.ismount(mp):
                raise RuntimeError(f"fuse_floor did not mount (exit {p.poll()})")
            from soci_native.mount.fs import tune_read_ahead

            os.stat(mp)  # answered once the kernel has taken the INIT reply, which sets
            tune_read_ahead(str(mp))  # the window: then 1 MiB reads, as soci-native's
            yield mp
        finally:
            subprocess.run(["fusermount3", "-u", str(mp)], capture_output=True)
            try:
                out = p.communicate(timeout=10)[0]
                with contextlib.suppress(ValueError):
                    self.last = json.loads(out)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                mnt_image.force_unmount(mp)



def cached_inodes() -> int:
    """How many inodes the kernel holds (the first field of /proc/sys/fs/inode-nr)."""
    return int(Path("/proc/sys/fs/inode-nr").read_text().split()[0])

def inode_hash_load() -> str:
    """The kernel's cached inodes over its inode hash buckets (from the boot log; '' when it
    cannot be read): each inode a fresh mount makes walks a chain of that length twice
    (iget5_locked's lookup, then its insert) and so does each new dentry's d_lookup."""
    try:
        cached = cached_inodes()
        log = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, ValueError, subprocess.SubprocessError):
        return ""
    buckets = [int(x) for x in re.findall(r"Inode-cache hash table entries: (\d+)", log)]
    if not buckets:
        return f"kernel: {cached:,} inodes cached"
    return (f"kernel: {cached:,} inodes cached over {buckets[-1]:,} inode-hash buckets, "
            f"{cached / buckets[-1]:.1f} per chain")


def run_warm_tree(layout: Path, repeat: int, tmp: str | None, inode_load: int = 0) -> int:
    """The tree read on a fresh mount over a warm span cache against the plain directory
    (page cache warm) and the minimal FUSE filesystem, interleaved round by round, and the
    pieces of a fresh mount's floor. ``inode_load``: the floor fs's listing is also taken
    with that many more inodes held by the kernel (a synthetic mount, listed)."""
    tree = Path(SITE)
    res: dict[str, list[float]] = {f"{n}{k}": [] for n in ("soci", "floor", "plain")
                                   for k in ("", "_list", "_rtt_us")}
    loaded: dict[str, list[float]] = {"list": [], "inodes": [], "inodes_before": []}
    readdir_list: list[float] = []  # the floor fs listed with READDIR + a LOOKUP per entry
    with tempfile.TemporaryDirectory(prefix="bench-mount-warm-", dir=tmp) as tds:
        s = Setup(Path(tds), layout)
        s.prepare(ratarmount=False)
        floor = FloorFS(s.td, s.mp)
        with s.soci(True) as root:  # fills the span cache
            read_tree(root / tree)
            time.sleep(2)  # the last spans' fills are committed
        read_tree(s.plain / tree)
        names = ["soci", "floor", "plain"]
        for r in range(repeat):
            order = names[r % 3:] + names[:r % 3]
            print(f"round {r + 1}/{repeat}: {' '.join(order)}", file=sys.stderr)
            for name in order:
                if name == "plain":
                    res["plain"].append(read_tree(s.plain / tree))
                    res["plain_list"].append(list_tree(s.plain / tree))
                    res["plain_rtt_us"].append(round_trip_us(s.plain / tree, str(r)))
                    continue
                mounts: tuple[Callable[[], contextlib.AbstractContextManager[Path]], ...] = (
                    (lambda: s.soci(False), lambda: s.soci(False, "--page-cache-push", "0"))
                    if name == "soci" else
                    (lambda: floor.mount(s.plain, True), lambda: floor.mount(s.plain, False)))
                with mounts[0]() as root:
                    res[name].append(read_tree(root / tree))
                    if name == "soci":
                        st = mnt_image.stats(root)
                if name == "floor":
                    floor_st = floor.last
                # the listing alone (nothing pushed meanwhile), then round trips
                with mounts[1]() as root:
                    res[f"{name}_list"].append(list_tree(root / tree))
                    res[f"{name}_rtt_us"].append(round_trip_us(root / tree, str(r)))
                if name == "floor":
                    with floor.mount(s.plain, False, plus=False) as root:
                        readdir_list.append(list_tree(root / tree))
                if name == "floor" and inode_load:
                    loaded["inodes_before"].append(
                        cached_inodes())
                    with floor.synthetic(inode_load) as held, mounts[1]() as root:
                        loaded["list"].append(list_tree(root / tree))
                        loaded["inodes"].append(held)
    m = {k: statistics.median(v) for k, v in res.items()}
    reqs = {k: v["count"] for k, v in st.get("requests", {}).items()}
    print(f"\nmedians of {repeat} rounds; load average {os.getloadavg()[0]:.2f}; floor fs = "
          f"bench/fuse_floor.c (no work per request)\n")
    print(f"{'':44} {'soci-native':>12} {'floor fs':>9} {'plain dir':>10} {'soci/plain':>10} "
          f"{'floor/plain':>11}")
    for label, k in (("the tree, fresh mount, span cache warm, s", ""),
                     ("  its listing alone (os.walk + stats), s", "_list"),
                     ("  one stat of a missing name, µs", "_rtt_us")):
        a, f, b = m[f"soci{k}"], m[f"floor{k}"], m[f"plain{k}"]
        print(f"{label:44} {a:>12.3f} {f:>9.3f} {b:>10.3f} {a / b:>10.2f} {f / b:>11.2f}")
    print(f"\nFUSE requests of the last walk: {reqs}; pushed into the page cache: "
          f"{st.get('pushed_files', 0)} files, {st.get('pushed_bytes', 0) / 1e6:.0f} MB; the floor "
          f"fs's: {floor_st}")
    extra = (m["plain"] + m["soci_list"] - m["plain_list"]) / m["plain"]
    print(f"floor with every read free (plain walk + the fresh listing's extra): {extra:.2f}x "
          f"plain; the floor fs's own walk: {m['floor'] / m['plain']:.2f}x; goal <= 1.2x")
    rl = statistics.median(readdir_list)
    print(f"the floor fs's listing with READDIR + a LOOKUP per entry instead of READDIRPLUS: "
          f"{rl:.3f} s ({rl / m['floor_list']:.2f}x its READDIRPLUS listing)")
    if load := inode_hash_load():
        print(load)
    if inode_load:
        lm = {k: statistics.median(v) for k, v in loaded.items()}
        print(f"the floor fs's listing alone with {inode_load:,} more inodes held by the kernel "
              f"({lm['inodes_before']:,.0f} -> {lm['inodes']:,.0f} cached): {lm['list']:.3f} s "
              f"against {m['floor_list']:.3f} s ({lm['list'] / m['floor_list']:.2f}x; "
              f"its extra over the plain listing {lm['list'] - m['plain_list']:.3f} s against "
              f"{m['floor_list'] - m['plain_list']:.3f} s)")
    return 0
