"""Uploading blobs: monolithic and chunked, skipped when present, cross-repository mounts."""

from __future__ import annotations

import hashlib
import io
import os
import re
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal, cast
from urllib.parse import urlencode, urljoin

from soci_native.oci import (
    ImageError,
    check_digest,
)
from soci_native.registry.blobs import (
    Blobs,
)
from soci_native.registry.errors import (
    DigestMismatch,
    NotFound,
    RangeNotSatisfiable,
    RegistryError,
    TransientError,
)
from soci_native.registry.http import (
    Body,
    _quote_repo,
)


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



class Uploads(Blobs):
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
        with self._operation(size):  # a big blob may take its time, each MiB within timeout
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
                with self._operation(len(chunk)):
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
