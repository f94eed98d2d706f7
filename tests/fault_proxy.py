"""A scriptable fault-injecting HTTP/1.1 reverse proxy for registry tests.

The proxy listens on 127.0.0.1 (a free port) and forwards every request to one upstream
``host:port``, keeping both the client and the upstream connection alive between requests.
Request and response bodies are streamed (Content-Length or chunked; a response without
framing is re-chunked for HTTP/1.1 clients); headers such as ``Range`` and ``Host`` pass
through unchanged, so the upstream's ``Location`` headers point back at the proxy.

Faults are chosen per request by rules the test adds at run time (thread-safe)::

    with FaultProxy("127.0.0.1", registry_port) as proxy:
        proxy.add_fault(status(429, {"Retry-After": "1"}), match=on("GET", "/blobs/"), times=1)
        proxy.add_fault(delay(0.2) + drop_after(100), match=on(path=r"/blobs/sha256:"))
        ...  # point the client at proxy.url
        assert proxy.stats.requests[("GET", "/v2/")] == 1

The first rule whose ``match(method, path, headers)`` is true and that has firings left
fires; ``path`` is the request path without the query string, ``headers`` an
``email.message.Message`` (case-insensitive ``.get``).  Faults combine with ``+``.

Every wait (delays, trickling, socket reads) is bounded; :meth:`FaultProxy.close` stops the
listener, aborts open connections and joins every thread it started.
"""

from __future__ import annotations

import collections
import http.client
import re
import select
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "Fault",
    "FaultProxy",
    "ProxyStats",
    "RequestRecord",
    "Rule",
    "corrupt",
    "delay",
    "drop_after",
    "on",
    "reset",
    "status",
    "trickle",
]

# Hop-by-hop headers (RFC 9110 7.6.1) are never forwarded; Expect is handled by the proxy.
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",
}
_IO_CHUNK = 64 * 1024
_SOCKET_TIMEOUT = 30.0


# --------------------------------------------------------------------------------------
# Faults


@dataclass(frozen=True)
class Fault:
    """What to do to one request.  Build with the helper functions; combine with ``+``."""

    delay: float = 0.0  # seconds to wait before doing anything else
    reset: bool = False  # abort the connection (RST) before any response
    status: int | None = None  # answer this status instead of forwarding
    status_headers: tuple[tuple[str, str], ...] = ()
    status_body: bytes = b""
    drop_after: int | None = None  # send headers + this many body bytes, then close
    trickle: float | None = None  # body bytes per second
    trickle_max_seconds: float = 30.0  # after this long the rest of the body goes at full speed
    corrupt: tuple[int, ...] = ()  # body offsets whose byte is flipped (XOR 0xFF)

    def __add__(self, other: Fault) -> Fault:
        if not isinstance(other, Fault):
            return NotImplemented
        default = Fault()
        merged: dict[str, Any] = {}
        for fld in fields(self):
            mine, theirs = getattr(self, fld.name), getattr(other, fld.name)
            if fld.name in ("corrupt", "delay"):
                merged[fld.name] = mine + theirs
            elif theirs != getattr(default, fld.name):
                merged[fld.name] = theirs
            else:
                merged[fld.name] = mine
        return Fault(**merged)

    def describe(self) -> str:
        default = Fault()
        parts = [
            f"{fld.name}={getattr(self, fld.name)!r}"
            for fld in fields(self)
            if fld.name not in ("status_headers", "status_body", "trickle_max_seconds")
            and getattr(self, fld.name) != getattr(default, fld.name)
        ]
        return "+".join(parts) or "none"


def drop_after(n_bytes: int) -> Fault:
    """Forward, but send only the headers and ``n_bytes`` of the body, then close the socket."""
    if n_bytes < 0:
        raise ValueError("n_bytes must be >= 0")
    return Fault(drop_after=n_bytes)


def status(code: int, headers: dict[str, str] | None = None, body: bytes = b"") -> Fault:
    """Answer ``code`` (with ``headers`` and ``body``) without contacting the upstream.

    E.g. ``status(503)`` or ``status(429, {"Retry-After": "1"})``.  The request body is read
    and discarded, so the client connection stays usable.
    """
    return Fault(status=code, status_headers=tuple((headers or {}).items()), status_body=body)


def trickle(bytes_per_sec: float, max_seconds: float = 30.0) -> Fault:
    """Forward, but write the response body at about ``bytes_per_sec``.

    Bounded: after ``max_seconds`` of trickling the remainder is sent at full speed.
    """
    if bytes_per_sec <= 0:
        raise ValueError("bytes_per_sec must be > 0")
    return Fault(trickle=float(bytes_per_sec), trickle_max_seconds=max_seconds)


def delay(seconds: float) -> Fault:
    """Wait ``seconds`` before forwarding (or before any other fault of a combination)."""
    if seconds < 0:
        raise ValueError("seconds must be >= 0")
    return Fault(delay=float(seconds))


def corrupt(offset: int) -> Fault:
    """Forward, but flip (XOR 0xFF) the response body byte at ``offset`` (if the body is
    long enough).  Headers, including Content-Length, are unchanged."""
    if offset < 0:
        raise ValueError("offset must be >= 0")
    return Fault(corrupt=(offset,))


def reset() -> Fault:
    """Abort the client connection (TCP RST) before sending any response."""
    return Fault(reset=True)


Matcher = Callable[[str, str, Any], bool]


def on(method: str | None = None, path: str | None = None) -> Matcher:
    """A matcher: ``method`` compared exactly (None = any), ``path`` a regex searched in the
    request path (None = any)."""
    rx = re.compile(path) if path is not None else None

    def match(m: str, p: str, _headers: Any) -> bool:
        return (method is None or m == method) and (rx is None or rx.search(p) is not None)

    return match


@dataclass
class Rule:
    fault: Fault
    match: Matcher | None
    times: int | None  # None = unlimited
    fired: int = 0

    @property
    def exhausted(self) -> bool:
        return self.times is not None and self.fired >= self.times


# --------------------------------------------------------------------------------------
# Statistics


@dataclass
class RequestRecord:
    method: str
    path: str  # without the query string
    target: str  # as sent by the client
    headers: dict[str, str]
    fault: Fault | None
    status: int | None = None  # None when no response was sent (reset, upstream failure)
    body_bytes: int = 0  # response body bytes written to the client


@dataclass
class ProxyStats:
    """A snapshot.  Counters are keyed by ``(method, path)``; missing keys read as 0."""

    requests: collections.Counter = field(default_factory=collections.Counter)
    bytes: collections.Counter = field(default_factory=collections.Counter)  # response body
    request_bytes: collections.Counter = field(default_factory=collections.Counter)
    faults: collections.Counter = field(default_factory=collections.Counter)  # fired
    connections: int = 0  # client connections accepted

    def total_requests(self, method: str | None = None, path: str | None = None) -> int:
        """Requests whose method equals ``method`` and whose path matches regex ``path``."""
        return _total(self.requests, method, path)

    def total_bytes(self, method: str | None = None, path: str | None = None) -> int:
        """Response body bytes sent for requests matching ``method`` and regex ``path``."""
        return _total(self.bytes, method, path)


def _total(counter: collections.Counter, method: str | None, path: str | None) -> int:
    rx = re.compile(path) if path is not None else None
    return sum(
        n
        for (m, p), n in counter.items()
        if (method is None or m == method) and (rx is None or rx.search(p))
    )


# --------------------------------------------------------------------------------------
# The proxy


class _Abort(Exception):
    """The client connection was closed on purpose (fault) or by close()."""


class _Server(socketserver.ThreadingMixIn, HTTPServer):
    daemon_threads = True  # a safety net only: close() joins every connection thread
    block_on_close = False
    allow_reuse_address = True

    proxy: FaultProxy

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name (getfqdn); not needed here.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def process_request(self, request: Any, client_address: Any) -> None:
        t = threading.Thread(
            target=self._run_connection,
            args=(request, client_address),
            name=f"fault-proxy-conn-{client_address[1]}",
            daemon=True,
        )
        with self.proxy._lock:
            if self.proxy._closing:
                self.shutdown_request(request)
                return
            self.proxy._threads.add(t)
            self.proxy._stats.connections += 1
        t.start()

    def _run_connection(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self.proxy._lock:
                self.proxy._threads.discard(threading.current_thread())

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Connection errors are expected (faults, close()); keep test output quiet.
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = _SOCKET_TIMEOUT
    server: _Server

    # -- connection lifetime -------------------------------------------------------

    def setup(self) -> None:
        super().setup()
        self.proxy = self.server.proxy
        self.upstream: http.client.HTTPConnection | None = None
        self.aborted = False
        with self.proxy._lock:
            self.proxy._client_socks.add(self.connection)

    def finish(self) -> None:
        try:
            if not self.aborted:
                super().finish()
        finally:
            self._close_upstream()
            with self.proxy._lock:
                self.proxy._client_socks.discard(self.connection)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (_Abort, OSError):
            self.close_connection = True

    def _upstream_conn(self) -> http.client.HTTPConnection:
        sock = self.upstream.sock if self.upstream is not None else None
        if sock is not None and select.select([sock], [], [], 0)[0]:
            # An idle keep-alive connection is readable only if the upstream closed it
            # (or sent garbage): don't send the next request into it.
            self._close_upstream()
        if self.upstream is None:
            self.upstream = http.client.HTTPConnection(
                self.proxy.upstream_host, self.proxy.upstream_port, timeout=_SOCKET_TIMEOUT
            )
            with self.proxy._lock:
                self.proxy._upstreams.add(self.upstream)
        return self.upstream

    def _close_upstream(self) -> None:
        if self.upstream is not None:
            with self.proxy._lock:
                self.proxy._upstreams.discard(self.upstream)
            self.upstream.close()
            self.upstream = None

    def _abort(self, rst: bool) -> None:
        """Close the client connection now: RST if ``rst``, else FIN after the data sent
        so far.  Never returns."""
        self.aborted = True
        self.close_connection = True
        sock = self.connection
        try:
            if rst:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        for f in (self.wfile, self.rfile):
            try:
                f.close()
            except OSError:
                pass
        sock.close()
        raise _Abort()

    # -- request handling ----------------------------------------------------------

    def _handle(self) -> None:
        method = self.command
        target = self.path
        path = target.split("?", 1)[0] if target.startswith("/") else urlsplit(target).path
        self.key = (method, path)
        fault = self.proxy._pick_fault(method, path, self.headers)
        self.record = RequestRecord(
            method=method,
            path=path,
            target=target,
            headers=dict(self.headers.items()),
            fault=fault,
        )
        self.proxy._record(self.record, self.key)
        f = fault or Fault()

        if f.delay and self.proxy._stop.wait(f.delay):
            self._abort(rst=True)
        if f.reset:
            self._abort(rst=True)
        if f.status is not None:
            for _ in self._request_body():  # drain: keeps the connection in sync
                pass
            self._answer(f)
            return
        self._forward(method, target, f)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _handle

    def _request_body(self) -> Iterator[bytes]:
        """The client's request body, streamed (Content-Length or chunked)."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            while True:
                line = self.rfile.readline(1024)
                if not line:
                    raise _Abort()
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return
                data = self._read_exact(size)
                self.rfile.readline(8)  # CRLF after the chunk data
                self._count_request_bytes(len(data))
                yield data
        else:
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining > 0:
                data = self.rfile.read(min(remaining, _IO_CHUNK))
                if not data:
                    raise _Abort()
                remaining -= len(data)
                self._count_request_bytes(len(data))
                yield data

    def _read_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            data = self.rfile.read(n - len(buf))
            if not data:
                raise _Abort()
            buf += data
        return bytes(buf)

    def _count_request_bytes(self, n: int) -> None:
        with self.proxy._lock:
            self.proxy._stats.request_bytes[self.key] += n

    def _answer(self, f: Fault) -> None:
        assert f.status is not None
        body = f.status_body
        headers = list(f.status_headers)
        if "content-length" not in {k.lower() for k, _ in headers}:
            headers.append(("Content-Length", str(len(body))))
        if self.close_connection:
            headers.append(("Connection", "close"))
        self._write_head(f.status, http.client.responses.get(f.status, "Fault"), headers)
        self.record.status = f.status
        if self.command != "HEAD" and body:
            _BodyWriter(self, f, chunked=False).write(body)

    def _write_head(self, code: int, reason: str, headers: list[tuple[str, str]]) -> None:
        lines = [f"HTTP/1.1 {code} {reason}\r\n"]
        lines += [f"{k}: {v}\r\n" for k, v in headers]
        lines.append("\r\n")
        self.wfile.write("".join(lines).encode("latin-1"))

    def _forward(self, method: str, target: str, f: Fault) -> None:
        conn = self._upstream_conn()
        req_chunked = "chunked" in (self.headers.get("Transfer-Encoding") or "").lower()
        try:
            conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            for k, v in self.headers.items():
                if k.lower() not in _HOP_BY_HOP:
                    conn.putheader(k, v)
            if req_chunked:
                conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            for data in self._request_body():
                conn.send(b"%x\r\n%s\r\n" % (len(data), data) if req_chunked else data)
            if req_chunked:
                conn.send(b"0\r\n\r\n")
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            self._close_upstream()
            if self.proxy._closing:
                self._abort(rst=True)
            body = f"fault_proxy: upstream error: {e}\n".encode()
            self._answer(Fault(status=502, status_body=body))
            return
        try:
            self._relay(method, resp, f)
        finally:
            if resp.will_close or not resp.isclosed():
                self._close_upstream()

    def _relay(self, method: str, resp: http.client.HTTPResponse, f: Fault) -> None:
        no_body = method == "HEAD" or resp.status in (204, 304) or 100 <= resp.status < 200
        headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP]
        chunked = False
        if not no_body and not any(k.lower() == "content-length" for k, _ in headers):
            if self.request_version == "HTTP/1.1":
                chunked = True
                headers.append(("Transfer-Encoding", "chunked"))
            else:
                self.close_connection = True
        if self.close_connection:
            headers.append(("Connection", "close"))
        self._write_head(resp.status, resp.reason, headers)
        self.record.status = resp.status
        if no_body:
            resp.read()
            return
        writer = _BodyWriter(self, f, chunked=chunked)
        while True:
            try:
                data = resp.read1(_IO_CHUNK)
            except (OSError, http.client.HTTPException):
                # The upstream died mid-body: pass the truncation on to the client.
                self._close_upstream()
                self._abort(rst=False)
            if not data:
                break
            writer.write(data)
        writer.finish()


class _BodyWriter:
    """Writes a response body to the client, applying drop_after / corrupt / trickle."""

    def __init__(self, handler: _Handler, fault: Fault, chunked: bool) -> None:
        self.h = handler
        self.f = fault
        self.chunked = chunked
        self.pos = 0
        self.trickle_start = time.monotonic()

    def write(self, data: bytes) -> None:
        f = self.f
        if f.corrupt:
            buf = bytearray(data)
            for off in f.corrupt:
                if self.pos <= off < self.pos + len(buf):
                    buf[off - self.pos] ^= 0xFF
            data = bytes(buf)
        if f.drop_after is not None and self.pos + len(data) >= f.drop_after:
            part = data[: f.drop_after - self.pos]
            if self.chunked:
                self._raw(b"%x\r\n" % len(data))  # announce the whole chunk, send a part
            if part:
                self._paced(part)
            self.h._abort(rst=False)
        if self.chunked:
            self._raw(b"%x\r\n" % len(data))
            self._paced(data)
            self._raw(b"\r\n")
        else:
            self._paced(data)

    def finish(self) -> None:
        if self.f.drop_after is not None and self.pos >= self.f.drop_after:
            self.h._abort(rst=False)
        if self.chunked:
            self._raw(b"0\r\n\r\n")

    def _raw(self, data: bytes) -> None:
        self.h.wfile.write(data)

    def _paced(self, data: bytes) -> None:
        f = self.f
        if f.trickle is None:
            self._emit(data)
            return
        step = max(1, int(f.trickle / 20))  # ~20 writes per second
        view = memoryview(data)
        for i in range(0, len(view), step):
            piece = view[i : i + step]
            elapsed = time.monotonic() - self.trickle_start
            if elapsed < f.trickle_max_seconds:
                # Sleep until this piece is due, never past the trickle deadline.
                due = (self.pos + len(piece)) / f.trickle
                wait = min(due - elapsed, f.trickle_max_seconds - elapsed)
                if wait > 0 and self.h.proxy._stop.wait(wait):
                    self.h._abort(rst=True)
            self._emit(bytes(piece))

    def _emit(self, data: bytes) -> None:
        # Count first, so a client that has the bytes also sees them in the stats.
        self._count(len(data))
        try:
            self.h.wfile.write(data)
        except BaseException:
            self._count(-len(data))
            raise
        self.pos += len(data)

    def _count(self, n: int) -> None:
        with self.h.proxy._lock:
            self.h.record.body_bytes += n
            self.h.proxy._stats.bytes[self.h.key] += n


class FaultProxy:
    """Reverse proxy from ``self.url`` (127.0.0.1, free port) to ``upstream_host:port``."""

    def __init__(self, upstream_host: str, upstream_port: int, *, host: str = "127.0.0.1"):
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        self._stats = ProxyStats()
        self._log: list[RequestRecord] = []
        self._threads: set[threading.Thread] = set()
        self._client_socks: set[socket.socket] = set()
        self._upstreams: set[http.client.HTTPConnection] = set()
        self._closing = False
        self._stop = threading.Event()
        self._server = _Server((host, 0), _Handler)
        self._server.proxy = self
        self.host, self.port = self._server.server_address[:2]
        self._serve_thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fault-proxy-accept",
            daemon=True,
        )
        self._serve_thread.start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def netloc(self) -> str:
        return f"{self.host}:{self.port}"

    # -- faults --------------------------------------------------------------------

    def add_fault(
        self, fault: Fault, match: Matcher | None = None, times: int | None = None
    ) -> Rule:
        """Apply ``fault`` to requests for which ``match(method, path, headers)`` is true
        (all requests if None), at most ``times`` times (None = unlimited).  Rules are
        tried in the order they were added."""
        rule = Rule(fault=fault, match=match, times=times)
        with self._lock:
            self._rules.append(rule)
        return rule

    def remove_fault(self, rule: Rule) -> None:
        with self._lock:
            if rule in self._rules:
                self._rules.remove(rule)

    def clear_faults(self) -> None:
        with self._lock:
            self._rules.clear()

    def _pick_fault(self, method: str, path: str, headers: Any) -> Fault | None:
        with self._lock:
            rules = [r for r in self._rules if not r.exhausted]
        for rule in rules:
            if rule.match is None or rule.match(method, path, headers):
                with self._lock:
                    if rule.exhausted:  # lost a race with another connection
                        continue
                    rule.fired += 1
                    self._stats.faults[rule.fault.describe()] += 1
                return rule.fault
        return None

    # -- statistics ----------------------------------------------------------------

    def _record(self, record: RequestRecord, key: tuple[str, str]) -> None:
        with self._lock:
            self._stats.requests[key] += 1
            self._log.append(record)

    @property
    def stats(self) -> ProxyStats:
        """A consistent snapshot of the counters."""
        with self._lock:
            s = self._stats
            return ProxyStats(
                requests=collections.Counter(s.requests),
                bytes=collections.Counter(s.bytes),
                request_bytes=collections.Counter(s.request_bytes),
                faults=collections.Counter(s.faults),
                connections=s.connections,
            )

    @property
    def log(self) -> list[RequestRecord]:
        """Every request seen so far, in arrival order (records of requests still in
        flight may yet change)."""
        with self._lock:
            return list(self._log)

    def reset_stats(self) -> None:
        with self._lock:
            self._stats = ProxyStats()
            self._log.clear()

    # -- lifetime ------------------------------------------------------------------

    def close(self, timeout: float = 10.0) -> None:
        """Stop accepting, abort open connections, join all threads (bounded by timeout).

        Raises RuntimeError if a thread is still running after ``timeout``."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        self._serve_thread.join(timeout)
        with self._lock:
            socks = list(self._client_socks)
            upstreams = list(self._upstreams)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for conn in upstreams:
            sock = conn.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                threads = list(self._threads)
            if not threads:
                break
            for t in threads:
                t.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self.threads()]
        if alive:
            raise RuntimeError(f"fault proxy threads still running after close: {alive}")

    def threads(self) -> list[threading.Thread]:
        """Threads the proxy started that are still running (for leak assertions)."""
        with self._lock:
            out = [t for t in self._threads if t.is_alive()]
        if self._serve_thread.is_alive():
            out.append(self._serve_thread)
        return out

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
