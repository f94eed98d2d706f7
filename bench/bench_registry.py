#!/usr/bin/env python3
"""soci-native against a real registry on 127.0.0.1 (Debian's docker-registry), same image,
same run:

* index build streamed over HTTP (`create docker://...`) vs from the local OCI layout;
* `ztoc get-file` of small files from the big remote layer (range requests for their spans
  only) vs downloading the whole layer blob: bytes fetched and time.

Uses bench/data/image (bench_create.py makes it) and tests/reg_server.py to run the registry.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import bench_create  # noqa: E402
import reg_server  # noqa: E402

from soci_native import ztoc  # noqa: E402
from soci_native.layer import extract_span, span_range  # noqa: E402
from soci_native.registry import RegistryClient  # noqa: E402
from soci_native.store import Store  # noqa: E402


def soci(root: str, *args: str) -> tuple[float, str, str]:
    env = dict(os.environ, SOCI_NATIVE_ROOT=root)
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "soci_native.cli", *args], env=env, check=True,
                       capture_output=True, text=True)
    return time.perf_counter() - t, p.stdout, p.stderr


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--files", type=int, default=10)
    args = ap.parse_args()
    if not reg_server.available():
        print("needs docker-registry and skopeo (apt)")
        return 1
    lay = bench_create.make_image(bench_create.LAYERS)
    with tempfile.TemporaryDirectory() as td, reg_server.Registry.start(Path(td) / "reg") as reg:
        remote = f"docker://{reg.host}/bench/img:bench"
        t = time.perf_counter()
        subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{lay}:bench",
                        remote], check=True)
        print(f"pushed the image with skopeo in {time.perf_counter() - t:.1f} s")
        times: dict[str, list[float]] = {}
        for _ in range(args.repeat):
            for label, ref in (("local layout", f"oci:{lay}:bench"), ("registry", remote)):
                for jobs in (1, 2):
                    with tempfile.TemporaryDirectory() as root:
                        dt, _, _ = soci(root, "create", ref, "--jobs", str(jobs), "--force")
                    times.setdefault(f"create {label} --jobs {jobs}", []).append(dt)
        print(f"\n{'index build':34} {'median s':>9} {'vs local':>9}")
        for jobs in (1, 2):
            loc = statistics.median(times[f"create local layout --jobs {jobs}"])
            for label in ("local layout", "registry"):
                med = statistics.median(times[f"create {label} --jobs {jobs}"])
                print(f"{'create ' + label + f' --jobs {jobs}':34} {med:9.2f} {loc / med:9.2f}")
        # get-file from the big layer vs downloading it
        with tempfile.TemporaryDirectory() as root:
            _, out, _ = soci(root, "create", remote, "--json")
            layers = json.loads(out)[0]["layers"]
            big = max(layers, key=lambda x: x["size"])
            _, info, _ = soci(root, "ztoc", "info", big["ztoc"])
            files = [f for f in json.loads(info)["files"]
                     if f["type"] == "reg" and 1000 < f["size"] < 64 << 10]
            picked = random.Random(7).sample(files, min(args.files, len(files)))
            fetched, secs = 0, []
            for f in picked:
                dt, _, err = soci(root, "ztoc", "get-file", big["ztoc"], f["filename"], "-v",
                                  "-o", os.devnull)
                fetched += int(err.split()[1])
                secs.append(dt)
            # the same reads in-process (library: one range request + inflate per file), and
            # the whole-layer download they replace
            z = ztoc.from_bytes(Store(root).read_blob(big["ztoc"]))
            by_name = {f.name: f for f in z.files}
            lib = []
            with RegistryClient(reg.host) as c:
                for f in picked:
                    m = by_name[f["filename"]]
                    t = time.perf_counter()
                    first, start, end = span_range(z.checkpoints, m.uncompressed_offset,
                                                   m.uncompressed_size, z.compressed_archive_size)
                    comp = c.read_range("bench/img", big["digest"], start, end - start)
                    extract_span(z.checkpoints, first, comp, m.uncompressed_offset,
                                 m.uncompressed_size)
                    lib.append(time.perf_counter() - t)
                t = time.perf_counter()
                with c.open_blob("bench/img", big["digest"]) as b:
                    while b.read(1 << 20):
                        pass
                whole = time.perf_counter() - t
        n = len(picked)
        print(f"\nget-file of {n} small files from a {big['size'] / 1e6:.0f} MB remote layer")
        print(f"  bytes fetched: {fetched / 1e6:.1f} MB in all, {fetched / n / 1e6:.2f} MB per "
              f"file ({fetched / n / big['size']:.2%} of the layer each)")
        print(f"  time per file, median: `ztoc get-file` command {statistics.median(secs):.3f} s "
              f"(interpreter start and zTOC load included); library call (range request + "
              f"inflate) {statistics.median(lib):.3f} s")
        print(f"  downloading the whole layer over loopback: {whole:.3f} s "
              f"= {whole / statistics.median(lib):.1f}x a library get-file; on a real network "
              f"the byte ratio ({big['size'] / (fetched / n):.0f}x fewer bytes) dominates")
    return 0


if __name__ == "__main__":
    sys.exit(main())
