"""In-process fault injection for RegistryClient tests (no proxy): :class:`Tap` wraps a
client's urllib3 pool, records every request, and lets a test rewrite request headers and
replace responses, e.g. with :class:`Broken`, a body that fails after N bytes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from urllib3.exceptions import ProtocolError


@dataclass
class Call:
    method: str
    url: str
    headers: dict[str, str]
    status: int = 0


class Broken:
    """A response whose body breaks after ``limit`` bytes: ``mode="error"`` raises a
    ProtocolError (a reset connection), ``mode="short"`` just ends (a truncated body)."""

    def __init__(self, resp: Any, limit: int, mode: str = "error") -> None:
        self._resp = resp
        self._left = limit
        self._mode = mode

    def read(self, amt: int | None = None, *args: Any, **kw: Any) -> bytes:
        if self._left <= 0:
            if self._mode == "error":
                raise ProtocolError("injected: connection reset by peer")
            return b""
        n = self._left if amt is None else min(amt, self._left)
        data = self._resp.read(n, *args, **kw)
        self._left -= len(data)
        return bytes(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._resp, name)


class Tap:
    """Stands in for ``client._http``. ``rewrite(call)`` may change ``call.headers`` before
    the request goes out; ``respond(call, resp)`` may return a replacement response."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.real = client._http
        self.calls: list[Call] = []
        self.rewrite: Callable[[Call], None] | None = None
        self.respond: Callable[[Call, Any], Any] | None = None
        client._http = self

    def request(self, method: str, url: str, headers: dict[str, str] | None = None,
                **kw: Any) -> Any:
        call = Call(method, url, dict(headers or {}))
        if self.rewrite is not None:
            self.rewrite(call)
        self.calls.append(call)
        resp = self.real.request(method, url, headers=call.headers, **kw)
        call.status = resp.status
        if self.respond is not None:
            resp = self.respond(call, resp) or resp
        return resp

    def gets(self) -> list[Call]:
        return [c for c in self.calls if c.method == "GET"]

    def close(self) -> None:
        self.client._http = self.real

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)
