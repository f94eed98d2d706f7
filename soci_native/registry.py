"""A client for the OCI distribution API (registry v2), and a registry :class:`ImageSource`.

:class:`RegistryClient` talks to one registry host over urllib3 (a bounded pool of reused
connections per host; HTTPS with certificate verification unless ``insecure``; plain HTTP
with ``plain_http``, and by default for loopback hosts):

* auth: anonymous, Basic, and Bearer tokens from the ``WWW-Authenticate`` challenge (cached
  per scope; a 401 fetches a token and retries once). Credentials come from ``creds`` or the
  Docker/Podman auth files (:func:`find_credentials`); credential helpers are not supported;
* manifests: GET (by tag or digest, every byte verified), HEAD, PUT;
* blobs: a streaming reader that resumes an interrupted body with a Range request at the byte
  it stopped at and can verify the digest at the end (:class:`BlobReader`); single and
  multi-range reads (``multipart/byteranges``), falling back for good to single ranges when
  the registry refuses multi-range requests; HEAD; monolithic and chunked uploads, skipped
  when the registry already has the blob, cross-repository mounts;
* referrers: the OCI 1.1 API (404: unsupported) and the ``sha256-<hex>`` fallback tag;
* tags list.

Transient failures (connection errors, 429, 500, 502, 503, 504) are retried with capped
exponential backoff and full jitter (``Retry-After`` honoured), at most ``max_attempts``
tries and ``max_retry_time`` seconds per operation. Redirects are followed here; the
``Authorization`` header is only ever sent to the registry host itself. Errors are
:class:`RegistryError` subclasses (themselves :class:`ImageError`) naming the method, URL and
status.

:class:`RegistrySource` is the :class:`ImageSource` for ``docker://HOST/REPO[:TAG][@DIGEST]``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import email.utils
import functools
import hashlib
import heapq
import io
import json
import os
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, Concatenate, Literal, ParamSpec, TypeVar, cast
from urllib.parse import quote, urlencode, urljoin, urlsplit

import urllib3
import urllib3.connection
from urllib3.exceptions import HTTPError as _U3HTTPError
from urllib3.exceptions import InsecureRequestWarning
from urllib3.exceptions import SSLError as _U3SSLError

from soci_native.images import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    INDEX_TYPES,
    MANIFEST_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    DigestLike,
    ImageError,
    ImageSource,
    _digest_of,
    _structural_type,
    check_digest,
    go_json,
)
from soci_native.refs import DOCKER_HUB, InvalidReference, Reference, is_loopback

MANIFEST_ACCEPT = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST)
MAX_MANIFEST_SIZE = 4 << 20
# Lists read into memory (tags, referrers): per page, over all pages, and how many pages.
MAX_LIST_SIZE = 4 << 20
MAX_LIST_TOTAL = 16 << 20
MAX_LIST_PAGES = 256
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 10
_ERROR_BODY_MAX = 64 << 10
_CHUNK = 1 << 20  # the most one read of a body asks for
_SKIP_READ_MAX = 1 << 20  # forward seeks up to this far read through instead of re-requesting
_MAX_RANGES_PER_REQUEST = 64
_CONTENT_RANGE_RE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", re.I)
_USER_AGENT = "soci-native/0.1"


# ---- errors ----------------------------------------------------------------------------------

class RegistryError(ImageError):
    """A registry request that failed; ``url``, ``status`` (None for connection errors) and
    ``codes`` (the distribution error codes in the body) say which and how."""

    def __init__(self, message: str, *, url: str | None = None, status: int | None = None,
                 codes: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.url = url
        self.status = status
        self.codes = tuple(codes)


class AuthError(RegistryError):
    """Authentication failed or access was denied (401/403, token server refusals, missing
    credentials)."""


class NotFound(RegistryError):
    """404: no such repository, manifest, blob or upload."""


class DigestMismatch(RegistryError):
    """Downloaded content does not hash to the digest it was asked for (or announced)."""


class RangeNotSatisfiable(RegistryError):
    """416: the requested byte range is outside the blob."""


class SizeMismatch(RegistryError):
    """A blob's size is not the one its descriptor gives."""


class TransientError(RegistryError):
    """A connection error or 429/5xx that outlasted the retry budget."""


class TLSError(RegistryError):
    """The TLS handshake failed (certificate verification, protocol)."""


# ---- options ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class RegistryOptions:
    """How to reach a registry. ``plain_http`` None means: plain HTTP for loopback hosts
    (localhost, 127.0.0.0/8, ::1), HTTPS otherwise."""

    plain_http: bool | None = None
    insecure: bool = False          # HTTPS without certificate verification
    ca_file: str | None = None      # PEM CA bundle to verify with instead of the system's
    creds: str | None = None        # "user:password"; else the auth files are searched
    auth_file: str | None = None    # one auth.json / config.json to use instead of the search
    max_attempts: int = 6           # tries per request (and per stalled blob stream)
    timeout: float = 120.0          # seconds one operation may take, every try included
    backoff_base: float = 0.25      # first backoff ceiling, doubled each retry ...
    backoff_cap: float = 10.0       # ... up to this
    connect_timeout: float = 10.0   # to open a connection (TCP and TLS)
    read_timeout: float = 30.0      # with no byte received
    pool_size: int = 10             # connections kept per host
    user_agent: str = _USER_AGENT


# ---- credentials -----------------------------------------------------------------------------

def auth_file_paths(explicit: str | None = None) -> list[str]:
    """Where credentials are looked for, in order: ``$REGISTRY_AUTH_FILE``,
    ``$XDG_RUNTIME_DIR/containers/auth.json``, ``~/.config/containers/auth.json``,
    ``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``."""
    if explicit:
        return [explicit]
    out: list[str] = []
    env = os.environ
    if env.get("REGISTRY_AUTH_FILE"):
        out.append(env["REGISTRY_AUTH_FILE"])
    if env.get("XDG_RUNTIME_DIR"):
        out.append(os.path.join(env["XDG_RUNTIME_DIR"], "containers", "auth.json"))
    home = os.path.expanduser("~")
    out.append(os.path.join(home, ".config", "containers", "auth.json"))
    docker_dir = env.get("DOCKER_CONFIG") or os.path.join(home, ".docker")
    out.append(os.path.join(docker_dir, "config.json"))
    return out


def _auth_key(key: str) -> str:
    """An ``auths`` key as ``host[/path]``: scheme, ``/v1/``/``/v2/`` and slashes dropped,
    Docker Hub's aliases mapped to docker.io."""
    k = re.sub(r"^[a-z][a-z0-9+.-]*://", "", key.strip(), flags=re.I)
    host, _, path = k.partition("/")
    path = re.sub(r"^(v1|v2)(/|$)", "", path.strip("/")).strip("/")
    host = host.lower()
    if host in ("index.docker.io", "registry-1.docker.io"):
        host = DOCKER_HUB
    return f"{host}/{path}" if path else host


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str
    source: str  # "creds option" or the file it came from


def _decode_entry(entry: Any) -> tuple[str, str] | None:
    if not isinstance(entry, Mapping):
        return None
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            user, sep, pw = base64.b64decode(auth, validate=False).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return None
        return (user, pw) if sep else None
    name, secret = entry.get("username"), entry.get("password")
    if isinstance(name, str) and isinstance(secret, str) and name:
        return name, secret
    return None


def find_credentials(host: str, repository: str | None = None,
                     files: Iterable[str] | None = None) -> tuple[Credentials | None, list[str]]:
    """Credentials for ``host`` (and ``repository``: a ``host/namespace`` key matches it
    more specifically than ``host``) from the first auth file that has an entry. Returns
    (credentials or None, notes on what was found but cannot be used)."""
    want = _auth_key(host)
    candidates = [want]
    if repository:
        parts = repository.split("/")
        candidates = [f"{want}/{'/'.join(parts[:i])}" for i in range(len(parts), 0, -1)] + [want]
    notes: list[str] = []
    for path in list(files) if files is not None else auth_file_paths():
        try:
            with open(path, "rb") as f:
                doc = json.loads(f.read())
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as e:
            notes.append(f"{path}: unreadable ({e})")
            continue
        if not isinstance(doc, dict):
            continue
        auths = doc.get("auths")
        entries: dict[str, Any] = {}
        if isinstance(auths, dict):
            for k, v in auths.items():
                if isinstance(k, str):
                    entries.setdefault(_auth_key(k), v)
        for c in candidates:
            if c in entries:
                got = _decode_entry(entries[c])
                if got is not None:
                    return Credentials(got[0], got[1], path), notes
                if isinstance(entries[c], Mapping) and entries[c].get("identitytoken"):
                    notes.append(f"{path}: the entry for {c} holds an identity token, which is "
                                 "not supported")
                else:
                    notes.append(f"{path}: the entry for {c} has no usable auth or "
                                 "username/password")
        helpers = doc.get("credHelpers")
        if isinstance(helpers, dict) and any(
                isinstance(k, str) and _auth_key(k) == want for k in helpers):
            notes.append(f"{path}: {host} uses a credential helper (credHelpers), which is "
                         "not supported")
        elif doc.get("credsStore"):
            notes.append(f"{path}: credentials may be in the credential store "
                         f"{doc['credsStore']!r} (credsStore), which is not supported")
    return None, notes


# ---- small HTTP helpers ----------------------------------------------------------------------

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


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    v = value.strip()
    if v.isdigit():
        return float(v)
    try:
        when = email.utils.parsedate_to_datetime(v)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _content_range(value: str | None) -> tuple[int, int, int | None] | None:
    m = _CONTENT_RANGE_RE.fullmatch((value or "").strip())
    if m is None:
        return None
    total = None if m.group(3) == "*" else int(m.group(3))
    return int(m.group(1)), int(m.group(2)), total


def _next_link(value: str | None) -> str | None:
    for part in (value or "").split(","):
        m = re.match(r'\s*<([^>]*)>\s*;(.*)', part)
        if m and re.search(r'rel\s*=\s*"?next"?', m.group(2)):
            return m.group(1)
    return None


def _media_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip()


def _origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port): what must match before credentials go along. https://h and
    http://h on the same port are different origins (one is clear text)."""
    u = urlsplit(url)
    scheme = u.scheme.lower()
    try:
        port = u.port
    except ValueError:
        port = None
    return scheme, (u.hostname or "").lower(), port or (443 if scheme == "https" else 80)


def _hash_of(digest: str) -> Any:
    return hashlib.new(digest.split(":", 1)[0])


def _check_hash(h: Any, digest: str, what: str, url: str | None) -> None:
    got = f"{digest.split(':', 1)[0]}:{h.hexdigest()}"
    if got != digest:
        raise DigestMismatch(f"{what}: content hashes to {got}, expected {digest} (corrupt "
                             f"or tampered download from {url})", url=url)


def _read_capped(resp: urllib3.BaseHTTPResponse, limit: int) -> bytes:
    out = bytearray()
    while len(out) <= limit:
        chunk = resp.read(min(1 << 16, limit + 1 - len(out)))
        if not chunk:
            break
        out += chunk
    return bytes(out)


def _discard(resp: urllib3.BaseHTTPResponse) -> None:
    """Done with a response: reuse the connection if what is left is small, else close it."""
    try:
        left = getattr(resp, "length_remaining", None)
        if isinstance(left, int) and left <= _ERROR_BODY_MAX:
            resp.drain_conn()
        else:
            resp.close()
    finally:
        resp.release_conn()


def _quote_repo(repo: str) -> str:
    return quote(repo, safe="/")


class _Deadline:
    """The moment one operation (a request with its retries and the body it reads into
    memory, or one <= 1 MiB read of a blob stream) must be done by. While it is armed, the
    connection that serves it is noted here; past the moment the watchdog shuts that
    connection's socket down, which ends whatever read is blocked on it, even one that
    receives a byte now and then (a read timeout alone never ends a trickle)."""

    def __init__(self, at: float, seconds: float) -> None:
        self.at = at
        self.seconds = seconds
        self.fired = False
        self.done = False
        self.conn: Any = None
        self.lock = threading.Lock()

    def attach(self, conn: Any) -> None:
        with self.lock:
            self.conn = conn
            conn._soci_deadline = self

    def fire(self) -> None:
        with self.lock:
            if self.done:
                return
            self.fired = True
            conn = self.conn
            # only while the connection still serves this operation (not after it went back
            # to the pool and on to another)
            if conn is None or getattr(conn, "_soci_deadline", None) is not self:
                return
            sock = getattr(conn, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                # socket.socket's own shutdown, also for an SSLSocket: it wakes up a
                # blocked recv without touching the TLS state another thread is using
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def passed(self) -> bool:
        return self.fired or time.monotonic() >= self.at

    def error(self, what: str, url: str | None) -> TransientError:
        """``what``: "METHOD URL[: why]" (the why is only the cut connection)."""
        return TransientError(f"{what.split(': ', 1)[0]}: no complete answer within "
                              f"{self.seconds:g}s (--timeout)", url=url)


class _Watchdog:
    """One thread per client that fires deadlines (a heap, woken when an earlier one is
    armed). Started on first use; ended by :meth:`close`, which also fires every armed
    deadline so nothing keeps waiting on a registry after the client is closed."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._heap: list[tuple[float, int, _Deadline]] = []
        self._seq = 0
        self._thread: threading.Thread | None = None
        self._closed = False

    def arm(self, seconds: float) -> _Deadline:
        d = _Deadline(time.monotonic() + seconds, seconds)
        with self._cv:
            if self._closed:
                d.fired = True
                return d
            self._seq += 1
            heapq.heappush(self._heap, (d.at, self._seq, d))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="soci-registry-watchdog",
                                                daemon=True)
                self._thread.start()
            if self._heap[0][2] is d:
                self._cv.notify()
        return d

    @staticmethod
    def disarm(d: _Deadline) -> None:
        with d.lock:
            d.done = True
            if d.conn is not None and getattr(d.conn, "_soci_deadline", None) is d:
                d.conn._soci_deadline = None

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._closed and (not self._heap
                                            or self._heap[0][0] > time.monotonic()):
                    if self._heap and self._heap[0][2].done:
                        heapq.heappop(self._heap)
                        continue
                    self._cv.wait(None if not self._heap
                                  else self._heap[0][0] - time.monotonic())
                if self._closed:
                    due, self._heap = [d for _, _, d in self._heap], []
                else:
                    due = [heapq.heappop(self._heap)[2]]
            for d in due:
                d.fire()
            if self._closed:
                return

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
            t = self._thread
            armed = [d for _, _, d in self._heap]
        for d in armed:  # at once, not when the thread gets to it
            d.fire()
        if t is not None and t is not threading.current_thread():
            t.join(timeout=5)


_current = threading.local()  # the deadline of the operation this thread is in


def _active_deadline() -> _Deadline | None:
    return cast("_Deadline | None", getattr(_current, "deadline", None))


class _DeadlineHTTPConnection(urllib3.connection.HTTPConnection):
    """Notes itself on the calling thread's deadline before each request it sends."""

    def request(self, *args: Any, **kw: Any) -> None:
        d = _active_deadline()
        if d is not None:
            d.attach(self)
        super().request(*args, **kw)


class _DeadlineHTTPSConnection(urllib3.connection.HTTPSConnection):
    def request(self, *args: Any, **kw: Any) -> None:
        d = _active_deadline()
        if d is not None:
            d.attach(self)
        super().request(*args, **kw)


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _DeadlineHTTPConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _DeadlineHTTPSConnection


P = ParamSpec("P")
R = TypeVar("R")


def _within_deadline(f: Callable[Concatenate[RegistryClient, P], R]
                     ) -> Callable[Concatenate[RegistryClient, P], R]:
    """Runs a client method as one operation with a deadline (see :class:`_Deadline`)."""
    @functools.wraps(f)
    def run(self: RegistryClient, *args: P.args, **kw: P.kwargs) -> R:
        with self._operation():
            return f(self, *args, **kw)
    return run


class _Retry:
    """The retry budget of one operation: attempts, backoff with full jitter, and its
    deadline (the operation's own, or the one of the operation it is part of)."""

    def __init__(self, opts: RegistryOptions, sleep: Callable[[float], None]) -> None:
        self.opts = opts
        self.sleep = sleep
        self.failures = 0
        self.start = time.monotonic()
        d = _active_deadline()
        self.deadline = d.at if d is not None else self.start + opts.timeout

    def wait(self, what: str, retry_after: float | None = None, *, url: str | None = None,
             status: int | None = None) -> None:
        """Sleeps before the next try, or raises TransientError when the budget is spent."""
        self.failures += 1
        o = self.opts
        d = _active_deadline()
        if d is not None and d.fired:
            raise d.error(what, url)
        if self.failures >= o.max_attempts:
            raise TransientError(f"{what} (gave up after {self.failures} attempts)", url=url,
                                 status=status)
        if retry_after is not None:
            delay = retry_after
        else:
            delay = random.uniform(0, min(o.backoff_cap,
                                          o.backoff_base * (2 ** (self.failures - 1))))
        now = time.monotonic()
        if now + delay > self.deadline:
            raise TransientError(
                f"{what} (gave up after {self.failures} attempts in {now - self.start:.1f}s: "
                f"the next try would be in {delay:.1f}s, past the {o.timeout:g}s deadline, "
                "--timeout)", url=url, status=status)
        if delay > 0:
            self.sleep(delay)


Body = bytes | Callable[[], BinaryIO] | None


# ---- auth ------------------------------------------------------------------------------------

@dataclass
class _Token:
    value: str
    expires: float


class _Auth:
    """Per-host authentication state: the scheme the registry asked for, credentials, and
    bearer tokens cached by scope."""

    def __init__(self, client: RegistryClient) -> None:
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
        return (f"no credentials found for {self.client.host}: pass creds 'user:password' or "
                f"log in with `podman login` / `docker login` (looked in {files}; credential "
                f"helpers are not supported){notes}")

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


# ---- the client ------------------------------------------------------------------------------

@dataclass(frozen=True)
class PushResult:
    digest: str
    size: int
    status: Literal["exists", "mounted", "uploaded"]


class _BlobData:
    """What push_blob was given: bytes, a path or a seekable binary file."""

    def __init__(self, data: bytes | bytearray | memoryview | str | os.PathLike[str] | BinaryIO,
                 digest: str | None, size: int | None) -> None:
        self._bytes: bytes | None = None
        self._path: str | None = None
        self._file: BinaryIO | None = None
        if isinstance(data, (bytes, bytearray, memoryview)):
            self._bytes = bytes(data)
            n = len(self._bytes)
        elif isinstance(data, (str, os.PathLike)):
            self._path = os.fspath(data)
            n = os.path.getsize(self._path)
        else:
            self._file = data
            self._start = data.tell()
            n = data.seek(0, io.SEEK_END) - self._start
            data.seek(self._start)
        if size is not None and size != n:
            raise ImageError(f"blob size mismatch: told {size} bytes, the data has {n}")
        self.size = n
        if digest is None:
            h = hashlib.sha256()
            with self.open() as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            digest = "sha256:" + h.hexdigest()
        self.digest = check_digest(digest)

    def open(self) -> BinaryIO:
        if self._bytes is not None:
            return io.BytesIO(self._bytes)
        if self._path is not None:
            return open(self._path, "rb")
        assert self._file is not None
        self._file.seek(self._start)
        return cast(BinaryIO, _NoClose(self._file, self.size))


class _NoClose(io.RawIOBase):
    """A caller's file, read from where it is for ``limit`` bytes, never closed."""

    def __init__(self, f: BinaryIO, limit: int) -> None:
        super().__init__()
        self._f, self._left = f, limit

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")[: self._left]
        data = self._f.read(len(view))
        view[: len(data)] = data
        self._left -= len(data)
        return len(data)


class RegistryClient:
    """The distribution API of one registry host (``host[:port]``). Thread-safe."""

    def __init__(self, host: str, options: RegistryOptions | None = None, *,
                 credential_scope: str | None = None) -> None:
        self.host = host
        self.options = opts = options or RegistryOptions()
        plain = opts.plain_http if opts.plain_http is not None else is_loopback(host)
        self.scheme = "http" if plain else "https"
        self.base_url = f"{self.scheme}://{host}"
        self._origin = _origin(self.base_url)
        self.credential_scope = credential_scope  # repository used to pick auth.json entries
        kw: dict[str, Any] = {}
        if not plain:
            if opts.insecure:
                urllib3.disable_warnings(InsecureRequestWarning)
                kw.update(cert_reqs="CERT_NONE", assert_hostname=False)
            else:
                kw.update(cert_reqs="CERT_REQUIRED")
                if opts.ca_file:
                    kw.update(ca_certs=opts.ca_file)
        self._http = urllib3.PoolManager(
            num_pools=8, maxsize=max(1, opts.pool_size), block=False, retries=False,
            timeout=urllib3.Timeout(connect=opts.connect_timeout, read=opts.read_timeout), **kw)
        self._http.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}
        self._watchdog = _Watchdog()
        self._auth = _Auth(self)
        self._single_range = False
        self._blob_urls: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        self.sleep: Callable[[float], None] = time.sleep  # tests may replace it

    # -- lifecycle --

    def close(self) -> None:
        """Closes the connections; requests still running (other threads) end at once."""
        self._watchdog.close()
        self._http.clear()

    def shutdown(self) -> None:
        """Ends every request running now (in any thread) and refuses new ones, with
        TransientError; unlike :meth:`close` it may be called from any thread while others
        use the client (a mount being unmounted while a registry hangs)."""
        self._watchdog.close()

    @contextlib.contextmanager
    def _operation(self) -> Iterator[_Deadline]:
        """The deadline (``timeout``) of what runs inside: a new one, or the one of the
        operation this is part of."""
        outer = _active_deadline()
        if outer is not None:
            yield outer
            return
        d = self._watchdog.arm(self.options.timeout)
        if d.fired:
            raise TransientError(f"{self.base_url}: the registry client was shut down (the "
                                 "mount is being unmounted)", url=self.base_url)
        _current.deadline = d
        try:
            yield d
        finally:
            _current.deadline = None
            self._watchdog.disarm(d)

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RegistryClient({self.base_url!r})"

    @property
    def single_range_mode(self) -> bool:
        """True once the registry has refused a multi-range request (then every range
        request is a single range)."""
        return self._single_range

    def url(self, path: str) -> str:
        return self.base_url + path

    # -- requests --

    def _retry(self) -> _Retry:
        return _Retry(self.options, self.sleep)

    @_within_deadline
    def _request(self, method: str, url: str, *, scopes: tuple[str, ...] = (),
                 headers: Mapping[str, str] | None = None, body: Body = None,
                 ok: Iterable[int] = (200,), stream: bool = False, retry: bool = True,
                 auth: bool = True, final_url: list[str] | None = None
                 ) -> urllib3.BaseHTTPResponse:
        """One API call: auth, redirects, retries, status checks. Returns the response with
        its body unread (``stream``) or discarded (callers that want a body read it with
        :meth:`_get_body`, which caps it); an unexpected status raises RegistryError."""
        ok_set = frozenset(ok)
        policy = self._retry()
        auth_tried = False
        redirects = 0
        cur_url, cur_method, cur_body = url, method, body
        while True:
            hdrs = {"User-Agent": self.options.user_agent}
            hdrs.update(headers or {})
            if _origin(cur_url) != _origin(url):  # redirected elsewhere: no caller auth
                hdrs = {k: v for k, v in hdrs.items() if k.lower() != "authorization"}
            same_host = _origin(cur_url) == self._origin
            if auth and same_host:
                a = self._auth.header(scopes)
                if a:
                    hdrs["Authorization"] = a
            opened: BinaryIO | None = None
            payload: Any = cur_body
            if callable(cur_body):
                opened = cur_body()
                payload = opened
            try:
                resp = self._http.request(cur_method, cur_url, headers=hdrs, body=payload,
                                          preload_content=False, decode_content=False,
                                          redirect=False, retries=False)
            except _U3SSLError as e:
                text = str(e)
                if "CERTIFICATE_VERIFY_FAILED" in text or "WRONG_VERSION_NUMBER" in text:
                    hint = " (use insecure to skip verification)" \
                        if "CERTIFICATE" in text else " (is it plain HTTP? use plain_http)"
                    raise TLSError(f"{cur_method} {cur_url}: TLS error: {e}{hint}",
                                   url=cur_url) from None
                if not retry:
                    raise TransientError(f"{cur_method} {cur_url}: {e}", url=cur_url) from None
                policy.wait(f"{cur_method} {cur_url}: {e}", url=cur_url)
                continue
            except (_U3HTTPError, OSError) as e:
                if not retry:
                    raise TransientError(f"{cur_method} {cur_url}: {e}", url=cur_url) from None
                policy.wait(f"{cur_method} {cur_url}: connection failed: {e}", url=cur_url)
                continue
            finally:
                if opened is not None:
                    opened.close()
            status = resp.status
            if status in ok_set:
                if final_url is not None:
                    final_url.append(cur_url)
                if not stream:  # only the headers matter: a small body is read, not kept
                    _discard(resp)
                return resp
            location = resp.headers.get("Location")
            if status in _REDIRECTS and location:
                _discard(resp)
                redirects += 1
                if redirects > _MAX_REDIRECTS:
                    raise RegistryError(f"{method} {url}: more than {_MAX_REDIRECTS} redirects",
                                        url=url, status=status)
                cur_url = urljoin(cur_url, location)
                if status == 303 or (status in (301, 302) and cur_method == "POST"):
                    cur_method, cur_body = "GET", None
                continue
            if status == 401 and auth and same_host and not auth_tried:
                challenge = resp.headers.get("WWW-Authenticate")
                _discard(resp)
                self._auth.challenge(challenge, scopes, cur_method, cur_url)
                auth_tried = True
                continue
            if status in _RETRY_STATUSES and retry:
                ra = _retry_after(resp.headers.get("Retry-After")) if status in (429, 503) \
                    else None
                msg = f"{cur_method} {cur_url}: HTTP {status} {resp.reason or ''}".rstrip()
                _discard(resp)
                policy.wait(msg, ra, url=cur_url, status=status)
                continue
            raise self._error(resp, cur_method, cur_url, same_host)

    def _error(self, resp: urllib3.BaseHTTPResponse, method: str, url: str,
               same_host: bool) -> RegistryError:
        status = resp.status
        try:
            body = _read_capped(resp, _ERROR_BODY_MAX) if method != "HEAD" else b""
        except (_U3HTTPError, OSError):
            body = b""
        finally:
            _discard(resp)
        codes: list[str] = []
        detail = ""
        try:
            doc = json.loads(body) if body else None
        except (ValueError, UnicodeDecodeError):
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("errors"), list):
            parts = []
            for e in doc["errors"]:
                if not isinstance(e, dict):
                    continue
                code = str(e.get("code", ""))
                codes.append(code)
                text = f"{code}: {e.get('message', '')}".strip(": ")
                if e.get("detail") not in (None, "", {}, []):
                    text += f" ({json.dumps(e['detail'], sort_keys=True)})"
                parts.append(text)
            detail = "; ".join(parts)
        elif body:
            detail = body[:200].decode("utf-8", "replace").strip()
        msg = f"{method} {url}: HTTP {status} {resp.reason or ''}".rstrip()
        if detail:
            msg += f": {detail}"
        cls: type[RegistryError] = RegistryError
        if status in (401, 403):
            cls = AuthError
            if same_host:
                if status == 401 and self._auth.credentials() is None:
                    msg += f"; {self._auth._no_creds_hint()}"
                elif status == 401:
                    msg += f" (wrong credentials? tried {self._auth.describe()})"
                else:
                    msg += f" (access denied {self._auth.describe()})"
        elif status == 404:
            cls = NotFound
        elif status == 416:
            cls = RangeNotSatisfiable
        elif status in _RETRY_STATUSES:
            cls = TransientError
        return cls(msg, url=url, status=status, codes=codes)

    @_within_deadline
    def _get_body(self, url: str, scopes: tuple[str, ...], headers: Mapping[str, str],
                  limit: int, what: str, *, ok: Iterable[int] = (200,)
                  ) -> tuple[urllib3.BaseHTTPResponse, bytes]:
        """GET a body read into memory: at most ``limit`` bytes (a larger one is refused
        without reading on, whatever Content-Length says or does not say). A body that breaks
        off is asked for again within the retry budget."""
        policy = self._retry()
        while True:
            resp = self._request("GET", url, scopes=scopes, headers=headers, ok=ok,
                                 stream=True)
            length = resp.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > limit:
                resp.close()
                resp.release_conn()
                raise RegistryError(f"GET {url}: the {what} has {int(length)} bytes, more "
                                    f"than the {limit} allowed", url=url)
            try:
                body = _read_capped(resp, limit)
            except (_U3HTTPError, OSError) as e:
                resp.close()
                resp.release_conn()
                policy.wait(f"GET {url}: reading the {what} failed: {e}", url=url)
                continue
            d = _active_deadline()
            if d is not None and d.fired:  # the watchdog cut the body short
                resp.close()
                resp.release_conn()
                raise d.error(f"GET {url}", url)
            if len(body) > limit:
                resp.close()
                resp.release_conn()
                raise RegistryError(f"GET {url}: the {what} is larger than the {limit} bytes "
                                    "allowed", url=url)
            _discard(resp)
            return resp, body

    # -- scopes --

    @staticmethod
    def _pull(repo: str) -> tuple[str, ...]:
        return (f"repository:{repo}:pull",)

    @staticmethod
    def _push(repo: str) -> tuple[str, ...]:
        return (f"repository:{repo}:pull,push",)

    def ping(self) -> None:
        """GET /v2/: raises unless the registry answers (authenticating if it asks)."""
        self._request("GET", self.url("/v2/"))

    # -- manifests --

    def get_manifest(self, repo: str, reference: str,
                     accept: Sequence[str] = MANIFEST_ACCEPT) -> tuple[Descriptor, bytes]:
        """A manifest or index by tag or digest, verified: by digest it must hash to that
        digest; by tag its sha256 is computed and checked against ``Docker-Content-Digest``
        when the registry sends one."""
        url = self.url(f"/v2/{_quote_repo(repo)}/manifests/{reference}")
        by_digest = ":" in reference
        if by_digest:
            check_digest(reference)
        resp, raw = self._get_body(url, self._pull(repo), {"Accept": ", ".join(accept)},
                                   MAX_MANIFEST_SIZE, "manifest")
        announced = resp.headers.get("Docker-Content-Digest")
        if by_digest:
            digest = reference
        elif announced and ":" in announced and announced.split(":", 1)[0] != "sha256":
            digest = check_digest(announced)
        else:
            digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        h = _hash_of(digest)
        h.update(raw)
        _check_hash(h, digest, f"manifest {repo}:{reference}", url)
        if announced and announced != digest:
            raise DigestMismatch(f"GET {url}: the registry says the manifest is {announced} "
                                 f"but it hashes to {digest}", url=url)
        mt = _media_type(resp.headers.get("Content-Type"))
        if mt not in MANIFEST_TYPES and mt not in INDEX_TYPES:
            try:
                sniffed = _structural_type(json.loads(raw))
            except (ValueError, UnicodeDecodeError):
                sniffed = None
            if sniffed and (not mt or mt in ("application/json", "text/plain",
                                             "application/octet-stream")):
                mt = sniffed
        return Descriptor(mt, digest, len(raw)), raw

    def head_manifest(self, repo: str, reference: str) -> Descriptor | None:
        """The descriptor of a manifest (None when the registry does not have it). By tag,
        falls back to a GET when the registry sends no Docker-Content-Digest."""
        url = self.url(f"/v2/{_quote_repo(repo)}/manifests/{reference}")
        try:
            resp = self._request("HEAD", url, scopes=self._pull(repo),
                                 headers={"Accept": ", ".join(MANIFEST_ACCEPT)})
        except NotFound:
            return None
        announced = resp.headers.get("Docker-Content-Digest")
        length = resp.headers.get("Content-Length")
        mt = _media_type(resp.headers.get("Content-Type"))
        if ":" in reference:
            if announced and announced != reference:
                raise DigestMismatch(f"HEAD {url}: the registry says {announced}", url=url)
            announced = reference
        if not announced or length is None or not length.isdigit() or not mt:
            return self.get_manifest(repo, reference)[0]
        return Descriptor(mt, check_digest(announced), int(length))

    def put_manifest(self, repo: str, data: bytes, media_type: str,
                     reference: str | None = None) -> Descriptor:
        """Pushes a manifest under ``reference`` (a tag or its digest; default: its
        digest). Returns its descriptor."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        ref = reference or digest
        if ":" in ref and ref != digest:
            alg = ref.split(":", 1)[0]
            h = hashlib.new(alg, data)
            if f"{alg}:{h.hexdigest()}" != ref:
                raise DigestMismatch(f"manifest content does not hash to {ref}")
            digest = ref
        url = self.url(f"/v2/{_quote_repo(repo)}/manifests/{ref}")
        resp = self._request("PUT", url, scopes=self._push(repo), body=bytes(data),
                             headers={"Content-Type": media_type}, ok=(200, 201, 202, 204))
        got = resp.headers.get("Docker-Content-Digest")
        if got and got != digest:
            raise DigestMismatch(f"PUT {url}: the registry stored the manifest as {got}, "
                                 f"expected {digest}", url=url)
        return Descriptor(media_type, digest, len(data))

    def delete_manifest(self, repo: str, digest: str) -> None:
        url = self.url(f"/v2/{_quote_repo(repo)}/manifests/{check_digest(digest)}")
        self._request("DELETE", url, scopes=(f"repository:{repo}:delete",),
                      ok=(200, 202, 204))

    def _pages(self, url: str, what: str, scopes: tuple[str, ...],
               headers: Mapping[str, str]) -> Iterator[tuple[int, urllib3.BaseHTTPResponse,
                                                            bytes]]:
        """(page number, response, body) of a paginated list, following ``Link: <…>;
        rel="next"``: at most :data:`MAX_LIST_PAGES` pages of :data:`MAX_LIST_SIZE` bytes
        each and :data:`MAX_LIST_TOTAL` in all; a link back to a page already read is a
        loop, and an error."""
        seen: set[str] = set()
        total = 0
        cur: str | None = url
        while cur is not None:
            if cur in seen:
                raise RegistryError(f"{what}: the registry's next-page link loops back to "
                                    f"{cur}", url=cur)
            if len(seen) >= MAX_LIST_PAGES:
                raise RegistryError(f"{what}: more than {MAX_LIST_PAGES} pages", url=cur)
            seen.add(cur)
            resp, body = self._get_body(cur, scopes, headers, MAX_LIST_SIZE, what)
            total += len(body)
            if total > MAX_LIST_TOTAL:
                raise RegistryError(f"{what}: more than {MAX_LIST_TOTAL} bytes over "
                                    f"{len(seen)} pages", url=cur)
            yield len(seen), resp, body
            nxt = _next_link(resp.headers.get("Link"))
            cur = urljoin(cur, nxt) if nxt else None

    def list_tags(self, repo: str, page_size: int = 1000) -> list[str]:
        """Every tag of ``repo`` (following ``Link: <…>; rel="next"`` pages, bounded as
        :meth:`_pages` says)."""
        url = self.url(f"/v2/{_quote_repo(repo)}/tags/list?n={page_size}")
        tags: list[str] = []
        for _, _, body in self._pages(url, f"tags list of {repo}", self._pull(repo), {}):
            try:
                doc = json.loads(body)
            except (ValueError, UnicodeDecodeError) as e:
                raise RegistryError(f"GET {url}: invalid JSON: {e}", url=url) from None
            got = doc.get("tags") if isinstance(doc, dict) else None
            if got is not None and (not isinstance(got, list)
                                    or not all(isinstance(t, str) for t in got)):
                raise RegistryError(f"GET {url}: 'tags' is not a list of strings", url=url)
            tags += got or []
        return tags

    # -- blobs: reading --

    def _blob_url(self, repo: str, digest: str) -> str:
        return self.url(f"/v2/{_quote_repo(repo)}/blobs/{check_digest(digest)}")

    def head_blob(self, repo: str, digest: str) -> int | None:
        """The size of a blob, None when the repository does not have it."""
        try:
            resp = self._request("HEAD", self._blob_url(repo, digest), scopes=self._pull(repo))
        except NotFound:
            return None
        length = resp.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise RegistryError(f"HEAD {self._blob_url(repo, digest)}: no Content-Length",
                                url=self._blob_url(repo, digest))
        return int(length)

    def _blob_get(self, repo: str, digest: str, headers: Mapping[str, str],
                  ok: Iterable[int]) -> urllib3.BaseHTTPResponse:
        """GET of a blob (body unread). The URL a registry redirects blob reads to is
        remembered and used directly next time, until it stops working."""
        hdrs = {"Accept-Encoding": "identity", **headers}
        key = (repo, digest)
        with self._lock:
            cached = self._blob_urls.get(key)
        if cached is not None:
            try:
                return self._request("GET", cached, scopes=self._pull(repo), headers=hdrs,
                                     ok=ok, stream=True)
            except (AuthError, NotFound, RegistryError) as e:
                if isinstance(e, (TransientError, RangeNotSatisfiable)):
                    raise
                with self._lock:
                    self._blob_urls.pop(key, None)
        url = self._blob_url(repo, digest)
        final: list[str] = []
        resp = self._request("GET", url, scopes=self._pull(repo), headers=hdrs, ok=ok,
                             stream=True, final_url=final)
        if final and final[0] != url:
            with self._lock:
                self._blob_urls[key] = final[0]
        return resp

    def open_blob(self, repo: str, digest: str, *, size: int | None = None,
                  verify: bool = True, offset: int = 0) -> BlobReader:
        """A streaming reader over the blob from ``offset`` (see :class:`BlobReader`)."""
        return BlobReader(self, repo, check_digest(digest), size=size, verify=verify,
                          offset=offset)

    def read_blob(self, repo: str, digest: str, *, size: int | None = None,
                  max_size: int | None = None) -> bytes:
        """The whole blob, verified against its digest. ``size`` (a descriptor's) is the most
        that is read (a registry announcing or sending another size fails); ``max_size``
        refuses a larger blob before reading it, or after that many bytes when the registry
        gives no length."""
        if size is not None and max_size is not None and size > max_size:
            raise RegistryError(f"blob {digest} is {size} bytes, more than the {max_size} "
                                "allowed here")
        with self.open_blob(repo, digest, size=size, verify=True) as r:
            if max_size is not None and r.size is not None and r.size > max_size:
                raise RegistryError(f"blob {digest} is {r.size} bytes, more than the "
                                    f"{max_size} allowed here")
            if r.size is not None:
                return r.readall()
            return b"".join(r.chunks(max_size))

    def read_blob_chunks(self, repo: str, digest: str, size: int) -> Iterator[bytes]:
        """The blob's bytes in pieces of at most 1 MiB (bounded memory), verified at the
        end: ``size`` bytes (a descriptor's), never more."""
        with self.open_blob(repo, digest, size=size, verify=True) as r:
            yield from r.chunks(size)
            if not r.verified:  # fewer bytes than the descriptor says
                raise SizeMismatch(f"blob {digest} of {repo}: ended at byte {r.tell()} of "
                                   f"{size}", url=r.name)

    @_within_deadline
    def read_range(self, repo: str, digest: str, offset: int, length: int) -> bytes:
        """``length`` bytes of the blob at ``offset`` (one Range request; a registry that
        ignores ranges is read through to the range)."""
        if offset < 0 or length < 0:
            raise ValueError(f"invalid range offset={offset} length={length}")
        if length == 0:
            return b""
        end = offset + length - 1
        url = self._blob_url(repo, digest)
        policy = self._retry()
        while True:
            resp = self._blob_get(repo, digest, {"Range": f"bytes={offset}-{end}"},
                                  ok=(200, 206))
            try:
                if resp.status == 206:
                    cr = _content_range(resp.headers.get("Content-Range"))
                    if cr is None or cr[0] != offset:
                        raise RegistryError(f"GET {url} (Range bytes={offset}-{end}): the "
                                            "registry answered with Content-Range "
                                            f"{resp.headers.get('Content-Range')!r}", url=url)
                    data = resp.read(length)
                else:  # 200: the whole blob; read through to the range
                    left = offset
                    while left:
                        skipped = resp.read(min(left, 1 << 20))
                        if not skipped:
                            break
                        left -= len(skipped)
                    data = resp.read(length) if not left else b""
            except (_U3HTTPError, OSError) as e:
                resp.close()
                resp.release_conn()
                policy.wait(f"GET {url} (Range bytes={offset}-{end}): {e}", url=url)
                continue
            _discard(resp)
            d = _active_deadline()
            if d is not None and d.fired:
                raise d.error(f"GET {url} (Range bytes={offset}-{end})", url)
            if len(data) != length:
                raise RangeNotSatisfiable(f"GET {url}: range {offset}+{length} is past the "
                                          f"end of the blob (got {len(data)} bytes)", url=url,
                                          status=resp.status)
            return data

    def read_ranges(self, repo: str, digest: str,
                    ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """The bytes of each ``(offset, length)`` range, in the order given. Overlapping and
        adjacent ranges are merged, then asked for in multi-range requests
        (``multipart/byteranges``); a registry that answers one with 400, 416 or the whole
        blob is asked single ranges from then on (:attr:`single_range_mode`)."""
        for off, ln in ranges:
            if off < 0 or ln < 0:
                raise ValueError(f"invalid range offset={off} length={ln}")
        spans: list[list[int]] = []  # merged [start, end) spans
        for off, ln in sorted((o, n) for o, n in ranges if n > 0):
            if spans and off <= spans[-1][1]:
                spans[-1][1] = max(spans[-1][1], off + ln)
            else:
                spans.append([off, off + ln])
        got: dict[int, bytes] = {}
        i = 0
        while i < len(spans):
            batch = spans[i:i + _MAX_RANGES_PER_REQUEST]
            if len(batch) == 1 or self._single_range:
                s, e = batch[0]
                got[s] = self.read_range(repo, digest, s, e - s)
                i += 1
                continue
            parts = self._multi_range(repo, digest, [(s, e) for s, e in batch])
            if parts is None:
                continue  # now in single-range mode: redo this batch one by one
            for s, e in batch:
                got[s] = _slice_parts(parts, s, e, self._blob_url(repo, digest))
            i += len(batch)
        out = []
        for off, ln in ranges:
            if ln == 0:
                out.append(b"")
                continue
            span = next(s for s in spans if s[0] <= off and off + ln <= s[1])
            base = got[span[0]]
            out.append(base[off - span[0]: off - span[0] + ln])
        return out

    @_within_deadline
    def _multi_range(self, repo: str, digest: str,
                     spans: Sequence[tuple[int, int]]) -> list[tuple[int, bytes]] | None:
        """One multi-range GET: [(start, bytes)] per returned part, or None after switching
        to single-range mode."""
        url = self._blob_url(repo, digest)
        rng = "bytes=" + ",".join(f"{s}-{e - 1}" for s, e in spans)
        policy = self._retry()
        while True:
            try:
                resp = self._blob_get(repo, digest, {"Range": rng}, ok=(200, 206, 416))
            except RegistryError as e:
                if e.status == 400:
                    self._single_range = True
                    return None
                raise
            if resp.status == 416:
                cr = resp.headers.get("Content-Range", "")
                _discard(resp)
                m = re.fullmatch(r"bytes\s+\*/(\d+)", cr.strip())
                if m is not None and any(e > int(m.group(1)) for _, e in spans):
                    raise RangeNotSatisfiable(
                        f"GET {url} (Range {rng}): HTTP 416: the blob has {m.group(1)} bytes",
                        url=url, status=416)
                self._single_range = True  # refused multi-range as such
                return None
            if resp.status == 200:  # ranges ignored: don't download the whole blob
                resp.close()
                resp.release_conn()
                self._single_range = True
                return None
            try:
                ctype = resp.headers.get("Content-Type", "")
                if _media_type(ctype).lower() == "multipart/byteranges":
                    m = re.search(r'boundary="?([^";]+)"?', ctype)
                    if m is None:
                        raise RegistryError(f"GET {url}: multipart response without a "
                                            "boundary", url=url)
                    # the parts' bytes plus their headers; a longer body is not read on
                    limit = sum(e - s for s, e in spans) + len(spans) * 512 + 4096
                    body = _read_capped(resp, limit)
                    if len(body) > limit:
                        raise RegistryError(f"GET {url} (Range {rng}): the multipart body is "
                                            f"larger than the {limit} bytes asked for",
                                            url=url)
                    parts = _parse_multipart(body, m.group(1), url)
                else:  # a single part (the server merged the ranges)
                    one = _content_range(resp.headers.get("Content-Range"))
                    if one is None:
                        raise RegistryError(f"GET {url}: 206 without Content-Range", url=url)
                    data = _read_capped(resp, min(one[1] - one[0] + 1,
                                                  spans[-1][1] - spans[0][0]))
                    parts = [(one[0], data)]
                    if one[2] is not None and any(e > one[2] for _, e in spans):
                        _discard(resp)
                        raise RangeNotSatisfiable(f"GET {url} (Range {rng}): past the end of "
                                                  f"the blob ({one[2]} bytes)", url=url,
                                                  status=206)
            except (_U3HTTPError, OSError) as e:
                resp.close()
                resp.release_conn()
                policy.wait(f"GET {url} (Range {rng}): {e}", url=url)
                continue
            _discard(resp)
            return parts

    # -- blobs: writing --

    def _upload_url(self, location: str | None, url: str) -> str:
        if not location:
            raise RegistryError(f"POST {url}: the registry gave no upload Location", url=url)
        return urljoin(url, location)

    def start_upload(self, repo: str, *, mount: str | None = None,
                     mount_from: str | None = None) -> str | None:
        """POST an upload session: its URL, or None when ``mount`` from ``mount_from``
        succeeded (201)."""
        url = self.url(f"/v2/{_quote_repo(repo)}/blobs/uploads/")
        scopes = self._push(repo)
        if mount and mount_from:
            url += "?" + urlencode({"mount": check_digest(mount), "from": mount_from})
            scopes += (f"repository:{mount_from}:pull",)
        resp = self._request("POST", url, scopes=scopes, ok=(201, 202),
                             headers={"Content-Length": "0"})
        if resp.status == 201:
            if mount:
                return None
            raise RegistryError(f"POST {url}: unexpected 201 for a new upload", url=url)
        return self._upload_url(resp.headers.get("Location"), url)

    def _new_upload(self, repo: str) -> str:
        loc = self.start_upload(repo)
        assert loc is not None
        return loc

    def mount_blob(self, repo: str, digest: str, from_repo: str) -> bool:
        """Cross-repository mount; False when the registry would not (an upload it opened
        is cancelled)."""
        loc = self.start_upload(repo, mount=digest, mount_from=from_repo)
        if loc is None:
            return True
        self._cancel_upload(repo, loc)
        return False

    def _cancel_upload(self, repo: str, location: str) -> None:
        try:
            self._request("DELETE", location, scopes=self._push(repo), ok=(200, 202, 204),
                          retry=False)
        except RegistryError:
            pass

    def _finish_upload(self, repo: str, location: str, digest: str, body: Body,
                       size: int) -> None:
        url = location + ("&" if "?" in location else "?") + urlencode({"digest": digest})
        resp = self._request("PUT", url, scopes=self._push(repo), body=body, retry=False,
                             headers={"Content-Type": "application/octet-stream",
                                      "Content-Length": str(size)}, ok=(201, 204))
        got = resp.headers.get("Docker-Content-Digest")
        if got and got != digest:
            raise DigestMismatch(f"PUT {location}: the registry stored the blob as {got}, "
                                 f"expected {digest}", url=location)

    def _upload_chunked(self, repo: str, location: str, data: _BlobData,
                        chunk_size: int) -> None:
        with data.open() as f:
            start = 0
            while start < data.size:
                chunk = f.read(min(chunk_size, data.size - start))
                if not chunk:
                    raise ImageError(f"blob data ended at {start} of {data.size} bytes")
                end = start + len(chunk) - 1
                resp = self._request(
                    "PATCH", location, scopes=self._push(repo), body=chunk, retry=False,
                    headers={"Content-Type": "application/octet-stream",
                             "Content-Range": f"{start}-{end}",
                             "Content-Length": str(len(chunk))}, ok=(202, 204))
                rng = resp.headers.get("Range")
                if rng:
                    m = re.fullmatch(r"(?:bytes=)?0-(\d+)", rng.strip())
                    if m is None or int(m.group(1)) != end:
                        raise RegistryError(f"PATCH {location}: the registry has bytes {rng} "
                                            f"after a chunk ending at {end}", url=location)
                location = self._upload_url(resp.headers.get("Location"), location)
                start = end + 1
        self._finish_upload(repo, location, data.digest, None, 0)

    def push_blob(self, repo: str,
                  data: bytes | bytearray | memoryview | str | os.PathLike[str] | BinaryIO, *,
                  digest: str | None = None, size: int | None = None,
                  chunk_size: int | None = None, mount_from: str | None = None,
                  check_exists: bool = True) -> PushResult:
        """Uploads a blob (bytes, a file path or a seekable binary file) unless the
        repository has it already (HEAD). With ``mount_from`` a cross-repository mount is
        tried first. ``chunk_size`` None: one monolithic PUT; else PATCH chunks of that size.
        A failed upload is restarted from scratch within the retry budget."""
        src = _BlobData(data, digest, size)
        if check_exists and self.head_blob(repo, src.digest) is not None:
            return PushResult(src.digest, src.size, "exists")
        location: str | None = None
        if mount_from:
            location = self.start_upload(repo, mount=src.digest, mount_from=mount_from)
            if location is None:
                return PushResult(src.digest, src.size, "mounted")
        policy = self._retry()
        while True:
            try:
                if location is None:
                    location = self._new_upload(repo)
                if chunk_size is None or src.size <= chunk_size:
                    self._finish_upload(repo, location, src.digest, src.open, src.size)
                else:
                    self._upload_chunked(repo, location, src, chunk_size)
                return PushResult(src.digest, src.size, "uploaded")
            except (TransientError, NotFound, RangeNotSatisfiable) as e:
                if isinstance(e, NotFound) and "BLOB_UPLOAD_UNKNOWN" not in e.codes:
                    raise
                if self.head_blob(repo, src.digest) == src.size:
                    return PushResult(src.digest, src.size, "uploaded")
                location = None
                policy.wait(f"upload of {src.digest} to {repo}: {e}", url=e.url,
                            status=e.status)

    # -- referrers --

    def referrers_api(self, repo: str, digest: str,
                      artifact_type: str | None = None) -> list[Descriptor] | None:
        """The OCI 1.1 referrers API; None when the registry does not have it (404). Pages
        are bounded as :meth:`_pages` says; only referrers of ``artifact_type`` are kept
        (the registry may not have filtered: OCI-Filters-Applied)."""
        url = self.url(f"/v2/{_quote_repo(repo)}/referrers/{check_digest(digest)}")
        if artifact_type:
            url = f"{url}?{urlencode({'artifactType': artifact_type})}"
        out: list[Descriptor] = []
        page = 0
        pages = self._pages(url, f"referrers of {digest} in {repo}", self._pull(repo),
                            {"Accept": OCI_INDEX})
        try:
            for page, _, body in pages:
                try:
                    doc = json.loads(body)
                except (ValueError, UnicodeDecodeError):
                    # a 200 that is not an index: not the referrers API
                    return None if page == 1 else out
                if not isinstance(doc, dict) or not isinstance(doc.get("manifests"), list):
                    return None if page == 1 else out
                for i, m in enumerate(doc["manifests"]):
                    d = Descriptor.from_json(m, f"referrer {i} of {digest}")
                    if not artifact_type or d.artifact_type == artifact_type:
                        out.append(d)
        except NotFound:
            if page == 0:  # the first page: no referrers API here
                return None
            raise
        return out

    @staticmethod
    def referrers_tag(digest: str) -> str:
        """The fallback tag of a subject digest: ``<alg>-<hex>`` (truncated per the
        distribution spec)."""
        alg, enc = check_digest(digest).split(":", 1)
        return f"{alg[:32]}-{enc[:64]}"

    def referrers_tag_index(self, repo: str, digest: str) -> tuple[Descriptor, bytes] | None:
        """The fallback tag's index (descriptor and bytes), None when there is none."""
        try:
            return self.get_manifest(repo, self.referrers_tag(digest), accept=(OCI_INDEX,))
        except NotFound:
            return None

    def referrers_from_tag(self, repo: str, digest: str,
                           artifact_type: str | None = None) -> list[Descriptor]:
        got = self.referrers_tag_index(repo, digest)
        if got is None:
            return []
        doc = _json_object(got[1], f"referrers tag {self.referrers_tag(digest)} of {repo}")
        mans = doc.get("manifests")
        if not isinstance(mans, list):
            raise RegistryError(f"referrers tag {self.referrers_tag(digest)} of {repo} is not "
                                "an image index")
        out = [Descriptor.from_json(m, f"referrer {i} of {digest}") for i, m in enumerate(mans)]
        if artifact_type:
            out = [d for d in out if d.artifact_type == artifact_type]
        return out

    def referrers(self, repo: str, digest: str,
                  artifact_type: str | None = None) -> list[Descriptor]:
        """Referrers of a subject: the referrers API, else the fallback tag."""
        api = self.referrers_api(repo, digest, artifact_type)
        if api is not None:
            return api
        return self.referrers_from_tag(repo, digest, artifact_type)

    def add_referrer(self, repo: str, subject: str, descriptor: Descriptor) -> Descriptor:
        """Adds ``descriptor`` (a manifest whose ``subject`` is ``subject``, pushed already)
        to the fallback tag's index, creating it if missing; entries already there are kept,
        and nothing is pushed when the descriptor is listed already. Returns the index's
        descriptor."""
        tag = self.referrers_tag(subject)
        got = self.referrers_tag_index(repo, subject)
        if got is None:
            doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
        else:
            doc = _json_object(got[1], f"referrers tag {tag} of {repo}")
            if not isinstance(doc.get("manifests"), list):
                raise RegistryError(f"referrers tag {tag} of {repo} is not an image index")
            if any(isinstance(m, dict) and m.get("digest") == descriptor.digest
                   for m in doc["manifests"]):
                return got[0]
        doc["manifests"] = [*doc["manifests"], descriptor.to_json()]
        return self.put_manifest(repo, go_json(doc), OCI_INDEX, tag)


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise RegistryError(f"invalid JSON in {what}: {e}") from None
    if not isinstance(doc, dict):
        raise RegistryError(f"{what} is not a JSON object")
    return doc


def _parse_multipart(body: bytes, boundary: str, url: str) -> list[tuple[int, bytes]]:
    """``multipart/byteranges`` → [(start, bytes)], each part's length taken from its
    Content-Range (so the data may contain anything)."""
    delim = b"--" + boundary.encode("latin-1")
    parts: list[tuple[int, bytes]] = []
    pos = body.find(delim)
    while pos >= 0:
        pos += len(delim)
        if body[pos:pos + 2] == b"--":
            return parts
        sep = body.find(b"\r\n\r\n", pos)
        skip = 4
        if sep < 0:
            sep, skip = body.find(b"\n\n", pos), 2
        if sep < 0:
            break
        cr = None
        for line in body[pos:sep].decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-range":
                cr = _content_range(value)
        if cr is None:
            raise RegistryError(f"GET {url}: multipart part without a valid Content-Range",
                                url=url)
        start = sep + skip
        n = cr[1] - cr[0] + 1
        data = body[start:start + n]
        if len(data) != n:
            break
        parts.append((cr[0], data))
        pos = body.find(delim, start + n)
    raise RegistryError(f"GET {url}: truncated or malformed multipart/byteranges body", url=url)


def _slice_parts(parts: Sequence[tuple[int, bytes]], start: int, end: int, url: str) -> bytes:
    for s, data in parts:
        if s <= start and end <= s + len(data):
            return data[start - s:end - s]
    raise RangeNotSatisfiable(f"GET {url}: the multi-range response does not cover bytes "
                              f"{start}-{end - 1} (past the end of the blob?)", url=url)


# ---- streaming reader ------------------------------------------------------------------------

class BlobReader(io.RawIOBase):
    """A blob's body as a file: ``read``/``readinto``/``seek``.

    Reading streams one GET. When the connection breaks or the body ends early, the rest is
    asked for with ``Range: bytes=<position>-`` and the answer must start at that byte (206
    with a matching Content-Range, or a 200 read through to the position). With ``verify``
    the bytes are hashed as they pass and the read that reaches the end raises
    :class:`DigestMismatch` if they do not match. Forward seeks read through (always, while
    verifying; up to 1 MiB otherwise) or re-request from the new position; a backward seek
    re-requests from there and stops verification (unless it is back to 0).
    """

    def __init__(self, client: RegistryClient, repo: str, digest: str, *,
                 size: int | None = None, verify: bool = True, offset: int = 0) -> None:
        super().__init__()
        self._client = client
        self.repo = repo
        self.digest = digest
        self.name = f"{client.base_url}/v2/{repo}/blobs/{digest}"
        self.size: int | None = size
        self._pos = offset
        self._verify = verify
        self._hasher: Any = _hash_of(digest) if verify and offset == 0 else None
        self._resp: urllib3.BaseHTTPResponse | None = None
        self._resp_pos = 0
        self._verified = False
        self.requests = 0  # GETs made (the first and every resume)
        self._open()

    # -- io.RawIOBase --

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def _drop(self) -> None:
        if self._resp is not None:
            resp, self._resp = self._resp, None
            try:
                resp.close()
            finally:
                resp.release_conn()

    def _open(self) -> None:
        """GET from self._pos (a Range request unless at 0)."""
        with self._client._operation():
            self._open_now()

    def _open_now(self) -> None:
        self._drop()
        if self.size is not None and self._pos >= self.size:
            return
        headers = {"Range": f"bytes={self._pos}-"} if self._pos else {}
        resp = self._client._blob_get(self.repo, self.digest, headers, ok=(200, 206))
        self.requests += 1
        url = self.name
        total: int | None = None
        if resp.status == 206:
            cr = _content_range(resp.headers.get("Content-Range"))
            if cr is None or cr[0] != self._pos:
                resp.close()
                resp.release_conn()
                raise RegistryError(f"GET {url} (Range bytes={self._pos}-): the answer starts "
                                    f"elsewhere (Content-Range "
                                    f"{resp.headers.get('Content-Range')!r})", url=url,
                                    status=206)
            total = cr[2]
            start = self._pos
        else:
            length = resp.headers.get("Content-Length")
            total = int(length) if length is not None and length.isdigit() else None
            start = 0
        if total is not None:
            if self.size is None:
                self.size = total
            elif self.size != total:
                resp.close()
                resp.release_conn()
                raise SizeMismatch(f"GET {url}: the blob has {total} bytes, expected "
                                   f"{self.size}", url=url)
        self._resp, self._resp_pos = resp, start
        if start < self._pos:  # 200 to a resume: read through to where we are
            self._skip_in_response(self._pos - start)

    def _skip_in_response(self, n: int) -> None:
        assert self._resp is not None
        while n > 0:
            got = self._resp.read(min(n, 1 << 20))
            if not got:
                raise _Interrupted("body ended while skipping")
            n -= len(got)
            self._resp_pos += len(got)

    def readinto(self, b: Any) -> int:
        """At most 1 MiB per call, within one deadline (``timeout``) for the call."""
        if self.closed:
            raise ValueError("I/O operation on closed file")
        with self._client._operation() as deadline:
            return self._readinto(b, deadline)

    def _readinto(self, b: Any, deadline: _Deadline) -> int:
        view = memoryview(b).cast("B")
        want = min(len(view), _CHUNK)  # each read is short enough for one deadline
        if self.size is not None:
            want = min(want, self.size - self._pos)
        if want <= 0:
            self._at_eof()
            return 0
        policy = self._client._retry()
        while True:
            try:
                if self._resp is None:
                    self._open()
                    if self._resp is None:
                        self._at_eof()
                        return 0
                conn = self._resp.connection  # opened by an earlier call: this one's now
                if conn is not None:
                    deadline.attach(conn)
                data = self._resp.read(want)
                if not data:
                    if deadline.fired:
                        raise _Interrupted("cut off at the deadline")
                    if self.size is None:
                        self.size = self._pos
                        self._at_eof()
                        return 0
                    raise _Interrupted(f"body ended at byte {self._pos} of {self.size}")
            except (_U3HTTPError, OSError, _Interrupted) as e:
                self._drop()
                policy.wait(f"GET {self.name}: reading failed at byte {self._pos}: {e}",
                            url=self.name)
                continue
            n = len(data)
            view[:n] = data
            if self._hasher is not None:
                self._hasher.update(data)
            self._pos += n
            self._resp_pos += n
            if self.size is not None and self._pos >= self.size:
                self._at_eof()
            return n

    def _at_eof(self) -> None:
        if self._resp is not None:
            resp, self._resp = self._resp, None
            _discard(resp)
        if self._hasher is not None and not self._verified and self.size is not None \
                and self._pos == self.size:
            self._verified = True
            _check_hash(self._hasher, self.digest, f"blob {self.digest} of {self.repo}",
                        self.name)

    def chunks(self, limit: int | None = None) -> Iterator[bytes]:
        """The rest of the blob in pieces of at most 1 MiB; RegistryError once more than
        ``limit`` bytes came (a registry that gives no length cannot make this read on)."""
        buf = bytearray(_CHUNK)
        done = 0
        while n := self.readinto(buf):
            done += n
            if limit is not None and done > limit:
                raise RegistryError(f"blob {self.digest} of {self.repo}: more than {limit} "
                                    "bytes", url=self.name)
            yield bytes(buf[:n])

    @property
    def verified(self) -> bool:
        """True once every byte was read in order and matched the digest."""
        return self._verified

    def readall(self) -> bytes:
        out = bytearray()
        if self.size is not None:
            out = bytearray(max(0, self.size - self._pos))
            view = memoryview(out)
            done = 0
            while done < len(out):
                n = self.readinto(view[done:])
                if not n:
                    break
                done += n
            view.release()
            del out[done:]
            self.readinto(bytearray(1))  # reach EOF (verification) if not there yet
            return bytes(out)
        for chunk in self.chunks():
            out += chunk
        return bytes(out)

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        if whence == io.SEEK_SET:
            new = pos
        elif whence == io.SEEK_CUR:
            new = self._pos + pos
        elif whence == io.SEEK_END:
            if self.size is None:
                raise OSError("blob size unknown: cannot seek from the end")
            new = self.size + pos
        else:
            raise ValueError(f"invalid whence {whence}")
        if new < 0:
            raise OSError(22, "negative seek position")
        if new == self._pos:
            return new
        if new > self._pos:
            gap = new - self._pos
            if self._hasher is not None or (self._resp is not None and gap <= _SKIP_READ_MAX):
                sink = bytearray(min(gap, 1 << 20))
                while self._pos < new:
                    n = self.readinto(memoryview(sink)[: min(len(sink), new - self._pos)])
                    if not n:
                        break
                if self._pos < new:  # past the end
                    self._pos = new
                return self._pos
        self._drop()
        self._pos = new
        self._hasher = _hash_of(self.digest) if self._verify and new == 0 else None
        self._verified = False
        return new

    def close(self) -> None:
        if not self.closed:
            try:
                self._drop()
            finally:
                super().close()


class _Interrupted(Exception):
    pass


# ---- the image source ------------------------------------------------------------------------

class RegistrySource(ImageSource):
    """An image in a registry: ``docker://HOST/REPO[:TAG][@DIGEST]`` (or the same without
    ``docker://`` when HOST is explicit). Nothing is fetched until :meth:`root`.

    Manifests are fetched from ``/manifests/`` (a descriptor with a manifest or index media
    type, or a digest seen in an index), everything else from ``/blobs/``. ``open_blob``
    streams (resuming interrupted transfers); ``read_blob`` verifies; ``blob_path`` is None.
    """

    def __init__(self, ref: str, options: RegistryOptions | None = None, *,
                 client: RegistryClient | None = None, verify_streams: bool = False) -> None:
        super().__init__(ref)
        try:
            self.reference = Reference.parse(ref)
        except InvalidReference as e:
            raise ImageError(str(e)) from None
        self.repository = self.reference.repository
        self.client = client or RegistryClient(self.reference.api_host, options,
                                               credential_scope=self.repository)
        self._own_client = client is None
        self.verify_streams = verify_streams
        self._manifests: dict[str, bytes] = {}
        self._child_manifests: set[str] = set()
        self._not_manifests: set[str] = set()
        self._root: tuple[Descriptor, bytes] | None = None

    def root(self) -> tuple[Descriptor, bytes]:
        if self._root is None:
            desc, raw = self.client.get_manifest(self.repository, self.reference.reference)
            if desc.media_type not in MANIFEST_TYPES and desc.media_type not in INDEX_TYPES:
                sniffed = _structural_type(_json_object(raw, f"manifest of {self.ref}"))
                if sniffed:
                    desc = dataclasses.replace(desc, media_type=sniffed)
            self._manifests[desc.digest] = raw
            self._note_children(raw)
            self._root = (desc, raw)
        return self._root

    def _note_children(self, raw: bytes) -> None:
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return
        if isinstance(doc, dict) and isinstance(doc.get("manifests"), list):
            self._child_manifests.update(
                m["digest"] for m in doc["manifests"]
                if isinstance(m, dict) and isinstance(m.get("digest"), str))

    def _is_manifest(self, d: DigestLike) -> bool:
        if isinstance(d, Descriptor) and d.media_type:
            return d.media_type in MANIFEST_TYPES or d.media_type in INDEX_TYPES
        dg = _digest_of(d)
        return dg in self._manifests or dg in self._child_manifests

    def _manifest(self, d: DigestLike) -> bytes | None:
        dg = _digest_of(d)
        if dg not in self._manifests:
            try:
                _, raw = self.client.get_manifest(self.repository, dg)
            except NotFound:
                return None
            self._manifests[dg] = raw
            self._note_children(raw)
        return self._manifests[dg]

    def has_blob(self, digest: DigestLike) -> bool:
        dg = _digest_of(digest)
        if dg in self._virtual or dg in self._manifests:
            return True
        if self._is_manifest(digest):
            return self._manifest(digest) is not None
        return self._blob_size(dg) is not None

    def _blob_size(self, digest: str) -> int | None:
        if digest in self._manifests:
            return len(self._manifests[digest])
        size = self.client.head_blob(self.repository, digest)
        if size is None and digest not in self._not_manifests:
            desc = self.client.head_manifest(self.repository, digest)
            if desc is not None:
                return desc.size
            self._not_manifests.add(digest)
        return size

    def _missing(self, digest: str) -> ImageError:
        return ImageError(f"missing blob {digest} in {self.ref}: the registry "
                          f"{self.client.base_url} does not have it in {self.repository}")


    def read_range(self, digest: str, offset: int, length: int) -> bytes:
        """``length`` bytes of a blob at ``offset``: one Range request (lazy loading)."""
        return self.client.read_range(self.repository, digest, offset, length)
    def open_blob(self, digest: DigestLike) -> BinaryIO:
        dg = _digest_of(digest)
        if dg in self._virtual:
            return super().open_blob(digest)
        if self._is_manifest(digest) or dg in self._manifests:
            raw = self._manifest(digest)
            if raw is None:
                raise self._missing(dg)
            self._check_size(digest, len(raw))
            return io.BytesIO(raw)
        size = digest.size if isinstance(digest, Descriptor) else None
        try:
            reader = self.client.open_blob(self.repository, dg, size=size,
                                           verify=self.verify_streams)
        except NotFound:
            if size is None and self._manifest(dg) is not None:
                return io.BytesIO(self._manifests[dg])
            raise self._missing(dg) from None
        return cast(BinaryIO, io.BufferedReader(reader, buffer_size=1 << 16))

    def _open_stored(self, digest: str) -> BinaryIO:
        return self.open_blob(digest)

    def read_blob(self, desc_or_digest: DigestLike) -> bytes:
        dg = _digest_of(desc_or_digest)
        if self._is_manifest(desc_or_digest) or dg in self._virtual:
            return super().read_blob(desc_or_digest)
        size = desc_or_digest.size if isinstance(desc_or_digest, Descriptor) else None
        try:
            with self.client.open_blob(self.repository, dg, size=size, verify=True) as r:
                data = r.readall()
        except NotFound:
            if size is None and self._manifest(dg) is not None:
                return super().read_blob(desc_or_digest)
            raise self._missing(dg) from None
        self._check_size(desc_or_digest, len(data))
        return data

    def close(self) -> None:
        if self._own_client:
            self.client.close()


def open_registry(ref: str, options: RegistryOptions | None = None) -> RegistrySource:
    """A :class:`RegistrySource` for ``docker://…`` or ``HOST/REPO…``."""
    return RegistrySource(ref, options)


__all__ = [
    "AuthError", "BlobReader", "Credentials", "DigestMismatch", "MANIFEST_ACCEPT", "NotFound",
    "PushResult", "RangeNotSatisfiable", "RegistryClient", "RegistryError", "RegistryOptions",
    "RegistrySource", "SizeMismatch", "TLSError", "TransientError", "auth_file_paths",
    "find_credentials", "open_registry",
]
