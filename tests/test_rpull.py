"""``soci-native rpull`` under real containerd 1.6 + runc, the soci-native snapshotter,
docker-registry, skopeo and umoci on 127.0.0.1 (private directories, as test_snapshotter).

The image of ctr_env (two layers with a zTOC, a third too small for one) is pulled with
``soci-native rpull``: the two come up as lazy mounts and containerd's content store never
holds their blobs, the third is fetched and unpacked by containerd; ``ctr run`` prints the
exact output that needs all three layers. The image survives containerd's garbage
collection once the pull's lease is gone (the GC labels hold it), a second pull finds every
layer present, an image without an index is pulled in full and runs the same, removing the
image frees the lazy mounts, and bad input gives one clear line. The index carries a prefetch
artifact for one file of the first layer: its spans are fetched right after the mount, before
any container reads them.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import ctr_env as ce
import pytest
import reg_server


class Env:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.reg = reg_server.Registry.start(base / "reg")
        self.store = base / "store"
        self.lazy_ref = f"{self.reg.host}/app:v1"
        self.plain_ref = f"{self.reg.host}/plain:v1"
        ce.push(ce.build_image(base / "img"), self.lazy_ref)
        ce.push(ce.build_image(base / "img2", extra_file="only in the plain image\n"),
                self.plain_ref)
        # a prefetch artifact: /data/random1.bin's spans are fetched right after the mount
        ce.soci("create", f"docker://{self.lazy_ref}", *ce.CREATE_OPTS, "--prefetch-file",
                "/data/random1.bin", root=self.store)
        ce.soci("push", f"docker://{self.lazy_ref}", root=self.store)
        self.layers = ce.layer_digests(self.lazy_ref)
        self.sn = ce.Snapshotter.start(base / "sn", base / "sn.sock")
        self.ctrd = ce.Containerd.start(base / "ctrd", base / "sn.sock")

    def rpull(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        p = subprocess.run([sys.executable, "-m", "soci_native.cli", "rpull", "--address",
                            str(self.ctrd.address), "-n", "t", *args],
                           capture_output=True, text=True, timeout=300)
        if ok:
            assert p.returncode == 0, f"{p.stderr}\n{self.sn.log.read_text()[-3000:]}"
        return p

    def mounts(self) -> list[dict[str, Any]]:
        return self.sn.mounts()

    def run(self, ref: str, name: str) -> str:
        return str(self.ctrd.ctr("run", "--rm", "--snapshotter", "soci", ref, name,
                                 "/bin/sh", "-c", ce.COMMAND).stdout)

    def close(self) -> None:
        ce.teardown(self.base, self.ctrd, self.sn, self.reg)


@pytest.fixture(scope="module")
def env() -> Any:
    ce.need_tools("the rpull tests")
    e = Env(ce.short_tempdir())
    try:
        yield e
    finally:
        e.close()


def test_rpull_mounts_lazily_and_runs(env: Env) -> None:
    res = json.loads(env.rpull("--json", env.lazy_ref).stdout)
    assert res["image"] == env.lazy_ref
    assert [(r["digest"], r["how"]) for r in res["layers"]] == [
        (env.layers[0], "lazy"), (env.layers[1], "lazy"), (env.layers[2], "unpacked")]
    assert sorted(m["layer"] for m in env.mounts()) == sorted(env.layers[:2])
    # before any container reads: the prefetch artifact's spans arrive in the background
    # (random1.bin: 256 KiB of incompressible bytes in 64 KiB spans, 4 spans at least)
    deadline = time.monotonic() + 30
    while True:
        base = next(m for m in env.mounts() if m["layer"] == env.layers[0])
        if base["prefetched_spans"] >= 4 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert base["prefetched_spans"] >= 4 and base["totals"]["spans_fetched"] >= 4, base
    upper = next(m for m in env.mounts() if m["layer"] == env.layers[1])
    assert upper["prefetched_spans"] == 0  # no prefetch artifact for that layer
    blobs = env.ctrd.content_blobs()
    assert env.layers[0] not in blobs and env.layers[1] not in blobs  # never downloaded
    assert env.layers[2] in blobs and res["manifest"] in blobs
    images = env.ctrd.ctr("images", "ls", "-q").stdout.split()
    assert env.lazy_ref in images
    assert env.run(env.lazy_ref, "r1") == ce.EXPECTED


def test_image_survives_gc_and_a_second_pull_finds_it(env: Env) -> None:
    # removing another image runs containerd's GC: only the labels keep ours alive now
    env.ctrd.ctr("images", "pull", "--plain-http", "--snapshotter", "soci", env.plain_ref)
    env.ctrd.ctr("images", "rm", "--sync", env.plain_ref)
    assert env.run(env.lazy_ref, "r2") == ce.EXPECTED
    p = env.rpull(env.lazy_ref)
    assert p.stdout.strip().endswith("0 of 3 layers lazy (soci), 0 unpacked, "
                                     "3 already present")
    assert len(env.mounts()) == 2


def test_rpull_of_an_image_without_index_is_a_full_pull(env: Env) -> None:
    res = json.loads(env.rpull("--json", env.plain_ref).stdout)
    assert [r["how"] for r in res["layers"]] == ["unpacked"] * 3
    assert env.run(env.plain_ref, "r3") == ce.EXPECTED
    assert len(env.mounts()) == 2  # still only the lazy image's two


def _put_index(env: Env, manifest_digest: str, size: int, tag: str) -> str:
    """A hand-made OCI image index in front of the lazy image's manifest (listed for arm64
    and amd64: the registry wants every entry present): rpull picks the platform's entry and
    keeps the index as the image's target."""
    entries = [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": size,
                "digest": manifest_digest, "platform": {"os": "linux", "architecture": a}}
               for a in ("arm64", "amd64")]
    body = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                       "manifests": entries}).encode()
    req = urllib.request.Request(f"http://{env.reg.host}/v2/app/manifests/{tag}", data=body,
                                 method="PUT", headers={
                                     "Content-Type": "application/vnd.oci.image.index.v1+json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 201
    return "sha256:" + hashlib.sha256(body).hexdigest()


def test_rpull_of_an_index_picks_the_platform(env: Env) -> None:
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                          f"docker://{env.lazy_ref}"], check=True, capture_output=True).stdout
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    index = _put_index(env, digest, len(raw), "multi")
    ref = f"{env.reg.host}/app:multi"
    res = json.loads(env.rpull("--json", "--platform", "linux/amd64", ref).stdout)
    assert res["manifest"] == digest
    assert [r["how"] for r in res["layers"]] == ["present"] * 3  # the same chain as app:v1
    assert index in env.ctrd.content_blobs()
    ls = env.ctrd.ctr("images", "ls").stdout
    assert any(ref in line and "index" in line for line in ls.splitlines()), ls
    assert env.run(ref, "r5") == ce.EXPECTED
    env.ctrd.ctr("images", "rm", "--sync", ref)


def test_remove_frees_the_lazy_mounts(env: Env) -> None:
    env.ctrd.ctr("images", "rm", "--sync", env.lazy_ref)
    deadline = time.monotonic() + 30
    while env.mounts() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert env.mounts() == []
    assert env.run(env.plain_ref, "r4") == ce.EXPECTED


@pytest.mark.parametrize("args, message", [
    (["--address", "/nonexistent/containerd.sock"], "no containerd socket at"),
    (["--snapshotter", "nosuch"], "snapshotter not loaded: nosuch"),
    (["--platform", "plan9/sparc"], "plan9/sparc"),
])
def test_rpull_errors_are_one_line(env: Env, args: list[str], message: str) -> None:
    p = env.rpull(*args, env.lazy_ref, ok=False)
    assert p.returncode == 1, p.stderr
    assert message in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
