"""HTTP plumbing of the registry client: limits, header parsing, bodies read with a cap,
deadlines (a watchdog that cuts off what overstays) and the retry budget."""

from __future__ import annotations

import contextlib
import email.utils
import functools
import hashlib
import heapq
import json
import random
import re
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, BinaryIO, Concatenate, ParamSpec, Protocol, TypeVar, cast
from urllib.parse import quote, urlsplit

import urllib3
import urllib3.connection

from soci_native.oci import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
)
from soci_native.registry.errors import (
    DigestMismatch,
    RegistryError,
    TransientError,
)
from soci_native.registry.options import (
    RegistryOptions,
)

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

# ---- small HTTP helpers ----------------------------------------------------------------------


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


class _Operating(Protocol):
    def _operation(self) -> contextlib.AbstractContextManager[_Deadline]: ...


_O = TypeVar("_O", bound=_Operating)


def _within_deadline(f: Callable[Concatenate[_O, P], R]) -> Callable[Concatenate[_O, P], R]:
    """Runs a client method as one operation with a deadline (see :class:`_Deadline`)."""
    @functools.wraps(f)
    def run(self: _O, *args: P.args, **kw: P.kwargs) -> R:
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

def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise RegistryError(f"invalid JSON in {what}: {e}") from None
    if not isinstance(doc, dict):
        raise RegistryError(f"{what} is not a JSON object")
    return doc
