"""Proves the registry test infrastructure works against a real registry.

* tests/fault_proxy.py in front of Debian's ``docker-registry`` (CNCF distribution 2.8):
  forwarding, keep-alive, Range, chunked bodies, and every fault as a raw client sees it.
* tests/token_server.py: distribution 2.8 configured for token auth accepts its tokens
  (``kid`` and ``x5c`` headers, ES256 and RS256) for pull and push, and rejects anonymous
  requests, tokens for other repositories, and forged tokens.

The registry is tests/reg_server.py's (needs ``apt-get install docker-registry``); also needs
the ``cryptography`` and ``urllib3`` packages.  Without the binary the registry tests skip
(they fail instead under CI=true).
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import random
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import reg_server
import urllib3
from fault_proxy import (
    FaultProxy,
    corrupt,
    delay,
    drop_after,
    on,
    reset,
    status,
    trickle,
)
from token_server import TokenServer, libtrust_key_id, parse_scope

# --------------------------------------------------------------------------------------
# The registry comes from tests/reg_server.py.


def _start_registry(workdir: Path, auth: dict[str, Any] | None = None) -> reg_server.Registry:
    if not reg_server.available():
        msg = "docker-registry not installed (apt-get install docker-registry)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return reg_server.Registry.start(workdir, auth=auth)


# --------------------------------------------------------------------------------------
# Fixtures and helpers

USERS = {"alice": "s3cret", "bob": "hunter2"}
ACL = {"bob": {"bob/*": ["pull"]}}  # alice: everything (default); bob: pull on bob/*
BLOB = random.Random(1234).randbytes(200_000)
BLOB_DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
REPO = "infra/blob"


@pytest.fixture(scope="module")
def http_pool() -> Iterator[urllib3.PoolManager]:
    pool = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=5, read=20))
    yield pool
    pool.clear()


def _push_blob(
    pool: urllib3.PoolManager, base: str, repo: str, data: bytes, token: str | None = None
) -> urllib3.BaseHTTPResponse:
    """Monolithic upload: POST /v2/<repo>/blobs/uploads/ then one PUT <location>?digest=...
    with the whole body.  (distribution 2.8 ignores a body and ?digest= on the POST and
    answers 202, so the single-request variant is tried first and the PUT follows.)"""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    auth = {"Authorization": f"Bearer {token}"} if token is not None else {}
    r = pool.request(
        "POST",
        f"{base}/v2/{repo}/blobs/uploads/?digest={digest}",
        body=data,
        headers={"Content-Type": "application/octet-stream", **auth},
    )
    if r.status != 202:
        return r
    location = r.headers["Location"]
    if location.startswith("/"):
        location = base + location
    sep = "&" if "?" in location else "?"
    return pool.request(
        "PUT",
        f"{location}{sep}digest={digest}",
        body=data,
        headers={"Content-Type": "application/octet-stream", **auth},
    )


@pytest.fixture(scope="module")
def plain_registry(tmp_path_factory, http_pool) -> Iterator[reg_server.Registry]:
    reg = _start_registry(tmp_path_factory.mktemp("registry-plain"))
    try:
        r = _push_blob(http_pool, reg.url, REPO, BLOB)
        assert r.status == 201, (r.status, r.data)
        assert r.headers["Docker-Content-Digest"] == BLOB_DIGEST
        yield reg
    finally:
        reg.stop()


@pytest.fixture
def proxy(plain_registry) -> Iterator[FaultProxy]:
    p = FaultProxy("127.0.0.1", plain_registry.port)
    try:
        yield p
    finally:
        p.close()
        assert p.threads() == []


def _conn(proxy: FaultProxy) -> http.client.HTTPConnection:
    return http.client.HTTPConnection(proxy.host, proxy.port, timeout=20)


def _get(
    proxy: FaultProxy, path: str, headers: dict[str, str] | None = None
) -> tuple[http.client.HTTPResponse, bytes, http.client.HTTPConnection]:
    conn = _conn(proxy)
    conn.request("GET", path, headers=headers or {})
    resp = conn.getresponse()
    return resp, resp.read(), conn


BLOB_PATH = f"/v2/{REPO}/blobs/{BLOB_DIGEST}"
on_blob = on("GET", r"/blobs/sha256:")


def _no_infra_threads() -> list[str]:
    return [
        t.name
        for t in threading.enumerate()
        if t.name.startswith(("fault-proxy", "token-server")) and t.is_alive()
    ]


# --------------------------------------------------------------------------------------
# Fault proxy against the real registry


def test_proxy_forwards_with_keepalive_head_and_range(proxy):
    conn = _conn(proxy)
    for _ in range(2):  # two requests on one client connection
        conn.request("GET", "/v2/")
        r = conn.getresponse()
        assert r.status == 200
        assert r.getheader("Docker-Distribution-API-Version") == "registry/2.0"
        assert json.loads(r.read()) == {}

    conn.request("HEAD", BLOB_PATH)
    r = conn.getresponse()
    assert r.status == 200 and r.read() == b""
    assert int(r.getheader("Content-Length")) == len(BLOB)

    conn.request("GET", BLOB_PATH)
    r = conn.getresponse()
    assert r.status == 200 and r.read() == BLOB

    conn.request("GET", BLOB_PATH, headers={"Range": "bytes=1000-1999"})
    r = conn.getresponse()
    assert r.status == 206
    assert r.getheader("Content-Range") == f"bytes 1000-1999/{len(BLOB)}"
    assert r.read() == BLOB[1000:2000]
    conn.close()

    s = proxy.stats
    assert s.connections == 1
    assert s.requests[("GET", "/v2/")] == 2
    assert s.requests[("HEAD", BLOB_PATH)] == 1
    assert s.requests[("GET", BLOB_PATH)] == 2
    assert s.bytes[("GET", BLOB_PATH)] == len(BLOB) + 1000
    assert s.total_requests(path=r"/blobs/") == 3
    assert [rec.headers.get("Range") for rec in proxy.log if rec.method == "GET"][-1] == (
        "bytes=1000-1999"
    )


def test_proxy_upload_through_proxy(proxy, http_pool):
    """Request bodies stream upstream; the registry's Location points back at the proxy."""
    data = b"pushed through the proxy\n" * 1000
    r = _push_blob(http_pool, proxy.url, "infra/viaproxy", data)
    assert r.status == 201, r.data
    assert r.headers["Location"].startswith(proxy.url)
    r = http_pool.request("GET", r.headers["Location"])
    assert r.status == 200 and r.data == data
    assert proxy.stats.request_bytes[("POST", "/v2/infra/viaproxy/blobs/uploads/")] == len(data)


def test_drop_after(proxy):
    proxy.add_fault(drop_after(1000), match=on_blob, times=1)
    conn = _conn(proxy)
    conn.request("GET", BLOB_PATH)
    r = conn.getresponse()
    assert r.status == 200 and int(r.getheader("Content-Length")) == len(BLOB)
    with pytest.raises(http.client.IncompleteRead) as ei:
        r.read()
    assert ei.value.partial == BLOB[:1000]
    conn.close()
    # times=1: the next request is forwarded untouched.
    r, body, conn = _get(proxy, BLOB_PATH)
    conn.close()
    assert r.status == 200 and body == BLOB
    assert proxy.stats.bytes[("GET", BLOB_PATH)] == 1000 + len(BLOB)


def test_drop_after_on_range(proxy):
    proxy.add_fault(drop_after(10), match=lambda m, p, h: h.get("Range") is not None)
    conn = _conn(proxy)
    conn.request("GET", BLOB_PATH, headers={"Range": "bytes=100-199"})
    r = conn.getresponse()
    assert r.status == 206
    with pytest.raises(http.client.IncompleteRead) as ei:
        r.read()
    assert ei.value.partial == BLOB[100:110]
    conn.close()


@pytest.mark.parametrize("code", [500, 503])
def test_status_error(proxy, code):
    proxy.add_fault(status(code, body=b"injected"), match=on_blob, times=1)
    conn = _conn(proxy)
    conn.request("GET", BLOB_PATH)
    r = conn.getresponse()
    assert r.status == code and r.read() == b"injected"
    conn.request("GET", BLOB_PATH)  # same connection, fault used up
    r = conn.getresponse()
    assert r.status == 200 and r.read() == BLOB
    conn.close()
    assert proxy.stats.requests[("GET", BLOB_PATH)] == 2


def test_status_429_retry_after_keeps_connection_in_sync(proxy):
    proxy.add_fault(status(429, {"Retry-After": "1"}), match=on("POST"), times=1)
    conn = _conn(proxy)
    body = b"x" * 5000  # the fault must drain this before answering
    conn.request("POST", f"/v2/{REPO}/blobs/uploads/", body=body)
    r = conn.getresponse()
    assert r.status == 429 and r.getheader("Retry-After") == "1"
    r.read()
    conn.request("GET", "/v2/")
    r = conn.getresponse()
    assert r.status == 200 and r.read() == b"{}"
    conn.close()
    assert proxy.stats.connections == 1


def test_trickle_is_slow_and_bounded(proxy):
    proxy.add_fault(trickle(400_000), match=on_blob, times=1)  # 200 kB at 400 kB/s
    t0 = time.monotonic()
    r, body, conn = _get(proxy, BLOB_PATH)
    elapsed = time.monotonic() - t0
    conn.close()
    assert body == BLOB
    assert 0.4 <= elapsed < 5, elapsed

    proxy.add_fault(trickle(1000, max_seconds=0.3), match=on_blob, times=1)
    t0 = time.monotonic()
    r, body, conn = _get(proxy, BLOB_PATH)
    elapsed = time.monotonic() - t0
    conn.close()
    assert body == BLOB
    assert 0.25 <= elapsed < 3, elapsed  # would be 200 s unbounded


def test_delay(proxy):
    proxy.add_fault(delay(0.5), match=on("GET", "^/v2/$"), times=1)
    t0 = time.monotonic()
    r, body, conn = _get(proxy, "/v2/")
    assert time.monotonic() - t0 >= 0.5
    assert r.status == 200
    t0 = time.monotonic()
    conn.request("GET", "/v2/")
    conn.getresponse().read()
    assert time.monotonic() - t0 < 0.5
    conn.close()


def test_corrupt_flips_one_byte(proxy):
    proxy.add_fault(corrupt(70_000), match=on_blob, times=1)
    r, body, conn = _get(proxy, BLOB_PATH)
    conn.close()
    assert r.status == 200 and len(body) == len(BLOB) and body != BLOB
    diff = [i for i in range(len(BLOB)) if body[i] != BLOB[i]]
    assert diff == [70_000] and body[70_000] == BLOB[70_000] ^ 0xFF
    assert hashlib.sha256(body).hexdigest() != BLOB_DIGEST.split(":")[1]


def test_reset_before_response(proxy):
    proxy.add_fault(reset(), match=on_blob, times=1)
    conn = _conn(proxy)
    conn.request("GET", BLOB_PATH)
    with pytest.raises((ConnectionError, http.client.BadStatusLine)):
        conn.getresponse()
    conn.close()
    r, body, conn = _get(proxy, BLOB_PATH)
    conn.close()
    assert body == BLOB
    rec = proxy.log[0]
    assert rec.status is None and rec.fault is not None and rec.fault.reset


def test_combined_faults_rule_order_and_matcher_headers(proxy):
    proxy.add_fault(delay(0.2) + drop_after(5), match=lambda m, p, h: h.get("X-Test") == "1")
    proxy.add_fault(status(503), match=on_blob, times=2)
    t0 = time.monotonic()
    conn = _conn(proxy)
    conn.request("GET", BLOB_PATH, headers={"X-Test": "1"})
    r = conn.getresponse()
    with pytest.raises(http.client.IncompleteRead) as ei:
        r.read()
    assert time.monotonic() - t0 >= 0.2 and ei.value.partial == BLOB[:5]
    conn.close()
    codes = []
    for _ in range(3):
        r, _body, conn = _get(proxy, BLOB_PATH)
        conn.close()
        codes.append(r.status)
    assert codes == [503, 503, 200]
    assert sum(proxy.stats.faults.values()) == 3


def test_concurrent_requests_are_counted(proxy):
    proxy.add_fault(status(500), match=on_blob, times=3)
    results: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(5):
            r, body, conn = _get(proxy, BLOB_PATH)
            conn.close()
            assert r.status == 500 or body == BLOB
            with lock:
                results.append(r.status)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == [200] * 17 + [500] * 3
    assert proxy.stats.requests[("GET", BLOB_PATH)] == 20
    assert proxy.stats.connections == 20


def test_close_aborts_inflight_and_joins_threads(plain_registry):
    p = FaultProxy("127.0.0.1", plain_registry.port)
    p.add_fault(trickle(1000, max_seconds=25), match=on_blob)
    outcome: list[object] = []
    conn = _conn(p)
    conn.request("GET", BLOB_PATH)
    r = conn.getresponse()

    def reader() -> None:
        try:
            outcome.append(r.read())
        except Exception as e:  # noqa: BLE001 - the point is that it ends
            outcome.append(e)

    t = threading.Thread(target=reader)
    t.start()
    time.sleep(0.3)
    idle = _conn(p)  # an idle keep-alive connection must not block close() either
    idle.request("GET", "/v2/")
    idle.getresponse().read()
    t0 = time.monotonic()
    p.close()
    assert time.monotonic() - t0 < 3
    t.join(10)
    assert not t.is_alive()
    assert isinstance(outcome[0], Exception)
    assert p.threads() == []
    conn.close()
    idle.close()


class _ChunkedUpstream(BaseHTTPRequestHandler):
    """Answers GET with a chunked body and PUT by echoing the (chunked) request body."""

    protocol_version = "HTTP/1.1"
    payload = b"".join(b"chunk %04d;" % i for i in range(500))

    def log_message(self, format, *args):  # noqa: A002
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i in range(0, len(self.payload), 700):
            piece = self.payload[i : i + 700]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        self.wfile.write(b"0\r\n\r\n")

    def do_PUT(self):
        assert self.headers["Transfer-Encoding"] == "chunked"
        body = b""
        while True:
            size = int(self.rfile.readline().strip(), 16)
            if size == 0:
                self.rfile.readline()
                break
            body += self.rfile.read(size)
            self.rfile.readline()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_chunked_bodies_both_ways():
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _ChunkedUpstream)
    ut = threading.Thread(target=upstream.serve_forever, kwargs={"poll_interval": 0.05})
    ut.start()
    try:
        with FaultProxy("127.0.0.1", upstream.server_address[1]) as p:
            payload = _ChunkedUpstream.payload
            conn = _conn(p)
            conn.request("GET", "/c")
            r = conn.getresponse()
            assert r.getheader("Transfer-Encoding") == "chunked"
            assert r.read() == payload
            conn.request("PUT", "/echo", body=iter([b"abc", b"defgh", b"ij"]), encode_chunked=True)
            r = conn.getresponse()
            assert r.read() == b"abcdefghij"

            p.add_fault(corrupt(3) + drop_after(1500), match=on("GET"), times=1)
            conn.request("GET", "/c")
            r = conn.getresponse()
            with pytest.raises(http.client.IncompleteRead) as ei:
                r.read()
            expected = bytearray(payload[:1500])
            expected[3] ^= 0xFF
            # http.client reports only the complete chunks it got; the proxy sent 1500 bytes.
            assert bytes(expected).startswith(ei.value.partial)
            assert p.log[-1].body_bytes == 1500
            conn.close()
            assert p.stats.connections == 1
    finally:
        upstream.shutdown()
        upstream.server_close()
        ut.join(10)


# --------------------------------------------------------------------------------------
# Token server against the real registry


@pytest.fixture(scope="module")
def token_servers() -> Iterator[dict[str, TokenServer]]:
    servers = {
        "ec": TokenServer(USERS, acl=ACL),
        "rsa": TokenServer(USERS, acl=ACL, key_type="rsa"),
        "untrusted": TokenServer(USERS),  # its root is not in the registry's bundle
    }
    try:
        yield servers
    finally:
        for s in servers.values():
            s.close()
        assert _no_infra_threads() == []


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory, token_servers) -> Iterator[reg_server.Registry]:
    work = tmp_path_factory.mktemp("registry-token")
    ec, rsa = token_servers["ec"], token_servers["rsa"]
    auth = ec.registry_auth_config(work / "ec.pem")
    bundle = work / "bundle.pem"  # trust both roots: one bundle, two certificates
    bundle.write_bytes(ec.cert_bundle_pem() + rsa.cert_bundle_pem())
    auth["token"]["rootcertbundle"] = str(bundle)
    reg = _start_registry(work, auth=auth)
    try:
        yield reg
    finally:
        reg.stop()


def _challenge(resp: urllib3.BaseHTTPResponse) -> dict[str, str]:
    value = resp.headers["WWW-Authenticate"]
    scheme, _, params = value.partition(" ")
    assert scheme == "Bearer", value
    out = {}
    for part in params.split('",'):
        k, _, v = part.partition("=")
        out[k.strip()] = v.strip().strip('"')
    return out


def _fetch_token(
    pool: urllib3.PoolManager,
    server: TokenServer,
    scope: str | None,
    user: str | None = "alice",
    password: str | None = None,
) -> urllib3.BaseHTTPResponse:
    headers = {}
    if user is not None:
        cred = f"{user}:{password if password is not None else USERS[user]}"
        headers["Authorization"] = "Basic " + base64.b64encode(cred.encode()).decode()
    fields = {"service": server.service}
    if scope is not None:
        fields["scope"] = scope
    return pool.request("GET", server.realm, fields=fields, headers=headers)


def _token(pool, server, scope, user="alice") -> str:
    r = _fetch_token(pool, server, scope, user)
    assert r.status == 200, r.data
    body = json.loads(r.data)
    assert body["token"] == body["access_token"] and body["expires_in"] == 300
    assert body["issued_at"].endswith("Z")
    return body["token"]


def test_libtrust_key_id_format(token_servers):
    kid = token_servers["ec"].key_id
    groups = kid.split(":")
    assert len(groups) == 12 and all(len(g) == 4 for g in groups)
    assert kid == libtrust_key_id(token_servers["ec"].root_cert.public_key())
    assert parse_scope("repository:localhost:5000/a/b:pull,push") == (
        "repository",
        "localhost:5000/a/b",
        ["pull", "push"],
    )


def test_anonymous_is_challenged(auth_registry, token_servers, http_pool):
    r = http_pool.request("GET", f"{auth_registry.url}/v2/")
    assert r.status == 401
    ch = _challenge(r)
    assert ch["realm"] == token_servers["ec"].realm
    assert ch["service"] == token_servers["ec"].service
    r = http_pool.request("GET", f"{auth_registry.url}/v2/alice/app/blobs/{BLOB_DIGEST}")
    assert r.status == 401
    assert _challenge(r)["scope"] == "repository:alice/app:pull"


def test_token_server_rejects_bad_credentials(token_servers, http_pool):
    ts = token_servers["ec"]
    r = _fetch_token(http_pool, ts, "repository:alice/app:pull", password="wrong")
    assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Basic ")
    r = _fetch_token(http_pool, ts, "repository:alice/app:pull", user=None)
    assert r.status == 401  # anonymous not configured
    r = http_pool.request(
        "GET",
        ts.realm,
        fields={"service": ts.service},
        headers={"Authorization": "Basic " + base64.b64encode(b"mallory:x").decode()},
    )
    assert r.status == 401
    statuses = [(q.user, q.status) for q in ts.requests[-3:]]
    assert statuses == [("alice", 401), (None, 401), ("mallory", 401)]


@pytest.mark.parametrize("key,mode", [("ec", "kid"), ("ec", "x5c"), ("rsa", "kid"), ("rsa", "x5c")])
def test_token_pull_and_push(auth_registry, token_servers, http_pool, key, mode):
    ts = token_servers[key]
    ts.header_mode = mode
    try:
        repo = f"alice/{key}-{mode}"
        data = f"blob for {repo}\n".encode() * 100
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        ts.clear_requests()
        tok = _token(http_pool, ts, f"repository:{repo}:pull,push")
        req = ts.requests[-1]
        assert req.scopes == [f"repository:{repo}:pull,push"] and req.user == "alice"
        assert req.granted == [{"type": "repository", "name": repo, "actions": ["pull", "push"]}]
        header = json.loads(base64.urlsafe_b64decode(tok.split(".")[0] + "=="))
        assert ("kid" in header) == (mode == "kid") and ("x5c" in header) == (mode == "x5c")

        base = auth_registry.url
        auth = {"Authorization": f"Bearer {tok}"}
        r = http_pool.request("GET", f"{base}/v2/", headers=auth)
        assert r.status == 200, (r.status, r.data, auth_registry.log.read_text()[-1500:])
        r = _push_blob(http_pool, base, repo, data, tok)
        assert r.status == 201, (r.status, r.data)
        r = http_pool.request("GET", f"{base}/v2/{repo}/blobs/{digest}", headers=auth)
        assert r.status == 200 and r.data == data

        # A pull-only token reads but cannot push.
        pull = _token(http_pool, ts, f"repository:{repo}:pull")
        r = http_pool.request(
            "GET", f"{base}/v2/{repo}/blobs/{digest}", headers={"Authorization": f"Bearer {pull}"}
        )
        assert r.status == 200 and r.data == data
        r = _push_blob(http_pool, base, repo, b"more", pull)
        assert r.status == 401 and _challenge(r)["error"] == "insufficient_scope"
    finally:
        ts.header_mode = "kid"


def test_token_for_another_repository_is_rejected(auth_registry, token_servers, http_pool):
    ts = token_servers["ec"]
    base = auth_registry.url
    tok = _token(http_pool, ts, "repository:alice/one:pull,push")
    assert _push_blob(http_pool, base, "alice/one", b"one", tok).status == 201
    digest = "sha256:" + hashlib.sha256(b"one").hexdigest()
    r = http_pool.request(
        "GET", f"{base}/v2/alice/two/blobs/{digest}", headers={"Authorization": f"Bearer {tok}"}
    )
    assert r.status == 401
    ch = _challenge(r)
    assert ch["error"] == "insufficient_scope" and ch["scope"] == "repository:alice/two:pull"
    assert _push_blob(http_pool, base, "alice/two", b"two", tok).status == 401


def test_acl_limits_granted_actions(auth_registry, token_servers, http_pool):
    ts = token_servers["ec"]
    tok = _token(http_pool, ts, "repository:bob/x:pull,push", user="bob")
    assert ts.requests[-1].granted == [{"type": "repository", "name": "bob/x", "actions": ["pull"]}]
    r = _push_blob(http_pool, auth_registry.url, "bob/x", b"bob", tok)
    assert r.status == 401 and _challenge(r)["error"] == "insufficient_scope"
    _token(http_pool, ts, "repository:alice/x:pull", user="bob")
    assert ts.requests[-1].granted == []


def test_forged_tokens_are_rejected(auth_registry, token_servers, http_pool):
    ts = token_servers["ec"]
    access = [{"type": "repository", "name": "alice/one", "actions": ["pull"]}]
    now = int(time.time())
    forged = {
        "wrong audience": ts.issue("alice", access, audience="other-service")[0],
        # distribution 2.8 parses "aud" as a single string only: a list makes the token
        # malformed even when it holds the right service.
        "audience as a list": ts.issue("alice", access, audience=[ts.service])[0],
        "wrong issuer": ts.issue("alice", access, issuer="someone-else")[0],
        "expired": ts.issue("alice", access, expires_in=-120)[0],
        "not yet valid": ts.issue("alice", access, not_before=now + 300)[0],
        "untrusted kid": token_servers["untrusted"].issue("alice", access)[0],
        "untrusted x5c": token_servers["untrusted"].issue("alice", access, header_mode="x5c")[0],
    }
    good, _ = ts.issue("alice", access)
    forged["bad signature"] = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    for what, tok in forged.items():
        r = http_pool.request(
            "GET", f"{auth_registry.url}/v2/", headers={"Authorization": f"Bearer {tok}"}
        )
        assert r.status == 401, what
        assert _challenge(r).get("error") == "invalid_token", what
    r = http_pool.request(
        "GET", f"{auth_registry.url}/v2/", headers={"Authorization": f"Bearer {good}"}
    )
    assert r.status == 200


def test_anonymous_pull_when_configured(token_servers, http_pool):
    with TokenServer(USERS, anonymous={"public/*": ["pull"]}) as ts:
        r = _fetch_token(http_pool, ts, "repository:public/x:pull,push", user=None)
        assert r.status == 200
        assert ts.requests[-1].granted == [
            {"type": "repository", "name": "public/x", "actions": ["pull"]}
        ]
        r = _fetch_token(http_pool, ts, "repository:public/x:pull", password="bad")
        assert r.status == 401
