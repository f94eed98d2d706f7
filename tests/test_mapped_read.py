"""A local layer is read through mmap (no read() copy): a file truncated while it is mapped
would raise SIGBUS on the vanished pages. The indexer must turn that into an error naming the
file, whichever thread (the inflater or the hasher) touches them first, and `create` must
report it on one line."""

from __future__ import annotations

import errno
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from test_interrupt import build_layout

import soci_native as sn
from soci_native import _core


def _wait_mapped(path: Path, pid: int | str = "self", timeout: float = 60.0) -> bool:
    """Polls until the process maps ``path`` (the indexer has started on it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if str(path) in Path(f"/proc/{pid}/maps").read_text():
                return True
        except OSError:
            return False
        time.sleep(0.0005)
    return False


def _index_and_truncate(path: Path, keep: int) -> BaseException | None:
    seen: list[BaseException] = []

    def run() -> None:
        try:
            sn.index_layer(str(path), entries=False)
        except BaseException as e:  # noqa: BLE001 (what the thread saw is the result)
            seen.append(e)

    t = threading.Thread(target=run)
    t.start()
    try:
        assert _wait_mapped(path), "the layer was never mapped"
        os.truncate(path, keep)
    finally:
        t.join(timeout=60)
    assert not t.is_alive()
    return seen[0] if seen else None


@pytest.fixture(scope="module")
def layer(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    lay = tmp_path_factory.mktemp("mapped") / "lay"
    digest = build_layout(lay, big=48 << 20)[0]
    path = lay / "blobs" / "sha256" / digest.split(":")[1]
    return path, path.read_bytes()


@pytest.mark.parametrize("hash_thread", ["1", "0"])
@pytest.mark.parametrize("keep_fraction", [0, 0.25, 0.5])
def test_truncated_while_mapped_is_an_error(tmp_path: Path, layer: tuple[Path, bytes],
                                            monkeypatch: pytest.MonkeyPatch, hash_thread: str,
                                            keep_fraction: float) -> None:
    """Cut to nothing, the hasher's pages vanish as well as the inflater's (either may fault
    first); cut further on, the inflater runs into the end. Every time: FormatError, the
    file named, and the process alive to index the whole layer again."""
    monkeypatch.setenv("SOCI_NATIVE_HASH_THREAD", hash_thread)
    src, data = layer
    path = tmp_path / "layer.tar.gz"
    for _ in range(3):
        path.write_bytes(data)
        keep = int(len(data) * keep_fraction)
        e = _index_and_truncate(path, keep)
        assert isinstance(e, sn.FormatError), e
        assert f"{path} shrank from {len(data)} to {keep} bytes while being indexed" in str(e)
    path.write_bytes(data)
    assert sn.index_layer(str(path), entries=False).blob_digest == sn.index_layer(
        str(src), entries=False).blob_digest


def test_create_reports_a_layer_truncated_under_it(tmp_path: Path) -> None:
    lay, root = tmp_path / "lay", tmp_path / "store"
    digests = build_layout(lay, big=32 << 20)
    victim = lay / "blobs" / "sha256" / digests[-1].split(":")[1]
    size = victim.stat().st_size
    # No progress line however slow the machine (a sanitizer build): stderr is only the error.
    env = dict(os.environ, SOCI_NATIVE_ROOT=str(root), SOCI_NATIVE_PROGRESS_INTERVAL="86400")
    proc = subprocess.Popen([sys.executable, "-m", "soci_native.cli", "create", f"oci:{lay}:t",
                             "--jobs", "2"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert _wait_mapped(victim, proc.pid, timeout=120), "the layer was never mapped"
        os.truncate(victim, size // 3)
        _, err = proc.communicate(timeout=120)  # a guard, not a measurement
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"{victim} shrank from {size} to {size // 3} bytes while being indexed" in err, err


def test_unmappable_path_is_read_instead(tmp_path: Path, layer: tuple[Path, bytes]) -> None:
    """A path that cannot be mapped (a FIFO here) is read() in turn: the same index."""
    src, data = layer
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def feed() -> None:
        with open(fifo, "wb") as f:
            f.write(data)

    t = threading.Thread(target=feed)
    t.start()
    try:
        piped = sn.index_layer(str(fifo), span_size=1 << 20)
    finally:
        t.join(timeout=60)
    assert piped == sn.index_layer(str(src), span_size=1 << 20)


def _indexed_through(path: Path) -> tuple[str, sn.LayerIndex]:
    """Indexes ``path`` and says which way the C core read it: "mapped" or "read"."""
    mapped0, read0 = _core.file_read_counts()
    ix = sn.index_layer(str(path), span_size=1 << 20)
    mapped1, read1 = _core.file_read_counts()
    mapped, read = mapped1 - mapped0, read1 - read0
    assert mapped + read == 1, (mapped, read)
    return ("mapped" if mapped else "read"), ix


def _read_once_changed(tmp_path: Path, layer: tuple[Path, bytes],
                       change: Callable[[Path], None]) -> None:
    """A copy of the layer only its owner may write is mapped; once ``change(path)`` has run,
    it is read() instead, with the same index."""
    path = tmp_path / "layer.tar.gz"
    path.write_bytes(layer[1])
    os.chmod(path, 0o644)
    how, mapped_ix = _indexed_through(path)
    assert how == "mapped"
    change(path)
    how, read_ix = _indexed_through(path)
    assert how == "read"
    assert read_ix == mapped_ix


@pytest.mark.parametrize("mode", [0o666, 0o664, 0o646])
def test_a_file_others_may_write_is_not_mapped(tmp_path: Path, layer: tuple[Path, bytes],
                                               mode: int) -> None:
    """The inflater and the hasher read a mapping at different times: a file someone else may
    rewrite could show them different bytes. It is read() into private buffers instead."""
    _read_once_changed(tmp_path, layer, lambda path: os.chmod(path, mode))


def _grant_write_acl(path: Path, uid: int) -> None:
    """Gives user ``uid`` read and write on ``path`` through a POSIX access ACL: with setfacl
    (Debian's acl) when it is there, else the xattr the kernel reads (version 2, then
    tag/perm/id entries: owner, the named user, group, mask, other)."""
    if shutil.which("setfacl"):
        r = subprocess.run(["setfacl", "-m", f"u:{uid}:rw", str(path)], capture_output=True,
                           text=True)
        if r.returncode and "not supported" in r.stderr:
            raise OSError(errno.EOPNOTSUPP, r.stderr.strip())
        assert r.returncode == 0, r.stderr
        return
    undef = 0xFFFFFFFF
    entries = [(0x01, 6, undef), (0x02, 6, uid), (0x04, 4, undef), (0x10, 6, undef),
               (0x20, 4, undef)]
    os.setxattr(path, "system.posix_acl_access",
                struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries))


@pytest.mark.parametrize("mask_write", [True, False])
def test_a_file_with_an_acl_is_not_mapped(tmp_path: Path, layer: tuple[Path, bytes],
                                          mask_write: bool) -> None:
    """A file with an extended access ACL (a named user writing through it) is read(), like
    one with a group or other write bit. With the ACL's mask denying write (chmod 0644 after
    it) nobody else may write it on Linux's own filesystems, whose group bits are the mask;
    it is still read(), so the rule does not rest on every filesystem folding ACLs so."""

    def change(path: Path) -> None:
        try:
            _grant_write_acl(path, 65534)
        except OSError as e:
            if e.errno != errno.EOPNOTSUPP or os.environ.get("CI") == "true":
                raise
            pytest.skip(f"{tmp_path} has no POSIX ACLs")
        if not mask_write:
            os.chmod(path, 0o644)  # the mask becomes r--: the named user may no longer write
        assert os.stat(path).st_mode & 0o777 == (0o664 if mask_write else 0o644)
        assert len(os.getxattr(path, "system.posix_acl_access")) > 4 + 3 * 8  # beyond the mode

    _read_once_changed(tmp_path, layer, change)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
def test_a_file_another_uid_owns_is_not_mapped(tmp_path: Path, layer: tuple[Path, bytes]) -> None:
    _read_once_changed(tmp_path, layer, lambda path: os.chown(path, 4242, 4242))


_REPLACED = """
import faulthandler, sys
import soci_native as sn
from soci_native import _core
path = sys.argv[1]
def through():
    m0, r0 = _core.file_read_counts()
    ix = sn.index_layer(path, span_size=1 << 20)
    m1, r1 = _core.file_read_counts()
    return ("mapped" if m1 - m0 else "read") if (m1 - m0) + (r1 - r0) == 1 else "?", ix
first = through()
faulthandler.enable()  # installs its SIGBUS handler over ours
second = through()
third = through()
print(first[0], second[0], third[0], first[1] == second[1] == third[1])
"""


def test_a_replaced_sigbus_handler_means_read(tmp_path: Path, layer: tuple[Path, bytes]) -> None:
    """Our SIGBUS handler is installed once; once another one (faulthandler here) replaced it,
    a fault in a mapping would not come back to us, so layers are read() instead: the same
    index, and no re-install that would chain to a handler chaining to us."""
    path = tmp_path / "layer.tar.gz"
    path.write_bytes(layer[1])
    os.chmod(path, 0o644)
    out = subprocess.run([sys.executable, "-c", _REPLACED, str(path)], capture_output=True,
                         text=True, timeout=300, check=True).stdout
    assert out.split() == ["mapped", "read", "read", "True"], out


_IGNORED = """
import os, signal, sys, threading
import soci_native as sn
from soci_native import _core
signal.signal(signal.SIGBUS, signal.SIG_IGN)
a = sn.index_layer(sys.argv[1], span_size=1 << 20)
assert _core.file_read_counts()[0] == 1  # mapped: our handler is installed over SIG_IGN
os.kill(os.getpid(), signal.SIGBUS)  # sent, not a fault: still ignored
signal.pthread_kill(threading.get_ident(), signal.SIGBUS)
print(a == sn.index_layer(sys.argv[1], span_size=1 << 20))
"""


def test_a_sent_sigbus_stays_ignored(tmp_path: Path, layer: tuple[Path, bytes]) -> None:
    """A process that ignores SIGBUS keeps ignoring one sent to it (si_code <= 0) after our
    handler went in; only a kernel-raised fault in a guarded range is ours."""
    path = tmp_path / "layer.tar.gz"
    path.write_bytes(layer[1])
    os.chmod(path, 0o644)
    proc = subprocess.run([sys.executable, "-c", _IGNORED, str(path)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.split() == ["True"], (proc.returncode, proc.stderr)


@pytest.mark.parametrize("hash_thread", [True, False])
@pytest.mark.parametrize("keep", [0, 3 << 20])
def test_a_deterministic_cut_names_the_file(tmp_path: Path, layer: tuple[Path, bytes],
                                            hash_thread: bool, keep: int) -> None:
    """The C core cuts the file itself once 1-5 MiB are fed (no race with a thread): the
    pages past `keep` vanish under the inflater (or the hasher behind it), and the error names
    the file and both sizes."""
    path = tmp_path / "layer.tar.gz"
    data = layer[1]
    for after in (1 << 20, 5 << 20):
        path.write_bytes(data)
        with pytest.raises(sn.FormatError) as e:
            _core._index_file_cut(str(path), 1 << 20, after, keep, hash_thread=hash_thread)
        assert f"{path} shrank from {len(data)} to {keep} bytes while being indexed" in str(e.value)


@pytest.mark.parametrize("hash_thread", [True, False])
def test_a_fault_without_shrink_is_an_io_error(tmp_path: Path, layer: tuple[Path, bytes],
                                               hash_thread: bool) -> None:
    """A SIGBUS on a file that still has its size (a disk error under the mapping; simulated
    by cutting the file and giving its size back) is an OSError(EIO) naming the file, the
    kind read() raises, never "shrank"."""
    path = tmp_path / "layer.tar.gz"
    path.write_bytes(layer[1])
    with pytest.raises(OSError) as e:
        _core._index_file_cut(str(path), 1 << 20, 1 << 20, 0, restore=True, hash_thread=hash_thread)
    assert e.value.errno == errno.EIO
    assert f"I/O error reading mapped {path}" in str(e.value)
    assert "shrank" not in str(e.value)
    assert path.stat().st_size == len(layer[1])


def _small_layer(path: Path, size: int) -> bytes:
    """A gzip layer of about ``size`` compressed bytes (random data does not shrink)."""
    import io
    import tarfile
    import zlib
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        ti = tarfile.TarInfo("f")
        ti.size = size
        tf.addfile(ti, io.BytesIO(os.urandom(size)))
    c = zlib.compressobj(1, zlib.DEFLATED, 31)
    data = c.compress(buf.getvalue()) + c.flush()
    path.write_bytes(data)
    return data


@pytest.mark.parametrize("restore", [False, True])
def test_the_hasher_meeting_vanished_pages_names_the_file(tmp_path: Path, restore: bool) -> None:
    """The hashing thread is held after the first 1 MiB chunk; the file (2.5 MiB) is cut once
    the inflater has read all of it, then the hasher goes on: it alone meets the vanished
    pages, and its failure names the file (shrank; or, size given back, an EIO)."""
    path = tmp_path / "layer.tar.gz"
    data = _small_layer(path, 5 << 19)
    assert 2 << 20 < len(data) <= 3 << 20  # 3 chunks and the sniffed bytes: 4 buffers
    with pytest.raises((OSError, sn.FormatError)) as e:
        _core._index_file_cut(str(path), 1 << 20, len(data), 0, restore=restore, hold_hasher=True)
    if restore:
        assert isinstance(e.value, OSError) and e.value.errno == errno.EIO
        assert f"I/O error reading mapped {path}" in str(e.value)
    else:
        assert isinstance(e.value, sn.FormatError)
        assert f"{path} shrank from {len(data)} to 0 bytes while being indexed" in str(e.value)
    path.write_bytes(data)
    _core._index_file_cut(str(path), 1 << 20, len(data) + 1, 0, hold_hasher=True)  # no cut: fine
