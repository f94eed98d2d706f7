"""The fast paths of `ztoc get-file` (soci_native/quick_getfile.py) and `ztoc info`
(quick_info.py), reached through the console script's soci_native/entry.py, against the
click command on the same stores and arguments:
the same exit code, stdout bytes, stderr and output file, every time; the fast path answering
without importing click where it can (a local OCI layout: links across layers, every way of
giving the store and the options, a file of several pieces, a write error part way), and
falling back to click for everything else (help, registry flags, errors found before any
output, a store to create or migrate, an odd row or manifest)."""

from __future__ import annotations

import array
import contextlib
import fcntl
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tarfile
import termios
import threading
import time
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_getfile import entry, gz_layer, layout, put, put_file, ztoc_of_layer
from test_getfile import merged_usr as merged_usr  # the fixture

ENTRY = "import sys; sys.argv[0] = 'soci-native'; from soci_native.entry import main; main()"
CLICK = "import sys; sys.argv[0] = 'soci-native'; from soci_native.cli import main; main()"

Result = tuple[int, bytes, str, bytes | None]


def run(code: str, args: list[str], env: dict[str, str], out: Path | None) -> tuple[Result, bool]:
    """((exit code, stdout, stderr less import lines, the -o file's bytes), whether click was
    imported)."""
    if out is not None and out.exists() and out.is_file():
        out.unlink()
    p = subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                       env={**env, "PYTHONPROFILEIMPORTTIME": "1"}, stdin=subprocess.DEVNULL,
                       timeout=120)
    lines = p.stderr.decode("utf-8", "replace").splitlines(keepends=True)
    clicked = any(ln.startswith("import time:") and ln.split("|")[-1].strip() == "click"
                  for ln in lines)
    err = "".join(ln for ln in lines if not ln.startswith("import time:"))
    written = out.read_bytes() if out is not None and out.is_file() else None
    return (p.returncode, p.stdout, err, written), clicked


def same(args: list[str], env: dict[str, str], out: Path | None = None) -> tuple[Result, bool]:
    """Runs both (the fast path first: a fallback that changes the store, a migration, must
    be its own); asserts they agree; returns the result and whether the fast path needed
    click."""
    got, clicked = run(ENTRY, args, env, out)
    want, _ = run(CLICK, args, env, out)
    assert got == want, args
    return got, clicked


@pytest.fixture()
def store(merged_usr: tuple[str, bytes], tmp_path: Path) -> tuple[Path, str, str, bytes]:
    """(store root, the top layer's zTOC, the image, /usr/bin/tool's bytes)."""
    ref, tool = merged_usr
    root = tmp_path / "store"
    return root, ztoc_of_layer(root, 1, ref), ref, tool


def env_of(root: Path | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SOCI_NATIVE_ROOT"}
    if root is not None:
        env["SOCI_NATIVE_ROOT"] = str(root)
    return {**env, **extra}


def test_answers_without_click(store: tuple[Path, str, str, bytes], tmp_path: Path) -> None:
    root, z, ref, tool = store
    out = tmp_path / "out"
    cases: list[tuple[list[str], dict[str, str], Path | None]] = [
        (["ztoc", "get-file", z, "/bin/tool"], env_of(root), None),
        (["ztoc", "get-file", z, "./lib/../bin/tool", "-v", "--image", ref], env_of(root), None),
        (["--root", str(root), "ztoc", "get-file", z, "usr/lib/alias.so", "-o", str(out)],
         env_of(), out),
        (["ztoc", "--root", str(root), "get-file", "--output=" + str(out), z, "lib/real.so",
          "--verbose"], env_of(tmp_path / "elsewhere"), out),
        (["--root", "/nonexistent", "ztoc", "get-file", z, "bin/tool", "--root", str(root),
          "-o", str(out), "-o", str(out) + "2"], env_of(), tmp_path / "out2"),
        (["ztoc", "get-file", z, "bin/tool"], env_of(XDG_DATA_HOME=str(tmp_path / "xdg")), None),
    ]
    (tmp_path / "xdg").mkdir()
    os.symlink(root, tmp_path / "xdg" / "soci-native")
    for args, env, dest in cases:
        (code, stdout, err, written), clicked = same(args, env, dest)
        assert code == 0 and not clicked, (args, err)
        assert (written if dest is not None else stdout) in (tool, b"so" * 1000), args
        assert ("layer bytes" in err) is any(a in ("-v", "--verbose") for a in args)


def test_falls_back_to_click(store: tuple[Path, str, str, bytes], tmp_path: Path) -> None:
    """Whatever the fast path does not take goes to click, which answers as ever: errors
    before any output, help, registry flags, another image transport, an empty store."""
    root, z, ref, _ = store
    errors = [
        ["ztoc", "get-file", z, "/bin/missing"],
        ["ztoc", "get-file", z, "/bin/dir"],
        ["ztoc", "get-file", "sha256:" + "0" * 64, "bin/tool"],
        ["ztoc", "get-file", "nonsense", "bin/tool"],
        ["ztoc", "get-file", z],
        ["ztoc", "get-file", z, "bin/tool", "extra"],
        ["ztoc", "get-file", z, "bin/tool", "-o", str(tmp_path / "no" / "dir" / "f")],
        ["ztoc", "get-file", z, "bin/tool", "--image", "oci:" + str(tmp_path / "none")],
        ["ztoc", "get-file", z, "bin/tool", "--bogus"],
        ["ztoc", "get-file", z, "bin/tool", "-o"],
        ["ztoc", "get-file", z, "bin/tool", "--root", str(tmp_path / "fresh")],
    ]
    for args in errors:
        (code, _, err, _), clicked = same(args, env_of(root))
        assert code != 0 and clicked and "Traceback" not in err, (args, err)
    answered = [
        ["ztoc", "get-file", z, "bin/tool", "--help"],
        ["ztoc", "get-file", z, "bin/tool", "--plain-http"],
        ["--debug", "ztoc", "get-file", z, "bin/tool"],
        ["ztoc", "get-file", z, "bin/tool", "--image", ref.replace("oci:", "docker-archive:")],
        ["ztoc", "get-file", "--", z, "bin/tool"],
    ]
    for args in answered:
        (code, _, err, _), clicked = same(args, env_of(root))
        assert code == 0 and clicked, (args, err)
    # a file where the store should be: click's own usage error
    (tmp_path / "afile").write_text("")
    (code, _, err, _), clicked = same(["ztoc", "get-file", z, "bin/tool"],
                                      env_of(tmp_path / "afile"))
    assert code == 2 and clicked and "is a file" in err


def test_odd_stores_go_to_click(store: tuple[Path, str, str, bytes]) -> None:
    """A row Store would reject, an index manifest it would skip, a database to migrate:
    the fast path leaves them to click (which answers the same as the fast path would, or
    not: either way the answer is click's)."""
    root, z, _, tool = store
    args = ["ztoc", "get-file", z, "bin/tool"]
    db = sqlite3.connect(root / "artifacts.db")
    try:
        db.execute("UPDATE artifacts SET created = '2024-02-30T00:00:00.000000Z' "
                   "WHERE digest = ?", (z,))
        db.commit()
        (code, _, err, _), clicked = same(args, env_of(root))
        assert code == 1 and clicked and "timestamp" in err
        db.execute("UPDATE artifacts SET created = '2024-02-03T00:00:00+00:00' "
                   "WHERE digest = ?", (z,))  # Store reads it; the fast path is not sure
        db.commit()
        (code, stdout, _, _), clicked = same(args, env_of(root))
        assert code == 0 and clicked and stdout == tool
        db.execute("PRAGMA user_version = 1")
        db.commit()
        (code, stdout, _, _), clicked = same(args, env_of(root))
        assert code == 0 and clicked and stdout == tool
    finally:
        db.close()


def index_digests(root: Path) -> dict[str, str]:
    """Each stored index's digest by its image."""
    recs = json.loads(subprocess.run(
        [sys.executable, "-m", "soci_native.cli", "index", "list", "--json"], check=True,
        capture_output=True, env=env_of(root)).stdout)
    return {r["image_ref"]: r["digest"] for r in recs}


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_a_bad_index_is_skipped_with_a_warning(store: tuple[Path, str, str, bytes],
                                               tmp_path: Path, damage: str) -> None:
    """An index whose blob is gone or corrupt is skipped with one warning line naming it,
    by both paths (the fast one leaves such a store to click):
    a file of another image's zTOC is read as ever; of its own image's, the zTOC's own row
    still names the image, but links through its other layers cannot be followed."""
    root, z, ref, tool = store
    lay = tmp_path / "other"
    other = ztoc_of_layer(root, 0, layout(lay, [put(lay, gz_layer([entry("./x", b"x")]))]))
    indexes = index_digests(root)
    assert len(indexes) == 2
    bad = next(d for r, d in indexes.items() if r != ref)
    blob = root / "content" / "blobs" / "sha256" / bad[7:]
    if damage == "missing":
        blob.unlink()
    else:
        blob.chmod(0o600)
        blob.write_bytes(blob.read_bytes().replace(b"{", b"[", 1))
    warning = f"warning: skipping SOCI index {bad}: "
    (code, stdout, err, _), clicked = same(["ztoc", "get-file", z, "/bin/tool"], env_of(root))
    assert code == 0 and stdout == tool and clicked, err
    assert len(err.splitlines()) == 1 and err.startswith(warning), err
    assert bad[7:] in err[len(warning):], err  # and the blob's trouble
    # the bad index is the other zTOC's own: its image is on its row, its layer readable
    (code, stdout, err, _), clicked = same(["ztoc", "get-file", other, "x"], env_of(root))
    assert (code, stdout) == (0, b"x") and err.startswith(warning), err
    assert len(err.splitlines()) == 1, err
    # ... and the fixture's own index bad too: a link into the base layer is not found
    blob = root / "content" / "blobs" / "sha256" / indexes[ref][7:]
    blob.chmod(0o600)
    blob.unlink()
    (code, stdout, err, _), clicked = same(["ztoc", "get-file", z, "/usr/bin/tool"],
                                           env_of(root))
    assert code == 0 and stdout == tool and len(err.splitlines()) == 2, err
    (code, stdout, err, _), clicked = same(["ztoc", "get-file", z, "/bin/tool"], env_of(root))
    lines = err.splitlines()
    assert code == 1 and not stdout and len(lines) == 3, err
    assert [ln.split(":")[0] for ln in lines] == ["warning", "warning", "soci-native"], err
    assert "bin" in lines[2] and z in lines[2], err


def test_big_file_and_write_errors(tmp_path: Path) -> None:
    """A file of two pieces (filestream.PIECE) through both; a write error part way (a
    full device) is the same one line from both."""
    size = (16 << 20) + 12345
    pattern = hashlib.sha256(b"y").digest() * 2048
    ti = tarfile.TarInfo("./big")
    ti.size = size
    raw = tmp_path / "layer.gz"
    c = zlib.compressobj(1, zlib.DEFLATED, 31)
    with open(raw, "wb") as f:
        f.write(c.compress(ti.tobuf(format=tarfile.PAX_FORMAT)))
        data = (pattern * (size // len(pattern) + 1))[:size]
        f.write(c.compress(data))
        f.write(c.compress(b"\0" * (1024 + (-size) % 512)))
        f.write(c.flush())
    lay = tmp_path / "lay"
    ref = layout(lay, [put_file(lay, raw), put(lay, gz_layer([entry("./x", b"x")]))])
    root = tmp_path / "store"
    z = ztoc_of_layer(root, 0, ref)
    out = tmp_path / "big"
    (code, _, err, written), clicked = same(["ztoc", "get-file", z, "big", "-o", str(out),
                                             "-v"], env_of(root), out)
    assert code == 0 and not clicked and written == data, err
    (code, stdout, err, _), clicked = same(["ztoc", "get-file", z, "/big"], env_of(root))
    assert code == 0 and not clicked and stdout == data
    if os.path.exists("/dev/full"):
        (code, _, err, _), clicked = same(["ztoc", "get-file", z, "big", "-o", "/dev/full"],
                                          env_of(root))
        assert code == 1 and not clicked
        assert err == "soci-native: error: cannot write /dev/full: No space left on device\n"


def test_other_layers_read_only_when_the_walk_needs_them(
        store: tuple[Path, str, str, bytes], merged_usr: tuple[str, bytes]) -> None:
    """Another layer's zTOC is read only for a name this layer does not list (bin -> usr/bin
    lives in the base layer): with the base layer's zTOC gone, /usr/bin/tool is still found,
    /bin/tool is the store's one-line error; the same from both."""
    root, z, ref, tool = store
    base = ztoc_of_layer(root, 0, ref)
    (root / "content" / "blobs" / "sha256" / base[7:]).unlink()
    (code, stdout, err, _), clicked = same(["ztoc", "get-file", z, "/usr/bin/tool"],
                                           env_of(root))
    assert code == 0 and not clicked and stdout == tool, err
    (code, _, err, _), clicked = same(["ztoc", "get-file", z, "/bin/tool"], env_of(root))
    assert code == 1 and clicked and base in err and len(err.splitlines()) == 1, err


def test_ztoc_info_without_click(store: tuple[Path, str, str, bytes], tmp_path: Path) -> None:
    """`ztoc info` (soci_native/quick_info.py): the same bytes as click's, every way of naming
    the store; click for everything else."""
    root, z, _, _ = store
    for args, env in ((["ztoc", "info", z], env_of(root)),
                      (["--root", str(root), "ztoc", "info", z], env_of()),
                      (["ztoc", "--root", str(root), "info", z], env_of(tmp_path / "x")),
                      (["ztoc", "info", z, "--root", str(root)], env_of())):
        (code, stdout, err, _), clicked = same(args, env)
        assert code == 0 and not clicked and json.loads(stdout)["num_files"] > 0, err
    idx = json.loads(subprocess.run(
        [sys.executable, "-m", "soci_native.cli", "index", "list", "--json"], check=True,
        capture_output=True, env=env_of(root)).stdout)[0]["digest"]
    for args in (["ztoc", "info", "sha256:" + "1" * 64], ["ztoc", "info", idx],
                 ["ztoc", "info"], ["ztoc", "info", z, "--json"], ["index", "info", idx],
                 ["ztoc", "info", z, "-h"]):
        (code, _, err, _), clicked = same(args, env_of(root))
        assert clicked and "Traceback" not in err, (args, err)


def test_ztoc_info_into_a_closed_pipe(tmp_path: Path) -> None:
    """A reader that stops early (`| head`): exit 1 and nothing on stderr, as click does."""
    members = [entry(f"./d/file-{i:05d}.txt", b"x" * 10) for i in range(3000)]
    lay = tmp_path / "lay"
    ref = layout(lay, [put(lay, gz_layer(members))])
    root = tmp_path / "store"
    z = ztoc_of_layer(root, 0, ref)
    results = []
    for code in (ENTRY, CLICK):
        p = subprocess.Popen([sys.executable, "-c", code, "ztoc", "info", z],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env_of(root))
        assert p.stdout is not None and p.stderr is not None
        assert p.stdout.read(100)
        p.stdout.close()
        results.append((p.wait(timeout=60), p.stderr.read()))
    assert results[0] == results[1] == (1, b""), results


def test_an_index_that_cannot_be_read_is_an_error(store: tuple[Path, str, str, bytes],
                                                  tmp_path: Path) -> None:
    """Any other failure to read a stored index (here EISDIR: what no one reads, root
    included; EIO, EMFILE, a permission alike) is one error line naming it, on both paths,
    not a skip that would lose its links quietly; the file is not written."""
    root, z, ref, _ = store
    lay = tmp_path / "other"
    other = ztoc_of_layer(root, 0, layout(lay, [put(lay, gz_layer([entry("./x", b"x")]))]))
    bad = next(d for r, d in index_digests(root).items() if r != ref)
    blob = root / "content" / "blobs" / "sha256" / bad[7:]
    blob.unlink()
    blob.mkdir()
    out = tmp_path / "out"
    for args in (["ztoc", "get-file", z, "/bin/tool"], ["ztoc", "get-file", other, "x"],
                 ["ztoc", "get-file", other, "x", "-o", str(out)]):
        (code, stdout, err, written), clicked = same(args, env_of(root), out)
        assert (code, stdout, written, clicked) == (1, b"", None, True), (args, err)
        assert err.startswith(f"soci-native: error: cannot read SOCI index {bad}: "), err
        assert len(err.splitlines()) == 1 and "Is a directory" in err, err


# write(2)'s number, for /proc/PID/syscall
WRITE_SYSCALL = {"x86_64": 1, "aarch64": 64}.get(os.uname().machine)


def writing_stdout(pid: int, still_since: float) -> bool:
    """Whether process ``pid``, whose stdout pipe holds bytes nobody reads, and no more
    since ``still_since``, is blocked writing there: the kernel says so (its wait channel,
    or its syscall: write on fd 1), or a second went by without the pipe growing."""
    with contextlib.suppress(OSError):
        if "pipe_write" in Path(f"/proc/{pid}/wchan").read_text():
            return True
    with contextlib.suppress(OSError, ValueError):
        nr, fd = (Path(f"/proc/{pid}/syscall").read_text().split() + ["", ""])[:2]
        if int(nr) == WRITE_SYSCALL and int(fd, 16) == 1:
            return True
    return time.monotonic() - still_since > 1


def interrupted(code: str, args: list[str], env: dict[str, str]) -> tuple[Result, bool]:
    """Runs ``args`` with a stdout nobody reads, sends Ctrl-C's SIGINT once it is blocked
    writing there (stderr read meanwhile, so that it is the only pipe that can fill: the
    import lines fill it too); (exit code, stdout, stderr less import lines, None), whether
    click was imported."""
    p = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                         env={**env, "PYTHONPROFILEIMPORTTIME": "1"})
    assert p.stdout is not None and p.stderr is not None
    errors: list[bytes] = []
    pipe = p.stderr
    reader = threading.Thread(target=lambda: errors.append(pipe.read()))
    reader.start()
    try:
        deadline = time.monotonic() + 60
        queued, still_since = 0, time.monotonic()
        while not (queued and writing_stdout(p.pid, still_since)):
            assert p.poll() is None and time.monotonic() < deadline, "never blocked"
            time.sleep(0.01)
            now = array.array("i", [0])
            fcntl.ioctl(p.stdout.fileno(), termios.FIONREAD, now)
            if now[0] != queued:
                queued, still_since = now[0], time.monotonic()
        p.send_signal(signal.SIGINT)
        stdout = p.stdout.read()
        p.wait(timeout=60)
        reader.join(timeout=60)
    finally:
        p.kill()
    lines = b"".join(errors).decode("utf-8", "replace").splitlines(keepends=True)
    clicked = any(ln.startswith("import time:") and ln.split("|")[-1].strip() == "click"
                  for ln in lines)
    err = "".join(ln for ln in lines if not ln.startswith("import time:"))
    return (p.returncode, stdout, err, None), clicked


def test_ctrl_c_stops_both_paths_as_click_does(store: tuple[Path, str, str, bytes],
                                               tmp_path: Path) -> None:
    """Ctrl-C while the fast paths write (get-file's file, info's JSON, to a stdout nobody
    reads) is click's "Aborted!" and exit 1, as the click commands give it."""
    root, z, _, _ = store
    members = [entry(f"./d/file-{i:05d}.txt", b"x" * 10) for i in range(3000)]
    lay = tmp_path / "lay"
    big = ztoc_of_layer(root, 0, layout(lay, [put(lay, gz_layer(members))]))
    for args in (["ztoc", "get-file", z, "/usr/bin/tool"], ["ztoc", "info", big]):
        (code, _, err, _), clicked = interrupted(ENTRY, args, env_of(root))
        assert (code, err, clicked) == (1, "\nAborted!\n", False), args
        (code, _, err, _), _ = interrupted(CLICK, args, env_of(root))
        assert (code, err) == (1, "\nAborted!\n"), args


def test_a_corrupt_ztoc_is_the_store_s_error(store: tuple[Path, str, str, bytes]) -> None:
    """The fast paths verify the zTOC against its digest as Store does, and give up (to
    the click command's error) when it is not what the digest says."""
    root, z, _, _ = store
    blob = root / "content" / "blobs" / "sha256" / z[7:]
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 1
    blob.chmod(0o600)
    blob.write_bytes(bytes(data))
    for args in (["ztoc", "get-file", z, "/usr/bin/tool"], ["ztoc", "info", z]):
        (code, stdout, err, _), clicked = same(args, env_of(root))
        assert code == 1 and clicked and not stdout and "corrupt" in err, (args, err)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner), max_leaves=20)


@given(json_values, st.booleans(), st.sampled_from(["", " ", "\n\t", "\r\n  "]))
@settings(max_examples=300, deadline=None)
def test_quick_json_reads_what_json_reads(value: object, ascii_only: bool, ws: str) -> None:
    """quick_json.loads (the fast paths' JSON, without importing json) gives json.loads's
    object for any document json writes, whitespace around it included."""
    from soci_native import quick_json

    data = (ws + json.dumps(value, ensure_ascii=ascii_only, indent=None if ws else 1) + ws
            ).encode("utf-8", "surrogatepass")
    assert quick_json.loads(data) == json.loads(data)


def test_quick_json_refuses_what_json_refuses_or_reads_otherwise() -> None:
    from soci_native import quick_json

    assert quick_json.loads(b'{"n": NaN, "i": -Infinity}')["i"] == float("-inf")
    for bad in (b"", b"  ", b"{", b'{"a": 1} x', b"[1,]", b"\xff", b'"\x01"', b"01",
                b"\xef\xbb\xbf{}", '{"a": 1}'.encode("utf-16")):
        with pytest.raises(ValueError):
            quick_json.loads(bad)


def test_catalog_constants_are_the_stores() -> None:
    """catalog restates Store's schema by hand (importing store would cost the fast path
    its point): a change to one without the other fails here."""
    from soci_native import catalog, store

    assert catalog.SCHEMA_VERSION == store.SCHEMA_VERSION
    assert catalog.ARTIFACT_TYPES == store.ARTIFACT_TYPES
    assert catalog.COLUMNS == store._COLUMNS
    assert catalog.BUSY_TIMEOUT_MS == store.BUSY_TIMEOUT_MS
    assert catalog.OCI_MANIFEST == store.MEDIA_TYPE_OCI_MANIFEST
    assert catalog.INDEX_TYPES == (store.INDEX_ARTIFACT_TYPE_V1, store.INDEX_ARTIFACT_TYPE_V2)
