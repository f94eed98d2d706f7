"""The snapshotter under real containerd 1.6 + runc, with docker-registry, skopeo, umoci and
ctr-remote on 127.0.0.1 (private containerd config/root/state/socket under a temp dir).

An image with a pushed SOCI index is pulled with ``ctr-remote images rpull`` (the remote
labels): its two zTOC layers become lazy FUSE mounts (containerd's content store never gets
their blobs), the third (no zTOC) is unpacked by containerd. A command's exact output needs
files of all three layers, a whiteout and an opaque directory. An image without an index
pulled with plain ``ctr`` runs the same. Restarting the snapshotter during a running
container keeps its lazy files readable; a lost mount daemon is replaced and the mounts
made again at start; removing the image frees mounts, span caches and directories.
Also: the filter syntax, the state rules and the config file, without containerd.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import ctr_env as ce
import pytest
import reg_server

from soci_native.snapshotter import config as snap_config
from soci_native.snapshotter import filters
from soci_native.snapshotter.metadata import KIND_ACTIVE, KIND_COMMITTED, Metadata, MetaError


class Env:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.reg = reg_server.Registry.start(base / "reg")
        self.store = base / "store"
        self.lazy_ref = f"{self.reg.host}/app:v1"
        self.plain_ref = f"{self.reg.host}/plain:v1"
        lay = ce.build_image(base / "img")
        ce.push(lay, self.lazy_ref)
        ce.push(ce.build_image(base / "img2", extra_file="only in the plain image\n"),
                self.plain_ref)
        ce.soci("create", f"docker://{self.lazy_ref}", *ce.CREATE_OPTS, root=self.store)
        ce.soci("push", f"docker://{self.lazy_ref}", root=self.store)
        self.layers = ce.layer_digests(self.lazy_ref)
        self.sn_root = base / "sn"
        self.sock = base / "sn.sock"
        # the snapshotter's own store (<root>/store): the index comes from the registry
        self.sn = ce.Snapshotter.start(self.sn_root, self.sock)
        self.ctrd = ce.Containerd.start(base / "ctrd", self.sock)

    def restart_snapshotter(self, lose_mounts: bool = False) -> None:
        self.sn.stop()
        if lose_mounts:
            self.sn.stop_mounts()  # the daemon and its mounts are gone (as after a reboot)
        self.sn = ce.Snapshotter.start(self.sn_root, self.sock)
        # containerd redials a proxy plugin with backoff: wait until it is through again
        deadline = time.monotonic() + 60
        while self.ctrd.ctr("snapshots", "--snapshotter", "soci", "ls", ok=False,
                            timeout=60).returncode != 0:
            assert time.monotonic() < deadline, "containerd did not reconnect"
            time.sleep(0.2)

    def mounts(self) -> list[dict[str, Any]]:
        return self.sn.mounts()

    def close(self) -> None:
        for c in self.ctrd.ctr("containers", "ls", "-q", ok=False).stdout.split():
            self.ctrd.ctr("task", "kill", "-s", "SIGKILL", c, ok=False)
            time.sleep(0.2)
            self.ctrd.ctr("task", "rm", "-f", c, ok=False)
            self.ctrd.ctr("containers", "rm", c, ok=False)
        ce.teardown(self.base, self.ctrd, self.sn, self.reg)


@pytest.fixture(scope="module")
def env() -> Any:
    ce.need_tools("the snapshotter tests")
    e = Env(ce.short_tempdir())
    try:
        yield e
    finally:
        e.close()


def _run(env: Env, ref: str, name: str) -> str:
    p = env.ctrd.ctr("run", "--rm", "--snapshotter", "soci", ref, name, "/bin/sh", "-c",
                     ce.COMMAND)
    return str(p.stdout)


def test_plain_image_runs_like_overlayfs(env: Env) -> None:
    env.ctrd.ctr("images", "pull", "--plain-http", "--snapshotter", "soci", env.plain_ref)
    assert _run(env, env.plain_ref, "plain1") == ce.EXPECTED
    assert env.mounts() == []  # nothing lazy: plain ctr sends no remote labels


def test_lazy_pull_and_run(env: Env) -> None:
    env.ctrd.ctr_remote("images", "rpull", "--plain-http", "--snapshotter", "soci",
                        env.lazy_ref)
    mounts = env.mounts()
    assert sorted(m["layer"] for m in mounts) == sorted(env.layers[:2])
    blobs = env.ctrd.content_blobs()
    assert env.layers[0] not in blobs and env.layers[1] not in blobs  # never downloaded
    assert env.layers[2] in blobs  # no zTOC: containerd fetched and unpacked it
    for m in mounts:
        assert os.path.ismount(m["mountpoint"])
    assert _run(env, env.lazy_ref, "lazy1") == ce.EXPECTED
    # the lower layer's mount shows the whiteout and opaque dir as overlayfs wants them
    upper = next(Path(m["mountpoint"]) for m in mounts if m["layer"] == env.layers[1])
    st = os.lstat(upper / "data" / "gone.txt")
    assert (st.st_mode & 0o170000, st.st_rdev) == (0o020000, 0)
    assert os.getxattr(upper / "opq", "trusted.overlay.opaque") == b"y"


def test_restart_during_running_container(env: Env) -> None:
    env.ctrd.ctr("run", "-d", "--snapshotter", "soci", env.lazy_ref, "long1",
                 "/bin/sleep", "600")
    before = {m["mountpoint"] for m in env.mounts()}
    env.restart_snapshotter()
    # a file nobody read yet: its spans are fetched through the mount after the restart
    p = env.ctrd.ctr("task", "exec", "--exec-id", "e1", "long1", "/bin/cat",
                     "/data/random1.bin", text=False)
    assert hashlib.sha256(p.stdout).hexdigest() == hashlib.sha256(ce.RANDOM1).hexdigest()
    assert {m["mountpoint"] for m in env.mounts()} == before
    env.ctrd.ctr("task", "kill", "-s", "SIGKILL", "long1")
    time.sleep(0.5)
    env.ctrd.ctr("task", "rm", "-f", "long1", ok=False)
    env.ctrd.ctr("containers", "rm", "long1")


def test_mounts_made_again_after_losing_the_mount_daemon(env: Env) -> None:
    before = sorted(m["layer"] for m in env.mounts())
    env.restart_snapshotter(lose_mounts=True)
    assert sorted(m["layer"] for m in env.mounts()) == before
    assert _run(env, env.lazy_ref, "lazy2") == ce.EXPECTED


def test_remove_frees_mounts_and_caches(env: Env) -> None:
    mounts = env.mounts()
    assert mounts
    caches = [Path(m["cache_dir"]) for m in mounts]
    assert any(c.exists() for c in caches)
    env.ctrd.ctr("images", "rm", "--sync", env.lazy_ref)
    deadline = time.monotonic() + 30
    while env.mounts() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert env.mounts() == []
    for m in mounts:
        assert not os.path.ismount(m["mountpoint"])
        assert not Path(m["mountpoint"]).parent.exists()
    assert not any(c.exists() for c in caches)
    # the plain image is untouched and still runs
    assert _run(env, env.plain_ref, "plain2") == ce.EXPECTED


# ------------------------------------------------------------------- without containerd


def test_filters() -> None:
    labels = {"containerd.io/snapshot.ref": "sha256:abc", "x": "1"}

    def fields(path: tuple[str, ...]) -> str | None:
        if path == ("parent",):
            return "t/3/sha256:def"
        if path == ("kind",):
            return "committed"
        return labels.get(".".join(path[1:])) if path[0] == "labels" else None

    ok = filters.compile_filters(
        ['labels."containerd.io/snapshot.ref"==sha256:abc,parent=="t/3/sha256:def"'])
    assert ok(fields)
    assert not filters.compile_filters(['labels."containerd.io/snapshot.ref"==sha256:ab'])(
        fields)
    assert filters.compile_filters(["kind==active", "labels.x"])(fields)  # OR
    assert not filters.compile_filters(["labels.y"])(fields)
    assert filters.compile_filters(["parent~=/sha256:d.f/"])(fields)
    assert filters.compile_filters(["kind!=view,labels.x==1"])(fields)
    with pytest.raises(filters.FilterError):
        filters.parse('labels."unterminated==1')


def test_metadata_rules(tmp_path: Path) -> None:
    m = Metadata(tmp_path / "m.db")
    a = m.create("a", "", KIND_ACTIVE, {})
    with pytest.raises(MetaError) as e:
        m.create("b", "a", KIND_ACTIVE, {})
    assert e.value.code == "INVALID_ARGUMENT"  # parent must be committed
    with pytest.raises(MetaError) as e:
        m.create("b", "nope", KIND_ACTIVE, {})
    assert e.value.code == "NOT_FOUND"
    c = m.commit("A", "a", {"l": "v"}, 10, 2)
    assert (c.id, c.kind, c.labels) == (a.id, KIND_COMMITTED, {"l": "v"})
    with pytest.raises(MetaError) as e:
        m.create("A", "", KIND_ACTIVE, {})
    assert e.value.code == "ALREADY_EXISTS"
    m.create("b", "A", KIND_ACTIVE, {})
    with pytest.raises(MetaError) as e:
        m.remove("A")
    assert e.value.code == "FAILED_PRECONDITION"  # has a child
    m.remove("b")
    m.remove("A")
    assert m.all() == []


def test_config_default_round_trips_and_rejects_typos(tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, "-m", "soci_native.cli", "snapshotter", "config",
                        "default"], capture_output=True, text=True, check=True)
    assert snap_config.parse(p.stdout) == snap_config.Config()
    cfg = snap_config.parse("mount_timeout = 5\n[cache]\nmax_bytes_per_layer = 1048576\n")
    assert (cfg.mount_timeout, cfg.cache_max_bytes_per_layer) == (5.0, 1 << 20)
    with pytest.raises(snap_config.ConfigError, match="unknown setting"):
        snap_config.parse("mount_timout = 5\n")
    with pytest.raises(snap_config.ConfigError, match="must be a"):
        snap_config.parse("[cache]\nmax_bytes_per_layer = 'big'\n")
    bad = tmp_path / "bad.toml"
    bad.write_text("grpc_workers = 0\n")
    r = subprocess.run([sys.executable, "-m", "soci_native.cli", "snapshotter", "--config",
                        str(bad), "--address", str(tmp_path / "s.sock"), "--root",
                        str(tmp_path / "r")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "at least 1" in r.stderr and "Traceback" not in r.stderr


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_idle_memory_with_ten_images(env: Env) -> None:
    from soci_native.snapshotter.mountd import MountdClient

    refs = []
    for i in range(10):
        ref = f"{env.reg.host}/many{i}:v1"
        lay = ce.build_image(env.base / f"many{i}", extra_file=f"image {i}\n")
        ce.push(lay, ref)
        ce.soci("create", f"docker://{ref}", *ce.CREATE_OPTS, root=env.store)
        ce.soci("push", f"docker://{ref}", root=env.store)
        shutil.rmtree(env.base / f"many{i}")
        refs.append(ref)
    for ref in refs:
        env.ctrd.ctr_remote("images", "rpull", "--plain-http", "--snapshotter", "soci", ref)
    assert len(env.mounts()) == 20  # two lazy layers each
    assert _run(env, refs[-1], "many9") == ce.EXPECTED
    time.sleep(2)  # idle
    pid = MountdClient(env.sn_root / "mountd").pid()
    assert pid is not None
    total = _rss(env.sn.proc.pid) + _rss(pid)
    print(f"idle RSS with 10 images (20 lazy layers): {total / 2**20:.0f} MiB "
          f"(snapshotter {_rss(env.sn.proc.pid) / 2**20:.0f}, mount daemon "
          f"{_rss(pid) / 2**20:.0f})")
    assert total <= 250 << 20
    for ref in refs:
        env.ctrd.ctr("images", "rm", "--sync", ref)
    deadline = time.monotonic() + 30
    while env.mounts() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert env.mounts() == []
