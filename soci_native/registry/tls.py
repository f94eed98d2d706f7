"""TLS for registries: which CAs and client certificates a host gets, as containers and
Docker find them.

For ``host[:port]``: ``--cert-dir DIR`` if given, else the first of
``$XDG_CONFIG_HOME/containers/certs.d/HOST`` (``~/.config/...``), ``/etc/containers/certs.d/HOST``
and ``/etc/docker/certs.d/HOST`` that exists. In that directory every ``*.crt`` is a CA
certificate trusted in addition to the system's (which ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``
replace, as for every OpenSSL program), and each ``NAME.cert`` with a ``NAME.key`` is a client
certificate.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from soci_native.registry.errors import TLSError


def certs_d_roots() -> list[Path]:
    """The ``certs.d`` directories searched (per host), in order."""
    xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return [Path(xdg) / "containers" / "certs.d", Path("/etc/containers/certs.d"),
            Path("/etc/docker/certs.d")]


@dataclass(frozen=True)
class HostCerts:
    directory: Path | None
    cas: tuple[Path, ...]
    client: tuple[tuple[Path, Path], ...]  # (certificate, key)


def host_certs(host: str, cert_dir: str | None = None,
               roots: list[Path] | None = None) -> HostCerts:
    """The CA and client certificates for ``host`` (see the module's doc)."""
    d: Path | None
    if cert_dir is not None:
        d = Path(cert_dir)
        if not d.is_dir():
            raise TLSError(f"--cert-dir {cert_dir}: not a directory")
    else:
        d = next((r / host for r in (roots if roots is not None else certs_d_roots())
                  if (r / host).is_dir()), None)
    if d is None:
        return HostCerts(None, (), ())
    files = sorted(p for p in d.iterdir() if p.is_file())
    cas = tuple(p for p in files if p.suffix == ".crt")
    client = []
    for cert in (p for p in files if p.suffix == ".cert"):
        key = cert.with_suffix(".key")
        if not key.is_file():
            raise TLSError(f"{cert}: client certificate without its key {key.name}")
        client.append((cert, key))
    for key in (p for p in files if p.suffix == ".key"):
        if not key.with_suffix(".cert").is_file():
            raise TLSError(f"{key}: key without its client certificate "
                           f"{key.with_suffix('.cert').name}")
    return HostCerts(d, cas, tuple(client))


def ssl_context(host: str, *, insecure: bool = False, ca_file: str | None = None,
                cert_dir: str | None = None, roots: list[Path] | None = None
                ) -> ssl.SSLContext:
    """The TLS context for ``host``: the system's CAs (or ``ca_file``'s) plus the host's
    certificate directory; no verification with ``insecure``."""
    ctx = ssl.create_default_context(cafile=ca_file)
    certs = host_certs(host, cert_dir, roots)
    try:
        for ca in certs.cas:
            ctx.load_verify_locations(cafile=str(ca))
        for cert, key in certs.client:
            ctx.load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, OSError) as e:
        raise TLSError(f"certificates in {certs.directory}: {e}") from None
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
