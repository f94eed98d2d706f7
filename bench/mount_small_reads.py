"""Small parallel reads of cached spans through `soci-native mount`: what one FUSE read that
C answers from the span cache costs the daemon, by read size and reader threads.

The test image (tests/mnt_image.py: 64 KiB spans) is mounted over a warm span cache (page-cache
pushes off); each reader thread preads random page-aligned ranges of its files, dropping the
range's pages first (POSIX_FADV_DONTNEED) so that every read reaches the daemon. Printed per
size and thread count: microseconds of wall per read and of daemon CPU (utime + stime from
/proc) per FUSE read, medians over --rounds. With --other PYTHON (another build's venv python,
e.g. an older commit's `make install`), that build runs the same reads on its own mount,
alternating with this one, and the table gives this build's CPU as a ratio of the other's.

    .venv/bin/python bench/mount_small_reads.py [--rounds 3] [--reads 12000] [--other PY]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

FILES = ("data/big.bin", "data/zeros.bin", "data/layer2.txt")


def measure(work: Path, img_layout: Path, sizes: list[int], threads: list[int], reads: int,
            rounds: int) -> dict[str, list[list[float]]]:
    """(In the build's own python.) {"size/threads": [[wall us, cpu us], ...]}."""
    import mnt_image as mi

    store, cache = work / "store", work / "cache"
    mi.cli("create", f"oci:{img_layout}:t", *mi.CREATE_OPTS, root=store)

    # (a build from before --page-cache-push has no push to turn off)
    push_off = (["--page-cache-push", "0"] if "--page-cache-push" in
                mi.mount_cmd("--help", root=store).stdout else [])

    def mount(n: int) -> Path:
        mp = work / f"mnt{n}"
        mp.mkdir()
        mi.mount_cmd(f"oci:{img_layout}:t", str(mp), "--cache-dir", str(cache), *push_off,
                     root=store)
        return mp

    mp = mount(0)
    for rel in FILES:
        (mp / rel).read_bytes()
    for _ in range(200):  # until the spans' background fills are committed
        done = [p for p in cache.rglob("*") if p.is_file() and ".tmp-" not in p.name]
        if len(done) >= mi.stats(mp)["totals"]["spans_fetched"]:
            break
        time.sleep(0.05)
    mi.umount_cmd(mp, store)
    mp = mount(1)
    pid = mi.stats(mp)["pid"]
    size_of = {rel: (mp / rel).stat().st_size for rel in FILES}

    def cpu() -> float:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

    def fuse_reads() -> int:
        s = mi.stats(mp)
        if "requests" not in s:  # a build before the request counters: C-served reads
            return int(s["direct_reads"])
        return int(s["requests"].get("read", {}).get("count", 0))

    def one(size: int, n_threads: int) -> list[float]:
        fds = {rel: os.open(mp / rel, os.O_RDONLY) for rel in FILES}
        for fd in fds.values():
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        per = reads // n_threads

        def reader(seed: int) -> None:
            r = random.Random(seed)
            for _ in range(per):
                rel = r.choice(FILES)
                off = r.randrange(0, max(1, size_of[rel] - size)) // 4096 * 4096
                os.posix_fadvise(fds[rel], off, size, os.POSIX_FADV_DONTNEED)
                os.pread(fds[rel], size, off)

        r0, c0, t0 = fuse_reads(), cpu(), time.perf_counter()
        ts = [threading.Thread(target=reader, args=(k,)) for k in range(n_threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        wall, used, n = time.perf_counter() - t0, cpu() - c0, fuse_reads() - r0
        for fd in fds.values():
            os.close(fd)
        return [wall / (per * n_threads) * 1e6, used / max(n, 1) * 1e6]

    out: dict[str, list[list[float]]] = {}
    try:
        for _ in range(rounds):
            for size in sizes:
                for n in threads:
                    out.setdefault(f"{size}/{n}", []).append(one(size, n))
    finally:
        mi.umount_cmd(mp, store)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reads", type=int, default=12000, help="reads per size and thread count")
    ap.add_argument("--sizes", default="4096,16384,32768,262144")
    ap.add_argument("--threads", default="1,4,8")
    ap.add_argument("--other", help="another build's python (its venv) to compare against")
    ap.add_argument("--measure", nargs=2, help=argparse.SUPPRESS)  # WORK LAYOUT: child mode
    a = ap.parse_args()
    sizes = [int(x) for x in a.sizes.split(",")]
    threads = [int(x) for x in a.threads.split(",")]
    if a.measure:
        print(json.dumps(measure(Path(a.measure[0]), Path(a.measure[1]), sizes, threads,
                                 a.reads, a.rounds)))
        return
    import mnt_image as mi

    base = Path(tempfile.mkdtemp(prefix="soci-small-reads-"))
    try:
        img = mi.build(base / "img")
        builds = {"this": sys.executable} | ({"other": a.other} if a.other else {})
        got: dict[str, dict[str, list[list[float]]]] = {k: {} for k in builds}
        for rnd in range(a.rounds):  # alternating builds, one round each at a time
            for name, py in builds.items():
                work = base / f"{name}{rnd}"
                work.mkdir()
                p = subprocess.run([py, __file__, "--measure", str(work), str(img.layout),
                                    "--rounds", "1", "--reads", str(a.reads), "--sizes",
                                    a.sizes, "--threads", a.threads],
                                   capture_output=True, text=True, check=True)
                for k, v in json.loads(p.stdout.splitlines()[-1]).items():
                    got[name].setdefault(k, []).extend(v)
        head = f"{'size':>8} {'thr':>3} {'wall us':>8} {'cpu us':>7}"
        print(head + (f" {'other wall':>10} {'other cpu':>9} {'cpu ratio':>9}" if a.other else ""))
        for k in got["this"]:
            size, n = k.split("/")
            w = statistics.median(x[0] for x in got["this"][k])
            c = statistics.median(x[1] for x in got["this"][k])
            line = f"{int(size) // 1024:>6}Ki {n:>3} {w:8.1f} {c:7.1f}"
            if a.other:
                ow = statistics.median(x[0] for x in got["other"][k])
                oc = statistics.median(x[1] for x in got["other"][k])
                line += f" {ow:10.1f} {oc:9.1f} {c / oc:9.2f}"
            print(line)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
