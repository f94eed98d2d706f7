"""`soci-native ztoc get-file` from a local OCI layout without click or Store: the command a
script runs in a loop, where importing click and the store cost more than the work.

:func:`main` reads the command line as click would (the same options, precedence and
defaults), finds the zTOC, the path and the layer blob through soci_native.catalog and
soci_native.quick_oci, then streams the file with the code the click command uses
(pathwalk, filestream, outfile). It goes ahead only where it is sure the click command would
do the same: for anything else (help, registry flags, a registry or archive image, a store
to create, a missing file: any error found before the output is opened) it returns False
having changed nothing, and the caller runs the click command, which gives the canonical
answer or error. tests/test_quick_getfile.py runs both on the same cases and compares all
they print and write.
"""

from __future__ import annotations

import os
import sys

from soci_native.catalog import Catalog, Unsure

TYPE_CHECKING = False  # not typing's: see pathwalk.py
if TYPE_CHECKING:
    import mmap
    from collections.abc import Callable
    from typing import Any, NoReturn

    from soci_native.catalog import Record

PROG = "soci-native"
# get-file's options the fast path takes (any other, --help included, goes to click)
VALUED = {"-o": "output", "--output": "output", "--image": "image", "--root": "root"}
VERBOSE = ("-v", "--verbose")


class Args:
    """``[--root R] ztoc [--root R] get-file [-o OUT] [--image REF] [-v] [--root R] DIGEST
    PATH`` as click reads it: a group's options before its subcommand, a command's anywhere
    among its arguments; of an option given twice the last; ``--root`` after the subcommand
    overriding one before, $SOCI_NATIVE_ROOT taking the place of the first."""

    def __init__(self, argv: list[str]) -> None:
        self.output: str | None = None
        self.image: str | None = None
        self.verbose = False
        self.roots: list[tuple[int, str]] = []  # (level, value): click checks each one
        commands: list[str] = []
        positional: list[str] = []
        i = 0
        while i < len(argv):
            a = argv[i]
            i += 1
            level = len(commands)  # 0: soci-native's options, 1: ztoc's, 2: get-file's
            if not a.startswith("-"):
                (commands if level < 2 else positional).append(a)
                continue
            if level == 2 and a in VERBOSE:
                self.verbose = True
                continue
            name, eq, value = a.partition("=") if a.startswith("--") else (a, "", "")
            if name != "--root" and (level < 2 or name not in VALUED):
                raise Unsure(a)  # --help, --debug, registry flags, "--", "-", -vo OUT, ...
            if not eq:
                if i == len(argv):
                    raise Unsure(a)
                value = argv[i]
                i += 1
            if not value or value.startswith("-"):
                raise Unsure(a)  # click reads these, but they are more likely mistakes
            if name == "--root":
                self.roots.append((level, value))
            else:
                setattr(self, VALUED[name], value)
        if commands != ["ztoc", "get-file"] or len(positional) != 2:
            raise Unsure("not `ztoc get-file DIGEST PATH`")
        self.digest, self.path = positional

    def root(self) -> str:
        """The store's root as the click command settles it (the last --root, else
        $SOCI_NATIVE_ROOT, else store.default_root's rule), each value given checked as
        click.Path(file_okay=False) checks it."""
        given = [v for _, v in self.roots]
        env = os.environ.get("SOCI_NATIVE_ROOT")
        if env and not any(level == 0 for level, _ in self.roots):
            given.insert(0, env)
        if not all(map(dir_ok, given)):
            raise Unsure("--root")
        if given:
            return given[-1]
        xdg = os.environ.get("XDG_DATA_HOME")
        if xdg and os.path.isabs(xdg):
            return os.path.join(xdg, PROG)
        return os.path.join(os.path.expanduser("~"), ".local", "share", PROG)


def dir_ok(path: str) -> bool:
    """What click.Path(file_okay=False) accepts: a path not there, or a readable one that is
    not a regular file."""
    import stat

    try:
        st = os.stat(path)
    except OSError:
        return True
    return not stat.S_ISREG(st.st_mode) and os.access(path, os.R_OK)


class Entry:
    """What the path walk and the stream read of a zTOC entry (a ZtocNames.find tuple)."""

    __slots__ = ("type", "linkname", "offset", "size")

    def __init__(self, t: tuple[Any, ...]) -> None:
        self.type: str = t[1]
        self.offset: int = t[2]
        self.size: int = t[3]
        self.linkname: str = t[4]


def lookup_in(buf: bytes | mmap.mmap) -> Callable[[str], Entry | None]:
    """ztoc.name_lookup, its entries as :class:`Entry`."""
    from soci_native import _core

    try:
        names = _core.ZtocNames(buf)
    except ValueError:
        raise Unsure("zTOC") from None

    def find(path: str) -> Entry | None:
        try:
            t = names.find(path.encode("utf-8", "surrogateescape"))
        except ValueError:
            raise Unsure("zTOC") from None
        return None if t is None else Entry(t)
    return find


class Plan:
    """Everything the click command finds before it writes, found the same way: the
    zTOC's checkpoints, the file's entry and the layer blob to read it from."""

    def __init__(self, args: Args) -> None:
        from soci_native import _core, filestream, pathwalk, quick_oci

        cat = Catalog(args.root())
        try:
            rec = cat.get(args.digest)
            if rec is None or rec.type != "soci_layer" or rec.original_digest is None:
                raise Unsure(args.digest)
            raw = cat.map(args.digest)
            try:
                z = _core.ztoc_parse(raw, False, copy_checkpoints=False)
            except ValueError:
                raise Unsure("zTOC") from None
            indexes = cat.of_type("soci_index")
            members = {i.digest: [r.digest for r in cat.ztocs_of_index(i.digest)
                                  if r.type == "soci_layer"] for i in indexes}
            others = [pathwalk.lazy(lambda d: lookup_in(cat.map(d)), d)
                      for d in siblings(members, rec)]
            try:
                self.entry = pathwalk.resolve(args.path, lookup_in(raw), others)
            except pathwalk.PathError:
                raise Unsure(args.path) from None
            ref = args.image or image_ref(rec, indexes, members)
            self.layer = quick_oci.layer_blob(ref, rec.original_digest)
        finally:
            cat.close()
        start, length = z["checkpoints_at"]
        self.checkpoints = memoryview(raw)[start:start + length]  # the zTOC's own bytes
        self.compressed_size: int = z["compressed_size"]
        if z["algorithm"] != "gzip" or not filestream.is_gzip_blob(self.checkpoints):
            raise Unsure("not a gzip layer")
        self.span_size = filestream.gzip_span_size(self.checkpoints)


def siblings(members: dict[str, list[str]], rec: Record) -> list[str]:
    """cli.sibling_ztocs: the other zTOCs of every index holding this one (``members``:
    each index's zTOCs, in index order)."""
    out: dict[str, None] = {}
    for zs in members.values():
        if rec.digest in zs:
            out.update(dict.fromkeys(d for d in reversed(zs) if d != rec.digest))
    return list(out)


def image_ref(rec: Record, indexes: list[Record], members: dict[str, list[str]]) -> object:
    """cli.find_layer_source's image: the zTOC's own, else the first index's holding it (a
    zTOC digest names a zTOC row, so ``members`` holding only zTOCs changes nothing)."""
    refs = [rec.image_ref] if rec.image_ref else []
    refs += [i.image_ref for i in indexes if i.image_ref and rec.digest in members[i.digest]]
    if not refs:
        raise Unsure("no image")
    return refs[0]


def fail(msg: str) -> NoReturn:
    """cli.fail's line."""
    if "\x1b" in msg:  # click.echo strips ANSI codes from a stream that is no terminal
        import click

        click.echo(f"{PROG}: error: {msg}", err=True)
    else:
        sys.stderr.write(f"{PROG}: error: {msg}\n")
        sys.stderr.flush()
    sys.exit(1)


def stream(plan: Plan, args: Args) -> NoReturn:
    """Writes the file as the click command does (its errors as cli.user_errors shows
    them), then exits."""
    from soci_native import _core, filestream, outfile

    try:
        out = outfile.open_output(args.output)
    except outfile.OutputError:
        raise Unsure("output") from None
    e = plan.entry
    try:
        with out as w:
            fetched = filestream.stream_gzip(plan.layer, plan.checkpoints, plan.compressed_size,
                                             e.offset, e.size, plan.span_size, w)
    except (_core.FormatError, outfile.OutputError, OSError) as err:
        fail(str(err) or type(err).__name__)
    if args.verbose:
        total = plan.compressed_size
        sys.stderr.write(f"read {fetched} of {total} layer bytes "
                         f"({100 * fetched / max(1, total):.1f}%)\n")
    sys.exit(0)


def main(argv: list[str]) -> bool:
    """Runs `soci-native ARGV` and exits if it is a get-file this can answer; False if
    not (nothing done: run the click command)."""
    if any(k.startswith("_") and k.endswith("_COMPLETE") for k in os.environ):
        return False  # click's shell completion
    try:
        try:
            args = Args(argv)
            plan = Plan(args)
            stream(plan, args)
        except Unsure:
            return False
    except KeyboardInterrupt:
        sys.stderr.write("\nAborted!\n")  # as click's main
        sys.exit(1)
