"""`mount` / `umount` as a new user meets them: one-line errors for the usual mistakes (a
missing or non-empty mountpoint, unmounting what is not mounted), libfuse's own cause when it
cannot mount, no libfuse noise in the log, and a SOCI-enabled archive written by `convert`
mounting in a fresh store. Real FUSE mounts, checked against umoci's unpack."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import mnt_image as mi
import pytest
from test_mount import _unavailable

CONVERT_OPTS = mi.CREATE_OPTS


@pytest.fixture(scope="module")
def img(tmp_path_factory: pytest.TempPathFactory) -> mi.Image:
    why = _unavailable()
    if why is not None:
        pytest.skip(why)
    return mi.build(tmp_path_factory.mktemp("mnt-cli-img"))


def one_line(p: subprocess.CompletedProcess[str], *needles: str) -> None:
    err = p.stderr.strip()
    assert p.returncode == 1 and len(err.splitlines()) == 1, (p.returncode, err)
    assert err.startswith("soci-native: error: ") and "Traceback" not in err, err
    for n in needles:
        assert n in err, (n, err)


def test_mountpoint_mistakes_are_one_line(img: mi.Image, tmp_path: Path) -> None:
    root = tmp_path / "store"
    mi.cli("create", f"oci:{img.layout}:t", *mi.CREATE_OPTS, root=root)
    image = f"oci:{img.layout}:t"
    one_line(mi.mount_cmd(image, str(tmp_path / "nope"), root=root, ok=False),
             "does not exist", "mkdir -p")
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep").write_text("mine")
    one_line(mi.mount_cmd(image, str(full), root=root, ok=False), "is not empty")
    assert not mi.is_mounted(full) and (full / "keep").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line(mi.umount_cmd(empty, root), f"{empty} is not mounted")
    one_line(mi.umount_cmd(tmp_path / "gone", root), "does not exist")


def test_mount_log_has_no_libfuse_noise_and_umount_works(img: mi.Image, tmp_path: Path) -> None:
    root = tmp_path / "store"
    mi.cli("create", f"oci:{img.layout}:t", *mi.CREATE_OPTS, root=root)
    mp = tmp_path / "m"
    mp.mkdir()
    log = tmp_path / "mount.log"
    p = mi.mount_cmd(f"oci:{img.layout}:t", str(mp), "--log-file", str(log), root=root,
                     ok=False)
    try:
        assert p.returncode == 0, p.stderr
        assert mi.is_mounted(mp)
        assert sorted(os.listdir(mp)) == sorted(os.listdir(img.ref))
    finally:
        if mi.is_mounted(mp):
            assert mi.umount_cmd(mp, root).returncode == 0
        mi.force_unmount(mp)
    text = log.read_text()
    assert "mounted" in text and "Ignoring invalid max threads" not in text, text


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare(1) for a private mount namespace")
def test_libfuse_failure_says_why(img: mi.Image, tmp_path: Path) -> None:
    """/dev/null bound over /dev/fuse in a private mount namespace: libfuse opens the
    device but the mount fails; its reason reaches the one-line error."""
    root = tmp_path / "store"
    mi.cli("create", f"oci:{img.layout}:t", *mi.CREATE_OPTS, root=root)
    mp = tmp_path / "m"
    mp.mkdir()
    script = (f"mount --bind /dev/null /dev/fuse && exec {sys.executable} -m soci_native.mount "
              f"oci:{img.layout}:t {mp}")
    p = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                       env=dict(os.environ, SOCI_NATIVE_ROOT=str(root)), capture_output=True,
                       text=True, timeout=120)
    one_line(p, f"FUSE could not mount {mp}", "fuse:")
    assert ": 4" not in p.stderr


def test_convert_archive_mounts_in_a_fresh_store(img: mi.Image, tmp_path: Path) -> None:
    build_root, fresh = tmp_path / "build", tmp_path / "fresh"
    arch = tmp_path / "app-soci.tar"
    mi.cli("convert", f"oci:{img.layout}:t", f"oci-archive:{arch}:v1", *CONVERT_OPTS,
           root=build_root)
    mp = tmp_path / "m"
    mp.mkdir()
    p = mi.mount_cmd(f"oci-archive:{arch}:v1", str(mp), root=fresh, ok=False)
    try:
        assert p.returncode == 0, p.stderr
        for name in sorted(os.listdir(img.ref)):
            assert os.path.lexists(mp / name), name
        want = {q.relative_to(img.ref): q for q in img.ref.rglob("*")
                if q.is_file() and not q.is_symlink()}
        for rel, q in sorted(want.items())[:50]:
            assert (mp / rel).read_bytes() == q.read_bytes(), rel
        stats = mi.stats(mp)
        assert any(x["mode"] == "lazy" for x in stats["layers"]), stats
    finally:
        if mi.is_mounted(mp):
            mi.umount_cmd(mp, fresh)
        mi.force_unmount(mp)
