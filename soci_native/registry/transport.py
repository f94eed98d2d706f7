"""Transport: one registry host's connections, auth, redirects, retries and deadlines."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, BinaryIO, TypeVar
from urllib.parse import urljoin

import urllib3
from urllib3.exceptions import HTTPError as _U3HTTPError
from urllib3.exceptions import InsecureRequestWarning
from urllib3.exceptions import SSLError as _U3SSLError

from soci_native.refs import is_loopback
from soci_native.registry.auth import (
    _Auth,
)
from soci_native.registry.errors import (
    AuthError,
    NotFound,
    RangeNotSatisfiable,
    RegistryError,
    TLSError,
    TransientError,
)
from soci_native.registry.http import (
    _CHUNK,
    _ERROR_BODY_MAX,
    _MAX_REDIRECTS,
    _REDIRECTS,
    _RETRY_STATUSES,
    MAX_LIST_PAGES,
    MAX_LIST_SIZE,
    MAX_LIST_TOTAL,
    Body,
    _active_deadline,
    _current,
    _Deadline,
    _discard,
    _HTTPPool,
    _HTTPSPool,
    _next_link,
    _origin,
    _read_capped,
    _Retry,
    _retry_after,
    _Watchdog,
    _within_deadline,
)
from soci_native.registry.options import (
    RegistryOptions,
)
from soci_native.registry.tls import ssl_context

_T = TypeVar("_T", bound="Transport")


def _tls_refused(e: BaseException) -> bool:
    """A TLS handshake that the other end answered as plain HTTP would (it closed or reset
    the connection, or sent something that is not TLS)."""
    text = str(e)
    return any(s in text for s in ("WRONG_VERSION_NUMBER", "record layer failure",
                                   "UNEXPECTED_EOF", "EOF occurred", "Connection reset",
                                   "RemoteDisconnected", "unknown protocol"))


class Transport:
    """Requests to one registry host (``host[:port]``): the connection pool, auth,
    redirects, retries, deadlines and status checks. Thread-safe."""

    def __init__(self, host: str, options: RegistryOptions | None = None, *,
                 credential_scope: str | None = None) -> None:
        self.host = host
        self.options = opts = options or RegistryOptions()
        plain = opts.plain_http is True
        self.scheme = "http" if plain else "https"
        self.base_url = f"{self.scheme}://{host}"
        self._origin = _origin(self.base_url)
        # HTTPS first; a loopback host that turns out not to speak TLS is asked in plain
        # HTTP from then on (as containerd and crane do). Never for other hosts.
        self._may_fall_back = opts.plain_http is None and is_loopback(host)
        self._scheme_lock = threading.Lock()
        self.credential_scope = credential_scope  # repository used to pick auth.json entries
        kw: dict[str, Any] = {}
        if not plain:
            if opts.insecure:
                urllib3.disable_warnings(InsecureRequestWarning)
            kw.update(ssl_context=ssl_context(host, insecure=opts.insecure,
                                              ca_file=opts.ca_file, cert_dir=opts.cert_dir),
                      cert_reqs="CERT_NONE" if opts.insecure else "CERT_REQUIRED")
            if opts.insecure:
                kw.update(assert_hostname=False)
        self._http = urllib3.PoolManager(
            num_pools=8, maxsize=max(1, opts.pool_size), block=False, retries=False,
            timeout=urllib3.Timeout(connect=opts.connect_timeout, read=opts.read_timeout), **kw)
        self._http.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}
        self._watchdog = _Watchdog()
        self._auth = _Auth(self)
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
    def _operation(self, size: int = 0) -> Iterator[_Deadline]:
        """The deadline of what runs inside: a new one, or the one of the operation this is
        part of. ``timeout``, or for a body of ``size`` bytes (an upload) ``timeout`` per
        MiB of it, as a blob stream gets when read."""
        outer = _active_deadline()
        if outer is not None:
            yield outer
            return
        d = self._watchdog.arm(self.options.timeout * max(1, -(-size // _CHUNK)))
        if d.fired:
            raise TransientError(f"{self.base_url}: the registry client was shut down (the "
                                 "mount is being unmounted)", url=self.base_url)
        _current.deadline = d
        try:
            yield d
        finally:
            _current.deadline = None
            self._watchdog.disarm(d)

    def __enter__(self: _T) -> _T:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"

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
        url = self._as_plain(url)  # built before this registry turned out to be plain HTTP
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
                verify = "CERTIFICATE_VERIFY_FAILED" in text
                if not verify and self._fall_back(cur_url):
                    url, cur_url = self._as_plain(url), self._as_plain(cur_url)
                    continue
                if verify or "WRONG_VERSION_NUMBER" in text:
                    # the CLI's flags: what a user can act on
                    hint = (f" (a private CA? put its certificate in --cert-dir DIR or "
                            f"/etc/containers/certs.d/{self.host}/ca.crt, or skip "
                            "verification with --no-tls-verify or -k)") if verify \
                        else " (is it plain HTTP? use --plain-http)"
                    raise TLSError(f"{cur_method} {cur_url}: TLS error: {e}{hint}",
                                   url=cur_url) from None
                if not retry:
                    raise TransientError(f"{cur_method} {cur_url}: {e}", url=cur_url) from None
                policy.wait(f"{cur_method} {cur_url}: {e}", url=cur_url)
                continue
            except (_U3HTTPError, OSError) as e:
                if _tls_refused(e) and self._fall_back(cur_url):
                    url, cur_url = self._as_plain(url), self._as_plain(cur_url)
                    continue
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

    def _fall_back(self, url: str) -> bool:
        """Whether to ask ``url`` (on this registry) again in plain HTTP: a loopback host,
        no --plain-http either way, and its HTTPS failed other than by certificate."""
        if not self._may_fall_back or _origin(url) != _origin(f"https://{self.host}"):
            return False  # (a plain-HTTP request that failed is no reason to fall back)
        with self._scheme_lock:
            if self.scheme == "https":
                self.scheme = "http"
                self.base_url = f"http://{self.host}"
                self._origin = _origin(self.base_url)
        return True

    def _as_plain(self, url: str) -> str:
        """``url`` on this registry in plain HTTP once it fell back to that (else as is)."""
        prefix = f"https://{self.host}"
        if self.scheme == "http" and (url == prefix or url.startswith(prefix + "/")):
            return self.base_url + url[len(prefix):]
        return url

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
