#!/usr/bin/env python3
"""Whole-process times of the short commands, beside a bare interpreter and `import click` in
the same run: `--help`, `--version`, `ztoc info` on a large zTOC, `ztoc get-file` of a small
file from a local image.

Everything runs from a regular (non-editable), byte-compiled copy of soci_native
(bench/installed.py), as a user's installation would. Timed with hyperfine (-N, no shell),
`--rounds` times over; the table gives the median of the rounds' medians and the ratio to
the bare interpreter. The zTOC is of the `big` bench layer (bench/make_layers.py), indexed
once into bench/data/cli-store/.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
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
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL, env=installed.env())
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
        f"ztoc info ({entries} entries)": [*sn, "ztoc", "info", digest],
        f"ztoc get-file ({size} B, local)": [*sn, "ztoc", "get-file", digest, small,
                                             "--image", f"oci:{lay}:bench", "-o", "/dev/null"],
    }
    # the first --help renders through click and saves its text; time the saved path
    sh([str(script), "--help"])
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
