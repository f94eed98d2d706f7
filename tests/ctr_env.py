"""Real containers for the snapshotter tests: an image that runs, and a private containerd.

``build_image(base)`` makes an OCI layout with umoci whose container can run a shell command:

1. (umoci repack) the host's ``dash`` and ``cat`` with the shared libraries ``ldd`` names,
   ``/data/a.txt``, ``/data/gone.txt``, ``/opq/old.txt`` and 256 KiB of random bytes (so the
   layer has several spans);
2. (``umoci raw add-layer``, a hand-written tar) ``/data/b.txt``, a whiteout of
   ``/data/gone.txt``, an opaque ``/opq`` (``.wh..wh..opq``) holding ``new.txt``, 128 KiB of
   random bytes;
3. (likewise) a tiny ``/data/c.txt`` layer, below ``--min-layer-size 1000``: no zTOC.

``Containerd.start(dir, snapshotter_socket)`` runs containerd 1.6 with private config, root,
state and socket under ``dir`` (CRI disabled) and the snapshotter as proxy plugin ``soci``;
``ctr(...)`` runs ``ctr`` against it, ``ctr_remote(...)`` ``ctr-remote``.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SPAN = 65536
CREATE_OPTS = ["--min-layer-size", "1000", "--span-size", str(SPAN)]
COMMAND = ("cat /data/a.txt /data/b.txt /data/c.txt; for f in /opq/*; do echo $f; done; "
           "[ -e /data/gone.txt ] && echo present || echo gone")
EXPECTED = ("alpha from layer 1\nbeta from layer 2\ngamma from layer 3\n/opq/new.txt\ngone\n")
RANDOM1 = random.Random(11).randbytes(256 << 10)  # /data/random1.bin, layer 1
TOOLS = ("containerd", "ctr", "runc", "ctr-remote", "umoci", "skopeo", "docker-registry",
         "fusermount3")


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None]


def need_tools(what: str) -> None:
    """Skips the caller's tests when containerd's tools or root are missing; under CI
    (``CI=true``) that is a failure instead."""
    import pytest

    missing = missing_tools()
    if os.geteuid() != 0:
        missing.append("root (containerd, overlayfs)")
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"missing for {what}: {', '.join(missing)}")
        pytest.skip(f"needs {', '.join(missing)}")


def run(*args: str, timeout: float = 120, **kw: Any) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({p.returncode}): {p.stderr}{p.stdout}")
    return p


def _libs(binary: str) -> list[str]:
    out = run("ldd", binary).stdout
    return re.findall(r"(/\S+) \(0x", out)


def _tar(path: Path, members: list[tuple[str, bytes | None]]) -> Path:
    """A tar of (name, data) pairs (data None: a directory); umoci gzips it."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.mtime = 1_700_000_000
            if data is None:
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(ti)
            else:
                ti.size, ti.mode = len(data), 0o644
                tf.addfile(ti, io.BytesIO(data))
    path.write_bytes(raw.getvalue())
    return path


def build_image(base: Path, extra_file: str = "") -> Path:
    """The layout (tag ``t``); ``extra_file`` adds /data/extra.txt to every layer (another
    image with the same files but no layer in common)."""
    lay = base / "lay"
    run("umoci", "init", "--layout", str(lay))
    run("umoci", "new", "--image", f"{lay}:t")
    run("umoci", "unpack", "--image", f"{lay}:t", str(base / "b1"))
    r = base / "b1" / "rootfs"
    bins = {"sh": shutil.which("dash") or "/bin/dash"}
    for tool in ("cat", "sleep"):
        bins[tool] = shutil.which(tool) or f"/bin/{tool}"
    for name, src in bins.items():
        (r / "bin").mkdir(parents=True, exist_ok=True)
        shutil.copy(src, r / "bin" / name)
    for lib in {lib for b in bins.values() for lib in _libs(b)}:
        (r / lib.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(os.path.realpath(lib), r / lib.lstrip("/"))
    (r / "data").mkdir()
    (r / "data" / "a.txt").write_text("alpha from layer 1\n")
    (r / "data" / "gone.txt").write_text("deleted by layer 2\n")
    # every layer differs from the other image's, so none is shared
    extra: list[tuple[str, bytes | None]] = [("data/extra.txt", extra_file.encode())] \
        if extra_file else []
    if extra_file:
        (r / "data" / "extra.txt").write_text(extra_file)
    rnd = random.Random(11)
    (r / "data" / "random1.bin").write_bytes(RANDOM1)
    rnd.randbytes(256 << 10)
    (r / "opq").mkdir()
    (r / "opq" / "old.txt").write_text("hidden by the opaque directory\n")
    run("umoci", "repack", "--image", f"{lay}:t", str(base / "b1"))
    l2 = _tar(base / "l2.tar", [
        ("data/b.txt", b"beta from layer 2\n"), ("data/.wh.gone.txt", b""),
        ("opq", None), ("opq/.wh..wh..opq", b""), ("opq/new.txt", b"new\n"),
        ("data/random2.bin", rnd.randbytes(128 << 10))] + extra)
    l3 = _tar(base / "l3.tar", [("data/c.txt", b"gamma from layer 3\n")] + extra)
    for layer in (l2, l3):
        run("umoci", "raw", "add-layer", "--image", f"{lay}:t", str(layer))
    shutil.rmtree(base / "b1")
    return lay


def push(lay: Path, ref: str) -> None:
    run("skopeo", "--insecure-policy", "copy", "-q", "--dest-tls-verify=false",
        f"oci:{lay}:t", f"docker://{ref}")


def layer_digests(ref: str) -> list[str]:
    """The layer digests of the manifest ``ref`` names in a plain-HTTP registry (skopeo)."""
    manifest = json.loads(run("skopeo", "inspect", "--raw", "--tls-verify=false",
                              f"docker://{ref}").stdout)
    return [d["digest"] for d in manifest["layers"]]


def soci(*args: str, root: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, SOCI_NATIVE_ROOT=str(root))
    return run(sys.executable, "-m", "soci_native.cli", *args, env=env, timeout=timeout)


def unmount_under(base: Path) -> None:
    """Lazily unmounts whatever is still mounted below ``base`` (deepest first), so a test's
    cleanup never leaves a mount behind or recurses into one."""
    from soci_native.snapshotter.mountinfo import mount_points

    prefix = str(base.resolve()) + "/"
    for mp in sorted((m for m in mount_points() if m.startswith(prefix)), key=len,
                     reverse=True):
        subprocess.run(["umount", "-l", mp], capture_output=True)


def short_tempdir() -> Path:
    """Unix socket paths must stay under 108 bytes: pytest's tmp_path can be longer."""
    return Path(tempfile.mkdtemp(prefix="sn-", dir="/tmp"))


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 20 s: a daemon that ignores the first still goes."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@dataclass
class Snapshotter:
    root: Path
    address: Path
    proc: subprocess.Popen[bytes]
    log: Path
    config: Path | None = None

    @classmethod
    def start(cls, root: Path, address: Path, config: Path | None = None,
              store: Path | None = None) -> Snapshotter:
        log = root.parent / f"{root.name}.log"
        args = [sys.executable, "-m", "soci_native.cli"]
        if store is not None:
            args += ["--root", str(store)]
        args += ["snapshotter", "--address", str(address), "--root", str(root),
                 "--log-level", "debug"]
        if config is not None:
            args += ["--config", str(config)]
        with open(log, "ab") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        s = cls(root, address, proc, log, config)
        deadline = time.monotonic() + 60
        while not address.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                s.stop()
                raise RuntimeError(f"snapshotter did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.05)
        return s

    def stop(self) -> None:
        stop_process(self.proc)

    def stop_mounts(self) -> None:
        subprocess.run([sys.executable, "-m", "soci_native.cli", "snapshotter", "--root",
                        str(self.root), "stop-mounts"], capture_output=True, timeout=120)

    def mounts(self) -> list[dict[str, Any]]:
        """`snapshotter mounts`: the layer mounts its store records, as JSON."""
        p = subprocess.run([sys.executable, "-m", "soci_native.cli", "snapshotter", "--root",
                            str(self.root), "mounts"], capture_output=True, text=True,
                           timeout=60)
        assert p.returncode == 0, p.stderr
        return list(json.loads(p.stdout))


class Containerd:
    def __init__(self, base: Path, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.base = base
        self.proc = proc
        self.log = log
        self.address = base / "containerd.sock"
        self.root = base / "root"

    @classmethod
    def start(cls, base: Path, snapshotter_socket: Path, cri_registry: str = ""
              ) -> Containerd:
        """With ``cri_registry`` (HOST:PORT, plain HTTP) the CRI plugin runs too, pulling
        through the snapshotter with the layer labels (its namespace is k8s.io)."""
        base.mkdir(parents=True, exist_ok=True)
        cfg = base / "config.toml"
        cri = f"""[plugins."io.containerd.grpc.v1.cri"]
  disable_cgroup = true
  disable_apparmor = true
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "soci"
    disable_snapshot_annotations = false
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."{cri_registry}"]
    endpoint = ["http://{cri_registry}"]
""" if cri_registry else 'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        cfg.write_text(f"""version = 2
root = "{base}/root"
state = "{base}/state"
{cri}[grpc]
  address = "{base}/containerd.sock"
[ttrpc]
  address = "{base}/containerd.sock.ttrpc"
[debug]
  address = "{base}/debug.sock"
[proxy_plugins]
  [proxy_plugins.soci]
    type = "snapshot"
    address = "{snapshotter_socket}"
""")
        log = base / "containerd.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(["containerd", "--config", str(cfg)], stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        c = cls(base, proc, log)
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                c.stop()
                raise RuntimeError(f"containerd did not start:\n{log.read_text()[-3000:]}")
            if c.address.exists() and subprocess.run(
                    ["ctr", "--address", str(c.address), "version"],
                    capture_output=True).returncode == 0:
                return c
            time.sleep(0.05)

    def ctr(self, *args: str, timeout: float = 180, ok: bool = True, text: bool = True
            ) -> subprocess.CompletedProcess[Any]:
        p = subprocess.run(["ctr", "--address", str(self.address), "-n", "t", *args],
                           capture_output=True, text=text, timeout=timeout)
        if ok and p.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)} failed ({p.returncode}): {p.stderr!r}"
                               f"\n--- containerd log:\n{self.log.read_text()[-3000:]}")
        return p

    def ctr_remote(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(["ctr-remote", "--address", str(self.address), "-n", "t", *args],
                           capture_output=True, text=True, timeout=timeout)
        if p.returncode != 0:
            raise RuntimeError(f"ctr-remote {' '.join(args)} failed ({p.returncode}): "
                               f"{p.stderr}\n--- containerd log:\n{self.log.read_text()[-3000:]}")
        return p

    def content_blobs(self) -> set[str]:
        d = self.root / "io.containerd.content.v1.content" / "blobs" / "sha256"
        return {"sha256:" + p.name for p in d.iterdir()} if d.exists() else set()

    def stop(self) -> None:
        stop_process(self.proc)


def teardown(base: Path, ctrd: Containerd | None, sn: Snapshotter | None, reg: Any) -> None:
    """Stops what a test environment started (any of them may be None: it failed to start)
    in dependency order, unmounts what is left below ``base`` and removes it."""
    if ctrd is not None:
        ctrd.stop()
    if sn is not None:
        sn.stop()
        sn.stop_mounts()
    if reg is not None:
        reg.stop()
    unmount_under(base)
    shutil.rmtree(base, ignore_errors=True)
