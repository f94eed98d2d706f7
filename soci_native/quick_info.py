"""`soci-native ztoc info DIGEST` without click or Store: the store read through
soci_native.catalog, the JSON made by the click command's own ztoc_info.info_parts and
written as that command writes it. As in quick_getfile.py, anything it is not sure of
(help, a store to create, a digest not there, a malformed zTOC: any error, all found before
the first byte is written) returns False having changed nothing, for the caller to run the
click command; tests/test_quick_getfile.py compares the two."""

from __future__ import annotations

import sys

from soci_native import quick_args, quick_io
from soci_native.catalog import Catalog, Unsure


@quick_args.fast_path
def main(argv: list[str]) -> bool:
    """Runs `soci-native ARGV` and exits if it is a `ztoc info` this can answer; False if
    not (nothing done: run the click command)."""
    try:
        args = quick_args.Args(argv, "info", 1)
        cat = Catalog(args.root())
        try:
            digest = args.positional[0]
            rec = cat.get(digest)
            if rec is None or rec.type != "soci_layer":
                raise Unsure(digest)
            from soci_native.ztoc_info import info_parts

            try:
                parts = info_parts(cat.map(digest), rec.size)
            except ValueError:  # ZtocError: the click command's to report
                raise Unsure(digest) from None
        finally:
            cat.close()
    except Unsure:
        return False
    try:
        out = sys.stdout.buffer
        for p in parts:
            out.write(p)
        out.write(b"\n")
        out.flush()
    except OSError as e:
        quick_io.pipe_gone(e)
    sys.exit(0)
