"""The CLI against a real registry (Debian's docker-registry, distribution 2.8, on 127.0.0.1):
create from a registry, push + discovery through the referrers tag, pull into a fresh store,
convert to a registry, get-file with range requests, basic auth, and faults injected by a
proxy between client and registry."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import reg_server
from test_cli import SMALL, STDLIB, cli, image, layers_of  # noqa: F401 (the `image` fixture)

pytestmark = pytest.mark.skipif(not reg_server.available(),
                                reason="needs docker-registry (apt) and skopeo")
USER, PASSWORD = "sociuser", "s3cret!"
EMPTY_CONFIG_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"


def skopeo_raw(ref: str, *extra: str) -> bytes:
    return subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", *extra, ref],
                          check=True, capture_output=True).stdout


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory, image: Path) -> Any:  # noqa: F811
    with reg_server.Registry.start(tmp_path_factory.mktemp("reg")) as r:
        subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{image}:t",
                        f"docker://{r.host}/test/img:t"], check=True)
        yield r


def test_create_push_discover_pull(reg: Any, image: Path, tmp_path: Path) -> None:  # noqa: F811
    ref = f"docker://{reg.host}/test/img:t"
    local = json.loads(cli("create", f"oci:{image}:t", *SMALL, "--json",
                           root=tmp_path / "a").stdout)[0]
    remote = json.loads(cli("create", ref, *SMALL, "--json", root=tmp_path / "b").stdout)[0]
    # streamed from the registry or read from the layout: the same zTOCs and index
    assert [x["ztoc"] for x in remote["layers"]] == [x["ztoc"] for x in local["layers"]]
    assert remote["digest"] == local["digest"]
    pushed = json.loads(cli("push", ref, "--json", root=tmp_path / "b").stdout)
    assert pushed[0]["status"] == "pushed" and pushed[0]["discovery"] == "referrers-tag"
    manifest = skopeo_raw(ref)
    subject = "sha256:" + hashlib.sha256(manifest).hexdigest()
    tag_index = json.loads(skopeo_raw(f"docker://{reg.host}/test/img:{subject.replace(':', '-')}"))
    entries = [m for m in tag_index["manifests"]
               if m.get("artifactType") == "application/vnd.amazon.soci.index.v1+json"]
    assert [m["digest"] for m in entries] == [remote["digest"]]
    soci = json.loads(skopeo_raw(f"docker://{reg.host}/test/img@{remote['digest']}"))
    assert soci["subject"]["digest"] == subject
    # --existing-index skip sees it; a fresh store discovers and pulls it
    skip = json.loads(cli("push", ref, "--existing-index", "skip", "--json",
                          root=tmp_path / "b").stdout)
    assert skip[0]["status"] == "skipped"
    pulled = json.loads(cli("index", "pull", ref, "--json", root=tmp_path / "c").stdout)
    assert pulled[0]["digest"] == remote["digest"] and pulled[0]["found_by"] == "referrers"
    ztocs = json.loads(cli("ztoc", "list", "--json", root=tmp_path / "c").stdout)
    assert {z["digest"] for z in ztocs} == {x["ztoc"] for x in remote["layers"]}


def test_push_keeps_other_referrers_in_the_tag(reg: Any, tmp_path: Path) -> None:
    ref = f"docker://{reg.host}/test/img:t"
    subject = "sha256:" + hashlib.sha256(skopeo_raw(ref)).hexdigest()
    tag_ref = f"docker://{reg.host}/test/img:{subject.replace(':', '-')}"
    # someone else's referrer, listed in the fallback tag before we push
    other = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
             "artifactType": "application/example.sbom", "config": {
                 "mediaType": "application/vnd.oci.empty.v1+json", "size": 2,
                 "digest": EMPTY_CONFIG_DIGEST},
             "layers": [], "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                       "digest": subject, "size": len(skopeo_raw(ref))}}
    from soci_native.images import Descriptor
    from soci_native.registry import RegistryClient
    with RegistryClient(reg.host) as c:
        c.push_blob("test/img", b"{}")
        raw = json.dumps(other).encode()
        d = c.put_manifest("test/img", raw, other["mediaType"])
        c.add_referrer("test/img", subject, Descriptor(other["mediaType"], d.digest, len(raw),
                                                       artifact_type="application/example.sbom"))
    cli("create", ref, *SMALL, root=tmp_path)
    cli("push", ref, "--existing-index", "allow", root=tmp_path)
    kinds = sorted(m.get("artifactType", "") for m in json.loads(skopeo_raw(tag_ref))["manifests"])
    assert "application/example.sbom" in kinds
    assert "application/vnd.amazon.soci.index.v1+json" in kinds


def test_convert_to_registry_and_pull_v2(reg: Any, tmp_path: Path) -> None:
    src, dst = f"docker://{reg.host}/test/img:t", f"docker://{reg.host}/test/img:soci"
    res = json.loads(cli("convert", src, dst, *SMALL, "--json", root=tmp_path / "a").stdout)
    top = skopeo_raw(dst)
    assert "sha256:" + hashlib.sha256(top).hexdigest() == res["index_digest"]
    doc = json.loads(top)
    assert [m.get("artifactType") for m in doc["manifests"]] == [
        None, "application/vnd.amazon.soci.index.v2+json"]
    # the whole image copies out of the registry (every blob and manifest was pushed)
    subprocess.run(["skopeo", "copy", "-q", "--all", "--src-tls-verify=false", dst,
                    f"oci:{tmp_path / 'copy'}:x"], check=True)
    pulled = json.loads(cli("index", "pull", dst, "--json", root=tmp_path / "b").stdout)
    assert pulled[0]["found_by"] == "v2-annotation"
    assert pulled[0]["digest"] == doc["manifests"][1]["digest"]


def test_get_file_reads_only_its_spans_from_the_registry(reg: Any, image: Path,  # noqa: F811
                                                         tmp_path: Path) -> None:
    ref = f"docker://{reg.host}/test/img:t"
    res = json.loads(cli("create", ref, *SMALL, "--json", root=tmp_path).stdout)[0]
    big = max(res["layers"], key=lambda x: x["size"])
    out = tmp_path / "tasks.py"
    p = cli("ztoc", "get-file", big["ztoc"], "usr/lib/python/asyncio/tasks.py", "-v", "-o",
            str(out), root=tmp_path)
    assert out.read_bytes() == (STDLIB / "asyncio/tasks.py").read_bytes()
    fetched, total = (int(w) for w in p.stderr.split()[1:4:2])  # "read N of M layer bytes"
    assert total == big["size"] and fetched < total / 4


def test_get_file_refuses_bytes_that_are_not_the_zTOC_s(reg: Any, tmp_path: Path) -> None:
    """A registry (here a proxy flipping one byte) that serves other bytes for a span than
    the zTOC was built from: get-file fails with the span named, prints nothing."""
    from fault_proxy import FaultProxy, corrupt, on

    res = json.loads(cli("create", f"docker://{reg.host}/test/img:t", *SMALL, "--json",
                         root=tmp_path).stdout)[0]
    big = max(res["layers"], key=lambda x: x["size"])
    name = "usr/lib/python/asyncio/tasks.py"
    with FaultProxy("127.0.0.1", reg.port) as proxy:
        proxy.add_fault(corrupt(100), match=on("GET", f"/blobs/{big['digest']}"))
        p = cli("ztoc", "get-file", big["ztoc"], name, "--image",
                f"docker://{proxy.netloc}/test/img:t", root=tmp_path, ok=False)
        assert proxy.stats.total_requests("GET", "/blobs/") >= 1
    assert p.returncode == 1 and p.stdout == "" and "Traceback" not in p.stderr
    assert "digest mismatch" in p.stderr and "refusing to output them" in p.stderr, p.stderr


@pytest.fixture(scope="module")
def areg(tmp_path_factory: pytest.TempPathFactory, image: Path) -> Any:  # noqa: F811
    with reg_server.Registry.start(tmp_path_factory.mktemp("areg"),
                                   users={USER: PASSWORD}) as r:
        subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false",
                        f"--dest-creds={USER}:{PASSWORD}", f"oci:{image}:t",
                        f"docker://{r.host}/auth/img:t"], check=True)
        yield r


def test_basic_auth_creds_and_auth_file(areg: Any, tmp_path: Path) -> None:
    ref = f"docker://{areg.host}/auth/img:t"
    p = cli("create", ref, *SMALL, "--authfile", str(tmp_path / "none.json"), root=tmp_path,
            ok=False)
    assert p.returncode == 1 and "auth" in p.stderr.lower()
    cli("create", ref, *SMALL, "--creds", f"{USER}:{PASSWORD}", root=tmp_path)
    import base64
    authfile = tmp_path / "auth.json"
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    authfile.write_text(json.dumps({"auths": {areg.host: {"auth": token}}}))
    cli("push", ref, "--authfile", str(authfile), root=tmp_path)
    p = cli("push", ref, "--creds", f"{USER}:wrong", root=tmp_path, ok=False)
    assert p.returncode == 1 and p.stderr.startswith("soci-native: error:")


def test_faults_give_identical_results_or_clear_errors(reg: Any, tmp_path: Path) -> None:
    from fault_proxy import FaultProxy, drop_after, on, status

    good = json.loads(cli("create", f"docker://{reg.host}/test/img:t", *SMALL, "--json",
                          root=tmp_path / "good").stdout)[0]
    with FaultProxy("127.0.0.1", reg.port) as proxy:
        ref = f"docker://{proxy.netloc}/test/img:t"
        blobs = on(method="GET", path=r"/v2/test/img/blobs/sha256:.*")
        proxy.add_fault(drop_after(100_000), match=blobs, times=2)  # cut mid-blob, twice
        proxy.add_fault(status(500), match=blobs, times=1)
        proxy.add_fault(status(429, {"Retry-After": "1"}), match=blobs, times=1)
        got = json.loads(cli("create", ref, *SMALL, "--json", "--force",
                             root=tmp_path / "faulty").stdout)[0]
        assert got["digest"] == good["digest"]
        assert [x["ztoc"] for x in got["layers"]] == [x["ztoc"] for x in good["layers"]]
        assert proxy.stats.total_requests("GET", r"/v2/test/img/blobs/.*") > len(good["layers"])
        proxy.clear_faults()
        proxy.add_fault(status(503), match=blobs)  # never recovers: bounded retries, clear error
        p = cli("create", ref, *SMALL, "--force", root=tmp_path / "down", ok=False)
        assert p.returncode == 1 and "503" in p.stderr and "Traceback" not in p.stderr


def test_password_from_stdin_and_from_the_terminal(areg: Any, tmp_path: Path) -> None:
    """`--creds USER --password-stdin` and `--creds USER` on a terminal (a pty here): the
    password is read, never needed on the command line."""
    import pty

    ref = f"docker://{areg.host}/auth/img:t"
    env = dict(os.environ, SOCI_NATIVE_ROOT=str(tmp_path))
    args = [sys.executable, "-m", "soci_native.cli", "index", "pull", ref, "--creds", USER]
    p = subprocess.run([*args, "--password-stdin"], input=PASSWORD + "\n", env=env,
                       text=True, capture_output=True, timeout=120)
    authed = ("no SOCI index found", "soci index sha256:")  # got past auth (an earlier
    # test of this module may have pushed an index)
    assert any(a in p.stderr + p.stdout for a in authed), p.stderr
    p = subprocess.run([*args, "--password-stdin"], input="wrong\n", env=env, text=True,
                       capture_output=True, timeout=120)
    assert p.returncode == 1 and "401" in p.stderr, p.stderr
    p = subprocess.run(args, stdin=subprocess.DEVNULL, env=env, text=True,
                       capture_output=True, timeout=120)
    assert p.returncode == 2 and "no terminal to ask the password on" in p.stderr, p.stderr
    p = subprocess.run([*args[:-2], "--password-stdin"], input="x", env=env, text=True,
                       capture_output=True, timeout=120)
    assert p.returncode == 2 and "--password-stdin needs --creds USER" in p.stderr
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env,
                                start_new_session=True)
        os.close(slave)
        out = b""
        import select
        import time
        deadline = time.monotonic() + 60
        sent = False
        while time.monotonic() < deadline:
            r, _, _ = select.select([master], [], [], 0.5)
            if r:
                try:
                    chunk = os.read(master, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
            if not sent and b"Password for " + USER.encode() in out:
                os.write(master, PASSWORD.encode() + b"\n")
                sent = True
            if proc.poll() is not None and not r:
                break
        proc.wait(timeout=30)
    finally:
        os.close(master)
    text = out.decode(errors="replace")
    assert sent and PASSWORD not in text, text  # asked, and not echoed
    assert any(a in text for a in authed), text


def test_tls_registry_on_loopback_with_cert_dir(image: Path, tmp_path: Path) -> None:  # noqa: F811
    """A registry serving HTTPS with a self-signed certificate on 127.0.0.1: reached over
    HTTPS (not plain HTTP), trusted through --cert-dir; without it a one-line error that
    names the flags."""
    from tls_cert import self_signed

    cert, key = self_signed(tmp_path)
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "ca.crt").write_bytes(cert.read_bytes())
    with reg_server.Registry.start(tmp_path / "reg", tls=(cert, key)) as r:
        ref = f"docker://{r.host}/tls/img:t"
        subprocess.run(["skopeo", "copy", "-q", f"--dest-cert-dir={certs}", f"oci:{image}:t",
                        ref], check=True)
        p = cli("create", ref, *SMALL, root=tmp_path / "a", ok=False)
        assert p.returncode == 1 and "Traceback" not in p.stderr
        assert "CERTIFICATE_VERIFY_FAILED" in p.stderr and "--cert-dir" in p.stderr
        got = json.loads(cli("create", ref, *SMALL, "--json", "--cert-dir", str(certs),
                             root=tmp_path / "b").stdout)[0]
        local = json.loads(cli("create", f"oci:{image}:t", *SMALL, "--json",
                               root=tmp_path / "c").stdout)[0]
        assert got["digest"] == local["digest"]  # the same index, read over HTTPS
