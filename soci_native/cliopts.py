"""Command-line options shared by commands in different modules (cli, mount)."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from soci_native.registry import RegistryOptions

F = TypeVar("F", bound=Callable[..., Any])

_SIZE_RE = re.compile(r"(\d+)\s*([kmgt]?)(i?b?)", re.I)


class ByteSize(click.ParamType):
    """An integer byte count with an optional binary suffix: 1073741824, 512K, 4M, 1GiB."""

    name = "bytes"

    def __init__(self, min: int = 0) -> None:
        self.min = min

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> int:
        if isinstance(value, int):
            n = value
        else:
            m = _SIZE_RE.fullmatch(str(value).strip())
            if m is None:
                self.fail(f"{value!r} is not a size (e.g. 1048576, 512K, 4M, 1GiB)", param, ctx)
            n = int(m.group(1)) << (10 * " kmgt".index(m.group(2).lower() or " "))
        if n < self.min:
            self.fail(f"{value!r} is less than {self.min}", param, ctx)
        return n


def add_root_option(cmd: click.Command) -> click.Command:
    """Lets ``--root`` come after the subcommand too (``soci-native index list --root R``),
    as upstream's global flags do; it overrides one given before. A command with a
    ``--root`` of its own (``snapshotter``: its state directory) keeps that."""
    if not any(p.name == "root_after" or "--root" in getattr(p, "opts", ())
               for p in cmd.params):
        def set_root(ctx: click.Context, _p: click.Parameter, value: str | None) -> None:
            if value is not None:
                ctx.ensure_object(dict)["root"] = value
                root = ctx.find_root()
                if isinstance(root.obj, dict):
                    root.obj["root"] = value

        cmd.params.append(click.Option(["--root", "root_after"], expose_value=False,
                                       callback=set_root, type=click.Path(file_okay=False),
                                       help="The local store (as before the subcommand)."))
    return cmd


class RootGroup(click.Group):
    """A group whose commands all take ``--root`` (see add_root_option). Commands added with
    :meth:`add_lazy` are imported when first asked for, so that a `create` does not pay the
    imports of the mount and snapshotter commands at every start."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy: dict[str, tuple[str, str]] = {}

    def add_lazy(self, name: str, module: str, attr: str) -> None:
        self.lazy[name] = (module, attr)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is None and cmd_name in self.lazy:
            module, attr = self.lazy[cmd_name]
            cmd = getattr(importlib.import_module(module), attr)
            assert isinstance(cmd, click.Command)
            self.add_command(cmd, cmd_name)
        return add_root_option(cmd) if cmd is not None else None


def registry_flags(f: F) -> F:
    opts = [
        click.option("--plain-http", is_flag=True, default=None,
                     help="Talk plain HTTP, not HTTPS. Default: HTTPS; for localhost and "
                          "127.0.0.1 plain HTTP when the registry does not speak TLS."),
        click.option("--cert-dir", type=click.Path(file_okay=False, exists=True),
                     help="CA certificates (*.crt) and client certificates (NAME.cert + "
                          "NAME.key) for the registry. Default: certs.d/HOST[:PORT] under "
                          "~/.config/containers, /etc/containers or /etc/docker; "
                          "SSL_CERT_FILE replaces the system's CAs."),
        click.option("--tls-verify/--no-tls-verify", "tls_verify", default=True,
                     help="Verify registry TLS certificates (default: on)."),
        click.option("-k", "--insecure", "--skip-verify", "insecure", is_flag=True,
                     help="Same as --no-tls-verify (--skip-verify: upstream's name)."),
        click.option("-u", "--creds", "--user", "creds", metavar="USER[:PASS]",
                     help="Registry credentials; with USER alone the password is asked on "
                          "the terminal (or read with --password-stdin). Default: the "
                          "Docker/Podman auth files and their credential helpers. --user is "
                          "upstream's name."),
        click.option("--password-stdin", is_flag=True,
                     help="Read the password for --creds USER from standard input."),
        click.option("--authfile", type=click.Path(dir_okay=False),
                     help="An auth.json / config.json to take credentials from. "
                          "Env: REGISTRY_AUTH_FILE."),
        click.option("--retries", type=click.IntRange(min=1), default=6, show_default=True,
                     help="Tries per registry request (connection errors, 429, 5xx), with "
                          "capped exponential backoff."),
        click.option("--timeout", "registry_timeout", type=click.FloatRange(min=0.1),
                     default=120.0, show_default=True, metavar="SECONDS",
                     help="Most seconds one registry request may take, retries and the "
                          "body included (a blob stream: each MiB of it). A mount answers "
                          "EIO once a span fetch passes it."),
        click.option("--connect-timeout", type=click.FloatRange(min=0.1), default=10.0,
                     show_default=True, metavar="SECONDS",
                     help="Seconds to open a connection to a registry (TCP and TLS)."),
        click.option("--read-timeout", type=click.FloatRange(min=0.1), default=30.0,
                     show_default=True, metavar="SECONDS",
                     help="Seconds a registry may send nothing before the try is given up."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def resolve_creds(kw: dict[str, Any]) -> str | None:
    """``--creds`` as USER:PASS: the password of a bare USER read from standard input
    (``--password-stdin``) or asked on the terminal. Sets ``kw["creds"]`` to it."""
    import sys

    creds, from_stdin = kw.get("creds"), kw.pop("password_stdin", False)
    if from_stdin and (not creds or ":" in creds):
        raise click.UsageError("--password-stdin needs --creds USER (the user name alone)")
    if creds and ":" not in creds:
        if from_stdin:
            password = sys.stdin.read().rstrip("\r\n")
        elif sys.stdin.isatty():
            password = click.prompt(f"Password for {creds}", hide_input=True, err=True)
        else:
            raise click.UsageError(f"--creds {creds}: no terminal to ask the password on; "
                                   "pass --creds USER:PASS or --password-stdin")
        if not password:
            raise click.UsageError(f"--creds {creds}: empty password")
        kw["creds"] = creds = f"{creds}:{password}"
    return creds


def registry_options(kw: dict[str, Any]) -> RegistryOptions:
    """Takes the registry flags out of a command's keyword arguments."""
    from soci_native.registry import RegistryOptions

    creds = resolve_creds(kw)
    kw.pop("creds", None)
    return RegistryOptions(plain_http=kw.pop("plain_http", None) or None,
                           insecure=kw.pop("insecure", False) or not kw.pop("tls_verify", True),
                           cert_dir=kw.pop("cert_dir", None),
                           creds=creds, auth_file=kw.pop("authfile", None),
                           max_attempts=kw.pop("retries", 6),
                           timeout=kw.pop("registry_timeout", 120.0),
                           connect_timeout=kw.pop("connect_timeout", 10.0),
                           read_timeout=kw.pop("read_timeout", 30.0))
