"""The soci-native command line: create, convert, index, ztoc, prefetch, rebuild-db.

Mirrors the reference `soci` CLI where it exists; every list/info command takes --json; user
errors print one line on stderr and exit 1 (usage errors exit 2)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from soci_native import __version__
from soci_native.cliopts import ByteSize, RootGroup, registry_flags, registry_options
from soci_native.progress import Reporter, Uploads

# The modules behind the commands are imported by the commands that use them: `--help` and a
# local `ztoc get-file` then load neither sqlite, the C core, nor the registry client
# (urllib3) when they do not need them (start-up is most of a small command's time).
if TYPE_CHECKING:
    from soci_native import ztoc
    from soci_native.build import BuildOptions, IndexResult
    from soci_native.images import Platform
    from soci_native.registry import RegistryOptions
    from soci_native.store import ArtifactRecord, Store

F = TypeVar("F", bound=Callable[..., Any])


def user_error_types() -> tuple[type[BaseException], ...]:
    """The failures a command reports as one line (imported when a command fails)."""
    from soci_native.build import BuildError
    from soci_native.images import ImageError
    from soci_native.index import SociIndexError
    from soci_native.layer import FormatError
    from soci_native.outfile import OutputError
    from soci_native.store import StoreError
    from soci_native.ztoc import ZtocError

    return (ImageError, StoreError, BuildError, FormatError, ZtocError, SociIndexError,
            OutputError, OSError)


def fail(msg: str) -> NoReturn:
    click.echo(f"soci-native: error: {msg}", err=True)
    sys.exit(1)


@contextmanager
def user_errors() -> Iterator[None]:
    """Known failures become one clear line on stderr, not a traceback."""
    try:
        yield
    except Exception as e:
        if not isinstance(e, user_error_types()):
            raise
        fail(str(e) or type(e).__name__)


def emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2))


def store_of(ctx: click.Context) -> Store:
    from soci_native.store import Store

    return Store(ctx.obj["root"])


def table(rows: Sequence[Sequence[str]], headers: Sequence[str]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    for r in [headers, *rows]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


@click.group(cls=RootGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--root", envvar="SOCI_NATIVE_ROOT", type=click.Path(file_okay=False),
              help="Local store (content/ OCI layout + artifacts.db). Env: SOCI_NATIVE_ROOT. "
                   "Default: $XDG_DATA_HOME/soci-native. Also accepted after the subcommand.")
@click.option("--debug", is_flag=True, help="Log every registry request (method, URL, "
              "status) on stderr.")
@click.version_option(__version__, prog_name="soci-native")
@click.pass_context
def main(ctx: click.Context, root: str | None, debug: bool) -> None:
    """Build and inspect SOCI (Seekable OCI) indexes for container images.

    IMAGE references use skopeo's syntax: oci:DIR[:TAG], oci-archive:FILE[:TAG],
    docker-archive:FILE, or a bare path to one of those; registry images are
    docker://HOST/REPO[:TAG] (or HOST/REPO:TAG).
    """
    from soci_native.store import default_root

    ctx.obj = {"root": root or str(default_root())}
    if debug:
        debug_logging()


def debug_logging() -> None:
    """urllib3 logs each request it sends (and each new connection) at DEBUG level: that is
    every registry request, redirects and retries included."""
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("debug: %(message)s"))
    for name in ("urllib3.connectionpool", "soci_native"):
        lg = logging.getLogger(name)
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)


# ------------------------------------------------------------------------------ build flags

def build_flags(f: F) -> F:
    opts = [
        click.option("--span-size", type=ByteSize(min=1), default="4MiB", show_default=True,
                     help="Uncompressed bytes per span (suffixes K, M, G). A gzip zTOC keeps "
                          "a 32 KiB window per span: a span size below the default whose "
                          "zTOC would outgrow the layer (and 1 MiB) is refused unless --force."),
        click.option("--min-layer-size", type=ByteSize(), default="10MiB", show_default=True,
                     help="Layers smaller than this (compressed bytes; suffixes K, M, G) "
                          "get no zTOC."),
        click.option("--optimizations", multiple=True, type=click.Choice(["xattr"]),
                     help="xattr: mark layers without xattrs or opaque dirs so the "
                          "snapshotter disables xattr lookups (experimental, as upstream)."),
        click.option("-f", "--force", is_flag=True, help="Rebuild zTOCs even if stored; allow "
                     "a span size whose zTOC is larger than the layer."),
        click.option("-p", "--platform", "platforms", multiple=True,
                     help="Platform to index (os/arch[/variant]); repeatable. "
                          "Default: the host's."),
        click.option("--all-platforms", is_flag=True, help="Index every platform."),
        click.option("--prefetch-file", "prefetch_files", multiple=True,
                     help="A path to prefetch at mount time; repeatable."),
        click.option("--prefetch-files-json", type=click.File("r"),
                     help="A JSON array of paths to prefetch."),
        click.option("-j", "--jobs", type=click.IntRange(min=1), default=os.cpu_count() or 1,
                     show_default="the core count", help="Layers indexed at once."),
        click.option("--json", "as_json", is_flag=True, help="Print the result as JSON."),
        click.option("-q", "--quiet", is_flag=True, help="Print only the index digest(s)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def build_options(kw: dict[str, Any]) -> BuildOptions:
    from soci_native.build import BuildOptions

    paths = list(kw["prefetch_files"])
    if kw["prefetch_files_json"] is not None:
        try:
            extra = json.load(kw["prefetch_files_json"])
        except ValueError as e:
            fail(f"--prefetch-files-json: not JSON: {e}")
        if not isinstance(extra, list) or not all(isinstance(p, str) for p in extra):
            fail("--prefetch-files-json must hold a JSON array of strings")
        paths += extra
    return BuildOptions(span_size=kw["span_size"], min_layer_size=kw["min_layer_size"],
                        force=kw["force"], optimizations=frozenset(kw["optimizations"]),
                        prefetch_paths=tuple(paths), jobs=kw["jobs"])


def platforms_of(kw: dict[str, Any]) -> list[Platform] | None:
    from soci_native.images import ImageError, Platform

    try:
        return [Platform.parse(p) for p in kw["platforms"]] or None
    except ImageError as e:
        fail(str(e))


def index_json(r: IndexResult) -> dict[str, Any]:
    return {
        "digest": r.digest, "size": r.size, "manifest_version": f"v{r.version}",
        "platform": str(r.image.platform), "image_manifest": r.image.manifest.digest,
        "layers": [{"digest": lr.layer.digest, "size": lr.layer.size, "status": lr.status,
                    "reason": lr.reason or None, "ztoc": lr.ztoc_digest,
                    "ztoc_size": lr.ztoc_size or None} for lr in r.layers],
        "prefetch": r.prefetch_digests,
    }


def run_builds(ctx: click.Context, ref: str, kw: dict[str, Any], version: int
               ) -> list[IndexResult]:
    from soci_native.build import build_index
    from soci_native.images import open_image, resolve

    opts = build_options(kw)
    results = []
    reg = registry_options(kw)
    with user_errors(), open_image(ref, registry=reg) as src, store_of(ctx) as store:
        root_desc, _ = src.root()
        images = resolve(src, platforms_of(kw), kw["all_platforms"])
        for image in images:
            rep = Reporter(image.layers, kw["quiet"] or kw["as_json"])
            try:
                r = build_index(src, store, image, opts, version=version,
                                image_digest=root_desc.digest, progress=rep.callback(),
                                on_layer=rep.layer_done)
            finally:
                rep.close()
            rep.result(r)
            results.append(r)
    return results


@main.command()
@click.argument("image")
@build_flags
@registry_flags
@click.pass_context
def create(ctx: click.Context, image: str, **kw: Any) -> None:
    """Build a SOCI index (v1) for IMAGE and keep it in the local store.

    One zTOC per layer at least --min-layer-size large; layers are indexed in parallel
    (--jobs). Prints the digest of each platform's SOCI index.
    """
    results = run_builds(ctx, image, kw, version=1)
    if kw["as_json"]:
        emit_json([index_json(r) for r in results])
        return
    for r in results:
        click.echo(r.digest if kw["quiet"] else f"{r.image.platform}: soci index {r.digest}")


@main.command()
@click.argument("src")
@click.argument("dst")
@click.option("--format", "fmt", type=click.Choice(["oci-dir", "oci-archive"]),
              help="Layout to write when DST is a bare path (default oci-archive).")
@click.option("--standalone", is_flag=True,
              help="Accepted for upstream compatibility and changes nothing: upstream needs it "
                   "to convert without containerd; this tool always works standalone.")
@build_flags
@registry_flags
@click.pass_context
def convert(ctx: click.Context, src: str, dst: str, fmt: str | None, standalone: bool,
            **kw: Any) -> None:
    """Write SRC as a SOCI-enabled image (SOCI index v2) to DST.

    DST is oci:DIR[:TAG], oci-archive:FILE[:TAG], a bare path with --format, or a registry
    image (docker://HOST/REPO:TAG), which is then pushed (layers mounted from SRC when it is
    in the same registry). The image's manifests gain the com.amazon.soci.index-digest
    annotation; the new image index lists them and one SOCI index per platform.
    """
    from soci_native.convert import convert as do_convert
    from soci_native.images import open_image, resolve

    opts = build_options(kw)
    reg = registry_options(kw)
    with user_errors(), open_image(src, registry=reg) as source, store_of(ctx) as store:
        images = resolve(source, platforms_of(kw), kw["all_platforms"])
        quiet = kw["quiet"] or kw["as_json"]
        rep = Reporter([d for i in images for d in i.layers], quiet)

        def uploads(sizes: Sequence[int]) -> Uploads:
            rep.close()  # indexing is over: its live lines make way
            return Uploads(sizes, quiet)
        try:
            r = do_convert(source, store, dst, fmt, opts, platforms_of(kw),
                           kw["all_platforms"], progress=rep.callback(), registry=reg,
                           on_layer=rep.layer_done, uploads=uploads)
        finally:
            rep.close()
        for ir in r.soci_indexes:
            rep.result(ir)
    if kw["as_json"]:
        emit_json({"index_digest": r.index_digest, "size": r.index_size,
                   "destination": r.destination,
                   "soci_indexes": [index_json(i) for i in r.soci_indexes]})
    elif kw["quiet"]:
        click.echo(r.index_digest)
    else:
        for ir in r.soci_indexes:
            click.echo(f"{ir.image.platform}: soci index {ir.digest}")
        click.echo(f"wrote {r.destination} (image index {r.index_digest})")


def platform_flags(f: F) -> F:
    f = click.option("--all-platforms", is_flag=True, help="Every platform.")(f)
    return click.option("-p", "--platform", "platforms", multiple=True,
                        help="Platform (os/arch[/variant]); repeatable. Default: the host's.")(f)


def registry_source(ref: str, kw: dict[str, Any]) -> Any:
    from soci_native.images import open_image
    from soci_native.registry import RegistrySource

    src = open_image(ref, registry=registry_options(kw))
    if not isinstance(src, RegistrySource):
        src.close()
        fail(f"{ref} is not a registry image (use docker://HOST/REPO:TAG)")
    return src


@main.command()
@click.argument("image")
@click.option("--existing-index", type=click.Choice(["warn", "skip", "allow"]), default="warn",
              show_default=True,
              help="When the registry already lists a SOCI index for the image: push anyway "
                   "with a warning, skip, or push without looking.")
@click.option("--max-concurrent-uploads", type=click.IntRange(min=1), default=3,
              show_default=True)
@click.option("-q", "--quiet", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@platform_flags
@registry_flags
@click.pass_context
def push(ctx: click.Context, image: str, existing_index: str, max_concurrent_uploads: int,
         quiet: bool, as_json: bool, **kw: Any) -> None:
    """Push the SOCI index (v1) of a registry IMAGE and its zTOCs, and make it discoverable.

    The index must have been built with `create` (from this image or a local copy of it).
    Registries with the OCI referrers API find it by its subject; for the others the
    referrers tag (sha256-<hex>) is updated, keeping the referrers already listed there.
    """
    from soci_native.images import resolve
    from soci_native.remote import push_index

    out = []
    with user_errors(), registry_source(image, kw) as src, store_of(ctx) as store:
        for img in resolve(src, platforms_of(kw), kw["all_platforms"]):
            r = push_index(src, store, img, existing_index, max_concurrent_uploads,
                           log=(lambda m: None) if quiet else (lambda m: click.echo(m, err=True)),
                           uploads=lambda sizes: Uploads(sizes, quiet or as_json))
            out.append(r)
    if as_json:
        emit_json([vars(r) for r in out])
        return
    for r in out:
        if quiet:
            click.echo(r.digest)
        elif r.status == "skipped":
            click.echo(f"{r.platform}: skipped {r.digest}: {r.reason}")
        else:
            click.echo(f"{r.platform}: pushed soci index {r.digest} ({r.discovery})")


# ------------------------------------------------------------------------------ index ...

def records_json(recs: Sequence[ArtifactRecord], store: Store) -> list[dict[str, Any]]:
    return [{**{k: getattr(r, k) for k in ("digest", "size", "type", "media_type",
                                           "artifact_type", "original_digest", "image_digest",
                                           "image_ref", "platform", "span_size",
                                           "manifest_version", "created")},
             "image_refs": store.image_refs(r.digest)}
            for r in recs]


def index_records(store: Store, ref: str | None = None,
                  platform: str | None = None) -> list[ArtifactRecord]:
    return store.list_artifacts(type="soci_index", image_ref=ref, platform=platform)


@main.group("index", cls=RootGroup)
def index_group() -> None:
    """List, show and remove SOCI indexes in the local store."""


@index_group.command("list")
@click.option("--ref", help="Only indexes built from this image reference (any of them, "
              "compared normalized: local paths absolute, docker://HOST/R:T = HOST/R:T).")
@click.option("-p", "--platform", help="Only indexes for this platform (os/arch[/variant]).")
@click.option("-q", "--quiet", is_flag=True, help="Digests only.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def index_list(ctx: click.Context, ref: str | None, platform: str | None, quiet: bool,
               as_json: bool) -> None:
    """List SOCI indexes."""
    from soci_native.images import Platform

    with user_errors(), store_of(ctx) as store:
        plat = str(Platform.parse(platform)) if platform else None
        recs = index_records(store, ref, plat)
        as_records = records_json(recs, store) if as_json else []
    if as_json:
        emit_json(as_records)
    elif quiet:
        for r in recs:
            click.echo(r.digest)
    else:
        table([(r.digest, str(r.size), r.image_ref or "", r.platform or "", r.media_type,
                r.manifest_version or "", r.created) for r in recs],
              ("DIGEST", "SIZE", "IMAGE REF", "PLATFORM", "MEDIA TYPE", "MANIFEST VERSION",
               "CREATED"))


def record_or_fail(store: Store, digest: str, kind: str) -> ArtifactRecord:
    rec = store.get_artifact(digest)
    if rec is None:
        fail(f"no {kind.replace('soci_', '').replace('layer', 'ztoc')} {digest} in "
             f"{store.root}")
    if rec.type != kind:
        hint = {"soci_index": "index info", "soci_layer": "ztoc info",
                "soci_prefetch": "prefetch info"}[rec.type]
        fail(f"{digest} is a {rec.type}, not a {kind}: use `soci-native {hint}`")
    return rec


def show_json_blob(ctx: click.Context, digest: str, kind: str) -> None:
    with user_errors(), store_of(ctx) as store:
        record_or_fail(store, digest, kind)
        emit_json(json.loads(store.read_blob(digest)))


@index_group.command("info")
@click.argument("digest")
@click.pass_context
def index_info(ctx: click.Context, digest: str) -> None:
    """Print a SOCI index manifest (JSON)."""
    show_json_blob(ctx, digest, "soci_index")


@index_group.command("rm")
@click.argument("digests", nargs=-1)
@click.option("--ref", help="Remove every index built from this image reference.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def index_rm(ctx: click.Context, digests: tuple[str, ...], ref: str | None,
             as_json: bool) -> None:
    """Remove SOCI indexes and the zTOCs no other index uses."""
    if not digests and not ref:
        fail("give index digests or --ref")
    removed: list[str] = []
    with user_errors(), store_of(ctx) as store:
        by_ref = [r.digest for r in index_records(store, ref)] if ref else []
        if ref and not by_ref:
            fail(f"no SOCI index in {store.root} was built from {ref!r} (see `soci-native "
                 "index list`)")
        targets = list(digests) + by_ref
        for d in targets:
            record_or_fail(store, d, "soci_index")
            removed += store.remove_index(d)
    if as_json:
        emit_json({"removed": removed})
    else:
        for d in removed:
            click.echo(f"removed {d}")


@index_group.command("pull")
@click.argument("image")
@click.option("--json", "as_json", is_flag=True)
@platform_flags
@registry_flags
@click.pass_context
def index_pull(ctx: click.Context, image: str, as_json: bool, **kw: Any) -> None:
    """Fetch IMAGE's SOCI index and zTOCs into the local store.

    Finds it as the snapshotter does: the v2 annotation on the image manifest, else a v1
    referrer (referrers API, else the referrers tag) for a registry image, or a SOCI index
    listed in a local image's index (a SOCI-enabled image written by `convert`).
    """
    from soci_native.discover import pull_index
    from soci_native.images import open_image, resolve

    out = []
    with user_errors(), open_image(image, registry=registry_options(kw)) as src, \
            store_of(ctx) as store:
        root_desc, _ = src.root()
        for img in resolve(src, platforms_of(kw), kw["all_platforms"]):
            found, rec = pull_index(src, store, img, root_desc.digest)
            out.append({"platform": str(img.platform), "digest": rec.digest,
                        "manifest_version": f"v{found.version}", "found_by": found.how})
    if as_json:
        emit_json(out)
    else:
        for o in out:
            click.echo(f"{o['platform']}: soci index {o['digest']} ({o['manifest_version']}, "
                       f"found by {o['found_by']})")


index_group.add_command(index_list, "ls")
index_group.add_command(index_rm, "remove")


# ------------------------------------------------------------------------------ ztoc ...

@main.group("ztoc", cls=RootGroup)
def ztoc_group() -> None:
    """List and inspect zTOCs; extract files through them."""


@ztoc_group.command("list")
@click.option("--ztoc-digest", help="Only this zTOC.")
@click.option("--image-ref", help="Only zTOCs of indexes built from this image reference.")
@click.option("-q", "--quiet", is_flag=True, help="Digests only.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def ztoc_list(ctx: click.Context, ztoc_digest: str | None, image_ref: str | None, quiet: bool,
              as_json: bool) -> None:
    """List zTOCs."""
    with user_errors(), store_of(ctx) as store:
        recs = store.list_artifacts(type="soci_layer")
        if ztoc_digest:
            recs = [r for r in recs if r.digest == ztoc_digest]
        if image_ref:
            wanted = {z.digest for i in index_records(store, image_ref)
                      for z in store.ztocs_for_index(i.digest)}
            recs = [r for r in recs if r.digest in wanted]
    if as_json:
        emit_json([{"digest": r.digest, "size": r.size, "layer_digest": r.original_digest,
                    "span_size": r.span_size, "image_ref": r.image_ref, "created": r.created}
                   for r in recs])
    elif quiet:
        for r in recs:
            click.echo(r.digest)
    else:
        table([(r.digest, str(r.size), r.original_digest or "", str(r.span_size or ""))
               for r in recs], ("DIGEST", "SIZE", "LAYER DIGEST", "SPAN SIZE"))


def load_ztoc(store: Store, digest: str) -> tuple[ArtifactRecord, ztoc.Ztoc]:
    from soci_native import ztoc

    rec = record_or_fail(store, digest, "soci_layer")
    return rec, ztoc.from_bytes(store.read_blob(digest))


@ztoc_group.command("info")
@click.argument("digest")
@click.pass_context
def ztoc_info(ctx: click.Context, digest: str) -> None:
    """Print a zTOC's summary and file list as JSON (the reference's keys)."""
    from soci_native.ztoc_info import info_parts

    with user_errors(), store_of(ctx) as store:
        rec = record_or_fail(store, digest, "soci_layer")
        parts = info_parts(store.map_blob(digest), rec.size)
    # ASCII JSON written as it is: click.echo would run its ANSI-stripping regex over
    # every byte of a 10 MB text that cannot hold an escape character
    out = sys.stdout.buffer
    for p in parts:
        out.write(p)
    out.write(b"\n")
    out.flush()


@ztoc_group.command("get-file")
@click.argument("digest")
@click.argument("path")
@click.option("-o", "--output", type=click.Path(), help="Write here instead of stdout.")
@click.option("--image", "image_ref",
              help="Image holding the layer (default: the image the zTOC was built from).")
@click.option("-v", "--verbose", is_flag=True, help="Say how many layer bytes were read.")
@registry_flags
@click.pass_context
def ztoc_get_file(ctx: click.Context, digest: str, path: str, output: str | None,
                  image_ref: str | None, verbose: bool, **kw: Any) -> None:
    """Extract PATH from the layer of zTOC DIGEST, reading only the spans it needs.

    Symbolic links on the way are followed as the image would (a link kept in another layer
    of the same image included, e.g. bin -> usr/bin). The file is streamed in pieces of a
    few spans, so memory stays bounded whatever its size.
    """
    from soci_native import getfile, ztoc
    from soci_native.images import open_image
    from soci_native.outfile import open_output
    from soci_native.pathwalk import lazy
    from soci_native.quick_getfile import image_of, siblings
    from soci_native.ztoc_info import span_size

    with user_errors(), store_of(ctx) as store:
        rec = record_or_fail(store, digest, "soci_layer")
        raw = store.map_blob(digest)
        z = ztoc.from_bytes(raw, files=False)  # one lookup in C instead of every entry
        indexes, members = stored_indexes(store)
        others = [lazy(lambda d: getfile.lookup_in(store.read_blob(d)), d)
                  for d in siblings(members, rec)]
        try:
            f = getfile.resolve(path, getfile.lookup_in(raw), others)
        except getfile.PathError as e:
            fail(f"{e} (zTOC {digest})")
        layer_digest = rec.original_digest
        if layer_digest is None:
            fail(f"zTOC {digest} does not record its layer digest")
        ref = image_ref or image_of(rec, indexes, members)
        if ref is None:
            fail(f"no image known for zTOC {digest}: pass --image REF")
        span = span_size(z.checkpoints, z.compression_algorithm)
        with open_image(ref, registry=local_or_registry_options(ref, kw)) as src, \
                open_output(output) as out:
            try:
                fetched = getfile.stream_file(src, layer_digest, z, f, out, span)
            except getfile.SpanMismatch as e:
                fail(str(e))
        if verbose:
            click.echo(f"read {fetched} of {z.compressed_archive_size} layer bytes "
                       f"({100 * fetched / max(1, z.compressed_archive_size):.1f}%)", err=True)


def stored_indexes(store: Store) -> tuple[list[ArtifactRecord], dict[str, list[str]]]:
    """Every stored SOCI index and each one's zTOCs (in its order): where get-file finds a
    zTOC's other layers and its image. An index whose blob is missing or corrupt (or no SOCI
    index) is skipped with a warning naming it: one broken index does not stop reading files
    through the others. Any other failure to read it (EIO, EMFILE, a permission) says
    nothing of the index, only of this run: it is an error, not a skip that would quietly
    lose links or the image (quick_getfile leaves a store with either to this command)."""
    from soci_native.store import StoreError

    indexes: list[ArtifactRecord] = []
    members: dict[str, list[str]] = {}
    for i in store.list_artifacts(type="soci_index"):
        try:
            recs = store.ztocs_for_index(i.digest)
        except StoreError as e:
            click.echo(f"warning: skipping SOCI index {i.digest}: {e}", err=True)
            continue
        except OSError as e:
            fail(f"cannot read SOCI index {i.digest}: {e}")
        indexes.append(i)
        members[i.digest] = [z.digest for z in recs if z.type == "soci_layer"]
    return indexes, members


def local_or_registry_options(ref: str, kw: dict[str, Any]) -> RegistryOptions | None:
    """The registry flags' options, or None for an image that is plainly local (making the
    options imports the registry client, urllib3: a third of a small local command's time).
    open_image ignores the options for local images, so a miss only costs time."""
    if ref.startswith(("oci:", "oci-archive:", "docker-archive:")) or os.path.exists(ref):
        return None
    return registry_options(kw)


ztoc_group.add_command(ztoc_list, "ls")


# ------------------------------------------------------------------------------ prefetch ...

@main.group("prefetch", cls=RootGroup)
def prefetch_group() -> None:
    """List and inspect prefetch artifacts."""


@prefetch_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def prefetch_list(ctx: click.Context, as_json: bool) -> None:
    """List prefetch artifacts."""
    with user_errors(), store_of(ctx) as store:
        recs = store.list_artifacts(type="soci_prefetch")
        spans = [len(json.loads(store.read_blob(r.digest)).get("prefetch_spans", []))
                 for r in recs]
    if as_json:
        emit_json([{"digest": r.digest, "size": r.size, "layer_digest": r.original_digest,
                    "spans": n, "created": r.created} for r, n in zip(recs, spans, strict=True)])
    else:
        table([(r.digest, r.original_digest or "", str(n), r.created)
               for r, n in zip(recs, spans, strict=True)],
              ("DIGEST", "LAYER DIGEST", "SPANS", "CREATED"))


@prefetch_group.command("info")
@click.argument("digest")
@click.option("--json", "as_json", is_flag=True, help="The artifact itself, as JSON.")
@click.pass_context
def prefetch_info(ctx: click.Context, digest: str, as_json: bool) -> None:
    """Show a prefetch artifact: its layer and the span ranges it prefetches."""
    if as_json:
        show_json_blob(ctx, digest, "soci_prefetch")
        return
    with user_errors(), store_of(ctx) as store:
        rec = record_or_fail(store, digest, "soci_prefetch")
        doc = json.loads(store.read_blob(digest))
    click.echo(f"layer: {rec.original_digest or 'unknown'}")
    spans = doc.get("prefetch_spans") if isinstance(doc, dict) else None
    for sp in spans if isinstance(spans, list) else []:
        if isinstance(sp, dict):
            click.echo(f"spans {sp.get('start_span')}-{sp.get('end_span')}")


prefetch_group.add_command(prefetch_list, "ls")


@main.command("rebuild-db")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def rebuild_db(ctx: click.Context, as_json: bool) -> None:
    """Re-sync artifacts.db with the blobs in content/.

    An unusable (corrupt) artifacts.db is moved aside (artifacts.db.corrupt-TIME) and a new
    one is built from the blobs.
    """
    from soci_native.store import CorruptDatabaseError, Store

    moved = None
    with user_errors():
        try:
            store = store_of(ctx)
        except CorruptDatabaseError as e:
            moved = Store.move_db_aside(ctx.obj["root"])
            click.echo(f"warning: {e.args[0].split(';')[0]}; moved it to {moved}", err=True)
            store = store_of(ctx)
        with store:
            counts: dict[str, Any] = dict(store.rebuild_db())
    if moved is not None:
        counts["moved_aside"] = str(moved)
    if as_json:
        emit_json(counts)
    else:
        click.echo(", ".join(f"{k}: {v}" for k, v in counts.items()))


main.add_lazy("mount", "soci_native.mount", "mount_command")
main.add_lazy("umount", "soci_native.mount", "umount_command")
main.add_lazy("unmount", "soci_native.mount", "umount_command")
main.add_lazy("snapshotter", "soci_native.snapshotter.command", "snapshotter_group")
main.add_lazy("rpull", "soci_native.snapshotter.command", "rpull_command")

if __name__ == "__main__":
    main()
