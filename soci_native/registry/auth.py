"""Authentication: Basic, and Bearer tokens from the ``WWW-Authenticate`` challenge, cached
per scope."""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlencode

if TYPE_CHECKING:
    from soci_native.registry.transport import Transport
from soci_native.registry.credentials import (
    Credentials,
    auth_file_paths,
    find_credentials,
)
from soci_native.registry.errors import (
    AuthError,
    RegistryError,
)
from soci_native.registry.http import (
    _discard,
    _read_capped,
)


def _parse_challenge(value: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="…",service="…"`` → ("bearer", {realm, service}). Only the first
    challenge of the header is used."""
    m = re.match(r"\s*([A-Za-z][A-Za-z0-9_-]*)\s*", value)
    if m is None:
        return "", {}
    scheme = m.group(1).lower()
    params: dict[str, str] = {}
    pos = m.end()
    pat = re.compile(r'\s*([A-Za-z0-9_.-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]*))\s*,?')
    while pos < len(value):
        pm = pat.match(value, pos)
        if pm is None or pm.end() == pos:
            break
        raw = pm.group(2)
        params[pm.group(1).lower()] = re.sub(r"\\(.)", r"\1", raw) if raw is not None \
            else pm.group(3)
        pos = pm.end()
    return scheme, params



# ---- auth ------------------------------------------------------------------------------------

@dataclass
class _Token:
    value: str
    expires: float


class _Auth:
    """Per-host authentication state: the scheme the registry asked for, credentials, and
    bearer tokens cached by scope."""

    def __init__(self, client: Transport) -> None:
        self.client = client
        self.scheme: str | None = None
        self.params: dict[str, str] = {}
        self.tokens: dict[tuple[str, ...], _Token] = {}
        self.lock = threading.Lock()
        self._creds: Credentials | None = None
        self._creds_notes: list[str] = []
        self._creds_done = False

    def credentials(self) -> Credentials | None:
        if not self._creds_done:
            opts = self.client.options
            if opts.creds is not None:
                user, sep, pw = opts.creds.partition(":")
                if not sep or not user:
                    raise AuthError("invalid credentials: expected 'user:password'")
                self._creds = Credentials(user, pw, "creds option")
            else:
                self._creds, self._creds_notes = find_credentials(
                    self.client.host, self.client.credential_scope,
                    auth_file_paths(opts.auth_file))
            self._creds_done = True
        return self._creds

    def _no_creds_hint(self) -> str:
        files = ", ".join(auth_file_paths(self.client.options.auth_file))
        notes = "".join(f"; {n}" for n in self._creds_notes)
        return (f"no credentials found for {self.client.host}: pass --creds USER[:PASS] or "
                f"log in with `podman login` / `docker login` (looked in {files}, and their "
                f"credential helpers){notes}")

    def _basic(self) -> str:
        c = self.credentials()
        assert c is not None
        return "Basic " + base64.b64encode(f"{c.username}:{c.password}".encode()).decode()

    def header(self, scopes: tuple[str, ...]) -> str | None:
        if self.scheme == "basic":
            return self._basic()
        if self.scheme == "bearer":
            return "Bearer " + self.token(scopes)
        return None

    def token(self, scopes: tuple[str, ...], force: bool = False) -> str:
        key = tuple(sorted(set(scopes)))
        with self.lock:
            tok = self.tokens.get(key)
            if tok is not None and not force and tok.expires > time.monotonic():
                return tok.value
            tok = self._fetch_token(key)
            self.tokens[key] = tok
            return tok.value

    def _fetch_token(self, scopes: tuple[str, ...]) -> _Token:
        realm = self.params.get("realm")
        if not realm:
            raise AuthError(f"{self.client.host} asked for a bearer token but gave no realm")
        # our scopes only: the challenge's "scope" names the request that got the 401
        want = list(scopes)
        q: list[tuple[str, str]] = []
        if self.params.get("service"):
            q.append(("service", self.params["service"]))
        q += [("scope", s) for s in want]
        url = realm + ("&" if "?" in realm else "?") + urlencode(q)
        headers = {}
        creds = self.credentials()
        if creds is not None:
            headers["Authorization"] = "Basic " + base64.b64encode(
                f"{creds.username}:{creds.password}".encode()).decode()
        who = f"user {creds.username!r} (from {creds.source})" if creds else "anonymous access"
        try:
            resp = self.client._request("GET", url, headers=headers, auth=False,
                                        ok=(200,), stream=True)
        except RegistryError as e:
            if e.status in (401, 403):
                hint = "" if creds else f"; {self._no_creds_hint()}"
                raise AuthError(f"token server refused {who} for {self.client.host} "
                                f"(scope {' '.join(want)}): {e}{hint}", url=e.url,
                                status=e.status) from None
            raise
        try:
            body = _read_capped(resp, 1 << 20)
        finally:
            _discard(resp)
        try:
            doc = json.loads(body)
            value = doc.get("token") or doc.get("access_token")
            expires_in = doc.get("expires_in", 60)
        except (ValueError, AttributeError):
            value, expires_in = None, 0
        if not isinstance(value, str) or not value:
            raise AuthError(f"token server {realm} returned no token", url=url)
        if not isinstance(expires_in, (int, float)) or expires_in < 60:
            expires_in = 60
        # renew a little early, as Docker does
        return _Token(value, time.monotonic() + max(1.0, float(expires_in) - 10))

    def challenge(self, value: str | None, scopes: tuple[str, ...], method: str,
                  url: str) -> None:
        """A 401 from the registry: take up the scheme it asks for (raises AuthError when
        there is nothing to try)."""
        scheme, params = _parse_challenge(value or "")
        if scheme == "basic":
            if self.credentials() is None:
                raise AuthError(f"{method} {url}: HTTP 401: authentication required; "
                                f"{self._no_creds_hint()}", url=url, status=401)
            with self.lock:
                self.scheme, self.params = "basic", params
            return
        if scheme == "bearer":
            with self.lock:
                self.scheme, self.params = "bearer", params
            self.token(scopes, force=True)
            return
        raise AuthError(f"{method} {url}: HTTP 401 with an unsupported authentication challenge "
                        f"{value!r} (Basic and Bearer are supported)", url=url, status=401)

    def describe(self) -> str:
        c = self._creds
        if self.scheme is None:
            return "anonymously"
        if c is None:
            return f"anonymously ({self.scheme})"
        return f"as {c.username!r} ({self.scheme}, credentials from {c.source})"
