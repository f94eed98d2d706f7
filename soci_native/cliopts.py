"""Command-line options shared by commands in different modules (cli, mount)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from soci_native.registry import RegistryOptions

F = TypeVar("F", bound=Callable[..., Any])


def registry_flags(f: F) -> F:
    opts = [
        click.option("--plain-http", is_flag=True, default=None,
                     help="Talk HTTP, not HTTPS (the default for localhost/127.0.0.1)."),
        click.option("--tls-verify/--no-tls-verify", "tls_verify", default=True,
                     help="Verify registry TLS certificates (default: on)."),
        click.option("-k", "--insecure", is_flag=True, help="Same as --no-tls-verify."),
        click.option("-u", "--creds", metavar="USER:PASS",
                     help="Registry credentials (default: the Docker/Podman auth files)."),
        click.option("--authfile", type=click.Path(dir_okay=False),
                     help="An auth.json / config.json to take credentials from. "
                          "Env: REGISTRY_AUTH_FILE."),
        click.option("--retries", type=click.IntRange(min=1), default=6, show_default=True,
                     help="Tries per registry request (connection errors, 429, 5xx), with "
                          "capped exponential backoff."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def registry_options(kw: dict[str, Any]) -> RegistryOptions:
    """Takes the registry flags out of a command's keyword arguments."""
    from soci_native.registry import RegistryOptions

    return RegistryOptions(plain_http=kw.pop("plain_http", None) or None,
                           insecure=kw.pop("insecure", False) or not kw.pop("tls_verify", True),
                           creds=kw.pop("creds", None), auth_file=kw.pop("authfile", None),
                           max_attempts=kw.pop("retries", 6))
