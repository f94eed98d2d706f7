"""`soci-native mount` end to end on real FUSE: an image built by umoci (tests/mnt_image.py)
is indexed with the CLI, mounted, and compared with `umoci unpack` of the same image."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mnt_image as mi
import pytest


def _unavailable() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse: the FUSE kernel module is not available here"
    if os.geteuid() != 0 and shutil.which("fusermount3") is None:
        return "not root and no fusermount3: mounting FUSE is not permitted"
    missing = [t for t in ("umoci", "skopeo") if shutil.which(t) is None]
    if missing:
        return f"needs {', '.join(missing)} (apt) to build the test image"
    return None


TREE = "usr/lib/python"


@pytest.fixture(scope="module")
def img(tmp_path_factory: pytest.TempPathFactory) -> mi.Image:
    """Every FUSE test needs the image: they are all skipped here when FUSE is unusable."""
    why = _unavailable()
    if why is not None:
        pytest.skip(why)
    return mi.build(tmp_path_factory.mktemp("mnt-img"))


@pytest.fixture(scope="module")
def store(img: mi.Image, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mnt-store") / "store"
    mi.cli("create", f"oci:{img.layout}:t", *mi.CREATE_OPTS, root=root)
    return root


def owned(snap: dict[str, tuple[Any, ...]]) -> dict[str, tuple[Any, ...]]:
    """As root `umoci unpack` keeps owners; rootless it cannot, so owners are not compared."""
    if os.geteuid() == 0:
        return snap
    return {k: (v[0], v[1], None, None, *v[4:]) for k, v in snap.items()}


@pytest.fixture(scope="module")
def reference(img: mi.Image) -> dict[str, tuple[Any, ...]]:
    return owned(mi.snapshot(img.ref))


Mount = Callable[..., Path]


@pytest.fixture()
def mount(store: Path, img: mi.Image, tmp_path: Path) -> Iterator[Mount]:
    """mount(*options, image=..., root=...) -> a live mountpoint (a fresh span cache unless
    --cache-dir is given); everything is unmounted at teardown, lazily if need be."""
    mounted: list[tuple[Path, Path]] = []

    def do(*opts: str, image: str | None = None, root: Path | None = None) -> Path:
        mp = tmp_path / f"mnt{len(mounted)}"
        mp.mkdir()
        args = [image or f"oci:{img.layout}:t", str(mp), *opts]
        if "--cache-dir" not in opts:
            args += ["--cache-dir", str(tmp_path / f"cache{len(mounted)}")]
        p = mi.mount_cmd(*args, root=root or store, ok=False)
        if p.returncode != 0 and ("not permitted" in p.stderr or "ermission denied" in p.stderr):
            pytest.skip(f"mounting FUSE is not permitted here: {p.stderr.strip()}")
        assert p.returncode == 0, p.stderr
        assert mi.is_mounted(mp)
        mounted.append((mp, root or store))
        return mp

    yield do
    for mp, root in mounted:
        if mi.is_mounted(mp):
            mi.umount_cmd(mp, root)
        mi.force_unmount(mp)


def layer_stats(mp: Path) -> list[dict[str, Any]]:
    return mi.stats(mp)["layers"]


def xattrs(root: Path) -> dict[str, dict[str, bytes]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            names = os.listxattr(p, follow_symlinks=False)
            if names:
                out[os.path.relpath(p, root)] = {
                    n: os.getxattr(p, n, follow_symlinks=False) for n in names}
    return out


# ----------------------------------------------------------------------------------- trees

def test_merged_tree_matches_umoci_unpack(mount: Mount, img: mi.Image,
                                          reference: dict[str, tuple[Any, ...]]) -> None:
    mp = mount()
    got = owned(mi.snapshot(mp))
    assert set(got) == set(reference)
    for path in sorted(reference):
        assert got[path] == reference[path], path
    assert xattrs(mp) == xattrs(img.ref)
    assert xattrs(mp)["data/pax-xattr.txt"] == {"user.from_pax": b"pax value"}
    # overlay semantics, spelled out
    assert not any(".wh." in p for p in got)
    assert os.listdir(mp / TREE / "http") == ["only.txt"]
    assert not (mp / "data/gone").exists() and not (mp / TREE / "email/mime").exists()
    assert not (mp / "data/empty").exists()
    h1, h2 = os.lstat(mp / "data/hard1"), os.lstat(mp / "data/hard2")
    assert h1.st_ino == h2.st_ino and h1.st_nlink == 2
    low, lnk = os.lstat(mp / TREE / "json/decoder.py"), os.lstat(mp / "data/hard-to-lower")
    assert low.st_ino == lnk.st_ino and low.st_nlink == 2
    assert stat.S_ISFIFO(os.lstat(mp / "data/fifo").st_mode)
    assert os.lstat(mp / "data/link-rel").st_size == len(os.readlink(mp / "data/link-rel"))
    assert (mp / "data/modified.txt").read_text() == "version 2\n" * 70
    # the stats file is hidden from readdir but there
    assert ".soci-native" not in os.listdir(mp)
    s = mi.stats(mp)
    assert [x["mode"] for x in s["layers"]] == ["lazy", "lazy", "local", "local"]
    sparse = (mp / "sparse.bin").read_bytes()
    assert len(sparse) == 3 << 20 and sparse[5000:5010] == b"hellohello"
    if os.geteuid() == 0:
        assert os.lstat(mp / "data/null").st_rdev == os.makedev(1, 3)
    assert s["totals"]["errors"] == 0
    assert [x["digest"] for x in s["layers"]] == [d["digest"] for d in img.layers]


def test_metadata_touches_no_layer_bytes(mount: Mount) -> None:
    mp = mount()
    before = layer_stats(mp)
    n = 0
    for dirpath, dirnames, filenames in os.walk(mp):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                os.readlink(p)
            for x in os.listxattr(p, follow_symlinks=False):
                os.getxattr(p, x, follow_symlinks=False)
            n += 1
    os.statvfs(mp)
    after = layer_stats(mp)
    assert n > 250
    for b, a in zip(before, after, strict=True):
        if a["mode"] == "lazy":
            assert b["spans_fetched"] == a["spans_fetched"] == 0
            assert b["bytes_fetched"] == a["bytes_fetched"] == 0
            assert a["cache_hits"] == a["cache_misses"] == 0


def test_small_reads_fetch_a_small_fraction(mount: Mount, img: mi.Image) -> None:
    mp = mount()
    small = [f"{TREE}/json/__init__.py", f"{TREE}/email/charset.py", f"{TREE}/xml/__init__.py"]
    for rel in small:
        assert (mp / rel).read_bytes() == (img.ref / rel).read_bytes()
    big = layer_stats(mp)[0]
    assert big["spans_total"] > 30
    assert 1 <= big["spans_fetched"] <= 2 * len(small)
    assert big["bytes_fetched"] < big["size"] // 10
    assert all(x["spans_fetched"] == 0 for x in layer_stats(mp)[1:] if x["mode"] == "lazy")


def test_concurrent_readers_threads_and_processes(mount: Mount, img: mi.Image) -> None:
    mp = mount()
    files = ["data/big.bin", "data/zeros.bin", "data/layer2.txt"]
    rng = random.Random(5)
    others = sorted(p for p, v in mi.snapshot(img.ref, contents=False).items()
                    if v[0] == stat.S_IFREG)
    files += rng.sample(others, 25)
    want = {f: mi.sha256_file(img.ref / f) for f in files}
    errors: list[str] = []

    def reader(seed: int) -> None:
        r = random.Random(seed)
        order = files[:]
        r.shuffle(order)
        for f in order:
            h = hashlib.sha256()
            with open(mp / f, "rb", buffering=0) as fh:
                while chunk := fh.read(r.choice([4096, 65536, 100_000, 1 << 20])):
                    h.update(chunk)
            if h.hexdigest() != want[f]:
                errors.append(f"thread {seed}: {f}")

    code = ("import hashlib, sys, pathlib\n"
            "for f in sys.argv[2:]:\n"
            "    print(f, hashlib.sha256((pathlib.Path(sys.argv[1]) / f).read_bytes())"
            ".hexdigest())\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(mp), *rng.sample(files, 15)],
                              stdout=subprocess.PIPE, text=True) for _ in range(4)]
    threads = [threading.Thread(target=reader, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in procs:
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0
        for line in out.splitlines():
            f, digest = line.rsplit(" ", 1)
            assert digest == want[f], f
    assert errors == []
    for x in layer_stats(mp):
        assert x["errors"] == 0
        assert x["cache_misses"] == x["spans_fetched"]  # no span fetched twice
        if x["mode"] == "lazy":  # nor inflated twice
            assert x["inflate_ratio"] == 1.0, x


def _span_of_file(store: Path, layer_digest: str, name: str) -> tuple[int, int, int]:
    """(span id, compressed start, end) of the span holding the middle of file ``name``."""
    from soci_native import ztoc
    from soci_native.mount.spans import span_table
    from soci_native.store import Store

    with Store(store) as s:
        rec = next(r for r in s.list_artifacts(type="soci_layer")
                   if r.original_digest == layer_digest)
        z = ztoc.from_bytes(s.read_blob(rec.digest))
    f = next(f for f in z.files if f.name == name)
    mid = f.uncompressed_offset + f.uncompressed_size // 2
    spans = span_table(z)
    i = max(k for k, sp in enumerate(spans) if sp.ustart <= mid)
    return i, spans[i].cstart, spans[i].cend


def test_corrupt_ztoc_in_the_store_is_refused(img: mi.Image, store: Path,
                                              tmp_path: Path) -> None:
    """The zTOC is hashed while the tree is built from it: a tampered one is refused with
    the store's error (whether or not its entries still parse), and nothing is mounted."""
    from soci_native.store import Store

    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    with Store(copy) as s:
        rec = s.list_artifacts(type="soci_layer")[0]
    blob = copy / "content/blobs/sha256" / rec.digest.split(":")[1]
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.chmod(0o600)
    blob.write_bytes(bytes(data))
    mp = tmp_path / "mnt"
    mp.mkdir()
    p = mi.mount_cmd(f"oci:{img.layout}:t", str(mp), root=copy, ok=False)
    mounted = mi.is_mounted(mp)
    if mounted:  # the failure this guards against: leave no mount behind
        mi.umount_cmd(mp, copy)
    assert p.returncode == 1 and f"blob {rec.digest} is corrupt" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and not mounted


def test_corrupt_span_is_eio_never_wrong_bytes(mount: Mount, img: mi.Image, store: Path,
                                               tmp_path: Path) -> None:
    copy = tmp_path / "corrupt"
    shutil.copytree(img.layout, copy)
    layer = img.layers[0]["digest"]
    i, start, end = _span_of_file(store, layer, "data/big.bin")
    blob = copy / "blobs/sha256" / layer.split(":")[1]
    data = bytearray(blob.read_bytes())
    data[(start + end) // 2] ^= 0x40
    blob.write_bytes(bytes(data))

    mp = mount(image=f"oci:{copy}:t")
    for _ in range(2):  # nothing bad is cached: the second read fails the same way
        with pytest.raises(OSError) as e:
            (mp / "data/big.bin").read_bytes()
        assert e.value.errno == errno.EIO
    for rel in (f"{TREE}/json/__init__.py", "data/zeros.bin", "data/modified.txt"):
        assert (mp / rel).read_bytes() == (img.ref / rel).read_bytes(), rel
    # the parts of big.bin in other spans still read right
    want = (img.ref / "data/big.bin").read_bytes()
    with open(mp / "data/big.bin", "rb", buffering=0) as f:
        assert os.pread(f.fileno(), 4096, 0) == want[:4096]
        assert os.pread(f.fileno(), 4096, len(want) - 4096) == want[-4096:]
    s = layer_stats(mp)[0]
    assert s["errors"] >= 2 and "digest mismatch" in s["last_error"]
    assert f"span {i}" in s["last_error"]
    log = Path(mi.stats(mp)["log_file"]).read_text()
    assert "digest mismatch" in log


# ----------------------------------------------------------------- other image sources

def test_plain_tar_layers_from_docker_archive(mount: Mount, img: mi.Image, tmp_path: Path,
                                              reference: dict[str, tuple[Any, ...]]) -> None:
    arch = tmp_path / "d.tar"
    mi.run("skopeo", "--insecure-policy", "copy", f"oci:{img.layout}:t",
           f"docker-archive:{arch}:img:t")
    root = tmp_path / "store"
    mi.cli("create", f"docker-archive:{arch}", *mi.CREATE_OPTS, root=root)
    mp = mount(image=f"docker-archive:{arch}", root=root)
    assert owned(mi.snapshot(mp)) == reference
    layers = layer_stats(mp)
    assert any(x["mode"] == "lazy" for x in layers)
    assert all(x["errors"] == 0 for x in layers)


def test_soci_enabled_image_v2(mount: Mount, img: mi.Image, store: Path, tmp_path: Path,
                               reference: dict[str, tuple[Any, ...]]) -> None:
    conv = tmp_path / "conv"
    mi.cli("convert", f"oci:{img.layout}:t", f"oci:{conv}:t", *mi.CREATE_OPTS, root=store)
    manifest = json.loads(mi.run("skopeo", "inspect", "--raw", f"oci:{conv}:t").stdout)
    if "manifests" in manifest:  # the image index: pick the image manifest
        entry = next(m for m in manifest["manifests"] if "artifactType" not in m)
        raw = (conv / "blobs/sha256" / entry["digest"].split(":")[1]).read_bytes()
        manifest = json.loads(raw)
    index_digest = manifest["annotations"]["com.amazon.soci.index-digest"]
    mp = mount(image=f"oci:{conv}:t")
    assert mi.stats(mp)["soci_index"] == index_digest
    assert owned(mi.snapshot(mp)) == reference


def test_single_layer_mounts_show_whiteouts(mount: Mount, img: mi.Image) -> None:
    mp2 = mount("--layer", img.layers[1]["digest"])
    for name in ("gone", "hard3"):
        st = os.lstat(mp2 / "data" / name)
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0, name
    assert (mp2 / "data/modified.txt").read_text() == "version 2\n" * 70
    assert not (mp2 / "data/big.bin").exists()
    mp3 = mount("--layer", img.layers[2]["digest"][7:19])  # a unique digest prefix works
    assert os.getxattr(mp3 / TREE / "http", "trusted.overlay.opaque") == b"y"
    assert stat.S_ISCHR(os.lstat(mp3 / "data/empty").st_mode)
    assert (mp3 / TREE / "http/only.txt").read_text() == "the only file left in http\n"
    assert layer_stats(mp3)[0]["mode"] == "local"


def test_prefetch_resolves_listed_spans_at_mount(mount: Mount, img: mi.Image,
                                                 tmp_path: Path) -> None:
    root = tmp_path / "store"
    mi.cli("create", f"oci:{img.layout}:t", *mi.CREATE_OPTS, "--prefetch-file",
           "/data/big.bin", root=root)
    mp = mount("--prefetch", root=root)
    s = mi.stats(mp)
    big = s["layers"][0]
    assert s["prefetched_spans"] > 0 and big["spans_fetched"] == s["prefetched_spans"]
    assert (mp / "data/big.bin").read_bytes() == (img.ref / "data/big.bin").read_bytes()
    assert layer_stats(mp)[0]["spans_fetched"] == s["prefetched_spans"]  # all cached already


def test_span_cache_is_bounded(mount: Mount, img: mi.Image, tmp_path: Path) -> None:
    cache = tmp_path / "small-cache"
    limit = 300_000
    mp = mount("--cache-dir", str(cache), "--cache-size", str(limit))
    for rel in ("data/big.bin", "data/zeros.bin"):
        assert mi.sha256_file(mp / rel) == mi.sha256_file(img.ref / rel)
    files = [p for p in cache.rglob("*") if p.is_file()]
    assert files and sum(p.stat().st_size for p in files) <= limit
    assert mi.stats(mp)["cache_bytes"] <= limit


# --------------------------------------------------------------------- process lifecycle

def test_umount_is_clean(mount: Mount, store: Path) -> None:
    mp = mount()
    pid = mi.stats(mp)["pid"]
    assert mi.pid_alive(pid)
    p = mi.umount_cmd(mp, store)
    assert p.returncode == 0, p.stderr
    assert not mi.is_mounted(mp)
    assert not mi.pid_alive(pid)
    assert os.listdir(mp) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_foreground_signal_unmounts_and_prints_stats(img: mi.Image, store: Path,
                                                     tmp_path: Path, sig: int) -> None:
    mp = tmp_path / "fg"
    mp.mkdir()
    env = dict(os.environ, SOCI_NATIVE_ROOT=str(store))
    proc = subprocess.Popen([sys.executable, "-m", "soci_native.mount", f"oci:{img.layout}:t",
                             str(mp), "-f", "--stats", "--cache-dir", str(tmp_path / "c")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not mi.is_mounted(mp):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "mount did not come up"
            time.sleep(0.05)
        assert (mp / "data/layer2.txt").read_bytes() == (img.ref / "data/layer2.txt").read_bytes()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        stats = json.loads(out)
        assert stats["totals"]["spans_fetched"] >= 1 and stats["totals"]["errors"] == 0
        assert not mi.is_mounted(mp) and os.listdir(mp) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        mi.force_unmount(mp)


def test_mount_errors_are_clear(img: mi.Image, store: Path, tmp_path: Path) -> None:
    mp = tmp_path / "m"
    mp.mkdir()
    p = mi.mount_cmd(f"oci:{img.layout}:t", str(mp), root=tmp_path / "nostore", ok=False)
    # no store yet: the image itself is looked at (a SOCI-enabled one would mount)
    assert p.returncode == 1 and "no SOCI index in" in p.stderr and "nostore" in p.stderr
    other = tmp_path / "other"
    mi.run("umoci", "init", "--layout", str(other))
    mi.run("umoci", "new", "--image", f"{other}:t")
    p = mi.mount_cmd(f"oci:{other}:t", str(mp), root=store, ok=False)
    assert p.returncode == 1 and "no SOCI index" in p.stderr
    p = mi.mount_cmd(f"oci:{img.layout}:t", str(mp), "--layer", "sha256:" + "0" * 64,
                     root=store, ok=False)
    assert p.returncode == 1 and "not a layer of the image" in p.stderr
    assert not mi.is_mounted(mp)


# ------------------------------------------------------------- units (no FUSE needed)

def E(name: str, type: str = "reg", size: int = 0, **kw: Any) -> Any:  # noqa: N802
    from soci_native.mount.tree import Entry

    return Entry(name, type, kw.pop("offset", 0), size, **kw)


def test_rfc3339_times() -> None:
    from datetime import datetime, timezone

    from tree_oracle import parse_rfc3339_ns

    base = int(datetime(2024, 1, 31, 12, 0, tzinfo=timezone.utc).timestamp())
    assert parse_rfc3339_ns("2024-01-31T12:00:00Z") == base * 10**9
    assert parse_rfc3339_ns("2024-01-31T14:00:00.123456789+02:00") == base * 10**9 + 123456789
    assert parse_rfc3339_ns("2024-01-31T11:30:00.5-00:30") == base * 10**9 + 500_000_000
    # Go's zero time is beyond int64 nanoseconds: clamped, as the inode table holds times
    assert parse_rfc3339_ns("0001-01-01T00:00:00Z") == -(1 << 63)
    assert parse_rfc3339_ns("1678-01-01T00:00:00Z") == int(datetime(
        1678, 1, 1, tzinfo=timezone.utc).timestamp()) * 10**9
    assert parse_rfc3339_ns("") == 0 and parse_rfc3339_ns("yesterday") == 0


def test_tree_overlay_rules() -> None:
    from tree_oracle import c_tree

    lower = [E("./", "dir", mode=0o755), E("a/", "dir", mode=0o700), E("a/f1", size=1),
             E("a/f2", size=2), E("a/sub/", "dir"), E("a/sub/x", size=3), E("b", size=4),
             E("c/d/e", size=5), E("h", size=6, offset=512), E("l", "hardlink", linkname="h"),
             E("o/", "dir"), E("o/old", size=7), E("s", "symlink", linkname="target")]
    upper = [E("a/.wh.f1"), E("a/", "dir", mode=0o751, uid=7), E(".wh.b"), E("b/", "dir"),
             E("b/in", size=8), E("new", size=9), E(".wh.new"), E("o/.wh..wh..opq"),
             E("o/y", size=10), E("h", size=11), E("./c/../c/d/e", "dir")]
    t = c_tree([lower, upper])
    assert sorted(p for p in t.paths) == [
        "/", "/a", "/a/f2", "/a/sub", "/a/sub/x", "/b", "/b/in", "/c", "/c/d", "/c/d/e",
        "/h", "/l", "/new", "/o", "/o/y", "/s"]
    a = t.paths["/a"]
    assert (a.perm, a.uid, a.nlink) == (0o751, 7, 3)  # metadata replaced, children kept
    assert t.paths["/c"].perm == 0o755 and t.paths["/c"].is_dir  # implicit parent
    assert t.paths["/c/d/e"].is_dir  # a file replaced by a directory
    assert t.paths["/h"].size == 11 and t.paths["/l"].size == 6  # the link keeps old inode
    assert t.paths["/h"].nlink == t.paths["/l"].nlink == 1
    assert t.paths["/s"].size == len("target") and t.paths["/s"].target == "target"
    assert t.paths["/"].ino == 1 and len({n.ino for n in t.paths.values()}) == len(t.paths)

    t2 = c_tree([[E("f", size=3), E("g", "hardlink", linkname="./f"),
                      E("k", "hardlink", linkname="f")]])
    assert t2.paths["/f"] is t2.paths["/g"] is t2.paths["/k"] and t2.paths["/f"].nlink == 3
    assert t2.inodes == 2


def test_single_layer_view() -> None:
    from tree_oracle import c_tree

    t = c_tree([[E("d/.wh..wh..opq"), E("d/.wh.gone"), E("d/kept", size=1),
                     E("d/.wh.kept"), E(".wh.top")]], single_layer=True)
    d = t.paths["/d"]
    assert d.xattrs == {"trusted.overlay.opaque": b"y"}
    gone = t.paths["/d/gone"]
    assert stat.S_ISCHR(gone.mode) and gone.rdev == 0 and stat.S_ISCHR(t.paths["/top"].mode)
    assert stat.S_ISREG(t.paths["/d/kept"].mode)  # a real entry beats its whiteout


def _gzip_tar(path: Path, files: dict[str, bytes]) -> bytes:
    import gzip
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    path.write_bytes(gzip.compress(buf.getvalue(), 6))
    return buf.getvalue()


@pytest.mark.parametrize("compressed", [True, False])
def test_ztoc_layer_reads_any_range(tmp_path: Path, compressed: bool) -> None:
    from soci_native import ztoc
    from soci_native.mount.spans import FileBlobReader, LayerStats, SpanCache, ZtocLayer

    rng = random.Random(1)
    files = {f"f{i}": rng.randbytes(rng.randrange(1, 200_000)) + b"text " * rng.randrange(
        0, 20_000) for i in range(12)}
    layer = tmp_path / "layer"
    tar = _gzip_tar(layer, files)
    if not compressed:
        layer.write_bytes(tar)
    _, raw = ztoc.build(str(layer), span_size=50_000)
    z = ztoc.from_bytes(raw)
    assert tar[z.uncompressed_archive_size:].count(0) == len(tar) - z.uncompressed_archive_size
    tar = tar[:z.uncompressed_archive_size]  # the record padding after the end blocks
    stats = LayerStats("sha256:" + "ab" * 32, layer.stat().st_size, "lazy")
    zl = ZtocLayer(stats.digest, z, FileBlobReader(layer), SpanCache(tmp_path / "c", 1 << 30),
                   stats)
    assert len(zl.spans) == z.num_spans > 10
    for _ in range(150):
        off = rng.randrange(0, len(tar))
        n = rng.choice([0, 1, 4096, 65536, 150_000, len(tar)])
        assert zl.read(off, n) == tar[off:off + n]
    assert stats.spans_fetched == stats.cache_misses == z.num_spans and stats.errors == 0
    for f in z.files:
        assert zl.read(f.uncompressed_offset, f.uncompressed_size) == files[f.name]

    # concurrent readers of a cold cache: every span fetched exactly once
    stats2 = LayerStats(stats.digest, stats.size, "lazy")
    zl2 = ZtocLayer(stats.digest, z, FileBlobReader(layer),
                    SpanCache(tmp_path / "c2", 1 << 30), stats2)
    threads = [threading.Thread(target=lambda: zl2.read(0, len(tar))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert stats2.spans_fetched == stats2.cache_misses == z.num_spans
    assert stats2.bytes_fetched == sum(s.cend - s.cstart for s in zl2.spans)


def test_ztoc_layer_refuses_corrupt_spans(tmp_path: Path) -> None:
    from soci_native import ztoc
    from soci_native.mount.spans import (
        FileBlobReader,
        LayerStats,
        SpanCache,
        SpanError,
        ZtocLayer,
    )

    rng = random.Random(2)
    layer = tmp_path / "layer"
    tar = _gzip_tar(layer, {"a": rng.randbytes(300_000), "b": b"b" * 200_000})
    _, raw = ztoc.build(str(layer), span_size=60_000)
    z = ztoc.from_bytes(raw)
    blob = bytearray(layer.read_bytes())
    from soci_native.mount.spans import span_table

    bad = span_table(z)[2]
    blob[(bad.cstart + bad.cend) // 2] ^= 1
    layer.write_bytes(bytes(blob))
    stats = LayerStats("sha256:" + "cd" * 32, len(blob), "lazy")
    zl = ZtocLayer(stats.digest, z, FileBlobReader(layer), SpanCache(tmp_path / "c", 1 << 30),
                   stats)
    with pytest.raises(SpanError) as e:
        zl.read(bad.ustart, 10)
    assert e.value.errno == errno.EIO and "digest mismatch" in str(e.value)
    assert zl.read(0, 1000) == tar[:1000] and stats.errors == 1
    assert not list((tmp_path / "c").rglob(f"{bad.ustart}+*"))


def test_span_cache_lru(tmp_path: Path) -> None:
    from soci_native.mount.spans import SpanCache

    c = SpanCache(tmp_path, 250)
    d = "sha256:" + "0" * 64
    paths = [c.path(d, i * 100, 100, "k") for i in range(3)]
    c.put(paths[0], b"a" * 100)
    c.put(paths[1], b"b" * 100)
    assert c.read(paths[0], 10, 5, 100) == b"aaaaa"  # now the most recent
    c.put(paths[2], b"c" * 100)
    assert [os.path.exists(p) for p in paths] == [True, False, True] and c.total == 200
    again = SpanCache(tmp_path, 100)  # a new mount adopts what is there, within its bound
    assert again.total == 100 and sum(os.path.exists(p) for p in paths) == 1


def test_a_failing_eviction_hook_does_not_stop_eviction(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The hook told of each evicted span (the frontend's) raising is logged, and the
    eviction still gets the cache back within its bound, telling the hook of every one."""
    from soci_native.mount.spans import SpanCache

    c = SpanCache(tmp_path, 220)
    d = "sha256:" + "1" * 64
    paths = [c.path(d, i * 100, 100, "k") for i in range(4)]
    told: list[str] = []

    def hook(path: str) -> None:
        told.append(path)
        raise RuntimeError("hook broke")

    c.on_evict = hook
    c.put(paths[0], b"a" * 50)
    c.put(paths[1], b"b" * 50)
    c.put(paths[2], b"c" * 100)
    assert told == [] and c.total == 200
    c.put(paths[3], b"d" * 100)  # over by 80: both 50-byte ones go, the hook failing on each
    assert told == paths[:2] and c.total == 200
    assert [os.path.exists(p) for p in paths] == [False, False, True, True]
    assert sum("eviction hook" in r.getMessage() for r in caplog.records) == 2


def test_cached_spans_are_the_spans_whole_in_the_cache(tmp_path: Path) -> None:
    """What a mount hands the FUSE frontend as already cached: the spans a mount before it
    committed (found by the cache's scan at start), the ones committed since (a prefetch
    before the mount goes live), never an evicted one, a wrong-sized one or another zTOC's."""
    from soci_native import ztoc
    from soci_native.mount.spans import FileBlobReader, LayerStats, SpanCache, ZtocLayer

    rng = random.Random(3)
    layer = tmp_path / "layer"
    _gzip_tar(layer, {f"f{i}": rng.randbytes(60_000) for i in range(8)})
    z = ztoc.from_bytes(ztoc.build(str(layer), span_size=50_000)[1])
    other = ztoc.from_bytes(ztoc.build(str(layer), span_size=70_000)[1])
    digest = "sha256:" + "ef" * 32

    def open_layer(zt: ztoc.Ztoc, limit: int = 1 << 30) -> ZtocLayer:
        stats = LayerStats(digest, layer.stat().st_size, "lazy")
        return ZtocLayer(digest, zt, FileBlobReader(layer), SpanCache(tmp_path / "c", limit),
                         stats)

    first = open_layer(z)
    assert first.cached_spans() == [] and len(first.spans) > 6
    for i in (1, 3, 4):
        first.resolve(i)
    open_layer(other).resolve(0)  # another zTOC's spans of the layer: other keys
    warm = open_layer(z)
    assert warm.cached_spans() == [(i, warm.span_path(i)) for i in (1, 3, 4)]
    warm.resolve(5)  # committed after the scan
    assert [i for i, _ in warm.cached_spans()] == [1, 3, 4, 5]
    s1 = warm.spans[1]
    Path(warm.span_path(1)).write_bytes(b"x" * (s1.uend - s1.ustart - 1))  # wrong size
    sizes = sorted(s.uend - s.ustart for s in warm.spans)
    small = open_layer(z, limit=sum(sizes[-3:]) + sizes[0])  # adopts what fits, oldest out
    kept = [i for i in (3, 4, 5) if os.path.exists(small.span_path(i))]
    assert 0 < len(kept) < 3
    assert small.cached_spans() == [(i, small.span_path(i)) for i in kept]


def test_local_layer_sparse_files(tmp_path: Path) -> None:
    import soci_native as sn
    from soci_native.mount.spans import LayerStats, LocalLayer

    if shutil.which("tar") is None:
        pytest.skip("needs GNU tar to write sparse archives")
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "s", "wb") as f:
        f.truncate(1 << 20)
        f.seek(70_000)
        f.write(b"x" * 5000)
    want = (src / "s").read_bytes()
    for fmt in ("gnu", "pax"):
        tar = tmp_path / f"{fmt}.tar"
        mi.run("tar", "-C", str(src), "--sparse", f"--format={fmt}", "-cf", str(tar), "s")
        ix = sn.index_layer(str(tar), entries=True)
        (e,) = ix.entries
        assert e.sparse and e.size == len(want)
        layer = LocalLayer("sha256:" + "ef" * 32, str(tar), ix,
                           LayerStats("x", 0, "local"), tmp_path / fmt)
        assert layer.read_sparse(e.header_offset, e.size, 0, e.size) == want
        assert layer.read_sparse(e.header_offset, e.size, 69_990, 20) == want[69_990:70_010]


# ----------------------------------------------------------------- registry images

@pytest.fixture(scope="module")
def reg(img: mi.Image, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real registry (docker-registry on 127.0.0.1) holding the test image and, pushed by
    `convert`, its SOCI-enabled (v2) version."""
    import reg_server

    if not reg_server.available():
        pytest.skip("needs docker-registry (apt)")
    with reg_server.Registry.start(tmp_path_factory.mktemp("mnt-reg")) as r:
        mi.run("skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{img.layout}:t",
               f"docker://{r.host}/mnt/img:t")
        mi.cli("convert", f"docker://{r.host}/mnt/img:t", f"docker://{r.host}/mnt/img:soci",
               *mi.CREATE_OPTS, root=tmp_path_factory.mktemp("mnt-builder"))
        yield r


def test_registry_image_discovered_and_served_lazily(mount: Mount, img: mi.Image, reg: Any,
                                                     reference: dict[str, tuple[Any, ...]],
                                                     tmp_path: Path) -> None:
    # a fresh store: the index is found in the registry (v2 annotation) and fetched
    ref = f"docker://{reg.host}/mnt/img:soci"
    small = mount(image=ref, root=tmp_path / "fresh")
    for rel in (f"{TREE}/json/__init__.py", "data/modified.txt"):
        assert (small / rel).read_bytes() == (img.ref / rel).read_bytes()
    lazy = [x for x in layer_stats(small) if x["mode"] == "lazy"]
    fetched = sum(x["bytes_fetched"] for x in lazy)
    assert 0 < fetched < 0.25 * sum(x["size"] for x in lazy)
    full = mount(image=ref, root=tmp_path / "fresh")
    assert owned(mi.snapshot(full)) == reference


def test_registry_faults_give_eio_then_recover(mount: Mount, img: mi.Image, reg: Any,
                                               tmp_path: Path) -> None:
    from fault_proxy import FaultProxy, on, reset

    with FaultProxy("127.0.0.1", reg.port) as proxy:
        mp = mount("--retries", "2", image=f"docker://{proxy.netloc}/mnt/img:soci",
                   root=tmp_path / "fresh")
        proxy.add_fault(reset(), match=on(method="GET", path=r"/v2/mnt/img/blobs/.*"))
        with pytest.raises(OSError) as e:  # the registry is gone: EIO, not a hang
            (mp / "data/big.bin").read_bytes()
        assert e.value.errno == errno.EIO
        proxy.clear_faults()  # it is back: the same mount serves the file
        assert (mp / "data/big.bin").read_bytes() == (img.ref / "data/big.bin").read_bytes()


def test_registry_error_during_a_span_fetch_is_a_clean_eio(mount: Mount, img: mi.Image,
                                                          reg: Any, tmp_path: Path) -> None:
    """A registry answering an error status (RegistryError, not OSError) for a span: EIO,
    counted in the stats, one log line, no traceback."""
    from fault_proxy import FaultProxy, on, status

    with FaultProxy("127.0.0.1", reg.port) as proxy:
        mp = mount("--retries", "1", image=f"docker://{proxy.netloc}/mnt/img:soci",
                   root=tmp_path / "fresh")
        proxy.add_fault(status(404), match=on(method="GET", path=r"/v2/mnt/img/blobs/.*"))
        with pytest.raises(OSError) as e:
            (mp / "data/big.bin").read_bytes()
        assert e.value.errno == errno.EIO
        s = mi.stats(mp)
        big = s["layers"][0]
        assert big["errors"] >= 1 and "fetching bytes" in big["last_error"], big
        log = Path(s["log_file"]).read_text()
        assert "Traceback" not in log and "fetching bytes" in log
        proxy.clear_faults()
        assert (mp / "data/big.bin").read_bytes() == (img.ref / "data/big.bin").read_bytes()


def test_registry_corrupt_span_is_eio(mount: Mount, img: mi.Image, tmp_path: Path,
                                      tmp_path_factory: pytest.TempPathFactory) -> None:
    import reg_server

    if not reg_server.available():
        pytest.skip("needs docker-registry (apt)")
    with reg_server.Registry.start(tmp_path / "reg") as r:  # its own: we damage its storage
        mi.run("skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{img.layout}:t",
               f"docker://{r.host}/bad/img:t")
        root = tmp_path / "store"
        mi.cli("create", f"docker://{r.host}/bad/img:t", *mi.CREATE_OPTS, root=root)
        layer = img.layers[0]["digest"]
        _, start, end = _span_of_file(root, layer, "data/big.bin")
        blob = r.blob_data_path(layer)
        data = bytearray(blob.read_bytes())
        data[(start + end) // 2] ^= 0x40
        blob.write_bytes(bytes(data))
        mp = mount(image=f"docker://{r.host}/bad/img:t", root=root)
        with pytest.raises(OSError) as e:
            (mp / "data/big.bin").read_bytes()
        assert e.value.errno == errno.EIO
        want = (img.ref / "data/modified.txt").read_bytes()
        assert (mp / "data/modified.txt").read_bytes() == want
        for rel in (f"{TREE}/json/__init__.py",):
            assert (mp / rel).read_bytes() == (img.ref / rel).read_bytes()


def test_background_fetch_brings_the_whole_image_local(mount: Mount, img: mi.Image) -> None:
    mp = mount("--background-fetch", "200")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        lazy = [x for x in layer_stats(mp) if x["mode"] == "lazy"]
        if all(x["fetched_percent"] >= 99.9 for x in lazy):  # empty spans need no fetch
            break
        time.sleep(0.2)
    assert all(x["fetched_percent"] >= 99.9 for x in lazy), json.dumps(lazy)[:3000]
    before = sum(x["bytes_fetched"] for x in lazy)
    assert (mp / "data/big.bin").read_bytes() == (img.ref / "data/big.bin").read_bytes()
    after = sum(x["bytes_fetched"] for x in layer_stats(mp) if x["mode"] == "lazy")
    assert after == before  # served from the spans fetched in the background


def test_background_fetch_is_off_by_default(mount: Mount) -> None:
    mp = mount()
    time.sleep(1.0)
    assert all(x["spans_fetched"] == 0 for x in layer_stats(mp) if x["mode"] == "lazy")


def test_first_read_inflates_only_what_it_needs_then_caches_the_span(tmp_path: Path) -> None:
    """A cold read of a span's first bytes returns before the whole span is inflated; the
    span is then inflated and cached in the background, and later reads hit the cache."""
    from soci_native import ztoc
    from soci_native.mount.spans import FileBlobReader, LayerStats, SpanCache, ZtocLayer

    rng = random.Random(5)
    files = {f"f{i}": rng.randbytes(50_000) + b"text " * 100_000 for i in range(4)}
    layer = tmp_path / "layer"
    tar = _gzip_tar(layer, files)
    _, raw = ztoc.build(str(layer), span_size=1 << 20)
    z = ztoc.from_bytes(raw)
    stats = LayerStats("sha256:" + "cd" * 32, layer.stat().st_size, "lazy")
    cache = SpanCache(tmp_path / "c", 1 << 30)
    zl = ZtocLayer(stats.digest, z, FileBlobReader(layer), cache, stats)
    s0 = zl.spans[0]
    assert s0.uend - s0.ustart > 1 << 20
    assert zl.read(0, 4096) == tar[:4096]
    assert zl.read(100_000, 4096) == tar[100_000:104_096]  # while filling: no second fetch
    zl.drain()  # waits for the background fill
    assert cache.total == sum(s.uend - s.ustart for s in zl.spans[:1])
    assert zl.read(500_000, 4096) == tar[500_000:504_096]
    assert stats.spans_fetched == stats.cache_misses == 1 and stats.cache_hits >= 1


def test_clean_path_is_go_clean() -> None:
    """The fast path gives what the snapshotter's Clean("/" + name) gives, for every form."""
    import posixpath

    from tree_oracle import clean_path

    rng = random.Random(0)
    parts = ["a", ".", "..", "", "b.c", ".x", "..y", "z..", ".wh..wh..opq"]
    names = ["", ".", "..", "./", "./a", "a/", "a//b", "/a/b/", "a/./b", "a/../b", "../a"]
    names += ["/".join(rng.choice(parts) for _ in range(rng.randint(0, 6))) for _ in range(5000)]
    for n in names:
        assert clean_path(n) == posixpath.normpath("/" + n).lstrip("/"), n


def test_read_ahead_is_raised_as_root(mount: Mount, img: mi.Image) -> None:
    """As root the daemon sets the mount's read-ahead to READ_AHEAD_KB (1 MiB requests);
    otherwise the kernel's default stays. Reads are right either way."""
    from soci_native.mount.fs import READ_AHEAD_KB, _mountinfo_escape

    assert _mountinfo_escape("/a b\\c") == "/a\\040b\\134c"
    mp = mount()
    want = _mountinfo_escape(str(mp))
    devs = [f[2] for f in (line.split() for line in open("/proc/self/mountinfo"))
            if f[4] == want]
    assert len(devs) == 1
    ra = Path(f"/sys/class/bdi/{devs[0]}/read_ahead_kb")
    deadline = time.monotonic() + 10
    while os.geteuid() == 0 and ra.read_text().strip() != str(READ_AHEAD_KB) and \
            time.monotonic() < deadline:
        time.sleep(0.05)  # the daemon tunes it right after FUSE init
    if os.geteuid() == 0:  # (a user cannot write it: the default stays, nothing fails)
        assert ra.read_text().strip() == str(READ_AHEAD_KB)
    assert (mp / "data/big.bin").read_bytes() == (img.ref / "data/big.bin").read_bytes()


def test_prefetch_fetches_and_inflates_in_two_stages_each_span_once(tmp_path: Path) -> None:
    """run_prefetch fetches spans ahead of their inflate (fetch_only keeps the verified bytes,
    the fill takes them instead of fetching again): every planned span ends cached and read
    from the blob exactly once, its bytes the tar's; a cached span is not fetched again."""
    import random

    from soci_native import ztoc
    from soci_native.mount.image import run_prefetch
    from soci_native.mount.spans import FileBlobReader, LayerStats, SpanCache, ZtocLayer

    rng = random.Random(7)
    files = {f"f{i}": rng.randbytes(rng.randrange(1, 100_000)) for i in range(20)}
    layer = tmp_path / "layer"
    tar = _gzip_tar(layer, files)
    z = ztoc.from_bytes(ztoc.build(str(layer), span_size=50_000)[1])
    calls: list[tuple[int, int]] = []

    class Counting(FileBlobReader):
        def read_range(self, start: int, end: int) -> bytes:
            calls.append((start, end))
            return super().read_range(start, end)

    stats = LayerStats("sha256:" + "cd" * 32, layer.stat().st_size, "lazy")
    zl = ZtocLayer(stats.digest, z, Counting(layer), SpanCache(tmp_path / "c", 1 << 30), stats)
    want = list(range(0, len(zl.spans), 2))
    assert len(want) > 8  # more than PREFETCH_HELD: fetchers wait for the inflates
    assert run_prefetch({zl: want}) == len(want)
    assert sorted(calls) == sorted((zl.spans[i].cstart, zl.spans[i].cend) for i in want)
    assert not zl._held  # every fetched span went to its fill
    for i in want:
        s = zl.spans[i]
        assert zl.read(s.ustart, s.uend - s.ustart) == tar[s.ustart:s.uend]
    assert len(calls) == len(want) and stats.cache_misses == len(want)
    assert zl.fetch_only(want[0]) is False and len(calls) == len(want)  # cached: no fetch
    assert zl.fetch_only(1) is True and len(calls) == len(want) + 1
    s = zl.spans[1]
    assert zl.read(s.ustart, s.uend - s.ustart) == tar[s.ustart:s.uend]
    assert len(calls) == len(want) + 1  # the read took the held bytes
    zl.close()
