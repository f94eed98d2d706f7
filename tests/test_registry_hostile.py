"""Hostile registries (issue 8 §3): every body read into memory is capped, pagination is
bounded and loops are caught, and every wait is bounded. Each test replays an attack against
a crafted HTTP server on 127.0.0.1 (tests/hostile_http.py) and asserts what the client read,
how many requests it made, the peak memory of a subprocess and the time taken (generous
guards only)."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import pytest
from hostile_http import Handler, HostileServer
from peak_rss import split_peak, wrapped

from soci_native import index
from soci_native.images import OCI_INDEX, OCI_MANIFEST
from soci_native.registry import (
    MAX_LIST_PAGES,
    MAX_LIST_SIZE,
    MAX_MANIFEST_SIZE,
    RegistryClient,
    RegistryError,
    RegistryOptions,
    SizeMismatch,
    TransientError,
)

CLI = [sys.executable, "-m", "soci_native.cli"]
MiB = 1 << 20


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Crafted:
    """The documents of one small image with a v1 SOCI index whose zTOC is ``ztoc_size``
    bytes by its descriptor; ``route`` serves them, ``hostile`` overrides by path part."""

    def __init__(self, ztoc_size: int = 1000) -> None:
        self.config = json.dumps({"architecture": "amd64", "os": "linux",
                                  "rootfs": {"type": "layers", "diff_ids": []}}).encode()
        self.manifest = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": sha(self.config), "size": len(self.config)},
            "layers": []}).encode()
        self.ztoc = b"z" * ztoc_size
        self.index = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": index.INDEX_V1, "digest": index.EMPTY_CONFIG_DIGEST,
                       "size": 2},
            "layers": [{"mediaType": index.ZTOC_MEDIA_TYPE, "digest": sha(self.ztoc),
                        "size": ztoc_size}],
            "subject": {"mediaType": OCI_MANIFEST, "digest": sha(self.manifest),
                        "size": len(self.manifest)}}).encode()
        self.referrers = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": sha(self.index), "size": len(self.index),
             "artifactType": index.INDEX_V1}]}).encode()
        self.hostile: dict[str, Callable[[Handler], None]] = {}

    def docs(self) -> dict[str, tuple[str, bytes]]:
        m = sha(self.manifest)
        return {
            "/v2/": ("application/json", b"{}"),
            "/v2/r/manifests/v1": (OCI_MANIFEST, self.manifest),
            f"/v2/r/manifests/{m}": (OCI_MANIFEST, self.manifest),
            f"/v2/r/blobs/{sha(self.config)}": ("application/octet-stream", self.config),
            f"/v2/r/referrers/{m}": (OCI_INDEX, self.referrers),
            f"/v2/r/manifests/{sha(self.index)}": (OCI_MANIFEST, self.index),
            f"/v2/r/blobs/{sha(self.ztoc)}": ("application/octet-stream", self.ztoc),
        }

    def route(self, h: Handler) -> bool:
        path = h.path.split("?", 1)[0]
        for part, fn in self.hostile.items():
            if part in path:
                fn(h)
                return True
        doc = self.docs().get(path)
        if doc is None:
            return False
        h.send_head(200, {"Content-Type": doc[0], "Docker-Content-Digest": sha(doc[1])},
                    length=len(doc[1]))
        if h.command != "HEAD":
            h.write(doc[1])
        return True


def endless(content_type: str, head: bytes, piece: bytes, length: int | None = None,
            seconds: float = 20.0, every: float = 0.0) -> Callable[[Handler], None]:
    """A body that never ends (chunked unless ``length`` is announced)."""
    def fn(h: Handler) -> None:
        h.send_head(200, {"Content-Type": content_type}, length=length)
        if h.command == "HEAD" or not h.write(head):
            return
        h.stream(piece, seconds=seconds, every=every)
    return fn


def run_peak(args: list[str], timeout: float = 120.0,
             env: dict[str, str] | None = None) -> tuple[int, str, float, float]:
    """(exit status, stderr, peak RSS in MiB, seconds) of a subprocess, its peak measured
    by a fresh wrapper (tests/peak_rss.py: pytest's own peak would carry over otherwise)."""
    t0 = time.monotonic()
    r, w = os.pipe()
    cmd = wrapped(args)
    pid = os.posix_spawn(cmd[0], cmd, env or dict(os.environ), setsid=True,
                         file_actions=[(os.POSIX_SPAWN_DUP2, w, 2),
                                       (os.POSIX_SPAWN_CLOSE, r)])
    os.close(w)
    err = b""
    deadline = time.monotonic() + timeout
    os.set_blocking(r, False)
    status = None
    while True:
        try:
            chunk = os.read(r, 65536)
            if chunk:
                err += chunk
        except BlockingIOError:
            pass
        wpid, st = os.waitpid(pid, os.WNOHANG)
        if wpid == pid:
            status = st
            break
        if time.monotonic() > deadline:
            os.killpg(pid, 9)
            os.waitpid(pid, 0)
            raise AssertionError(f"{args} did not finish within {timeout}s")
        time.sleep(0.02)
    while True:
        try:
            chunk = os.read(r, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        err += chunk
    os.close(r)
    text, peak_kib = split_peak(err.decode(errors="replace"))
    return os.waitstatus_to_exitcode(status), text, peak_kib / 1024, time.monotonic() - t0


def index_pull(srv: HostileServer, root: Path, *extra: str) -> tuple[int, str, float, float]:
    return run_peak([*CLI, "--root", str(root), "index", "pull", *extra,
                     f"docker://{srv.host}/r:v1"])


# ---- bodies read into memory are capped ------------------------------------------------------

def test_endless_referrers_response_is_refused_in_bounded_memory(tmp_path: Path) -> None:
    c = Crafted()
    c.hostile["/referrers/"] = endless(
        OCI_INDEX, b'{"schemaVersion":2,"manifests":[',
        b'{"mediaType":"a","digest":"sha256:' + b"0" * 64 + b'","size":1},' * 512)
    with HostileServer(c.route) as srv:
        rc, err, peak, secs = index_pull(srv, tmp_path / "root")
    assert rc == 1 and "Traceback" not in err
    assert f"more than the {MAX_LIST_SIZE} allowed" in err or "larger than" in err, err
    assert srv.sent < MAX_LIST_SIZE + 16 * MiB  # the client stopped reading at the cap
    assert peak < 150, f"peak RSS {peak:.0f} MiB"
    assert secs < 60


def test_referrers_with_a_huge_content_length_are_refused_unread(tmp_path: Path) -> None:
    c = Crafted()
    c.hostile["/referrers/"] = endless(OCI_INDEX, b"{", b" " * 65536, length=50 << 30)
    with HostileServer(c.route) as srv, RegistryClient(srv.host) as cl:
        with pytest.raises(RegistryError, match="has 53687091200 bytes, more than"):
            cl.referrers("r", sha(c.manifest), index.INDEX_V1)
        assert srv.sent < 16 * MiB


def test_endless_manifest_is_refused_at_the_cap() -> None:
    c = Crafted()
    c.hostile["/manifests/v1"] = endless(OCI_MANIFEST, b"{", b" " * 65536)
    with HostileServer(c.route) as srv, RegistryClient(srv.host) as cl:
        with pytest.raises(RegistryError, match="manifest is larger than"):
            cl.get_manifest("r", "v1")
        assert srv.sent < MAX_MANIFEST_SIZE + 16 * MiB


def test_ztoc_blob_is_no_larger_than_its_descriptor(tmp_path: Path) -> None:
    c = Crafted(ztoc_size=1000)
    ztoc_path = f"/blobs/{sha(c.ztoc)}"
    c.hostile[ztoc_path] = endless("application/octet-stream", b"z" * 1000, b"z" * 65536)
    with HostileServer(c.route) as srv:
        rc, err, peak, _ = index_pull(srv, tmp_path / "root")
        # the first 1000 bytes are the zTOC: they are taken, the rest is never read
        assert rc == 0, err
        assert (tmp_path / "root" / "content" / "blobs" / "sha256" / sha(c.ztoc)[7:]).read_bytes() \
            == c.ztoc
        assert srv.sent < 16 * MiB and peak < 150
        # other bytes, no length: refused after 1000 bytes
        c.hostile[ztoc_path] = endless("application/octet-stream", b"y", b"y" * 65536)
        rc, err, peak, _ = index_pull(srv, tmp_path / "root2")
        assert rc == 1 and "Traceback" not in err and "hashes to" in err, err
        assert srv.sent < 32 * MiB and peak < 150
        # announced larger than the descriptor: refused before the body
        c.hostile[ztoc_path] = endless("application/octet-stream", b"z", b"z" * 65536,
                                       length=50 << 30)
        before = srv.sent
        rc, err, _, _ = index_pull(srv, tmp_path / "root3")
        assert rc == 1 and "has 53687091200 bytes, expected 1000" in err, err
        assert srv.sent - before < 16 * MiB
    for root in ("root2", "root3"):  # nothing half-written left behind
        blobs = tmp_path / root / "content" / "blobs" / "sha256"
        assert not any(sha(c.ztoc)[7:] in p.name or "tmp" in p.name for p in blobs.iterdir())


def test_index_descriptor_size_is_capped(tmp_path: Path) -> None:
    from soci_native.remote import MAX_ARTIFACT_SIZE

    c = Crafted(ztoc_size=1000)
    doc = json.loads(c.index)
    doc["layers"][0]["size"] = MAX_ARTIFACT_SIZE + 1
    c.index = json.dumps(doc).encode()
    c.referrers = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": sha(c.index), "size": len(c.index),
         "artifactType": index.INDEX_V1}]}).encode()
    with HostileServer(c.route) as srv:
        rc, err, _, _ = index_pull(srv, tmp_path / "root")
    assert rc == 1 and f"not between 0 and {MAX_ARTIFACT_SIZE} bytes" in err, err
    assert srv.count("GET", sha(c.ztoc)) == 0


def test_blob_without_length_is_bounded_by_max_size() -> None:
    blob = b"b" * 1000
    c = Crafted()
    c.hostile[sha(b"short")] = endless("application/octet-stream", b"short", b"",
                                       length=5, seconds=0)
    c.hostile["/blobs/"] = endless("application/octet-stream", blob, b"b" * 65536)
    with HostileServer(c.route) as srv, RegistryClient(srv.host) as cl:
        with pytest.raises(RegistryError, match="more than 100000 bytes"):
            cl.read_blob("r", sha(blob), max_size=100000)
        with pytest.raises(SizeMismatch, match="has 5 bytes, expected 1000000"):
            b"".join(cl.read_blob_chunks("r", sha(b"short"), 10 ** 6))
        assert srv.sent < 16 * MiB


# ---- pagination --------------------------------------------------------------------------------

def _page(manifests: int = 1) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": sha(b"%d" % i), "size": 1,
         "artifactType": "x"} for i in range(manifests)]}).encode()


def test_self_referencing_next_link_is_a_loop() -> None:
    page = _page()

    def route(h: Handler) -> bool:
        h.send_head(200, {"Content-Type": OCI_INDEX,
                          "Link": f'<{h.path}>; rel="next"'}, length=len(page))
        h.write(page)
        return True

    with HostileServer(route) as srv, RegistryClient(srv.host) as cl:
        with pytest.raises(RegistryError, match="next-page link loops back"):
            cl.referrers_api("r", sha(b"s"))
        assert srv.count("GET", "/referrers/") == 1
        with pytest.raises(RegistryError, match="loops back"):
            cl.list_tags("r")


def test_endless_distinct_pages_stop_at_the_page_cap() -> None:
    page = _page()

    def route(h: Handler) -> bool:
        n = int(h.path.rsplit("p=", 1)[1]) if "p=" in h.path else 0
        base = h.path.split("?", 1)[0]
        h.send_head(200, {"Content-Type": OCI_INDEX,
                          "Link": f'<{base}?p={n + 1}>; rel="next"'}, length=len(page))
        h.write(page)
        return True

    with HostileServer(route) as srv, RegistryClient(srv.host) as cl:
        t0 = time.monotonic()
        with pytest.raises(RegistryError, match=f"more than {MAX_LIST_PAGES} pages"):
            cl.referrers_api("r", sha(b"s"))
        assert srv.count("GET", "/referrers/") == MAX_LIST_PAGES
        assert time.monotonic() - t0 < 60


def test_pages_are_bounded_in_total() -> None:
    page = _page(20000)  # ~2.6 MB a page: under the page cap, over the total in a few

    def route(h: Handler) -> bool:
        n = int(h.path.rsplit("p=", 1)[1]) if "p=" in h.path else 0
        h.send_head(200, {"Content-Type": OCI_INDEX,
                          "Link": f'<{h.path.split("?")[0]}?p={n + 1}>; rel="next"'},
                    length=len(page))
        h.write(page)
        return True

    with HostileServer(route) as srv, RegistryClient(srv.host) as cl:
        with pytest.raises(RegistryError, match="bytes over"):
            cl.referrers_api("r", sha(b"s"), "x")
        assert srv.count("GET", "/referrers/") <= 8


# ---- timeouts and deadlines ----------------------------------------------------------------

def _stalling(part: str, how: str) -> Callable[[Handler], bool]:
    def route(h: Handler) -> bool:
        if h.path == "/v2/":
            h.send_head(200, {"Content-Type": "application/json"}, length=2)
            h.write(b"{}")
        elif part in h.path and how == "headers":
            h.stall(60)
        elif part in h.path and how == "trickle":
            h.send_head(200, {"Content-Type": OCI_MANIFEST}, length=1 << 20)
            h.stream(b"{", seconds=60, every=0.2)  # a byte now and then: never idle
        else:
            return False
        return True
    return route


@pytest.mark.parametrize("how", ["headers", "trickle"])
def test_a_stalling_registry_gives_a_clear_error_in_bounded_time(how: str,
                                                                 tmp_path: Path) -> None:
    with HostileServer(_stalling("/manifests/", how)) as srv:
        opts = RegistryOptions(timeout=2, read_timeout=1, max_attempts=3)
        with RegistryClient(srv.host, opts) as cl:
            t0 = time.monotonic()
            with pytest.raises(TransientError) as e:
                cl.get_manifest("r", "v1")
            took = time.monotonic() - t0
        assert took < 10, took
        msg = str(e.value)
        if how == "trickle":  # never idle: only the deadline ends it
            assert msg.endswith("/v2/r/manifests/v1: no complete answer within 2s "
                                "(--timeout)"), msg
        else:
            assert "(--timeout)" in msg or "timed out" in msg, msg
        # the CLI: one line, non-zero, bounded
        rc, err, _, secs = run_peak([*CLI, "--root", str(tmp_path / "root"), "index", "pull",
                                     "--timeout", "3", "--read-timeout", "1",
                                     f"docker://{srv.host}/r:v1"])
    assert rc == 1 and "Traceback" not in err and err.count("\n") == 1, err
    assert "--timeout" in err or "timed out" in err, err
    assert secs < 30, secs


def test_closing_the_client_ends_a_hanging_request() -> None:
    import threading

    with HostileServer(_stalling("/manifests/", "trickle")) as srv:
        cl = RegistryClient(srv.host, RegistryOptions(timeout=300, read_timeout=300))
        got: list[BaseException] = []

        def fetch() -> None:
            try:
                cl.get_manifest("r", "v1")
            except BaseException as e:
                got.append(e)

        t = threading.Thread(target=fetch)
        t.start()
        time.sleep(0.5)
        t0 = time.monotonic()
        cl.close()
        t.join(timeout=30)
        assert not t.is_alive() and time.monotonic() - t0 < 10
        assert got and isinstance(got[0], RegistryError), got


def test_an_upload_gets_its_deadline_per_mib() -> None:
    """A 3 MiB upload to a registry that takes it in at ~1 MiB per 0.8 s: longer than
    --timeout (1 s) in all, well within it per MiB, so it goes through."""
    data = os.urandom(3 << 20)

    def route(h: Handler) -> bool:
        if h.command == "HEAD":
            h.send_head(404, length=0)
        elif h.command == "POST":
            h.send_head(202, {"Location": "/v2/r/blobs/uploads/u1"}, length=0)
        elif h.command == "PUT":
            left = int(h.headers["Content-Length"])
            got = hashlib.sha256()
            while left:
                chunk = h.rfile.read(min(left, 256 << 10))
                if not chunk:
                    break
                got.update(chunk)
                left -= len(chunk)
                time.sleep(0.2)  # ~1.25 MiB/s
            ok = "sha256:" + got.hexdigest() in urllib.parse.unquote(h.path)
            h.send_head(201 if ok else 400, {"Docker-Content-Digest": sha(data)}, length=0)
        else:
            return False
        return True

    with HostileServer(route) as srv:
        with RegistryClient(srv.host, RegistryOptions(timeout=1, plain_http=True)) as cl:
            t0 = time.monotonic()
            assert cl.push_blob("r", data).status == "uploaded"
            assert time.monotonic() - t0 > 1.5  # longer than one --timeout in all
