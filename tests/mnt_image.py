"""The test image for tests/test_mount.py, built by umoci from real files, and the helpers that
mount it and walk trees.

Layers (all gzip, written by umoci):

1. stdlib packages under /usr/lib/python plus /data: a 1.5 MiB random file, 2 MiB of zeros,
   an empty file, modes 0600 (uid/gid 1000) / 04755 / 0700 dir, relative, absolute and
   directory symlinks, three hard links to one file, a fifo, a character device (as root),
   a user.* xattr, and things the next layer deletes or replaces;
2. (umoci repack after changes in the unpacked rootfs, so deletions become ``.wh.`` entries)
   /data/gone and /usr/lib/python/email/mime deleted, one of the hard links deleted, a file
   replaced by a directory and a directory by a file, a file rewritten, a directory chmod'ed,
   new files;
3. a hand-written tar added with ``umoci raw add-layer``: an opaque ``http`` directory
   (``.wh..wh..opq``) with one new file, a PAX ``SCHILY.xattr.`` record, a hard link to a
   lower layer's file, a whiteout of a single lower file. It is a few hundred bytes, so
   ``create --min-layer-size 1000`` leaves it without a zTOC: it is mounted from a local copy;
4. a PAX tar with a sparse file (no zTOC can describe it: also served from a local copy).

The reference tree is ``umoci unpack`` (which applies whiteouts) of the same image.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import stat
import subprocess
import sys
import sysconfig
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STDLIB = Path(sysconfig.get_paths()["stdlib"])
PACKAGES = ["email", "json", "asyncio", "unittest", "xml", "http", "logging", "encodings"]
SPAN = 65536
CREATE_OPTS = ["--min-layer-size", "1000", "--span-size", str(SPAN)]


def run(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(args, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({p.returncode}): {p.stderr}")
    return p


def _unpack(lay: Path, bundle: Path) -> Path:
    run("umoci", "unpack", "--image", f"{lay}:t", str(bundle))
    return bundle / "rootfs"


def _repack(lay: Path, bundle: Path) -> None:
    run("umoci", "repack", "--image", f"{lay}:t", str(bundle))
    shutil.rmtree(bundle)


def _layer1(r: Path) -> None:
    for pkg in PACKAGES:
        shutil.copytree(STDLIB / pkg, r / "usr/lib/python" / pkg,
                        ignore=shutil.ignore_patterns("__pycache__"))
    d = r / "data"
    d.mkdir()
    rng = random.Random(7)
    (d / "big.bin").write_bytes(rng.randbytes(3 << 19))
    (d / "zeros.bin").write_bytes(bytes(2 << 20))
    (d / "empty").write_bytes(b"")
    (d / "secret").write_text("top secret\n")
    os.chmod(d / "secret", 0o600)
    if os.geteuid() == 0:
        os.chown(d / "secret", 1000, 1000)
    (d / "setuid").write_text("#!/bin/sh\n")
    os.chmod(d / "setuid", 0o4755)
    (d / "private").mkdir(mode=0o700)
    (d / "private" / "x").write_text("x\n")
    os.symlink("../usr/lib/python/json/__init__.py", d / "link-rel")
    os.symlink("/etc/nonexistent/target", d / "link-abs")
    os.symlink("../usr/lib/python/email", d / "dirlink")
    (d / "hard1").write_text("linked content\n" * 100)
    os.link(d / "hard1", d / "hard2")
    os.link(d / "hard1", d / "hard3")
    os.mkfifo(d / "fifo")
    if os.geteuid() == 0:
        os.mknod(d / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    (d / "xattr.txt").write_text("has an xattr\n")
    os.setxattr(d / "xattr.txt", "user.soci_test", b"value-1")
    (d / "gone").mkdir()
    for i in range(5):
        (d / "gone" / f"f{i}").write_text(f"gone {i}\n")
    (d / "file-to-dir").write_text("a file first\n")
    (d / "dir-to-file").mkdir()
    (d / "dir-to-file" / "inner").write_text("inner\n")
    (d / "modified.txt").write_text("version 1\n" * 50)
    os.utime(d / "modified.txt", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))


def _layer2(r: Path) -> None:
    d = r / "data"
    shutil.rmtree(d / "gone")
    shutil.rmtree(r / "usr/lib/python/email/mime")
    os.unlink(d / "hard3")
    os.unlink(d / "file-to-dir")
    (d / "file-to-dir").mkdir()
    (d / "file-to-dir" / "now").write_text("a directory now\n")
    shutil.rmtree(d / "dir-to-file")
    (d / "dir-to-file").write_text("a file now\n")
    (d / "modified.txt").write_text("version 2\n" * 70)
    os.chmod(r / "usr/lib/python/json", 0o750)
    rng = random.Random(11)
    (d / "layer2.txt").write_text("".join(rng.choice("abcdefgh \n") for _ in range(60000)))


def _layer3_tar(path: Path) -> None:
    t = 1_700_000_000

    def add(tf: tarfile.TarFile, name: str, data: bytes | None = None, **kw: Any) -> None:
        ti = tarfile.TarInfo(name)
        ti.mtime = t
        for k, v in kw.items():
            setattr(ti, k, v)
        if data is not None:
            ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data or b""))

    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        add(tf, "usr/lib/python/http/.wh..wh..opq", b"")
        add(tf, "usr/lib/python/http/only.txt", b"the only file left in http\n")
        add(tf, "data/pax-xattr.txt", b"pax\n",
            pax_headers={"SCHILY.xattr.user.from_pax": "pax value"})
        add(tf, "data/hard-to-lower", type=tarfile.LNKTYPE,
            linkname="usr/lib/python/json/decoder.py")
        add(tf, "data/.wh.empty", b"")


def _layer4_tar(base: Path) -> Path:
    """A PAX tar (GNU.sparse 1.0 records) holding a 3 MiB sparse file."""
    src = base / "sparse-src"
    src.mkdir()
    with open(src / "sparse.bin", "wb") as f:
        f.truncate(3 << 20)
        f.seek(5000)
        f.write(b"hello" * 1000)
        f.seek(2 << 20)
        f.write(b"world" * 3000)
    out = base / "l4.tar"
    run("tar", "-C", str(src), "--sparse", "--format=pax", "--owner=0", "--group=0", "-cf",
        str(out), "sparse.bin")
    return out


@dataclass
class Image:
    layout: Path
    ref: Path  # umoci unpack of the image: the expected tree
    layers: list[dict[str, Any]]


def build(base: Path) -> Image:
    lay = base / "lay"
    run("umoci", "init", "--layout", str(lay))
    run("umoci", "new", "--image", f"{lay}:t")
    _layer1(_unpack(lay, base / "b1"))
    _repack(lay, base / "b1")
    _layer2(_unpack(lay, base / "b2"))
    _repack(lay, base / "b2")
    _layer3_tar(base / "l3.tar")
    run("umoci", "raw", "add-layer", "--image", f"{lay}:t", str(base / "l3.tar"))
    run("umoci", "raw", "add-layer", "--image", f"{lay}:t", str(_layer4_tar(base)))
    ref = base / "ref"
    args = ["umoci", "unpack"] + ([] if os.geteuid() == 0 else ["--rootless"])
    run(*args, "--image", f"{lay}:t", str(ref))
    manifest = json.loads(run("skopeo", "inspect", "--raw", f"oci:{lay}:t").stdout)
    return Image(lay, ref / "rootfs", manifest["layers"])


# ------------------------------------------------------------------------------- CLI + mount

def cli(*args: str, root: Path, ok: bool = True,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, SOCI_NATIVE_ROOT=str(root))
    p = subprocess.run([sys.executable, "-m", "soci_native.cli", *args], env=env, text=True,
                       capture_output=True, timeout=timeout)
    if ok:
        assert p.returncode == 0, p.stderr
    return p


def mount_cmd(*args: str, root: Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    """``soci-native mount`` (via python -m soci_native.mount: the same click command)."""
    env = dict(os.environ, SOCI_NATIVE_ROOT=str(root))
    p = subprocess.run([sys.executable, "-m", "soci_native.mount", *args], env=env,
                       text=True, capture_output=True, timeout=120)
    if ok:
        assert p.returncode == 0, p.stderr
    return p


def umount_cmd(mp: Path, root: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, SOCI_NATIVE_ROOT=str(root))
    code = "from soci_native.mount import umount_command; umount_command.main()"
    return subprocess.run([sys.executable, "-c", code, str(mp)], env=env, text=True,
                          capture_output=True, timeout=60)


def is_mounted(mp: Path) -> bool:
    target = str(mp.resolve())
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


def force_unmount(mp: Path) -> None:
    if is_mounted(mp):
        subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True)
        deadline = time.monotonic() + 5
        while is_mounted(mp) and time.monotonic() < deadline:
            time.sleep(0.05)


def stats(mp: Path) -> dict[str, Any]:
    return json.loads((mp / ".soci-native" / "stats.json").read_text())


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[-1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


# ------------------------------------------------------------------------------ tree walks

def sha256_file(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def snapshot(root: Path, contents: bool = True, skip_root_meta: bool = False
             ) -> dict[str, tuple[Any, ...]]:
    """path -> (type, mode, uid, gid, size or target, nlink, mtime_ns, sha256 | None) for
    the whole tree under root (lstat; directories' size and nlink left out: they are
    filesystem-specific)."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            st = os.lstat(p)
            kind = stat.S_IFMT(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                extra: Any = os.readlink(p)
            elif stat.S_ISDIR(st.st_mode):
                extra = None
            else:
                extra = st.st_size
            digest = sha256_file(p) if contents and stat.S_ISREG(st.st_mode) else None
            nlink = None if stat.S_ISDIR(st.st_mode) else st.st_nlink
            mtime = None if stat.S_ISDIR(st.st_mode) else st.st_mtime_ns
            rdev = st.st_rdev if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else 0
            out[rel] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, extra, nlink,
                        mtime, rdev, digest)
    return out
