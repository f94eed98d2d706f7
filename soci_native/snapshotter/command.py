"""``soci-native snapshotter``: serve, ``config default``, ``mounts`` and ``stop-mounts``; and
``soci-native rpull``, its client."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from soci_native.cliopts import registry_flags, registry_options
from soci_native.snapshotter.config import DEFAULT_TOML, ConfigError, load

DEFAULT_ROOT = "/var/lib/soci-native-snapshotter"
DEFAULT_ADDRESS = "/run/soci-native-snapshotter/snapshotter.sock"


def _fail(msg: str) -> None:
    click.echo(f"soci-native: error: {msg}", err=True)
    sys.exit(1)


def _store_root(ctx: click.Context, cfg_store: str, root: Path) -> Path:
    """The config's store_root, else an explicit global --root / SOCI_NATIVE_ROOT, else
    <root>/store."""
    if cfg_store:
        return Path(cfg_store).absolute()
    top = ctx.find_root()
    src = top.get_parameter_source("root")
    if src is not None and src.name in ("COMMANDLINE", "ENVIRONMENT") and top.params.get("root"):
        return Path(str(top.params["root"])).absolute()
    return root / "store"


@click.group("snapshotter", invoke_without_command=True,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--address", default=DEFAULT_ADDRESS, show_default=True,
              help="Unix socket to serve containerd's Snapshots API on.")
@click.option("--root", "state_root", default=DEFAULT_ROOT, show_default=True,
              type=click.Path(file_okay=False),
              help="Snapshotter state: metadata.db, snapshots/, span caches, the mount daemon.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="TOML config (see `soci-native snapshotter config default`).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="info", show_default=True)
@click.pass_context
def snapshotter_group(ctx: click.Context, address: str, state_root: str,
                      config_path: str | None, log_level: str) -> None:
    """A containerd remote snapshotter: containers start before their image is downloaded.

    Serves `containerd.services.snapshots.v1` on ADDRESS; register it in containerd as
    `[proxy_plugins.soci] type = "snapshot" address = "ADDRESS"` (docs/snapshotter.md).
    Layers with a zTOC in the image's SOCI index (local store, v2 annotation, referrers)
    are mounted lazily over FUSE when a pull passes the target-layer labels (CRI,
    `ctr-remote images rpull`, `soci-native rpull`); everything else behaves as containerd's
    overlayfs snapshotter. The FUSE mounts live in a separate mount daemon, so restarting
    the snapshotter leaves running containers alone.
    """
    try:
        cfg = load(config_path)
    except ConfigError as e:
        _fail(str(e))
        return
    root = Path(state_root).absolute()
    ctx.obj = dict(ctx.obj or {}, snap_root=root, snap_cfg=cfg,
                   snap_store=_store_root(ctx, cfg.store_root, root))
    if ctx.invoked_subcommand is not None:
        return
    from soci_native.snapshotter.server import Paths, serve

    logging.basicConfig(level=getattr(logging, log_level.upper()), stream=sys.stderr,
                        format="%(asctime)s soci-native-snapshotter %(levelname)s %(message)s")
    logging.getLogger("urllib3").setLevel(logging.INFO)
    try:
        serve(str(Path(address).absolute()), Paths(root, ctx.obj["snap_store"]), cfg)
    except OSError as e:
        _fail(str(e))


@snapshotter_group.group("config")
def config_group() -> None:
    """The snapshotter's TOML configuration."""


@config_group.command("default")
def config_default() -> None:
    """Print the default configuration (a valid config file, every key explained)."""
    click.echo(DEFAULT_TOML, nl=False)


@snapshotter_group.command("mounts")
@click.pass_context
def mounts_command(ctx: click.Context) -> None:
    """List the lazily mounted layers the mount daemon serves (JSON; [] when no mount
    daemon runs)."""
    from soci_native.snapshotter.mountd import MountdClient, MountdError

    client = MountdClient(Path(ctx.obj["snap_root"]) / "mountd")
    if not client.sock.exists():
        click.echo("[]")
        return
    try:
        click.echo(json.dumps(client.call("list", timeout=10)["mounts"], indent=2))
    except (OSError, MountdError) as e:
        _fail(f"no mount daemon answers under {client.dir}: {e}")


@snapshotter_group.command("stop-mounts")
@click.pass_context
def stop_mounts(ctx: click.Context) -> None:
    """Unmount every lazily mounted layer and stop the mount daemon (containers using
    them lose their files: stop them first)."""
    from soci_native.snapshotter.mountd import MountdClient, MountdError

    client = MountdClient(Path(ctx.obj["snap_root"]) / "mountd")
    if not client.alive():
        click.echo("no mount daemon running", err=True)
        return
    pid = client.pid()
    try:
        client.call("shutdown", timeout=60)
    except (OSError, MountdError) as e:
        _fail(str(e))
    deadline = time.monotonic() + 60
    while pid and os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.05)


@click.command("rpull")
@click.argument("image")
@click.option("--address", "-a", envvar="CONTAINERD_ADDRESS",
              default="/run/containerd/containerd.sock", show_default=True,
              help="containerd's gRPC socket. Env: CONTAINERD_ADDRESS.")
@click.option("--namespace", "-n", envvar="CONTAINERD_NAMESPACE", default="default",
              show_default=True, help="containerd namespace. Env: CONTAINERD_NAMESPACE.")
@click.option("--snapshotter", default="soci", show_default=True,
              help="The name the snapshotter has in containerd's config "
                   "([proxy_plugins.NAME]).")
@click.option("-p", "--platform", help="Platform (os/arch[/variant]). Default: the host's.")
@click.option("--soci-index-digest", metavar="DIGEST",
              help="Mount with this SOCI index instead of the one the snapshotter finds.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the image name.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@registry_flags
def rpull_command(image: str, address: str, namespace: str, snapshotter: str,
                  platform: str | None, soci_index_digest: str | None, quiet: bool,
                  as_json: bool, **kw: Any) -> None:
    """Pull a registry IMAGE into containerd so that its layers are mounted lazily.

    Each layer's Prepare carries the target-layer labels (as the CRI plugin sends them), so
    `soci-native snapshotter`, registered in containerd as SNAPSHOTTER, mounts every layer
    with a zTOC lazily: containerd's content store gets the image's manifest and config but
    never those layers. Layers without a zTOC (and every layer, through any other
    snapshotter) are fetched, verified and unpacked by containerd as in `ctr images pull`.
    Then `ctr run --snapshotter SNAPSHOTTER IMAGE ID CMD...` starts a container.

    The registry flags apply to this command's own requests; the snapshotter fetches the
    index and the lazy spans with its own settings ([registry] in its config).
    """
    from soci_native.images import ImageError, open_image
    from soci_native.oci import Platform
    from soci_native.registry import RegistrySource
    from soci_native.snapshotter.containerd import Containerd, ContainerdError
    from soci_native.snapshotter.rpull import Puller, RpullError

    opts = registry_options(kw)
    if not os.path.exists(address):
        _fail(f"no containerd socket at {address} (--address, CONTAINERD_ADDRESS)")
    plat = None
    say = (lambda m: None) if quiet or as_json else (lambda m: click.echo(m, err=True))
    try:
        if platform:
            plat = Platform.parse(platform)
        ref = image if image.startswith("docker://") else "docker://" + image
        with open_image(ref, registry=opts) as src, Containerd(address, namespace) as ctrd:
            if not isinstance(src, RegistrySource):
                _fail(f"{image} is not a registry image (HOST/REPO[:TAG])")
            res = Puller(ctrd, src, snapshotter, plat, soci_index_digest or "", say).pull()
    except (ImageError, ContainerdError, RpullError, ValueError, OSError) as e:
        _fail(str(e) or type(e).__name__)
        return
    if as_json:
        click.echo(json.dumps(res.to_json(), indent=2))
    elif quiet:
        click.echo(res.image)
    else:
        click.echo(f"{res.image}: {res.manifest}: {res.count('lazy')} of {len(res.layers)} "
                   f"layers lazy ({snapshotter}), {res.count('unpacked')} unpacked, "
                   f"{res.count('present')} already present")
