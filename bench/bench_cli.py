#!/usr/bin/env python3
"""Whole-process times of the short commands, beside a bare interpreter and `import click` in
the same run: `--help`, `--version`, a command's `--help` (`ztoc`, `index`, `mount`; `ztoc`'s
also through the click command), `ztoc info` on a large zTOC, `ztoc get-file` of a small
file from a local image (both also through the click command, which the console script's
fast paths spare), the imports of `create`; and `soci-native mount` until the mountpoint
answers, beside listing the same .tar.gz with `tar -tzf`.

Everything runs from a regular (non-editable), byte-compiled copy of soci_native
(bench/installed.py), as a user's installation would. Timed with hyperfine (-N, no shell),
`--rounds` times over; the table gives the median of the rounds' medians and the ratio to
the bare interpreter. The zTOC is of the `big` bench layer (bench/make_layers.py), indexed
once into bench/data/cli-store-LAYER/. Mount ready: `soci-native mount` (it returns once the
mount is live) then one stat of a file in the mount, timed together, unmounted between runs;
interleaved with `tar -tzf` (what any tool that reads the layer itself must at least do).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import installed
from bench_create import DATA, make_image


def sh(cmd: list[str], **kw: object) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True,
                          env=installed.env(), **kw).stdout  # type: ignore[call-overload]


def prepare(script: Path, layer: str) -> tuple[Path, str, str, int, int]:
    """(store, zTOC digest, small file path, its size, the zTOC's entries)."""
    lay = make_image([layer], DATA / f"cli-image-{layer}")
    store = DATA / f"cli-store-{layer}"
    base = [str(script), "--root", str(store)]
    if not json.loads(sh([*base, "ztoc", "list", "--json"])):
        sh([*base, "create", f"oci:{lay}:bench", "--min-layer-size", "0", "-q"])
    digest = json.loads(sh([*base, "ztoc", "list", "--json"]))[0]["digest"]
    files = json.loads(sh([*base, "ztoc", "info", digest]))["files"]
    small = [f for f in files if f["type"] == "reg" and 200 <= f["size"] <= 4096]
    pick = small[len(small) // 2]
    return store, digest, pick["filename"], pick["size"], len(files)


def hyperfine(cmds: dict[str, list[str]], runs: int) -> dict[str, float]:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        args = ["hyperfine", "-N", "-w", "2", "-r", str(runs), "--export-json", out.name,
                "--style", "none", "--output", "pipe"]
        for name, cmd in cmds.items():
            args += ["-n", name, " ".join(cmd)]
        # from "/": `python -c` puts the working directory first on sys.path, and the
        # checkout's soci_native (no C extension in it) must not shadow the copy
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL, env=installed.env(),
                       cwd="/")
        res = json.load(open(out.name))["results"]
    return {r["command"]: r["median"] for r in res}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=20, help="hyperfine runs per command a round")
    ap.add_argument("--layer", default="big")
    args = ap.parse_args()
    if shutil.which("hyperfine") is None:
        raise SystemExit("bench_cli needs hyperfine (apt-get install hyperfine)")
    if not (DATA / f"{args.layer}.tar.gz").exists():
        subprocess.run([sys.executable, str(Path(__file__).parent / "make_layers.py"),
                        "--layers", args.layer], check=True)
    script = installed.make()
    py = str(installed.python())
    store, digest, small, size, entries = prepare(script, args.layer)
    lay = DATA / f"cli-image-{args.layer}"
    sn = [str(script), "--root", str(store)]
    cmds = {
        "python -c pass": [py, "-c", "pass"],
        "python -c 'import click'": [py, "-c", "'import click'"],
        "soci-native --help": [str(script), "--help"],
        "soci-native --version": [str(script), "--version"],
        "soci-native ztoc --help": [str(script), "ztoc", "--help"],
        "soci-native index --help": [str(script), "index", "--help"],
        "soci-native mount --help": [str(script), "mount", "--help"],
    }
    # ztoc info and get-file, each also through the click command: what the console
    # script's fast paths (soci_native/quick_info.py, quick_getfile.py) spare (click, Store,
    # the image module)
    click = [py, "-c", "'import sys; from soci_native.cli import main; "
             "sys.argv[0] = \"soci-native\"; main()'", *sn[1:]]
    get_file = ["ztoc", "get-file", digest, small, "--image", f"oci:{lay}:bench", "-o",
                "/dev/null"]
    cmds["  ztoc --help, through click"] = [*click[:3], "ztoc", "--help"]
    cmds[f"ztoc info ({entries} entries)"] = [*sn, "ztoc", "info", digest]
    cmds["  info, through click"] = [*click, "ztoc", "info", digest]
    cmds[f"ztoc get-file ({size} B, local)"] = [*sn, *get_file]
    cmds["  get-file, through click"] = [*click, *get_file]
    cmds["imports of create"] = [py, "-c", "'import soci_native.cli, soci_native.build'"]
    # the first --help renders through click and saves its text; time the saved path
    for cmd in ([], ["ztoc"], ["index"], ["mount"]):
        sh([str(script), *cmd, "--help"])
    rounds: dict[str, list[float]] = {k: [] for k in cmds}
    for _ in range(args.rounds):
        for k, v in hyperfine(cmds, args.runs).items():
            rounds[k].append(v)
    base = statistics.median(rounds["python -c pass"])
    print(f"== short commands, whole process ({args.rounds} rounds x {args.runs} runs, "
          "hyperfine medians; regular byte-compiled install)")
    print(f"{'command':36} {'median ms':>10} {'vs bare python':>15}")
    for k, ts in rounds.items():
        med = statistics.median(ts)
        print(f"{k:36} {med * 1e3:10.1f} {med / base:14.1f}x")
    mount_ready(script, store, lay, small, args.layer, args.rounds * 3)
    return 0


def mount_ready(script: Path, store: Path, lay: Path, probe: str, layer: str,
                runs: int) -> None:
    mp = DATA / "cli-mnt"
    mp.mkdir(exist_ok=True)
    tgz = DATA / f"{layer}.tar.gz"
    times: dict[str, list[float]] = {"soci-native mount, ready": [], "tar -tzf": []}
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run([str(script), "--root", str(store), "mount", f"oci:{lay}:bench",
                        str(mp)], check=True, capture_output=True, env=installed.env())
        try:
            os.stat(mp / probe)
            times["soci-native mount, ready"].append(time.perf_counter() - t)
        finally:
            subprocess.run([str(script), "--root", str(store), "umount", str(mp)],
                           capture_output=True, env=installed.env())
        t = time.perf_counter()
        subprocess.run(["tar", "-tzf", str(tgz)], check=True, stdout=subprocess.DEVNULL)
        times["tar -tzf"].append(time.perf_counter() - t)
    base = statistics.median(times["tar -tzf"])
    print(f"\n== mount ready, {layer} layer ({runs} runs, interleaved)")
    print(f"{'what':36} {'median s':>10} {'vs tar -tzf':>12}")
    for k, ts in times.items():
        med = statistics.median(ts)
        print(f"{k:36} {med:10.3f} {base / med:11.2f}x")


if __name__ == "__main__":
    sys.exit(main())
