"""The mount's read path against crafted layers and zTOCs (issue 8 §1, §2; issue 10's one
inflate per span), on the real classes a mount uses (ZtocLayer, LocalLayer, SpanCache) over
real files; memory and disk are measured in a child process."""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import hostile_layers as hl
import pytest
from peak_rss import HWM_KB

from soci_native import ztoc
from soci_native.layer import checkpoint_window
from soci_native.mount.spans import (
    FileBlobReader,
    LayerStats,
    SpanCache,
    SpanError,
    ZtocLayer,
)

DIGEST = "sha256:" + "ab" * 32
CHECKPOINT = 32785


def _layer(z: ztoc.Ztoc, blob: Path, cache: Path, limit: int = 1 << 30) -> ZtocLayer:
    stats = LayerStats(DIGEST, blob.stat().st_size, "lazy", ztoc="sha256:" + "cd" * 32)
    return ZtocLayer(DIGEST, z, FileBlobReader(blob), SpanCache(cache, limit), stats)


@pytest.fixture(scope="module")
def text(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes, ztoc.Ztoc]:
    d = tmp_path_factory.mktemp("text")
    blob = d / "layer.gz"
    tar = hl.text_layer(blob, 24, 200_000)
    z = ztoc.from_bytes(ztoc.build(str(blob), span_size=256 << 10)[1])
    assert z.num_spans >= 8
    return blob, tar[:z.uncompressed_archive_size], z


def _forge_window(z: ztoc.Ztoc, j: int) -> ztoc.Ztoc:
    """z with checkpoint j's window replaced by noise, all else equal."""
    cps = bytearray(z.checkpoints)
    at = 12 + j * CHECKPOINT + 17  # a v2 blob, as `create` writes
    assert bytes(cps[at:at + 32768]) == checkpoint_window(z.checkpoints, j)
    cps[at:at + 32768] = random.Random(j).randbytes(32768)
    return replace(z, checkpoints=bytes(cps))


# ------------------------------------------------------------------------- §1 poisoning

@pytest.mark.parametrize("which", ["middle", "last"])
def test_forged_window_cannot_change_what_another_image_serves(
        text: tuple[Path, bytes, ztoc.Ztoc], tmp_path: Path, which: str) -> None:
    """Image B lists image A's layer with A's zTOC but one forged checkpoint window; both
    mounts share a span cache. Whatever B serves, a later mount of A serves honest bytes.
    The last span's window has no successor to be checked against: B serves and caches its
    forged bytes, and only the cache key keeps them from A."""
    blob, tar, z = text
    cache = tmp_path / "cache"
    j = 4 if which == "middle" else z.num_spans - 1
    b = _layer(_forge_window(z, j), blob, cache)
    s = b.spans[j]
    try:
        got = b.read(s.ustart, s.uend - s.ustart)
        assert got != tar[s.ustart:s.uend]  # the forgery does change span j's bytes
        b.drain()  # waits for the background fill
        b.close()
        assert list(cache.rglob("*+*")), "B cached nothing: the replay proves nothing"
    except SpanError:
        assert which == "middle"  # the window chain caught it (span j+1's window)
        b.close()

    a = _layer(z, blob, cache)
    assert a.read(0, len(tar)) == tar
    assert a.stats.errors == 0
    a.drain()
    a.close()


def test_window_chain_mismatch_makes_the_layer_eio(
        text: tuple[Path, bytes, ztoc.Ztoc], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    blob, tar, z = text
    j = 4
    b = _layer(_forge_window(z, j), blob, tmp_path / "cache")
    prev = b.spans[j - 1]
    with caplog.at_level(logging.ERROR, logger="soci_native.mount"):
        with pytest.raises(SpanError):  # span j-1 inflated whole: checkpoint j disagrees
            b.read(prev.ustart, prev.uend - prev.ustart)
        for off in (0, b.spans[j].ustart, b.spans[-1].ustart):  # the whole layer is refused
            with pytest.raises(SpanError) as e:
                b.read(off, 10)
            assert e.value.errno == 5
    assert b.stats.errors >= 1 and "untrustworthy" in (b.stats.last_error or "")
    lines = [r.getMessage() for r in caplog.records if "untrustworthy" in r.getMessage()]
    assert len(lines) == 1 and f"checkpoint {j}" in lines[0] and "sha256:cdcd" in lines[0]
    b.close()

    # checked against a cached predecessor too: span j-1 cached by an honest mount
    cache = tmp_path / "cache2"
    a = _layer(z, blob, cache)
    assert a.read(prev.ustart, prev.uend - prev.ustart) == tar[prev.ustart:prev.uend]
    a.drain()
    a.close()
    b2 = _layer(_forge_window(z, j), blob, cache)
    with pytest.raises(SpanError):
        b2.read(b2.spans[j].ustart, 10)
    assert "untrustworthy" in (b2.stats.last_error or "")
    b2.close()


def test_background_fetch_finds_a_forged_window_and_stops(
        text: tuple[Path, bytes, ztoc.Ztoc], tmp_path: Path) -> None:
    """Fetching spans in order behind the reads checks every window of the chain."""
    import time

    from soci_native.mount.image import BackgroundFetcher

    blob, _, z = text
    j = z.num_spans // 2
    b = _layer(_forge_window(z, j), blob, tmp_path / "cache")
    fetcher = BackgroundFetcher([b], 1000.0, b.cache)
    fetcher.start()
    deadline = time.monotonic() + 60
    while fetcher._thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    fetcher.stop()
    assert b.untrusted and f"checkpoint {j}" in (b.stats.last_error or "")
    assert b.stats.spans_fetched == j  # spans 0..j-1, then it stopped
    b.close()


def test_unkeyed_cache_files_are_dropped(tmp_path: Path) -> None:
    old = tmp_path / DIGEST.split(":")[1] / "0+100"  # a name from before keys
    old.parent.mkdir(parents=True)
    old.write_bytes(b"x" * 100)
    c = SpanCache(tmp_path, 1000)
    assert not old.exists() and c.total == 0
    assert (tmp_path.stat().st_mode & 0o777) in (0o700, 0o755)  # made by mktemp here


# ------------------------------------------------------------ issue 10: one inflate per span

def test_sequential_and_concurrent_reads_inflate_each_span_once(
        text: tuple[Path, bytes, ztoc.Ztoc], tmp_path: Path) -> None:
    blob, tar, z = text
    seq = _layer(z, blob, tmp_path / "c1")
    got = bytearray()
    for off in range(0, len(tar), 128 << 10):  # what FUSE hands over for `cat`
        got += seq.read(off, 128 << 10)
    seq.drain()
    seq.close()
    assert got == tar
    st = seq.stats.to_json()
    assert st["inflate_ratio"] == 1.0 and st["span_bytes_inflated"] == len(tar), st
    assert st["spans_fetched"] == st["cache_misses"] == z.num_spans

    par = _layer(z, blob, tmp_path / "c2")
    errors: list[str] = []

    def reader(seed: int) -> None:
        offs = list(range(0, len(tar), 128 << 10))
        rng = random.Random(seed)
        if seed % 2:  # half the readers in order, half out of order
            rng.shuffle(offs)
        for off in offs:
            if par.read(off, 128 << 10) != tar[off:off + (128 << 10)]:
                errors.append(f"{seed}@{off}")

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    par.drain()
    par.close()
    assert errors == []
    st = par.stats.to_json()
    assert st["inflate_ratio"] == 1.0 and st["span_bytes_inflated"] == len(tar), st
    assert st["spans_fetched"] == st["cache_misses"] == z.num_spans


# ------------------------------------------------------------------ §2 one huge span

# The children report their own peak as VmHWM (peak_rss.HWM_KB): ru_maxrss carries the
# parent's over the vfork + exec that starts them.

_HUGE_CHILD = HWM_KB + r"""
import json, os, sys, time
from soci_native import ztoc
from soci_native.mount.spans import FileBlobReader, LayerStats, SpanCache, ZtocLayer
blob, zpath, cache, limit = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
z = ztoc.from_bytes(open(zpath, "rb").read())
st = LayerStats("sha256:" + "ef" * 32, os.path.getsize(blob), "lazy")
zl = ZtocLayer(st.digest, z, FileBlobReader(blob), SpanCache(cache, limit), st)
t = time.monotonic()
one = zl.read(512, 1)
t_one = time.monotonic() - t
seq = 0
for off in range(512, 512 + (32 << 20), 128 << 10):  # 32 MiB read in order
    data = zl.read(off, 128 << 10)
    seq += len(data) - data.count(0)
zl.close()
written = sum(f.stat().st_blocks * 512 for f in __import__("pathlib").Path(cache).rglob("*")
              if f.is_file())
io = dict(line.split(": ") for line in open("/proc/self/io").read().splitlines())
print(json.dumps({"one": one.hex(), "t_one": t_one, "nonzero": seq, "written": written,
                  "wchar": int(io["wchar"]),
                  "maxrss_kb": hwm_kb(),
                  "stats": st.to_json()}))
"""


def test_one_huge_span_is_served_in_bounded_memory_and_never_cached(tmp_path: Path) -> None:
    blob = tmp_path / "bomb.gz"
    size = hl.one_block_layer(blob, 1 << 30)  # 1 GiB of zeros from ~1 MiB
    assert blob.stat().st_size < 2 << 20
    zpath = tmp_path / "ztoc"
    zpath.write_bytes(ztoc.build(str(blob), span_size=1 << 20)[1])
    z = ztoc.from_bytes(zpath.read_bytes())
    assert z.num_spans == 1 and z.uncompressed_archive_size == size
    p = subprocess.run([sys.executable, "-c", _HUGE_CHILD, str(blob), str(zpath),
                        str(tmp_path / "cache"), str(64 << 20)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    r: dict[str, Any] = json.loads(p.stdout)
    assert r["one"] == "00" and r["nonzero"] == 0
    assert r["written"] == 0  # bigger than the cache bound: never cached
    assert r["wchar"] < 1 << 20  # nor written and evicted (this process writes only stdout)
    assert r["maxrss_kb"] < 120_000, r  # the interpreter is ~30 MB of it
    st = r["stats"]
    assert st["errors"] == 0 and st["spans_fetched"] == 1
    # the reads continued one inflate: 32 MiB + the first byte's offset, not 256 restarts
    assert st["bytes_inflated"] == 512 + (32 << 20) and st["inflate_ratio"] == 1.0, st


# --------------------------------------------------------------------- §2 sparse files

_SPARSE_CHILD = HWM_KB + r"""
import json, os, sys
import soci_native as sn
from soci_native.mount.spans import LayerStats, LocalLayer
layer, scratch, want_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
ix = sn.index_layer(layer, entries=True)
(e,) = [e for e in ix.entries if e.sparse]
ll = LocalLayer("sha256:" + "12" * 32, layer, ix, LayerStats("x", 0, "local"), scratch)
hole = ll.read_sparse(e.header_offset, e.size, 1 << 30, 1 << 20)
data = ll.read_sparse(e.header_offset, e.size, want_at - 3, 16)
tail = ll.read_sparse(e.header_offset, e.size, e.size - 5, 100)
used = sum(f.stat().st_blocks * 512 for f in __import__("pathlib").Path(scratch).rglob("*")
           if f.is_file())
io = dict(line.split(": ") for line in open("/proc/self/io").read().splitlines())
print(json.dumps({"size": e.size, "hole": hole.count(0), "data": data.hex(), "tail": tail.hex(),
                  "used": used, "wchar": int(io["wchar"]),
                  "maxrss_kb": hwm_kb()}))
"""


@pytest.mark.parametrize("fmt", ["gnu", "pax"])
def test_sparse_file_holes_are_never_written(tmp_path: Path, fmt: str) -> None:
    if shutil.which("tar") is None:
        pytest.skip("needs GNU tar to write sparse archives")
    src = tmp_path / "src"
    src.mkdir()
    size, at = 6 << 30, 3 << 30  # 6 GiB, holes but for a few bytes
    with open(src / "s", "wb") as f:
        f.truncate(size)
        f.seek(at)
        f.write(b"payload!")
    layer = tmp_path / "layer.tar.gz"
    subprocess.run(["tar", "-C", str(src), "--sparse", f"--format={fmt}", "-czf", str(layer),
                    "s"], check=True, timeout=60)
    assert layer.stat().st_size < 4096
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    p = subprocess.run([sys.executable, "-c", _SPARSE_CHILD, str(layer), str(scratch),
                        str(at)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["size"] == size and r["hole"] == 1 << 20
    assert bytes.fromhex(r["data"]) == b"\0\0\0payload!\0\0\0\0\0"
    assert bytes.fromhex(r["tail"]) == bytes(5)  # clipped at the end of the file
    assert r["used"] == 0 and r["wchar"] < 1 << 20 and r["maxrss_kb"] < 120_000, r


# --------------------------------------------------------------------- §5 device numbers

def test_device_numbers_beyond_c_int_do_not_break_the_tree(tmp_path: Path) -> None:
    """A tar device whose major/minor (base-256 numbers) exceed C int: the tree is built from
    both a local index and a zTOC, the numbers wrapped as the snapshotter's Mkdev does."""
    import gzip
    import io
    import tarfile

    from tree_oracle import TreeView, c_tree, mkdev

    from soci_native.layer import index_layer
    from soci_native.mount.tree import Entry, TreeBuilder

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, major, minor in (("big", 1 << 40, 3), ("neg", -1, -2), ("null", 1, 3)):
            ti = tarfile.TarInfo(name)
            ti.type, ti.devmajor, ti.devminor = tarfile.CHRTYPE, major, minor
            tf.addfile(ti)
        ti = tarfile.TarInfo("pad")
        ti.size = 20000
        tf.addfile(ti, io.BytesIO(b"x" * 20000))
    layer = tmp_path / "dev.tar.gz"
    layer.write_bytes(gzip.compress(buf.getvalue()))
    ix = index_layer(str(layer), 1 << 20, entries=True)
    assert {e.name: e.devmajor for e in ix.entries}["big"] == 1 << 40
    local = c_tree([[Entry.from_tar(e) for e in ix.entries]])
    b = TreeBuilder()
    b.add_ztoc(ztoc.build(str(layer), span_size=1 << 20)[1])
    fromtoc = TreeView(b.finish())
    for tree in (local, fromtoc):
        assert tree.get("/big").rdev == mkdev(1 << 40, 3) == 3  # the high bits wrap away
        assert tree.get("/neg").rdev == mkdev(0xFFFFFFFF, 0xFFFFFFFE)
        assert tree.get("/null").rdev == os.makedev(1, 3)


# ------------------------------------------------- §2 one huge span, through a real mount

def _bomb_image(tmp: Path, file_size: int) -> Path:
    """An OCI layout (hand-written JSON) whose one layer is :func:`hl.one_block_layer`."""
    import gzip
    import hashlib

    import img_build as ib

    lay = tmp / "bomb-layout"
    lay.mkdir()
    blob = tmp / "bomb.tar.gz"
    hl.one_block_layer(blob, file_size)
    data = blob.read_bytes()
    diff = hashlib.sha256()
    with gzip.open(blob) as g:
        while chunk := g.read(1 << 20):
            diff.update(chunk)
    config = json.dumps({"architecture": os.uname().machine.replace("x86_64", "amd64")
                         .replace("aarch64", "arm64"), "os": "linux",
                         "rootfs": {"type": "layers",
                                    "diff_ids": ["sha256:" + diff.hexdigest()]}}).encode()
    ib.put_blob(lay, data)
    ib.put_blob(lay, config)
    manifest = json.dumps({"schemaVersion": 2,
                           "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": ib.desc("application/vnd.oci.image.config.v1+json", config),
                           "layers": [ib.desc("application/vnd.oci.image.layer.v1.tar+gzip",
                                              data)]}).encode()
    ib.put_blob(lay, manifest)
    (lay / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (lay / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        ib.desc("application/vnd.oci.image.manifest.v1+json", manifest,
                annotations={"org.opencontainers.image.ref.name": "t"})]}))
    return lay


def test_one_huge_span_through_a_mount(tmp_path: Path) -> None:
    """The issue's replay end to end: a layer that is one deflate block of zeros, mounted
    with a small cache; reading 1 byte and then 32 MiB keeps the mount process small and
    writes nothing to the cache."""
    import mnt_image as mi

    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI: needs /dev/fuse and fusermount3")
        pytest.skip("needs /dev/fuse and fusermount3")
    lay = _bomb_image(tmp_path, 256 << 20)
    root, cache, mp = tmp_path / "store", tmp_path / "cache", tmp_path / "mnt"
    mp.mkdir()
    mi.cli("create", f"oci:{lay}:t", "--min-layer-size", "0", "--span-size", "1048576",
           root=root)
    mi.mount_cmd(f"oci:{lay}:t", str(mp), "--cache-dir", str(cache), "--cache-size", "32M",
                 root=root)
    try:
        with open(mp / "zeros.bin", "rb", buffering=0) as f:
            assert f.read(1) == b"\0"
            got = 0
            while got < 32 << 20:
                chunk = f.read(1 << 20)
                assert chunk.count(0) == len(chunk) > 0
                got += len(chunk)
        s = mi.stats(mp)
        (layer,) = s["layers"]
        assert layer["mode"] == "lazy" and layer["spans_total"] == 1 and layer["errors"] == 0
        assert layer["inflate_ratio"] == 1.0
        assert layer["bytes_inflated"] < 40 << 20  # what was read, plus the kernel's readahead
        with open(f"/proc/{s['pid']}/status") as st:
            hwm = next(int(x.split()[1]) for x in st if x.startswith("VmHWM:"))
        assert hwm < 150_000, hwm  # the mount daemon, interpreter and libfuse included
        assert s["cache_bytes"] == 0
        assert sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()) == 0
    finally:
        mi.umount_cmd(mp, root)
        mi.force_unmount(mp)
