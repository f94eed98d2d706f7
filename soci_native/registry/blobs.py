"""Reading blobs: HEAD, streams that resume where they broke off, whole blobs, ranges."""

from __future__ import annotations

import io
import re
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import urllib3
from urllib3.exceptions import HTTPError as _U3HTTPError

from soci_native.oci import (
    check_digest,
)
from soci_native.registry.errors import (
    AuthError,
    NotFound,
    RangeNotSatisfiable,
    RegistryError,
    SizeMismatch,
    TransientError,
)
from soci_native.registry.http import (
    _CHUNK,
    _MAX_RANGES_PER_REQUEST,
    _SKIP_READ_MAX,
    _active_deadline,
    _check_hash,
    _content_range,
    _Deadline,
    _discard,
    _hash_of,
    _media_type,
    _quote_repo,
    _read_capped,
    _within_deadline,
)
from soci_native.registry.options import (
    RegistryOptions,
)
from soci_native.registry.transport import (
    Transport,
)


class Blobs(Transport):
    """Blob reads: HEAD, streams (:class:`BlobReader`), whole blobs, single and multi-range
    reads."""

    def __init__(self, host: str, options: RegistryOptions | None = None, *,
                 credential_scope: str | None = None) -> None:
        super().__init__(host, options, credential_scope=credential_scope)
        self._single_range = False
        self._blob_urls: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    @property
    def single_range_mode(self) -> bool:
        """True once the registry has refused a multi-range request (then every range
        request is a single range)."""
        return self._single_range

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

    def __init__(self, client: Blobs, repo: str, digest: str, *,
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
