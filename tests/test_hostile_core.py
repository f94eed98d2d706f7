"""Hostile layers and zTOCs against the C core and the builder (issue 8): each test replays an
attack at a size where the old code took minutes or gigabytes, in a subprocess whose peak
memory is measured, and checks the results with independent oracles (gzip, tarfile, the
`flatbuffers` package). Timeouts are generous guards, not measurements."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import hostile as H
import layers as L
import pytest

import soci_native as sn
from soci_native import ztoc
from soci_native.layer import checkpoint_table

MiB = 1 << 20
ROOT = Path(__file__).resolve().parent.parent
# a Python with soci_native imported is ~20 MiB; each attack used to take hundreds of MiB+
RSS_LIMIT = 80 * MiB


# Peak memory of the child's own address space: VmHWM in /proc (ru_maxrss would include the
# pytest process the child was forked from).
_HWM = """
def _vm_hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
import atexit, sys as _s
atexit.register(lambda: _s.stderr.write("\\nVmHWM=%d\\n" % _vm_hwm()))
"""


def _hwm(stderr: str) -> int:
    return int(stderr.rsplit("VmHWM=", 1)[1].split()[0])


def py_measured(code: str, *argv: str, timeout: float = 60) -> tuple[dict, int]:
    """Runs Python ``code`` (which prints one JSON line) in a fresh interpreter; returns the
    parsed JSON and the child's peak RSS in bytes."""
    p = subprocess.run([sys.executable, "-c", _HWM + textwrap.dedent(code), *argv], cwd=ROOT,
                       capture_output=True, text=True, timeout=timeout,
                       env=dict(os.environ, PYTHONPATH=str(ROOT / "tests")))
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1]), _hwm(p.stderr)


# ---------------------------------------------------------------- empty gzip members

def test_empty_members_give_no_ztoc_in_flat_memory(tmp_path: Path) -> None:
    # 100,000 empty members (2 MB): the old indexer kept a 32 KiB window per member and wrote
    # a 3.29 GB zTOC (21.7 s, 10.6 GB); now one checkpoint, no zTOC, the reason given.
    tail = L.finish([L.file_member(b"hello.txt", b"hello, world\n" * 100)])
    layer = tmp_path / "empty-members.gz"
    layer.write_bytes(H.empty_members_layer(100_000, tail))
    r, rss = py_measured("""
        import json, sys
        import soci_native as sn
        ix = sn.index_layer(sys.argv[1], build_tool="t", entries=True)
        e = ix.entries[0]
        data = sn.extract(sys.argv[1], ix.checkpoints, e.offset, e.size)
        print(json.dumps({"ztoc": ix.ztoc is None, "why": ix.ztoc_error, "spans": ix.num_spans,
                          "cps": len(ix.checkpoints), "names": [x.name for x in ix.entries],
                          "data": data.decode(), "digest": ix.blob_digest}))
        """, str(layer))
    assert r["ztoc"] and "non-monotonic" in r["why"] and "100000" in r["why"]
    assert r["spans"] == 1 and r["cps"] == 12 + sn._core.CHECKPOINT_SIZE
    # the index still reads the layer (mount uses it for layers without a zTOC)
    assert r["names"] == ["hello.txt"] and r["data"] == "hello, world\n" * 100
    assert r["digest"] == "sha256:" + hashlib.sha256(layer.read_bytes()).hexdigest()
    assert rss < RSS_LIMIT, f"peak RSS {rss / MiB:.0f} MiB"


def test_empty_members_after_output_keep_the_ztoc() -> None:
    # an empty member after some output is no duplicate checkpoint: the zTOC is built
    tar = L.finish([L.file_member(b"a", L.text(300_000))])
    blob = gzip.compress(tar[:5000], mtime=0) + gzip.compress(b"", mtime=0) * 50 + gzip.compress(
        tar[5000:], mtime=0)
    ix = sn.index_layer(_bio(blob), 64 << 10, build_tool="t")
    assert ix.ztoc is not None, ix.ztoc_error
    cps = checkpoint_table(ix.checkpoints)
    assert [o for _, o, _ in cps] == sorted({o for _, o, _ in cps})  # strictly increasing


def test_sync_flush_before_data_reads_but_gets_no_ztoc() -> None:
    # an honest writer's empty block up front (zlib Z_SYNC_FLUSH first): same rule, no zTOC
    tar = L.finish([L.file_member(b"f", L.text(200_000))])
    ix = sn.index_layer(_bio(L.gz_zlib(tar, flush_first=True)), 32 << 10, build_tool="t")
    assert ix.ztoc is None and "non-monotonic" in (ix.ztoc_error or "")
    e = ix.entries[0]
    assert sn.extract(_bio(L.gz_zlib(tar, flush_first=True)), ix.checkpoints, e.offset,
                      e.size) == tar[e.offset:e.offset + e.size]


def _bio(b: bytes):  # type: ignore[no-untyped-def]
    import io
    return io.BytesIO(b)


# ---------------------------------------------------------------- PAX records

def test_pax_header_with_87k_keys_is_linear(tmp_path: Path) -> None:
    # one ~700 KB PAX header with 87,000 keys took 31-47 s (quadratic pax_store)
    tar, want = H.pax_many_keys_tar(87_000, dup_every=7)
    path = tmp_path / "pax.tar"
    path.write_bytes(tar)
    r, rss = py_measured("""
        import json, sys
        import soci_native as sn
        ix = sn.index_layer(sys.argv[1], build_tool="t")
        print(json.dumps({"pax": ix.entries[0].pax, "ztoc": ix.ztoc is not None}))
        """, str(path), timeout=30)
    assert r["pax"] == want  # one per key, the last value of a repeated key wins (Go's map)
    assert r["ztoc"]
    z = ztoc.from_bytes(sn.index_layer(str(path), build_tool="t").ztoc or b"")
    assert list(z.files[0].xattrs) == sorted(want) and z.files[0].xattrs == want
    assert rss < RSS_LIMIT


# ---------------------------------------------------------------- zTOC decoding

def test_ztoc_with_shared_strings_is_refused_in_bounded_memory(tmp_path: Path) -> None:
    # 20,000 entries sharing one 100 KB name: ~0.7 MB that decoded to 2 GB of Python strings
    raw = H.ztoc_bytes(files=20_000, name_len=100_000)
    path = tmp_path / "shared.ztoc"
    path.write_bytes(raw)
    r, rss = py_measured("""
        import json, sys
        from soci_native import ztoc
        from soci_native.mount.tree import TreeBuilder
        raw = open(sys.argv[1], "rb").read()
        out = {}
        for name, fn in (("parse", lambda: ztoc.from_bytes(raw)),
                         ("find", lambda: ztoc.find_file(raw, "x")),
                         ("names", lambda: ztoc.name_lookup(raw)("x")),
                         ("mount tree", lambda: TreeBuilder().add_ztoc(raw))):
            try:
                fn()
                out[name] = "accepted"
            except ztoc.ZtocError as e:
                out[name] = str(e)
        print(json.dumps(out))
        """, str(path))
    for what in ("parse", "find", "names", "mount tree"):
        assert "decode to more than" in r[what], r
    assert rss < RSS_LIMIT
    # without the files it is fine (digests and checkpoints only)
    assert ztoc.from_bytes(raw, files=False).files == []


def test_ztoc_decode_bound_admits_honest_ztocs(catalog) -> None:  # type: ignore[no-untyped-def]
    # the same entries, each with its own strings (as every writer makes them): accepted;
    # and real layers' zTOCs, xattrs included
    z = ztoc.from_bytes(H.ztoc_bytes(files=300, name_len=2000, shared=False, xattrs=3))
    assert len(z.files) == 300 and all(len(f.name) == 2000 and len(f.xattrs) == 3
                                       for f in z.files)
    for name in ("edge-pax.gz", "stdlib-pax.gz6"):
        layer = L.need(catalog, name)
        ix = sn.index_layer(_bio(layer.blob), 1 << 20, build_tool="t")
        assert ix.ztoc is not None
        assert len(ztoc.from_bytes(ix.ztoc).files) == ix.num_entries


def test_negative_compressed_size_is_a_clear_error() -> None:
    raw = H.ztoc_bytes(files=1, compressed_size=-5)
    with pytest.raises(ztoc.ZtocError, match="negative archive size"):
        ztoc.from_bytes(raw)
    assert ztoc.from_bytes(H.ztoc_bytes(files=1)).compressed_archive_size == 100


# ---------------------------------------------------------------- hard links with a size

def test_hardlink_carrying_a_size_gets_no_ztoc() -> None:
    # Go keeps a hard link header's size; readers (the reference's and our mount) derive the
    # next header offset from it and reject the zTOC: the builder makes none
    ix = sn.index_layer(_bio(H.hardlink_with_size_tar(4096)), build_tool="t")
    assert ix.ztoc is None and "hardlink" in (ix.ztoc_error or "")
    assert [e.size for e in ix.entries] == [100, 4096, 100]
    # a size that stays inside the link's own 512-byte block is what readers accept
    ok = sn.index_layer(_bio(H.hardlink_with_size_tar(200)), build_tool="t")
    assert ok.ztoc is not None
    ztoc.sorted_files(ztoc.from_bytes(ok.ztoc))  # what mount checks


# ---------------------------------------------------------------- create: blob size

def _layout(d: Path, layer: bytes, layer_size: int | None = None) -> Path:
    """A one-layer OCI layout written by hand; ``layer_size`` overrides the descriptor."""
    (d / "blobs" / "sha256").mkdir(parents=True)

    def put(data: bytes) -> dict:
        dg = hashlib.sha256(data).hexdigest()
        (d / "blobs" / "sha256" / dg).write_bytes(data)
        return {"digest": "sha256:" + dg, "size": len(data)}

    cfg = put(json.dumps({"architecture": "amd64", "os": "linux",
                          "rootfs": {"type": "layers", "diff_ids": []}}).encode())
    ld = put(layer)
    if layer_size is not None:
        ld["size"] = layer_size
    man = put(json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **cfg},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **ld}],
    }).encode())
    (d / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (d / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", **man,
        "annotations": {"org.opencontainers.image.ref.name": "t"}}]}))
    return d


def _create(layout: Path, store: Path, *extra: str) -> tuple[int, str, str, int]:
    """``soci-native create`` on a layout: exit code, stdout, stderr, peak RSS."""
    code = "from soci_native.cli import main; main()"
    args = [sys.executable, "-c", _HWM + code, "create", f"oci:{layout}:t",
            "--min-layer-size", "0", *extra]
    p = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, SOCI_NATIVE_ROOT=str(store)))
    err, _, rest = p.stderr.rpartition("\nVmHWM=")
    err = err.rstrip("\n") + "\n" if err else p.stderr
    return p.returncode, p.stdout, err, int(rest.split()[0])


def test_create_skips_an_empty_members_layer_with_the_reason(tmp_path: Path) -> None:
    tar = L.finish([L.file_member(b"x", b"x" * 1000)])
    lay = _layout(tmp_path / "img", H.empty_members_layer(100_000, tar))
    rc, out, err, rss = _create(lay, tmp_path / "store", "--json")
    assert rc == 1 and "every layer was skipped" in err, err  # the only layer: no index
    assert "Traceback" not in err and rss < RSS_LIMIT, (err, rss)
    lay2 = _layout(tmp_path / "img2", H.empty_members_layer(100_000, tar))
    (tmp_path / "store2").mkdir()
    # through the library: the layer result says why
    from soci_native.build import BuildOptions, build_layer
    from soci_native.images import open_image, resolve
    from soci_native.store import Store
    with open_image(f"oci:{lay2}:t") as src:
        img = resolve(src)[0]
        res = build_layer(src, Store(tmp_path / "store2"), img.layers[0],
                          BuildOptions(min_layer_size=0))
    assert res.status == "skipped" and "non-monotonic" in res.reason


def test_create_refuses_a_blob_whose_size_differs_from_its_descriptor(tmp_path: Path) -> None:
    tar = L.finish([L.file_member(b"x", L.text(50_000))])
    blob = gzip.compress(tar, mtime=0)
    for claimed in (len(blob) - 1, len(blob) + 1000):
        lay = _layout(tmp_path / f"img{claimed}", blob, layer_size=claimed)
        rc, out, err, _ = _create(lay, tmp_path / "store")
        assert rc == 1 and err.startswith("soci-native: error: ") and err.count("\n") == 1, err
        assert str(claimed) in err and str(len(blob)) in err, err
