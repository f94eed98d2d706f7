"""soci_native.refs and soci_native.registry against a real registry: Debian's
``docker-registry`` (CNCF distribution 2.8) started by tests/reg_server.py, images built by
umoci and pushed/read back by skopeo as independent clients. Faults come from
tests/fault_proxy.py (an HTTP proxy) and tests/reg_faults.py (in-process response wrappers);
bearer tokens from tests/token_server.py. Only 127.0.0.1 is contacted.

Distribution 2.8 facts the tests rely on (checked by them): multi-range GETs are answered
with ``multipart/byteranges`` (Go's ServeContent), ranges past the end are dropped or give
416 with ``Content-Range: bytes */SIZE``, and there is no referrers API (404).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import os
import random
import shutil
import sysconfig
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import img_build as ib
import pytest
import reg_server
from reg_faults import Broken, Tap
from tls_cert import self_signed as _self_signed

import soci_native as sn
from soci_native import build
from soci_native.images import (
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Descriptor,
    ImageError,
    Platform,
    go_json,
    open_image,
    resolve,
)
from soci_native.refs import InvalidReference, Reference, looks_like_registry_ref
from soci_native.registry import (
    AuthError,
    DigestMismatch,
    NotFound,
    RangeNotSatisfiable,
    RegistryClient,
    RegistryError,
    RegistryOptions,
    RegistrySource,
    SizeMismatch,
    TLSError,
    TransientError,
    _parse_challenge,
    _parse_multipart,
    _Retry,
    _retry_after,
    find_credentials,
)
from soci_native.store import Store

STDLIB = Path(sysconfig.get_paths()["stdlib"])
TOOLS = [t for t in ("docker-registry", "skopeo", "umoci") if shutil.which(t) is None]
SOCI_V1 = "application/vnd.amazon.soci.index.v1+json"


def need_tools() -> None:
    if TOOLS:
        msg = f"needs {', '.join(TOOLS)} (apt-get install docker-registry skopeo umoci)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def skopeo(*args: str) -> bytes:
    return ib.skopeo(*args)


# ---- references (no registry) ----------------------------------------------------------------

HEX = "a" * 64
REFS = [
    ("docker://localhost:5000/a/b:t", "localhost:5000", "a/b", "t", None),
    ("localhost/x", "localhost", "x", None, None),
    ("alpine", "docker.io", "library/alpine", None, None),
    ("docker://alpine:3.19", "docker.io", "library/alpine", "3.19", None),
    ("user/img", "docker.io", "user/img", None, None),
    ("index.docker.io/library/x:1", "docker.io", "library/x", "1", None),
    ("docker.io/x", "docker.io", "library/x", None, None),
    (f"ghcr.io/org/repo:tag@sha256:{HEX}", "ghcr.io", "org/repo", "tag", f"sha256:{HEX}"),
    (f"127.0.0.1:5000/x@sha256:{HEX}", "127.0.0.1:5000", "x", None, f"sha256:{HEX}"),
    ("[::1]:5000/x/y:z", "[::1]:5000", "x/y", "z", None),
    ("Registry/x", "Registry", "x", None, None),
    ("my.reg/a__b/c--d/e.f:T_1.2-x", "my.reg", "a__b/c--d/e.f", "T_1.2-x", None),
    (f"reg.io:443/deep/er/path:v@sha512:{'b' * 128}", "reg.io:443", "deep/er/path", "v",
     f"sha512:{'b' * 128}"),
]


@pytest.mark.parametrize("text,host,repo,tag,digest", REFS)
def test_reference_parse_and_round_trip(text: str, host: str, repo: str, tag: str | None,
                                        digest: str | None) -> None:
    r = Reference.parse(text)
    assert (r.host, r.repository, r.tag, r.digest) == (host, repo, tag, digest)
    assert Reference.parse(str(r)) == r
    assert Reference.parse("docker://" + str(r)) == r
    assert r.reference == (digest or tag or "latest")
    assert r.api_host == ("registry-1.docker.io" if host == "docker.io" else host)


@pytest.mark.parametrize("text,why", [
    ("", "empty"),
    ("docker://", "empty"),
    ("docker.io/Upper/x", "lowercase"),
    ("a/b:bad tag", "bad tag"),
    ("a/b:.x", "bad tag"),
    ("a/b:", "bad tag"),
    ("a/b:" + "t" * 129, "bad tag"),
    ("a/b@sha256:abc", "bad digest"),
    (f"a/b@sha256:{'A' * 64}", "bad digest"),
    (f"a/b@md5:{HEX}", "bad digest"),
    ("a//b", "bad repository component ''"),
    ("-x/y", "bad repository component '-x'"),
    ("host:5000/", "bad repository component ''"),
    ("a/b_", "bad repository component 'b_'"),
    ("bad_host.io:x/y", "bad registry host"),
    ("r.io/" + "/".join(["abcdefghij"] * 25), "longer than 255"),
])
def test_reference_errors(text: str, why: str) -> None:
    with pytest.raises(InvalidReference, match=why):
        Reference.parse(text)


def test_bare_registry_reference_detection() -> None:
    assert looks_like_registry_ref("localhost:5000/a/b:t")
    assert looks_like_registry_ref("ghcr.io/org/repo")
    assert looks_like_registry_ref("localhost/x")
    assert not looks_like_registry_ref("alpine:3.19")  # a path, or docker://alpine:3.19
    assert not looks_like_registry_ref("user/img")
    assert not looks_like_registry_ref("./layout/dir")
    assert not looks_like_registry_ref("dir.d/Layout:v1")  # not a valid repository


# ---- protocol pieces (no registry) -----------------------------------------------------------

def test_challenge_parsing() -> None:
    scheme, p = _parse_challenge('Bearer realm="https://auth.example/token",service="reg.io",'
                                 'scope="repository:a/b:pull,push"')
    assert scheme == "bearer"
    assert p == {"realm": "https://auth.example/token", "service": "reg.io",
                 "scope": "repository:a/b:pull,push"}
    assert _parse_challenge('Basic realm="say \\"hi\\""') == ("basic", {"realm": 'say "hi"'})
    assert _parse_challenge("Bearer realm=x, error=insufficient_scope") == \
        ("bearer", {"realm": "x", "error": "insufficient_scope"})


def test_retry_after_and_backoff_budget() -> None:
    assert _retry_after("3") == 3.0
    assert _retry_after(None) is None and _retry_after("soon") is None
    future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 < (_retry_after(future) or 0) <= 31

    sleeps: list[float] = []
    opts = RegistryOptions(max_attempts=5, backoff_base=0.5, backoff_cap=1.0,
                           timeout=100)
    r = _Retry(opts, sleeps.append)
    for _ in range(4):
        r.wait("GET x")
    with pytest.raises(TransientError, match="gave up after 5 attempts"):
        r.wait("GET x")
    assert len(sleeps) == 4
    assert 0 <= sleeps[0] <= 0.5 and all(0 <= s <= 1.0 for s in sleeps)  # full jitter, capped
    r = _Retry(opts, sleeps.append)
    r.wait("GET x", retry_after=3.0)
    assert sleeps[-1] == 3.0  # Retry-After is honoured, even beyond the backoff cap
    r = _Retry(RegistryOptions(timeout=2), sleeps.append)
    with pytest.raises(TransientError, match="past the 2s deadline"):
        r.wait("GET x", retry_after=5.0)


def test_multipart_byteranges_parser() -> None:
    b = "XyZ"
    data1 = b"--XyZ\r\nnot a boundary--XyZ--"  # the boundary inside a part's data
    data2 = b"\r\n\r\n"
    body = (f"--{b}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Range: bytes 10-{9 + len(data1)}/1000\r\n\r\n").encode() + data1 + \
        f"\r\n--{b}\r\nContent-Range: bytes 500-503/1000\r\n\r\n".encode() + data2 + \
        f"\r\n--{b}--\r\n".encode()
    assert _parse_multipart(body, b, "u") == [(10, data1), (500, data2)]
    with pytest.raises(RegistryError, match="truncated or malformed"):
        _parse_multipart(body[:-30], b, "u")


def _write_json(path: Path, doc: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def _b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def test_find_credentials_in_auth_files(tmp_path: Path) -> None:
    docker = _write_json(tmp_path / "docker.json", {"auths": {
        "https://index.docker.io/v1/": {"auth": _b64("hub:pw1")},
        "http://127.0.0.1:5000/v2/": {"auth": _b64("loc:pw:with:colons")},
        "reg.example": {"username": "host", "password": "pw3"},
        "reg.example/ns": {"auth": _b64("ns:pw4")},
        "tok.example": {"identitytoken": "xyz"},
    }, "credsStore": "desktop"})
    podman = _write_json(tmp_path / "auth.json", {"auths": {"reg.example": {
        "auth": _b64("podman:pw5")}}})

    def who(host: str, repo: str | None = None, files: tuple[Path, ...] = (docker,)) -> str | None:
        c, _ = find_credentials(host, repo, [str(f) for f in files])
        return None if c is None else f"{c.username}:{c.password}"

    assert who("docker.io", "library/alpine") == "hub:pw1"
    assert who("127.0.0.1:5000") == "loc:pw:with:colons"
    assert who("reg.example", "ns/img") == "ns:pw4"        # most specific key wins
    assert who("reg.example", "other/img") == "host:pw3"
    assert who("reg.example", "ns/img", (podman, docker)) == "podman:pw5"  # first file wins
    c, notes = find_credentials("tok.example", None, [str(docker)])
    assert c is None and any("identity token" in n for n in notes)
    c, notes = find_credentials("nowhere.example", None, [str(docker)])
    assert c is None and any("docker-credential-desktop is not on PATH" in n for n in notes)
    c, notes = find_credentials("x.example", None, [str(tmp_path / "missing.json")])
    assert c is None and notes == []


def test_unreachable_registry_gives_up_after_bounded_retries() -> None:
    port = reg_server._free_port()  # nothing listens there
    c = RegistryClient(f"127.0.0.1:{port}", RegistryOptions(max_attempts=4))
    sleeps: list[float] = []
    c.sleep = sleeps.append
    with pytest.raises(TransientError, match="connection failed.*gave up after 4 attempts"):
        c.get_manifest("a/b", "v1")
    assert len(sleeps) == 3


# ---- the image and the registries ------------------------------------------------------------

@dataclass
class Img:
    lay: Path
    host: dict[str, str]
    other: dict[str, str]
    v1: dict[str, Any]          # index.json entry
    other_entry: dict[str, Any]
    raw: bytes                  # v1 manifest bytes
    manifest: dict[str, Any]
    big: bytes                  # a ~2.3 MB gzip tar layer (not in the layout)
    big_digest: str

    def blob(self, digest: str) -> bytes:
        return ib.blob_file(self.lay, digest).read_bytes()


def _big_layer() -> bytes:
    buf = io.BytesIO()
    rnd = random.Random(7).randbytes(2 << 20)  # incompressible: spans everywhere
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tf:
        tf.add(STDLIB / "json", "usr/lib/python/json",
               filter=lambda t: None if "__pycache__" in t.name else t)
        ti = tarfile.TarInfo("data/random.bin")
        ti.size = len(rnd)
        tf.addfile(ti, io.BytesIO(rnd))
    return buf.getvalue()


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Img:
    need_tools()
    d = tmp_path_factory.mktemp("regimg")
    lay, host, other = ib.make_umoci_layout(d)
    v1, oth = ib.entry_for(lay, "v1"), ib.entry_for(lay, "other")
    raw = ib.blob_file(lay, v1["digest"]).read_bytes()
    big = _big_layer()
    return Img(lay, host, other, v1, oth, raw, json.loads(raw), big, sha256(big))


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory, image: Img) -> Any:
    with reg_server.Registry.start(tmp_path_factory.mktemp("reg")) as r:
        for tag in ("v1", "other"):
            skopeo("copy", "-q", "--dest-tls-verify=false", f"oci:{image.lay}:{tag}",
                   f"docker://{r.host}/test/img:{tag}")
        with RegistryClient(r.host) as c:
            c.push_blob("test/big", image.big)
        yield r


@pytest.fixture
def client(reg: Any) -> Any:
    c = RegistryClient(reg.host)
    c.sleep = lambda s: None
    c.ping()  # HTTPS first, then plain HTTP (loopback): settled before a test taps requests
    assert c.scheme == "http"
    yield c
    c.close()


# ---- manifests -------------------------------------------------------------------------------

def test_manifest_by_tag_and_by_digest(client: RegistryClient, image: Img, reg: Any) -> None:
    desc, raw = client.get_manifest("test/img", "v1")
    assert raw == image.raw == skopeo("inspect", "--raw", "--tls-verify=false",
                                      f"docker://{reg.host}/test/img:v1")
    assert desc == Descriptor(OCI_MANIFEST, image.v1["digest"], image.v1["size"])
    assert client.get_manifest("test/img", image.v1["digest"]) == (desc, raw)
    assert client.head_manifest("test/img", "v1") == desc
    assert client.head_manifest("test/img", image.v1["digest"]) == desc
    assert client.head_manifest("test/img", "nope") is None
    with pytest.raises(NotFound, match=r"GET http://127\.0\.0\.1:\d+/v2/test/img/manifests/"
                                       r"nope: HTTP 404.*MANIFEST_UNKNOWN"):
        client.get_manifest("test/img", "nope")
    assert sorted(client.list_tags("test/img")) == ["other", "v1"]
    assert sorted(client.list_tags("test/img", page_size=1)) == ["other", "v1"]  # Link pages


def test_manifest_digests_are_verified(client: RegistryClient, reg: Any, image: Img) -> None:
    cfg = image.manifest["config"]
    raw = go_json({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cfg, "layers": [],
                   "annotations": {"note": "aaaa"}})
    client.push_blob("tamper/m", image.blob(cfg["digest"]))
    desc = client.put_manifest("tamper/m", raw, OCI_MANIFEST, "t")
    assert client.get_manifest("tamper/m", "t")[1] == raw
    path = reg.blob_data_path(desc.digest)
    path.write_bytes(path.read_bytes().replace(b'"aaaa"', b'"aaab"'))  # still valid JSON
    with pytest.raises(DigestMismatch, match="hashes to"):
        client.get_manifest("tamper/m", desc.digest)
    with pytest.raises(DigestMismatch):  # by tag: Docker-Content-Digest disagrees
        client.get_manifest("tamper/m", "t")


# ---- blobs: reading --------------------------------------------------------------------------

def test_blob_stream_equals_layout_bytes(client: RegistryClient, image: Img) -> None:
    for layer in [image.manifest["config"], *image.manifest["layers"]]:
        want = image.blob(layer["digest"])
        assert client.head_blob("test/img", layer["digest"]) == len(want)
        with client.open_blob("test/img", layer["digest"]) as r:
            buf = bytearray(4 << 20)
            n = r.readinto(buf)
            assert bytes(buf[:n]) == want and r.readinto(buf) == 0
            assert r.verified and r.requests == 1
        with client.open_blob("test/img", layer["digest"]) as r:
            parts = []
            while chunk := r.read(1000):
                parts.append(chunk)
            assert b"".join(parts) == want and r.verified
        assert client.read_blob("test/img", layer["digest"]) == want
    assert client.head_blob("test/img", sha256(b"absent")) is None
    with pytest.raises(NotFound, match="BLOB_UNKNOWN"):
        client.open_blob("test/img", sha256(b"absent"))


def test_blob_stream_resumes_at_the_byte_it_stopped(client: RegistryClient,
                                                    image: Img) -> None:
    tap = Tap(client)
    cuts = [(100_000, "error"), (1, "short"), (700_000, "error")]

    def respond(call: Any, resp: Any) -> Any:
        if call.method == "GET" and "/blobs/" in call.url and cuts:
            n, mode = cuts.pop(0)
            return Broken(resp, n, mode)
        return None

    tap.respond = respond
    with client.open_blob("test/big", image.big_digest) as r:
        out = bytearray()
        buf = bytearray(4 << 20)
        while n := r.readinto(buf):
            out += buf[:n]
        assert r.verified and r.requests == 4
    assert bytes(out) == image.big
    assert [c.headers.get("Range") for c in tap.gets()] == \
        [None, "bytes=100000-", "bytes=100001-", "bytes=800001-"]


def test_blob_resume_must_start_at_that_byte(client: RegistryClient, image: Img) -> None:
    tap = Tap(client)
    state = {"n": 0}

    def respond(call: Any, resp: Any) -> Any:
        state["n"] += 1
        return Broken(resp, 5000) if state["n"] == 1 else None

    def rewrite(call: Any) -> None:  # the resume asks for one byte early
        if call.headers.get("Range") == "bytes=5000-":
            call.headers["Range"] = "bytes=4999-"

    tap.respond, tap.rewrite = respond, rewrite
    with client.open_blob("test/big", image.big_digest) as r:
        with pytest.raises(RegistryError, match=r"starts elsewhere.*bytes 4999-"):
            r.read()

    # a registry answering the resume with the whole blob (200) is read through to the byte
    state["n"] = 0

    def no_range(call: Any) -> None:
        call.headers.pop("Range", None)

    tap.rewrite = no_range
    with client.open_blob("test/big", image.big_digest) as r:
        assert r.read() == image.big and r.verified and r.requests == 2


def test_blob_corruption_is_caught_at_the_end(client: RegistryClient, reg: Any) -> None:
    data = random.Random(3).randbytes(300_000)
    dg = client.push_blob("tamper/b", data).digest
    path = reg.blob_data_path(dg)
    bad = bytearray(path.read_bytes())
    bad[123_456] ^= 0xFF
    path.write_bytes(bytes(bad))
    with pytest.raises(DigestMismatch, match=f"blob {dg} of tamper/b: content hashes to"):
        client.read_blob("tamper/b", dg)
    with client.open_blob("tamper/b", dg, verify=False) as r:
        assert r.read() == bytes(bad) and not r.verified
    src = RegistrySource(f"docker://{client.host}/tamper/b:x", client=client)
    with pytest.raises(ImageError, match="content hashes to"):
        src.read_blob(Descriptor(OCI_LAYER_GZIP, dg, len(data)))


def test_blob_seek(client: RegistryClient, image: Img) -> None:
    big, dg = image.big, image.big_digest
    tap = Tap(client)
    with client.open_blob("test/big", dg, verify=False) as r:
        assert r.read(10) == big[:10]
        r.seek(500_000)                       # near: read through on the same response
        assert r.read(10) == big[500_000:500_010] and len(tap.gets()) == 1
        r.seek(2_000_000)                     # far: a new Range request
        assert r.read(10) == big[2_000_000:2_000_010]
        assert tap.gets()[-1].headers["Range"] == "bytes=2000000-"
        r.seek(100)                           # backward: a new Range request
        assert r.read(5) == big[100:105] and tap.gets()[-1].headers["Range"] == "bytes=100-"
        assert r.seek(-5, io.SEEK_END) == len(big) - 5 and r.read() == big[-5:]
        assert r.read() == b""
    with client.open_blob("test/big", dg) as r:  # verifying: skips read through, back to 0
        r.seek(1_500_000)
        r.seek(0)
        assert r.read() == big and r.verified
        r.seek(10)
        assert r.read(5) == big[10:15] and not r.verified


# ---- ranges ----------------------------------------------------------------------------------

def test_single_and_multi_range_reads(client: RegistryClient, image: Img) -> None:
    big, dg = image.big, image.big_digest
    n = len(big)
    tap = Tap(client)
    assert client.read_range("test/big", dg, 1000, 50) == big[1000:1050]
    assert tap.gets()[-1].headers["Range"] == "bytes=1000-1049"
    want = [(5050, 100), (0, 10), (5000, 100), (1_000_000, 4096), (n - 5, 5), (7, 0)]
    got = client.read_ranges("test/big", dg, want)
    assert got == [big[o:o + ln] for o, ln in want]
    last = tap.gets()[-1]
    assert len(tap.gets()) == 2  # one multi-range request
    assert last.headers["Range"] == f"bytes=0-9,5000-5149,1000000-1004095,{n - 5}-{n - 1}"
    assert not client.single_range_mode
    with pytest.raises(RangeNotSatisfiable):      # clamped by the registry: short
        client.read_range("test/big", dg, n - 5, 10)
    with pytest.raises(RangeNotSatisfiable, match="416"):
        client.read_range("test/big", dg, n + 10, 5)
    with pytest.raises(RangeNotSatisfiable):      # one of two ranges past the end
        client.read_ranges("test/big", dg, [(0, 10), (n + 100, 10)])
    with pytest.raises(RangeNotSatisfiable, match="416"):  # all past the end
        client.read_ranges("test/big", dg, [(n + 1, 10), (n + 100, 10)])
    assert not client.single_range_mode  # a genuine 416 is not a refusal of multi-range


@pytest.mark.parametrize("how", ["ignored", "invalid"])
def test_multi_range_fallback_to_single_ranges(client: RegistryClient, image: Img,
                                               how: str) -> None:
    """The registry ignores multi-range requests (200 with the whole blob), or refuses
    them (416): the client switches to single ranges for good."""
    big, dg = image.big, image.big_digest
    tap = Tap(client)

    def rewrite(call: Any) -> None:
        rng = call.headers.get("Range", "")
        if "," in rng:
            if how == "ignored":
                del call.headers["Range"]
            else:
                call.headers["Range"] = "bytes=oops"

    tap.rewrite = rewrite
    want = [(10, 20), (300_000, 1000), (2_000_000, 7)]
    assert client.read_ranges("test/big", dg, want) == [big[o:o + n] for o, n in want]
    assert client.single_range_mode
    assert [c.status for c in tap.gets()] == [200 if how == "ignored" else 416, 206, 206, 206]
    tap.calls.clear()
    assert client.read_ranges("test/big", dg, want[:2]) == [big[o:o + n] for o, n in want[:2]]
    assert [c.headers["Range"] for c in tap.gets()] == ["bytes=10-29", "bytes=300000-300999"]


# ---- uploads ---------------------------------------------------------------------------------

@pytest.mark.parametrize("chunk", [None, 40_000])
def test_uploads_are_read_back_by_skopeo(client: RegistryClient, reg: Any, image: Img,
                                         tmp_path: Path, chunk: int | None) -> None:
    repo = f"pushed/{'chunked' if chunk else 'mono'}"
    tap = Tap(client)
    blobs = [image.manifest["config"], *image.manifest["layers"]]
    for b in blobs:
        res = client.push_blob(repo, ib.blob_file(image.lay, b["digest"]), digest=b["digest"],
                               chunk_size=chunk)
        assert (res.digest, res.size, res.status) == (b["digest"], b["size"], "uploaded")
    patches = [c for c in tap.calls if c.method == "PATCH"]
    if chunk is None:
        assert patches == []
    else:
        big = max(b["size"] for b in blobs)
        ranges = [c.headers["Content-Range"] for c in patches]
        assert len(patches) == sum(-(-b["size"] // chunk) for b in blobs if b["size"] > chunk)
        assert f"{chunk}-{2 * chunk - 1}" in ranges and any(r.endswith(f"-{big - 1}")
                                                            for r in ranges)
    desc = client.put_manifest(repo, image.raw, OCI_MANIFEST, "v1")
    assert desc.digest == image.v1["digest"]
    ref = f"docker://{reg.host}/{repo}:v1"
    assert skopeo("inspect", "--raw", "--tls-verify=false", ref) == image.raw
    out = tmp_path / "out"
    skopeo("copy", "-q", "--src-tls-verify=false", ref, f"oci:{out}:v1")
    for b in blobs:
        assert ib.blob_file(out, b["digest"]).read_bytes() == image.blob(b["digest"])
    again = client.push_blob(repo, image.blob(blobs[1]["digest"]), chunk_size=chunk)
    assert again.status == "exists"


def test_upload_sources_and_errors(client: RegistryClient) -> None:
    data = random.Random(5).randbytes(150_000)
    f = io.BytesIO(b"prefix" + data)
    f.seek(6)
    res = client.push_blob("pushed/misc", f, chunk_size=64 << 10)  # a file, from where it is
    assert res.digest == sha256(data) and res.size == len(data)
    assert client.read_blob("pushed/misc", res.digest) == data
    with pytest.raises(RegistryError, match="DIGEST_INVALID") as e:
        client.push_blob("pushed/misc", b"some bytes", digest=sha256(b"other bytes"))
    assert e.value.status == 400 and "DIGEST_INVALID" in e.value.codes
    with pytest.raises(ImageError, match="size mismatch"):
        client.push_blob("pushed/misc", b"abc", size=4)


def test_cross_repository_mount(client: RegistryClient, image: Img) -> None:
    layer = image.manifest["layers"][2]
    tap = Tap(client)
    res = client.push_blob("mount/dst", ib.blob_file(image.lay, layer["digest"]),
                           mount_from="test/img")
    assert res.status == "mounted"
    posts = [c for c in tap.calls if c.method == "POST"]
    assert len(posts) == 1 and f"mount={layer['digest'].replace(':', '%3A')}" in posts[0].url
    assert not [c for c in tap.calls if c.method in ("PUT", "PATCH")]
    assert client.head_blob("mount/dst", layer["digest"]) == layer["size"]
    # the source lacks the blob: the upload the registry opened instead is used
    res = client.push_blob("mount/dst", b"fresh bytes", mount_from="test/img")
    assert res.status == "uploaded"
    assert client.read_blob("mount/dst", res.digest) == b"fresh bytes"
    assert client.mount_blob("mount/dst3", layer["digest"], "test/img")
    assert not client.mount_blob("mount/dst3", sha256(b"nowhere"), "test/img")


# ---- referrers -------------------------------------------------------------------------------

def _referrer(client: RegistryClient, repo: str, subject: Descriptor, n: int,
              artifact_type: str = SOCI_V1) -> Descriptor:
    cfg = b"{}"
    client.push_blob(repo, cfg)
    layer = f"referrer {n}".encode()
    client.push_blob(repo, layer)
    raw = go_json({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                   "config": {"mediaType": artifact_type, "digest": sha256(cfg), "size": 2},
                   "layers": [{"mediaType": "application/octet-stream",
                               "digest": sha256(layer), "size": len(layer)}],
                   "subject": subject.to_json(), "annotations": {"n": str(n)}})
    d = client.put_manifest(repo, raw, OCI_MANIFEST)
    return Descriptor(OCI_MANIFEST, d.digest, d.size, annotations={"n": str(n)},
                      artifact_type=artifact_type)


def test_referrers_fallback_tag(client: RegistryClient, image: Img, reg: Any) -> None:
    repo = "test/img"
    subject = client.get_manifest(repo, "v1")[0]
    assert client.referrers_api(repo, subject.digest) is None   # distribution 2.8: none
    assert client.referrers(repo, subject.digest) == []
    tag = client.referrers_tag(subject.digest)
    assert tag == "sha256-" + subject.digest[7:]

    # someone else's entry is there already, with a field we do not know
    foreign = {"mediaType": OCI_MANIFEST, "digest": image.other_entry["digest"],
               "size": image.other_entry["size"], "artifactType": "application/example",
               "x-extra": "keep me"}
    client.put_manifest(repo, go_json({"schemaVersion": 2, "mediaType": OCI_INDEX,
                                       "manifests": [foreign]}), OCI_INDEX, tag)
    r1 = _referrer(client, repo, subject, 1)
    r2 = _referrer(client, repo, subject, 2)
    client.add_referrer(repo, subject.digest, r1)
    idx = client.add_referrer(repo, subject.digest, r2)
    tap = Tap(client)
    assert client.add_referrer(repo, subject.digest, r1) == idx   # already listed: no push
    assert not [c for c in tap.calls if c.method == "PUT"]
    raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{reg.host}/{repo}:{tag}")
    doc = json.loads(raw)
    assert doc["mediaType"] == OCI_INDEX and sha256(raw) == idx.digest
    assert doc["manifests"][0] == foreign
    assert [m["digest"] for m in doc["manifests"]] == [foreign["digest"], r1.digest, r2.digest]
    assert client.referrers(repo, subject.digest, SOCI_V1) == [r1, r2]
    assert len(client.referrers(repo, subject.digest)) == 3

    # no tag yet: created
    other = client.get_manifest(repo, "other")[0]
    r3 = _referrer(client, repo, other, 3)
    client.add_referrer(repo, other.digest, r3)
    assert client.referrers_from_tag(repo, other.digest) == [r3]


# ---- the image source ------------------------------------------------------------------------

def test_registry_source_builds_the_same_index_as_the_local_layout(
        reg: Any, image: Img, tmp_path: Path) -> None:
    opts = build.BuildOptions(span_size=1 << 15, min_layer_size=0, jobs=3)
    with open_image(f"docker://{reg.host}/test/img:v1") as rs, \
            open_image(f"oci:{image.lay}:v1") as ls:
        assert isinstance(rs, RegistrySource)
        [ri], [li] = resolve(rs), resolve(ls)
        local_desc = dataclasses.replace(li.manifest, annotations=None)  # the layout's tag
        assert (ri.manifest, ri.manifest_bytes, ri.config, ri.layers) == \
            (local_desc, li.manifest_bytes, li.config, li.layers)
        for layer in ri.layers:
            assert rs.blob_path(layer) is None
            with rs.open_blob(layer) as f:
                streamed = sn.index_layer(f, 1 << 15, mode="gzip", chunk_size=4 << 20)
            local = sn.index_layer(str(ib.blob_file(image.lay, layer.digest)), 1 << 15)
            assert streamed == local and streamed.blob_digest == layer.digest
        with Store(tmp_path / "s1") as s1, Store(tmp_path / "s2") as s2:
            r1 = build.build_index(rs, s1, ri, opts)
            r2 = build.build_index(ls, s2, li, opts)
        assert r1.manifest == r2.manifest and r1.digest == r2.digest
        assert [x.ztoc_digest for x in r1.layers] == [x.ztoc_digest for x in r2.layers]


def test_streamed_index_survives_broken_connections(reg: Any, image: Img,
                                                    tmp_path: Path) -> None:
    layer_file = tmp_path / "big.tar.gz"
    layer_file.write_bytes(image.big)
    local = sn.index_layer(str(layer_file), 1 << 16)
    with RegistrySource(f"docker://{reg.host}/test/big:x") as rs:
        rs.client.sleep = lambda s: None
        rs.client.ping()  # settles HTTPS-or-HTTP before the tap counts requests
        tap = Tap(rs.client)
        cuts = [300_000, 700_000, 500_000]  # resumes at 300000, 1000000, 1500000
        tap.respond = lambda call, resp: Broken(resp, cuts.pop(0)) if cuts else None
        desc = Descriptor(OCI_LAYER_GZIP, image.big_digest, len(image.big))
        with rs.open_blob(desc) as f:
            streamed = sn.index_layer(f, 1 << 16, mode="gzip", chunk_size=4 << 20)
        assert len(tap.gets()) == 4
    assert streamed == local


def test_registry_source_index_digest_refs_and_errors(reg: Any, image: Img,
                                                      client: RegistryClient) -> None:
    host, other = Platform.from_json(image.host), Platform.from_json(image.other)
    index = go_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {**image.v1, "annotations": None, "platform": host.to_json()},
        {**image.other_entry, "annotations": None, "platform": other.to_json()}]}
        ).replace(b',"annotations":null', b"")
    idx = client.put_manifest("test/img", index, OCI_INDEX, "multi")
    with open_image(f"{reg.host}/test/img:multi") as src:  # bare host/repo:tag
        assert isinstance(src, RegistrySource)
        assert src.root() == (idx, index)
        imgs = resolve(src, all_platforms=True)
        assert [str(i.platform) for i in imgs] == [str(host), str(other)]
        assert [i.manifest.digest for i in imgs] == [image.v1["digest"],
                                                     image.other_entry["digest"]]
        [only] = resolve(src, platforms=[other])
        assert only.manifest.digest == image.other_entry["digest"]
        assert src.has_blob(image.v1["digest"]) and not src.has_blob(sha256(b"no"))
    with open_image(f"docker://{reg.host}/test/img@{idx.digest}") as src:
        assert src.root()[0].digest == idx.digest
    with open_image(f"docker://{reg.host}/test/img:nope") as src:
        with pytest.raises(NotFound, match="MANIFEST_UNKNOWN"):
            src.root()
    layer = image.manifest["layers"][0]
    with open_image(f"docker://{reg.host}/test/img:v1") as src:
        with pytest.raises(ImageError, match="missing blob"):
            src.read_blob(Descriptor(OCI_LAYER_GZIP, sha256(b"gone"), 4))
        with pytest.raises(SizeMismatch, match="expected 5"):
            src.open_blob(Descriptor(OCI_LAYER_GZIP, layer["digest"], 5))
        assert src.read_blob(layer["digest"]) == image.blob(layer["digest"])
        with src.open_blob(layer["digest"]) as f:
            f.seek(100)
            assert f.read(10) == image.blob(layer["digest"])[100:110]


# ---- faults through the proxy ----------------------------------------------------------------

@pytest.fixture
def proxy(reg: Any) -> Any:
    from fault_proxy import FaultProxy

    with FaultProxy("127.0.0.1", reg.port) as p:
        yield p


def _via(proxy: Any, **opts: Any) -> tuple[RegistryClient, list[float]]:
    c = RegistryClient(proxy.netloc, RegistryOptions(**{"plain_http": True, **opts}))
    sleeps: list[float] = []
    c.sleep = sleeps.append
    return c, sleeps


def test_transient_errors_are_retried(proxy: Any, image: Img) -> None:
    from fault_proxy import drop_after, on, reset, status

    c, sleeps = _via(proxy)
    proxy.add_fault(status(429, {"Retry-After": "1"}), match=on("GET", "/manifests/"), times=1)
    proxy.add_fault(status(503), match=on("GET", "/manifests/"), times=1)
    proxy.add_fault(reset(), match=on("GET", "/manifests/"), times=1)
    proxy.add_fault(drop_after(100), match=on("GET", "/manifests/"), times=1)
    assert c.get_manifest("test/img", "v1")[1] == image.raw
    assert sleeps[0] == 1.0 and len(sleeps) == 4
    assert proxy.stats.total_requests("GET", "/manifests/") == 5
    proxy.add_fault(drop_after(5), match=on("GET", "/tags/list"), times=1)
    assert {"other", "v1"} <= set(c.list_tags("test/img"))
    assert proxy.stats.total_requests("GET", "/tags/list") == 2
    for code in (500, 502, 504):
        proxy.add_fault(status(code), match=on("HEAD", "/blobs/"), times=1)
    assert c.head_blob("test/big", image.big_digest) == len(image.big)
    proxy.clear_faults()
    proxy.add_fault(status(500), match=on("GET", "/manifests/"))
    with pytest.raises(TransientError, match="HTTP 500.*gave up after 6 attempts") as e:
        c.get_manifest("test/img", "v1")
    assert e.value.status == 500
    proxy.clear_faults()
    proxy.add_fault(status(429, {"Retry-After": "1000"}), match=on("GET", "/manifests/"))
    n = len(sleeps)
    with pytest.raises(TransientError, match="past the 120s deadline"):
        c.get_manifest("test/img", "v1")
    assert len(sleeps) == n  # did not wait 1000 s
    c.close()


def test_dropped_connections_resume_and_corruption_is_caught(proxy: Any, image: Img) -> None:
    from fault_proxy import corrupt, drop_after, on

    c, _ = _via(proxy)
    proxy.add_fault(drop_after(100_000), match=on("GET", "/blobs/"), times=2)
    assert c.read_blob("test/big", image.big_digest) == image.big
    ranges = [r.headers.get("Range") for r in proxy.log if r.method == "GET"]
    assert ranges == [None, "bytes=100000-", "bytes=200000-"]
    proxy.add_fault(corrupt(1234), match=on("GET", "/blobs/"), times=1)
    with pytest.raises(DigestMismatch):
        c.read_blob("test/big", image.big_digest)
    c.close()


def test_multi_range_refused_with_400(proxy: Any, image: Img) -> None:
    from fault_proxy import status

    def multi(method: str, path: str, headers: Any) -> bool:
        return "," in (headers.get("Range") or "")

    c, _ = _via(proxy)
    proxy.add_fault(status(400), match=multi)
    want = [(0, 100), (1_000_000, 100)]
    assert c.read_ranges("test/big", image.big_digest, want) == \
        [image.big[o:o + n] for o, n in want]
    assert c.single_range_mode
    c.close()


def test_redirects_are_followed_and_remembered(proxy: Any, reg: Any, image: Img) -> None:
    from fault_proxy import on, status

    c, _ = _via(proxy)
    direct = f"{reg.url}/v2/test/big/blobs/{image.big_digest}"
    proxy.add_fault(status(307, {"Location": direct}), match=on("GET", "/blobs/"), times=1)
    tap = Tap(c)
    assert c.read_range("test/big", image.big_digest, 10, 10) == image.big[10:20]
    assert c.read_range("test/big", image.big_digest, 30, 10) == image.big[30:40]
    assert [x.url for x in tap.gets()] == [f"{proxy.url}/v2/test/big/blobs/{image.big_digest}",
                                           direct, direct]  # the second read went direct
    c.close()


# ---- auth: htpasswd (Basic) ------------------------------------------------------------------

USER, PASSWORD = "alice", "s3cret"


@pytest.fixture(scope="module")
def areg(tmp_path_factory: pytest.TempPathFactory, image: Img) -> Any:
    with reg_server.Registry.start(tmp_path_factory.mktemp("areg"),
                                   users={USER: PASSWORD}) as r:
        skopeo("copy", "-q", "--dest-tls-verify=false", f"--dest-creds={USER}:{PASSWORD}",
               f"oci:{image.lay}:v1", f"docker://{r.host}/auth/img:v1")
        yield r


@pytest.fixture
def no_auth_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for v in ("REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "DOCKER_CONFIG"):
        monkeypatch.delenv(v, raising=False)
    return home


def test_basic_auth_with_creds(areg: Any, image: Img, no_auth_files: Path) -> None:
    with RegistryClient(areg.host, RegistryOptions(creds=f"{USER}:{PASSWORD}")) as c:
        assert c.get_manifest("auth/img", "v1")[1] == image.raw
        dg = c.push_blob("auth/other", b"pushed with basic auth").digest
        assert c.read_blob("auth/other", dg) == b"pushed with basic auth"
    with open_image(f"docker://{areg.host}/auth/img:v1",
                    registry=RegistryOptions(creds=f"{USER}:{PASSWORD}")) as src:
        [img] = resolve(src)
        assert img.manifest.digest == image.v1["digest"]


def test_basic_auth_from_docker_and_podman_files(areg: Any, image: Img, no_auth_files: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    _write_json(no_auth_files / ".docker" / "config.json", {"auths": {
        f"http://{areg.host}/v1/": {"auth": _b64(f"{USER}:{PASSWORD}")}}})
    with RegistryClient(areg.host) as c:
        assert c.get_manifest("auth/img", "v1")[1] == image.raw
    podman = _write_json(tmp_path / "auth.json", {"auths": {
        f"{areg.host}/auth": {"username": USER, "password": PASSWORD},
        areg.host: {"username": USER, "password": "wrong"}}})
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(podman))
    with RegistryClient(areg.host, credential_scope="auth/img") as c:  # repo-scoped key
        assert c.get_manifest("auth/img", "v1")[1] == image.raw
    with RegistryClient(areg.host, RegistryOptions(auth_file=str(podman))) as c:
        with pytest.raises(AuthError, match=f"wrong credentials.*'{USER}'.*{podman}"):
            c.get_manifest("auth/img", "v1")


def test_basic_auth_failures(areg: Any, no_auth_files: Path) -> None:
    with RegistryClient(areg.host, RegistryOptions(creds=f"{USER}:nope")) as c:
        with pytest.raises(AuthError, match="HTTP 401.*wrong credentials") as e:
            c.get_manifest("auth/img", "v1")
        assert e.value.status == 401 and areg.host in str(e.value)
    with RegistryClient(areg.host) as c:
        with pytest.raises(AuthError, match="no credentials found.*and their credential helpers"):
            c.get_manifest("auth/img", "v1")
    _write_json(no_auth_files / ".docker" / "config.json", {"credsStore": "pass"})
    with RegistryClient(areg.host) as c:
        with pytest.raises(AuthError, match="docker-credential-pass is not on PATH"):
            c.get_manifest("auth/img", "v1")


def _helper(bin_dir: Path, name: str, server: str, user: str, secret: str) -> Path:
    """A ``docker-credential-NAME`` on PATH answering ``get`` for ``server`` (what it was
    asked is logged next to it), "credentials not found" for anything else."""
    bin_dir.mkdir(exist_ok=True)
    exe = bin_dir / f"docker-credential-{name}"
    log = bin_dir / f"{name}.log"
    answer = json.dumps({"ServerURL": server, "Username": user, "Secret": secret})
    exe.write_text(f"""#!/bin/sh
[ "$1" = get ] || exit 2
read -r server
printf '%s\\n' "$server" >> '{log}'
if [ "$server" = '{server}' ]; then printf '%s' '{answer}'; exit 0; fi
echo 'credentials not found in native keychain'; exit 1
""")
    exe.chmod(0o755)
    return log


def test_credential_helpers(areg: Any, image: Img, no_auth_files: Path, tmp_path: Path,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    config = no_auth_files / ".docker" / "config.json"
    # credHelpers: the host's own helper, asked with the key as written
    log = _helper(bin_dir, "ecrish", areg.host, USER, PASSWORD)
    _write_json(config, {"credHelpers": {areg.host: "ecrish"},
                         "auths": {areg.host: {"auth": _b64(f"{USER}:wrong")}}})
    with RegistryClient(areg.host, credential_scope="auth/img") as c:
        assert c.get_manifest("auth/img", "v1")[1] == image.raw
        assert c._auth.credentials() is not None
        assert c._auth.credentials().source == "docker-credential-ecrish"  # not the file's
    assert log.read_text() == f"{areg.host}\n"
    # credsStore: every host goes to the store first
    log = _helper(bin_dir, "store", areg.host, USER, PASSWORD)
    _write_json(config, {"credsStore": "store", "auths": {areg.host: {}}})
    with RegistryClient(areg.host) as c:
        assert c.get_manifest("auth/img", "v1")[1] == image.raw
    assert log.read_text() == f"{areg.host}\n"
    # a store that does not have it: no credentials, and the 401 says where it looked
    _write_json(config, {"credsStore": "store", "auths": {}})
    c2, notes = find_credentials("other.example", None, [str(config)])
    assert c2 is None and notes == []
    assert log.read_text().splitlines()[-1] == "other.example"
    # a helper that fails otherwise is named in the notes
    (bin_dir / "docker-credential-broken").write_text("#!/bin/sh\necho boom >&2; exit 3\n")
    (bin_dir / "docker-credential-broken").chmod(0o755)
    _write_json(config, {"credHelpers": {areg.host: "broken"}})
    with RegistryClient(areg.host) as c:
        with pytest.raises(AuthError, match="docker-credential-broken get exited 3: boom"):
            c.get_manifest("auth/img", "v1")


def test_authorization_is_not_sent_to_another_host(areg: Any) -> None:
    from fault_proxy import FaultProxy, on, status

    with FaultProxy("127.0.0.1", areg.port) as p:
        c = RegistryClient(p.netloc, RegistryOptions(creds=f"{USER}:{PASSWORD}"))
        dg = c.get_manifest("auth/img", "v1")[0].digest
        direct = f"{areg.url}/v2/auth/img/manifests/{dg}"
        p.add_fault(status(307, {"Location": direct}), match=on("GET", "/manifests/"), times=1)
        tap = Tap(c)
        with pytest.raises(AuthError, match=f"GET {direct}: HTTP 401"):
            c.get_manifest("auth/img", dg)
        assert [(x.url, "Authorization" in x.headers) for x in tap.calls] == \
            [(f"{p.url}/v2/auth/img/manifests/{dg}", True), (direct, False)]
        c.close()


# ---- auth: bearer tokens ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def treg(tmp_path_factory: pytest.TempPathFactory, image: Img) -> Any:
    need_tools()
    from token_server import TokenServer

    work = tmp_path_factory.mktemp("treg")
    with TokenServer({"bob": "pw"}, acl={"bob": {"*": ["pull", "push"]}},
                     anonymous={"public/*": ["pull"]}) as ts:
        with reg_server.Registry.start(work, auth=ts.registry_auth_config(work / "ca.pem")) \
                as r:
            yield r, ts


def test_bearer_tokens(treg: Any, image: Img, no_auth_files: Path) -> None:
    r, ts = treg
    bob = RegistryClient(r.host, RegistryOptions(creds="bob:pw"))
    for repo in ("private/img", "public/img"):
        for b in [image.manifest["config"], *image.manifest["layers"]]:
            bob.push_blob(repo, image.blob(b["digest"]))
        bob.put_manifest(repo, image.raw, OCI_MANIFEST, "v1")
    scopes = [q.scopes for q in ts.requests]
    assert ["repository:private/img:pull,push"] in scopes
    assert all(len(s) == 1 for s in scopes)  # each token asks for what its request needs
    n = len(ts.requests)
    for _ in range(3):
        assert bob.get_manifest("private/img", "v1")[1] == image.raw
    assert len(ts.requests) == n  # the pull token from the pushes' HEADs is cached
    assert [s for s in scopes if s == ["repository:private/img:pull"]] == \
        [["repository:private/img:pull"]]
    assert bob.push_blob("public/img2", ib.blob_file(image.lay, image.manifest["layers"][0]
                                                      ["digest"]),
                         mount_from="private/img").status == "mounted"
    assert {"repository:public/img2:pull,push", "repository:private/img:pull"} in \
        [set(q.scopes) for q in ts.requests]
    bob.close()

    anon = RegistryClient(r.host)
    assert anon.get_manifest("public/img", "v1")[1] == image.raw
    with pytest.raises(AuthError, match="HTTP 401.*no credentials found"):
        anon.get_manifest("private/img", "v1")
    anon.close()
    with RegistryClient(r.host, RegistryOptions(creds="bob:wrong")) as bad:
        with pytest.raises(AuthError, match="token server refused user 'bob'"):
            bad.get_manifest("public/img", "v1")


# ---- TLS -------------------------------------------------------------------------------------

def test_tls_context_made_once_per_settings_and_certificate_files(tmp_path: Path) -> None:
    """ssl_context is shared by the clients with the same settings and certificate files (the
    system's CAs load once per process), and made anew when those change: insecure, another
    CA file, a host's certs.d file replaced on disk."""
    import os

    from soci_native.registry.tls import ssl_context

    cert, _ = _self_signed(tmp_path)
    certs_d = tmp_path / "certs.d"
    (certs_d / "h:1").mkdir(parents=True)
    a = ssl_context("h:1", roots=[certs_d])
    assert ssl_context("h:1", roots=[certs_d]) is a
    # hosts without a certs.d directory share theirs
    assert ssl_context("other:2", roots=[certs_d]) is ssl_context("other:3", roots=[certs_d])
    assert ssl_context("h:1", roots=[certs_d], insecure=True) is not a
    assert ssl_context("h:1", roots=[certs_d], ca_file=str(cert)) is not a
    (certs_d / "h:1" / "ca.crt").write_bytes(cert.read_bytes())
    b = ssl_context("h:1", roots=[certs_d])
    assert b is not a and ssl_context("h:1", roots=[certs_d]) is b
    st = (certs_d / "h:1" / "ca.crt").stat()
    os.utime(certs_d / "h:1" / "ca.crt", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert ssl_context("h:1", roots=[certs_d]) is not b  # replaced: loaded again


def test_https_first_on_loopback_with_private_cas(tmp_path: Path, reg: Any) -> None:
    """A TLS registry on 127.0.0.1 is reached over HTTPS (it used to be asked in plain HTTP
    and fail); its self-signed CA comes from --cert-dir or a certs.d directory; a plain
    registry on 127.0.0.1 is still reached (fallback), and --plain-http forces HTTP."""
    from soci_native.registry.tls import host_certs, ssl_context

    cert, key = _self_signed(tmp_path)
    with reg_server.Registry.start(tmp_path / "reg", tls=(cert, key)) as r:
        blob = b"over TLS"
        with RegistryClient(r.host) as c:  # loopback, no CA: HTTPS all the same
            with pytest.raises(TLSError, match="CERTIFICATE_VERIFY_FAILED.*--cert-dir.*"
                                               "--no-tls-verify or -k"):
                c.push_blob("tls/x", blob)
            assert c.scheme == "https"  # no fallback to HTTP on a certificate error
        with RegistryClient(r.host, RegistryOptions(insecure=True)) as c:
            dg = c.push_blob("tls/x", blob).digest
        cert_dir = tmp_path / "certs"
        cert_dir.mkdir()
        (cert_dir / "ca.crt").write_bytes(cert.read_bytes())
        with RegistryClient(r.host, RegistryOptions(cert_dir=str(cert_dir))) as c:
            assert c.read_blob("tls/x", dg) == blob and c.scheme == "https"
        with RegistryClient(r.host, RegistryOptions(ca_file=str(cert))) as c:
            assert c.read_blob("tls/x", dg) == blob
        # certs.d/HOST: what /etc/containers/certs.d and /etc/docker/certs.d hold
        certs_d = tmp_path / "certs.d"
        (certs_d / r.host).mkdir(parents=True)
        (certs_d / r.host / "ca.crt").write_bytes(cert.read_bytes())
        assert host_certs(r.host, roots=[tmp_path / "none", certs_d]).cas == \
            (certs_d / r.host / "ca.crt",)
        ctx = ssl_context(r.host, roots=[certs_d])
        import urllib.request
        with urllib.request.urlopen(f"{r.url}/v2/", context=ctx, timeout=10) as resp:
            assert resp.status == 200  # an independent client trusts the same context
        (certs_d / r.host / "client.key").write_bytes(key.read_bytes())
        with pytest.raises(TLSError, match="without its client certificate"):
            host_certs(r.host, roots=[certs_d])
        with RegistryClient(r.host, RegistryOptions(plain_http=True)) as c:
            with pytest.raises(RegistryError, match="HTTP 400"):  # HTTP to the TLS port
                c.head_blob("tls/x", dg)
    with RegistryClient(reg.host) as c:  # a plain registry on 127.0.0.1: falls back
        c.ping()
        assert c.scheme == "http" and c.base_url == f"http://{reg.host}"
    with RegistryClient("registry.example.invalid") as c:
        assert c.scheme == "https" and not c._may_fall_back  # never for other hosts
