"""The built-in sample: index a gzip layer made from this machine's Python standard library.

``python -m soci_native.sample`` (what ``make run`` does) builds the layer once under
``build/sample/``, indexes it with the C core, checks a sample of files extracted through the
checkpoints against Python's tarfile, and prints a summary.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import sysconfig
import tarfile
import time
from pathlib import Path

from soci_native.layer import DEFAULT_SPAN_SIZE, index_layer
from soci_native.summary import render, summarize, verify_sample


def _skip(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    # site-packages varies between machines; the rest of the stdlib is the sample
    return None if "site-packages" in info.name else info


def build_sample_layer(out_dir: Path) -> Path:
    """A PAX tar of the stdlib, gzip -6 like `docker push` writes; reused when present."""
    layer = out_dir / "stdlib-layer.tar.gz"
    if layer.exists():
        return layer
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = layer.with_suffix(".tmp")
    stdlib = sysconfig.get_paths()["stdlib"]
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6,
                                                 mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tf:
            tf.add(stdlib, arcname="usr/lib/python", filter=_skip)
    os.replace(tmp, layer)
    return layer


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="build/sample", help="where the sample layer is kept")
    ap.add_argument("--span-size", type=int, default=DEFAULT_SPAN_SIZE)
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = ap.parse_args(argv)
    if not args.json and not (Path(args.dir) / "stdlib-layer.tar.gz").exists():
        print("building the sample layer from the Python standard library...", file=sys.stderr)
    layer = build_sample_layer(Path(args.dir))
    t0 = time.perf_counter()
    ix = index_layer(layer, span_size=args.span_size)
    summary = summarize(ix, time.perf_counter() - t0)
    summary["layer"] = str(layer)
    summary["verified_files"] = verify_sample(str(layer), ix, None)
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        print()
    else:
        print(f"sample layer       {layer}")
        print(render(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
