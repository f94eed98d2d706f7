"""`soci-native ztoc info DIGEST` without click or Store: the store read through
soci_native.catalog, the JSON made by the click command's own ztoc_info.info_parts and
written as that command writes it. As in quick_getfile.py, anything it is not sure of
(help, a store to create, a digest not there, a malformed zTOC: any error, all found before
the first byte is written) returns False having changed nothing, for the caller to run the
click command; tests/test_quick_getfile.py compares the two."""

from __future__ import annotations

import errno
import sys

from soci_native import quick_args
from soci_native.catalog import Catalog, Unsure


class PacifiedFlush:
    """A stream whose flush ignores a pipe gone, as click leaves stdout and stderr after
    one (the interpreter's last flush would report it otherwise)."""

    def __init__(self, wrapped: object) -> None:
        self.wrapped = wrapped

    def flush(self) -> None:
        try:
            self.wrapped.flush()  # type: ignore[attr-defined]
        except OSError as e:
            if e.errno != errno.EPIPE:
                raise

    def __getattr__(self, name: str) -> object:
        return getattr(self.wrapped, name)


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
    except OSError as e:  # click's main: a pipe gone is exit 1, quietly
        if e.errno != errno.EPIPE:
            raise
        sys.stdout = PacifiedFlush(sys.stdout)
        sys.stderr = PacifiedFlush(sys.stderr)
        sys.exit(1)
    sys.exit(0)
