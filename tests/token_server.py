"""A minimal bearer-token server for the registry token auth flow (distribution token spec).

``GET /token?service=S&scope=repository:NAME:pull,push`` (several ``scope`` parameters, or
space-separated scopes, are allowed) with HTTP basic credentials answers::

    {"token": JWT, "access_token": JWT, "expires_in": 300, "issued_at": "...Z"}

granting the requested actions that the user's ACL allows (possibly none).  Wrong
credentials get 401; anonymous requests are allowed only if ``anonymous`` is configured.
``POST /token`` with an OAuth2 ``grant_type=password`` form is answered the same way.

The JWT is accepted by distribution 2.8 (``docker-registry``) configured with
``auth: token: {realm, service, issuer, rootcertbundle}``; write the bundle and get that
config with :meth:`TokenServer.registry_auth_config`.  Tokens are signed (ES256 by default,
RS256 with ``key_type="rsa"``) by a self-signed root whose certificate is the bundle, and
name their key one of two ways (``header_mode``, changeable at run time):

* ``"kid"``: the libtrust fingerprint of the root key (distribution looks it up among the
  public keys of the bundle's certificates);
* ``"x5c"``: a leaf key and certificate issued by the root, sent in the ``x5c`` header
  (distribution verifies the chain up to the bundle).

Every request is recorded in :attr:`TokenServer.requests` for assertions.
"""

from __future__ import annotations

import base64
import datetime as dt
import fnmatch
import hashlib
import json
import os
import secrets
import socket
import socketserver
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

__all__ = ["TokenRequest", "TokenServer", "libtrust_key_id", "parse_scope"]

ALL_ACTIONS = ("pull", "push", "delete", "*")
Acl = Mapping[str, Iterable[str]]  # repository-name glob -> allowed actions


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def libtrust_key_id(public_key: Any) -> str:
    """The libtrust fingerprint distribution uses as ``kid``: SHA-256 of the DER
    SubjectPublicKeyInfo, first 240 bits, base32 (no padding), 4-char groups joined by ':'."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    b32 = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode("ascii").rstrip("=")
    return ":".join(b32[i : i + 4] for i in range(0, len(b32), 4))


def parse_scope(scope: str) -> tuple[str, str, list[str]] | None:
    """``"repository:a/b:pull,push"`` -> ``("repository", "a/b", ["pull", "push"])``.

    The name may itself contain ':' (e.g. a registry host:port); the type may carry a
    class (``repository(plugin)``).  Returns None if malformed."""
    head, sep, actions = scope.rpartition(":")
    if not sep:
        return None
    rtype, sep, name = head.partition(":")
    if not sep or not rtype or not name:
        return None
    return rtype, name, [a for a in actions.split(",") if a]


@dataclass
class TokenRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    user: str | None  # None = anonymous (or credentials that did not parse)
    service: str | None
    scopes: list[str]  # as requested
    status: int = 0
    granted: list[dict[str, Any]] = field(default_factory=list)  # the token's "access"
    claims: dict[str, Any] | None = None


class _Server(socketserver.ThreadingMixIn, HTTPServer):
    daemon_threads = True
    block_on_close = True  # server_close() joins the (short-lived) request threads
    allow_reuse_address = True
    token_server: TokenServer

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # skip HTTPServer's getfqdn()
        self.server_name, self.server_port = self.server_address[:2]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10.0
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.token_server._lock:
            self.server.token_server._socks.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server.token_server._lock:
                self.server.token_server._socks.discard(self.connection)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:
        self._token(self.command, parse_qs(urlsplit(self.path).query))

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > 1 << 20:
            self._send(413, {"error": "request too large"})
            return
        form = parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
        query = parse_qs(urlsplit(self.path).query)
        for k, v in query.items():
            form.setdefault(k, v)
        self._token(self.command, form)

    def _token(self, method: str, params: dict[str, list[str]]) -> None:
        ts = self.server.token_server
        path = urlsplit(self.path).path
        if path != ts.path:
            self._send(404, {"error": "not found"})
            return
        scopes = [s for value in params.get("scope", []) for s in value.split(" ") if s]
        service = (params.get("service") or [None])[0]
        user, password = self._credentials(method, params)
        record = TokenRequest(
            method=method,
            path=path,
            query=params,
            user=user,
            service=service,
            scopes=scopes,
        )
        headers: dict[str, str] = {}
        acl = ts._authenticate(user, password)
        if method == "POST" and (params.get("grant_type") or [""])[0] != "password":
            code, body = 400, {"error": "unsupported_grant_type"}
        elif service is not None and service != ts.service:
            code, body = 400, {"error": "invalid_request", "detail": "unknown service"}
        elif acl is None:
            code = 401
            body = {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}
            headers["WWW-Authenticate"] = f'Basic realm="{ts.realm_name}"'
        else:
            access = ts._grant(acl, scopes)
            token, claims = ts.issue(user or "", access)
            record.granted, record.claims = access, claims
            issued = dt.datetime.fromtimestamp(claims["iat"], dt.timezone.utc)
            code, body = (
                200,
                {
                    "token": token,
                    "access_token": token,
                    "expires_in": ts.expires_in,
                    "issued_at": issued.strftime("%Y-%m-%dT%H:%M:%SZ"),
                },
            )
        record.status = code
        ts._record(record)  # before answering: a client that has the answer sees the record
        self._send(code, body, headers)

    def _credentials(
        self, method: str, params: dict[str, list[str]]
    ) -> tuple[str | None, str | None]:
        if method == "POST" and "username" in params:
            return params["username"][0], (params.get("password") or [""])[0]
        auth = self.headers.get("Authorization") or ""
        scheme, _, value = auth.partition(" ")
        if scheme.lower() != "basic":
            return None, None
        try:
            user, _, password = base64.b64decode(value.strip()).decode("utf-8").partition(":")
        except ValueError:
            return "", ""  # unparsable credentials: a failed login, not anonymous
        return user, password

    def _send(self, code: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)


class TokenServer:
    """Token server on 127.0.0.1 (free port).

    ``users``: user -> password.  ``acl``: user -> {repository glob: actions}; a user
    missing from ``acl`` (or ``acl=None``) may do every action on every repository.
    ``anonymous``: None (anonymous token requests get 401) or an ACL for them.
    """

    def __init__(
        self,
        users: Mapping[str, str] | None = None,
        *,
        acl: Mapping[str, Acl] | None = None,
        anonymous: Acl | None = None,
        service: str = "soci-test-registry",
        issuer: str = "soci-test-token-issuer",
        key_type: str = "ec",
        header_mode: str = "kid",
        expires_in: int = 300,
        path: str = "/token",
        host: str = "127.0.0.1",
    ) -> None:
        if key_type not in ("ec", "rsa"):
            raise ValueError("key_type must be 'ec' or 'rsa'")
        self.users = dict(users or {})
        self.acl = {u: dict(a) for u, a in (acl or {}).items()}
        self.anonymous = dict(anonymous) if anonymous is not None else None
        self.service = service
        self.issuer = issuer
        self.key_type = key_type
        self.header_mode = header_mode
        self.expires_in = expires_in
        self.path = path
        self.realm_name = "soci-test-token"
        self._lock = threading.Lock()
        self._requests: list[TokenRequest] = []
        self._socks: set[socket.socket] = set()

        self.root_key = self._new_key()
        self.root_cert = self._make_cert(self.root_key, "soci test token root", None, ca=True)
        self.leaf_key = self._new_key()
        self.leaf_cert = self._make_cert(
            self.leaf_key, "soci test token signer", (self.root_key, self.root_cert), ca=False
        )

        self._server = _Server((host, 0), _Handler)
        self._server.token_server = self
        self.host, self.port = self._server.server_address[:2]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="token-server",
            daemon=True,
        )
        self._thread.start()

    # -- keys and certificates -----------------------------------------------------

    def _new_key(self) -> Any:
        if self.key_type == "ec":
            return ec.generate_private_key(ec.SECP256R1())
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    @staticmethod
    def _make_cert(key: Any, cn: str, issuer: tuple[Any, Any] | None, ca: bool) -> Any:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        signer_key, issuer_name = (key, name) if issuer is None else (issuer[0], issuer[1].subject)
        now = dt.datetime.now(dt.timezone.utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=ca,
                    crl_sign=ca,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        )
        return builder.sign(signer_key, hashes.SHA256())

    @property
    def key_id(self) -> str:
        """libtrust fingerprint of the root key (the ``kid`` of tokens in "kid" mode)."""
        return libtrust_key_id(self.root_key.public_key())

    def cert_bundle_pem(self) -> bytes:
        return self.root_cert.public_bytes(serialization.Encoding.PEM)

    def write_cert_bundle(self, path: str | os.PathLike[str]) -> str:
        """Write the root certificate (PEM) to ``path``; returns it as a str."""
        with open(path, "wb") as f:
            f.write(self.cert_bundle_pem())
        return os.fspath(path)

    def registry_auth_config(self, bundle_path: str | os.PathLike[str]) -> dict[str, Any]:
        """Write the cert bundle to ``bundle_path`` and return the registry's ``auth``
        section: ``{"token": {"realm", "service", "issuer", "rootcertbundle"}}`` (JSON is
        valid YAML, so ``json.dumps`` of a whole config dict is a valid config.yml)."""
        path = self.write_cert_bundle(bundle_path)
        return {
            "token": {
                "realm": self.realm,
                "service": self.service,
                "issuer": self.issuer,
                "rootcertbundle": os.path.abspath(path),
            }
        }

    # -- tokens --------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def realm(self) -> str:
        return f"{self.url}{self.path}"

    def issue(
        self,
        subject: str,
        access: list[dict[str, Any]],
        *,
        expires_in: int | None = None,
        audience: str | list[str] | None = None,
        issuer: str | None = None,
        not_before: int | None = None,
        header_mode: str | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """Sign a token (also usable directly by tests, e.g. to forge expired or
        wrong-audience tokens).  Returns ``(jwt, claims)``."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": issuer if issuer is not None else self.issuer,
            "sub": subject,
            "aud": audience if audience is not None else self.service,
            "exp": now + (self.expires_in if expires_in is None else expires_in),
            "nbf": now if not_before is None else not_before,
            "iat": now,
            "jti": secrets.token_hex(16),
            "access": access,
        }
        mode = header_mode or self.header_mode
        if mode == "kid":
            key = self.root_key
            header: dict[str, Any] = {"typ": "JWT", "kid": self.key_id}
        elif mode == "x5c":
            key = self.leaf_key
            chain = [self.leaf_cert, self.root_cert]
            header = {
                "typ": "JWT",
                "x5c": [
                    base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode()
                    for c in chain
                ],
            }
        else:
            raise ValueError(f"unknown header_mode {mode!r}")
        header["alg"] = "ES256" if self.key_type == "ec" else "RS256"
        signing_input = (
            _b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + _b64url(json.dumps(claims, separators=(",", ":")).encode())
        ).encode("ascii")
        if self.key_type == "ec":
            der = key.sign(signing_input, ec.ECDSA(hashes.SHA256()))
            r, s = decode_dss_signature(der)
            sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")  # JWS: raw R || S
        else:
            sig = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        return signing_input.decode("ascii") + "." + _b64url(sig), claims

    def _authenticate(self, user: str | None, password: str | None) -> Acl | None:
        """The caller's ACL, or None if the request must be refused (401)."""
        if user is None:
            return self.anonymous
        expected = self.users.get(user)
        if expected is None or not secrets.compare_digest(
            expected.encode(), (password or "").encode()
        ):
            return None
        return self.acl.get(user, {"*": ALL_ACTIONS})

    @staticmethod
    def _grant(acl: Acl, scopes: list[str]) -> list[dict[str, Any]]:
        access: list[dict[str, Any]] = []
        for scope in scopes:
            parsed = parse_scope(scope)
            if parsed is None:
                continue
            rtype, name, actions = parsed
            if rtype != "repository":
                continue
            allowed: set[str] = set()
            for pattern, acts in acl.items():
                if fnmatch.fnmatchcase(name, pattern):
                    allowed.update(acts)
            granted = [a for a in actions if a in allowed or "*" in allowed]
            if granted:
                access.append({"type": rtype, "name": name, "actions": granted})
        return access

    # -- records -------------------------------------------------------------------

    def _record(self, record: TokenRequest) -> None:
        with self._lock:
            self._requests.append(record)

    @property
    def requests(self) -> list[TokenRequest]:
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    # -- lifetime ------------------------------------------------------------------

    def close(self, timeout: float = 10.0) -> None:
        if not self._thread.is_alive():
            return
        self._server.shutdown()
        with self._lock:
            socks = list(self._socks)
        for sock in socks:  # wake handlers waiting on idle keep-alive connections
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._server.server_close()  # joins the request threads
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError("token server thread still running after close")

    def __enter__(self) -> TokenServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
