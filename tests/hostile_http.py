"""A small crafted HTTP server on 127.0.0.1 for replaying hostile-registry attacks.

    def route(h: Handler) -> bool:          # True: handled
        if h.path.startswith("/v2/x/referrers/"):
            h.send_head(200, {"Content-Type": OCI_INDEX})   # no length: chunked
            h.stream(b"x" * 65536, seconds=10)              # endless body, bounded by time
            return True
        return False

    with HostileServer(route) as srv:
        srv.host -> "127.0.0.1:PORT";  srv.requests -> [(method, path), ...]
        srv.sent -> body bytes written (what a client made the server send)

Everything the server does is bounded: bodies stop after ``max_bytes`` or ``seconds``, and
once the client stops reading (the write fails). ``close`` stops the listener and joins it.
Unmatched requests get 404. ``tls=(cert, key)`` serves HTTPS; ``sniff_plain`` additionally
answers plain-HTTP requests that arrive on the TLS port (recording their headers), which is
how a test sees credentials a client would send in clear text.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _any(self) -> None:
        srv = self.server.owner
        with srv.lock:
            srv.requests.append((self.command, self.path))
            srv.headers.append(dict(self.headers.items()))
        if not srv.route(self):
            self.send_head(404, {"Content-Type": "application/json"}, length=2)
            self.write(b"{}")

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _any

    def send_head(self, status: int, headers: dict[str, str] | None = None,
                  length: int | None = None) -> None:
        """Status line and headers; ``length`` None: a chunked body follows."""
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if length is None:
            self.send_header("Transfer-Encoding", "chunked")
            self._chunked = True
        else:
            self.send_header("Content-Length", str(length))
            self._chunked = False
        self.end_headers()

    def write(self, data: bytes) -> bool:
        """One piece of the body; False once the client is gone or the bound is reached."""
        srv = self.server.owner
        if srv.sent >= srv.max_bytes:
            return False
        try:
            if getattr(self, "_chunked", False):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            else:
                self.wfile.write(data)
            self.wfile.flush()
        except OSError:
            return False
        with srv.lock:
            srv.sent += len(data)
        return True

    def end(self) -> None:
        if getattr(self, "_chunked", False):
            try:
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            except OSError:
                pass

    def stream(self, piece: bytes, seconds: float = 10.0, every: float = 0.0) -> None:
        """Writes ``piece`` again and again (``every`` seconds apart) until the client stops
        reading, ``max_bytes`` or ``seconds``."""
        stop = time.monotonic() + seconds
        while time.monotonic() < stop and not self.server.owner.closing.is_set():
            if not self.write(piece):
                break
            if every:
                self.server.owner.closing.wait(every)
        self.close_connection = True

    def stall(self, seconds: float = 30.0) -> None:
        """Sends nothing (the request was read) for ``seconds`` or until close."""
        self.server.owner.closing.wait(seconds)
        self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: HostileServer


class HostileServer:
    def __init__(self, route: Callable[[Handler], bool], *, max_bytes: int = 256 << 20,
                 tls: tuple[Path, Path] | None = None, sniff_plain: bool = False) -> None:
        self.route = route
        self.max_bytes = max_bytes
        self.requests: list[tuple[str, str]] = []
        self.headers: list[dict[str, str]] = []
        self.plain_headers: list[dict[str, str]] = []  # plain-HTTP requests on a TLS port
        self.sent = 0
        self.lock = threading.Lock()
        self.closing = threading.Event()
        self._srv = _Server(("127.0.0.1", 0), Handler)
        self._srv.owner = self
        self.port = int(self._srv.server_address[1])
        self.host = f"127.0.0.1:{self.port}"
        self.tls = tls
        self.url = f"{'https' if tls else 'http'}://{self.host}"
        if tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(tls[0]), str(tls[1]))
            plain_ok = sniff_plain
            owner = self

            def get_request() -> tuple[Any, Any]:
                sock, addr = socket.socket.accept(self._srv.socket)
                sock.settimeout(10)
                first = sock.recv(1, socket.MSG_PEEK)
                if first == b"\x16" or not plain_ok:  # a TLS ClientHello
                    return ctx.wrap_socket(sock, server_side=True), addr
                owner._record_plain(sock)
                raise OSError("plain HTTP on the TLS port (recorded)")

            self._srv.get_request = get_request  # type: ignore[method-assign]
        self._thread = threading.Thread(target=self._srv.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def _record_plain(self, sock: socket.socket) -> None:
        data = b""
        try:
            while b"\r\n\r\n" not in data and len(data) < 65536:
                got = sock.recv(4096)
                if not got:
                    break
                data += got
            sock.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n"
                         b"Connection: close\r\n\r\n")
        except OSError:
            pass
        finally:
            sock.close()
        lines = data.decode("latin-1").split("\r\n")
        hdrs = {}
        for line in lines[1:]:
            k, sep, v = line.partition(":")
            if sep:
                hdrs[k.strip()] = v.strip()
        with self.lock:
            self.plain_headers.append({"request-line": lines[0], **hdrs})

    def count(self, method: str, part: str) -> int:
        with self.lock:
            return sum(1 for m, p in self.requests if m == method and part in p)

    def close(self) -> None:
        self.closing.set()
        self._srv.shutdown()
        self._srv.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> HostileServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
