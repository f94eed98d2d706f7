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
import threading
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


_CONTEXTS: dict[tuple[object, ...], ssl.SSLContext] = {}
_CONTEXTS_LOCK = threading.Lock()
MAX_CONTEXTS = 32


def _signature(paths: list[Path]) -> tuple[tuple[str, int, int], ...]:
    """Each file's (path, mtime, size): a certificate replaced on disk makes a new key."""
    out = []
    for p in paths:
        try:
            st = p.stat()
            out.append((str(p), st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((str(p), -1, -1))
    return tuple(out)


def ssl_context(host: str, *, insecure: bool = False, ca_file: str | None = None,
                cert_dir: str | None = None, roots: list[Path] | None = None
                ) -> ssl.SSLContext:
    """The TLS context for ``host``: the system's CAs (or ``ca_file``'s) plus the host's
    certificate directory; no verification with ``insecure``.

    Made once per process for the same settings and certificate files (loading the system's
    CAs costs ~45 ms of CPU, and every registry client asked for one: a lazy container
    start opened four or five, one per layer mount). Every client built with the same key
    configures the shared context the same way, so sharing it changes nothing they see."""
    certs = host_certs(host, cert_dir, roots)
    files = [*certs.cas, *(p for pair in certs.client for p in pair)]
    if ca_file:
        files.append(Path(ca_file))
    key = (insecure, ca_file, str(certs.directory), _signature(files),
           os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
    with _CONTEXTS_LOCK:
        ctx = _CONTEXTS.get(key)
    if ctx is None:
        ctx = _new_context(certs, insecure, ca_file)
        with _CONTEXTS_LOCK:
            if len(_CONTEXTS) >= MAX_CONTEXTS:
                _CONTEXTS.clear()
            ctx = _CONTEXTS.setdefault(key, ctx)
    return ctx


def _new_context(certs: HostCerts, insecure: bool, ca_file: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca_file)
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
