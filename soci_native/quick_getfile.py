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

import sys

from soci_native import quick_args
from soci_native.catalog import Catalog, Unsure

TYPE_CHECKING = False  # not typing's: see pathwalk.py
if TYPE_CHECKING:
    import mmap
    from collections.abc import Callable, Sequence
    from typing import Any, NoReturn, Protocol

    class Listed(Protocol):
        """A catalog Record or a Store ArtifactRecord: what :func:`siblings` and
        :func:`image_of` read of a row."""

        @property
        def digest(self) -> str: ...

        @property
        def image_ref(self) -> object: ...

# get-file's options the fast path takes (any other, --help included, goes to click)
VALUED = {"-o": "output", "--output": "output", "--image": "image"}
FLAGS = {"-v": "verbose", "--verbose": "verbose"}


class Args(quick_args.Args):
    """``[--root R] ztoc [--root R] get-file [-o OUT] [--image REF] [-v] DIGEST PATH``."""

    output: str | None
    image: str | None
    verbose: bool

    def __init__(self, argv: list[str]) -> None:
        super().__init__(argv, "get-file", 2, VALUED, FLAGS)
        self.digest, self.path = self.positional


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

        if args.image is not None and not args.image.startswith("oci:"):
            raise Unsure(args.image)  # before the store is opened: a registry get-file
        cat = Catalog(args.root())
        try:
            rec = cat.get(args.digest)
            if rec is None or rec.type != "soci_layer" or rec.original_digest is None:
                raise Unsure(args.digest)
            indexes = cat.of_type("soci_index")
            members = {i.digest: [r.digest for r in cat.ztocs_of_index(i.digest)
                                  if r.type == "soci_layer"] for i in indexes}
            ref = args.image or image_of(rec, indexes, members)
            if ref is None or not ref.startswith("oci:"):
                raise Unsure(f"image {ref!r}")  # none, a registry's, an archive's
            raw = cat.map(args.digest)
            try:
                z = _core.ztoc_parse(raw, False, copy_checkpoints=False)
            except ValueError:
                raise Unsure("zTOC") from None
            others = [pathwalk.lazy(lambda d: lookup_in(cat.map(d)), d)
                      for d in siblings(members, rec)]
            try:
                self.entry = pathwalk.resolve(args.path, lookup_in(raw), others)
            except pathwalk.PathError:
                raise Unsure(args.path) from None
            self.layer = quick_oci.layer_blob(ref, rec.original_digest)
        finally:
            cat.close()
        start, length = z["checkpoints_at"]
        self.checkpoints = memoryview(raw)[start:start + length]  # the zTOC's own bytes
        self.compressed_size: int = z["compressed_size"]
        if z["algorithm"] != "gzip" or not filestream.is_gzip_blob(self.checkpoints):
            raise Unsure("not a gzip layer")
        self.span_size = filestream.gzip_span_size(self.checkpoints)


def siblings(members: dict[str, list[str]], rec: Listed) -> list[str]:
    """The other zTOCs of every index holding this one, the layers a path's links may lead
    to (``members``: each index's zTOCs, in its order; the click command's too)."""
    out: dict[str, None] = {}
    for zs in members.values():
        if rec.digest in zs:
            out.update(dict.fromkeys(d for d in reversed(zs) if d != rec.digest))
    return list(out)


def image_of(rec: Listed, indexes: Sequence[Listed], members: dict[str, list[str]]
             ) -> str | None:
    """The image to read a zTOC's layer from when none is given: the zTOC's own, else that
    of the first index holding it; None if there is none, or it is no text (a crafted
    catalog's: any SQLite value) (the click command's too)."""
    ref = rec.image_ref or next((i.image_ref for i in indexes
                                 if i.image_ref and rec.digest in members[i.digest]), None)
    return ref if isinstance(ref, str) else None


def fail(msg: str) -> NoReturn:
    """cli.fail's line."""
    if "\x1b" in msg:  # click.echo strips ANSI codes from a stream that is no terminal
        import click

        click.echo(f"{quick_args.PROG}: error: {msg}", err=True)
    else:
        sys.stderr.write(f"{quick_args.PROG}: error: {msg}\n")
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


@quick_args.fast_path
def main(argv: list[str]) -> bool:
    """Runs `soci-native ARGV` and exits if it is a get-file this can answer; False if
    not (nothing done: run the click command)."""
    try:
        args = Args(argv)
        stream(Plan(args), args)
    except Unsure:
        return False
