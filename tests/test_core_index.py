"""The indexing core (soci_native.index_layer / _core.Indexer) against independent oracles:
tarfile (+ a raw look at extension headers) for entries, the pure-Python deflate walker for
checkpoint placement, Python's zlib for windows and spans, hashlib for digests, struct and a
hand-written FlatBuffers reader for the blobs. See docs/core-api.md, soci-format.md 1-2."""

import hashlib
import io
import random
import struct
from pathlib import Path

import deflate_oracle as D
import layers as L
import pytest

import soci_native as sn
from soci_native import _core

CP_SIZE = 8 + 8 + 1 + 32768
ENTRY_ATTRS = ("name", "type", "typeflag", "header_offset", "offset", "size", "linkname", "mode",
               "uid", "gid", "uname", "gname", "mtime", "mtime_ns", "devmajor", "devminor",
               "pax", "sparse")
GLOBAL_ATTRS = ("name", "type", "typeflag", "header_offset", "offset", "size", "pax", "sparse")


# ---------------------------------------------------------------------------------------------
# helpers


def parse_blob(blob: bytes):
    """soci-format.md 1.2 v2 blob -> (count, span_size, [(in, out, bits)], [window])."""
    count, span_size = struct.unpack_from("<iq", blob, 0)
    cps, windows = [], []
    for i in range(count):
        off = 12 + i * CP_SIZE
        cps.append(struct.unpack_from("<qqB", blob, off))
        windows.append(blob[off + 17:off + CP_SIZE])
    return count, span_size, cps, windows


class FlatTable:
    """Just enough FlatBuffers to read a root table's scalar fields, with bounds checks."""

    def __init__(self, buf: bytes):
        assert len(buf) >= 8, "buffer too small"
        self.buf = buf
        (self.pos,) = struct.unpack_from("<I", buf, 0)
        assert 4 <= self.pos <= len(buf) - 4, "root offset out of range"
        (soff,) = struct.unpack_from("<i", buf, self.pos)
        self.vt = self.pos - soff
        assert 0 <= self.vt <= len(buf) - 4, "vtable out of range"
        self.vt_len, self.tbl_len = struct.unpack_from("<HH", buf, self.vt)
        assert self.vt_len >= 4 and self.vt_len % 2 == 0
        assert self.vt + self.vt_len <= len(buf)
        assert self.pos + self.tbl_len <= len(buf)

    def scalar(self, slot: int, fmt: str, default=0):
        if 4 + 2 * slot >= self.vt_len:
            return default
        (o,) = struct.unpack_from("<H", self.buf, self.vt + 4 + 2 * slot)
        if o == 0:
            return default
        assert o + struct.calcsize(fmt) <= self.tbl_len, "field outside its table"
        return struct.unpack_from("<" + fmt, self.buf, self.pos + o)[0]


def sha(b: bytes) -> str:
    return "sha256:" + hashlib.sha256(b).hexdigest()


def entry_dict(e, attrs=ENTRY_ATTRS):
    return {k: getattr(e, k) for k in attrs}


def idx_summary(idx):
    return dict(compression=idx.compression, span_size=idx.span_size,
                compressed_size=idx.compressed_size, uncompressed_size=idx.uncompressed_size,
                checkpoints=idx.checkpoints, span_digests=list(idx.span_digests),
                num_spans=idx.num_spans, entries=[entry_dict(e) for e in idx.entries])


def check_format_error(exc_info):
    assert isinstance(exc_info.value, ValueError)
    assert str(exc_info.value).strip(), "error message must not be empty"


GZIP_SPANS = L.layer_span_params(L.GZIP)
PLAIN_SPANS = L.layer_span_params(L.PLAIN)


# ---------------------------------------------------------------------------------------------
# entries


@pytest.mark.parametrize("name", L.ALL)
def test_entries_match_tarfile(indexed, name):
    layer, idx = indexed(name)
    expected = L.expected_entries(layer.tar)
    got = idx.entries
    assert [e.name for e in got] == [x["name"] for x in expected]
    for e, x in zip(got, expected, strict=True):
        attrs = GLOBAL_ATTRS if x["global_header"] else ENTRY_ATTRS
        want = {k: x[k] for k in attrs}
        assert entry_dict(e, attrs) == want, x["name"]


@pytest.mark.parametrize("name", L.ALL)
def test_entry_data_offsets_hold_the_file_bytes(indexed, name):
    """e.offset/e.size point at tarfile's bytes for each regular file; header_offset is
    512-aligned and before offset."""
    layer, idx = indexed(name)
    by_name = {x["name"]: x for x in L.expected_entries(layer.tar) if not x["global_header"]}
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(layer.tar)) as tf:
        for e in idx.entries:
            assert e.header_offset % 512 == 0
            assert e.header_offset < e.offset
            if e.type == "pax_global":
                continue
            assert e.offset % 512 == 0
            if e.type == "reg":
                ti = by_name[e.name]["tarinfo"]
                assert layer.tar[e.offset:e.offset + e.size] == tf.extractfile(ti).read()


def test_entry_fields_tuple_order(indexed):
    """_core.ENTRY_FIELDS names the tuple positions of Indexer.finish()['entries'], and they
    agree with the TarEntry attributes."""
    layer, idx = indexed("edge-pax.gz")
    ind = _core.Indexer(layer.spans[0])
    ind.feed(layer.blob)
    res = ind.finish()
    fields = list(_core.ENTRY_FIELDS)
    for attr in ("name", "typeflag", "offset", "size", "header_offset", "pax"):
        assert attr in fields
    assert len(res["entries"]) == len(idx.entries)
    for tup, e in zip(res["entries"], idx.entries, strict=True):
        assert len(tup) == len(fields)
        for k, v in zip(fields, tup, strict=True):
            if k == "pax":                   # raw (key, value) pairs or a dict
                v = dict(v)
            if hasattr(e, k):
                assert getattr(e, k) == v, k


def test_specific_edge_entries(indexed):
    """A few spelled-out expectations (independent of the tarfile-based oracle)."""
    _, idx = indexed("edge-pax.gz")
    ents = {e.name: e for e in idx.entries}
    assert ents["./"].type == "dir" and ents["./etc/"].type == "dir"
    assert ents["times/frac9"].mtime == 1_700_000_000
    assert ents["times/frac9"].mtime_ns == 123_456_789
    assert ents["times/frac1"].mtime_ns == 500_000_000
    assert ents["times/frac12"].mtime_ns == 123_456_789
    assert ents["times/old"].mtime == -1000
    assert ents["xattr/file"].pax["SCHILY.xattr.user.foo"] == "bar"
    assert ents["links/longsym"].linkname == "target/" + "t" * 200
    assert ents["links/hard"].type == "hardlink" and ents["links/hard"].linkname == "./etc/hosts"
    assert (ents["dev/null"].type, ents["dev/null"].devmajor, ents["dev/null"].devminor) == \
        ("char", 1, 3)
    assert ents["dev/sda"].type == "block" and ents["run/fifo"].type == "fifo"
    assert ents["usr/lib/.wh..wh..opq"].size == 0
    assert ents["owners/bigid"].uid == 8 ** 7 + 5 and ents["owners/bigid"].gid == 3_000_000
    assert ents["etc/b513"].mode == 0o4755 and ents["tmp/"].mode == 0o1777
    assert "unicode/ünïcödé-文件.txt" in ents
    assert ents["pax/custom"].pax == {"comment": "hello world", "SOCI.empty": ""}
    assert not any(e.sparse for e in idx.entries)
    _, idx = indexed("edge-gnu.tar")
    ents = {e.name: e for e in idx.entries}
    assert ents["times/old"].mtime == -1000
    assert ents["owners/bigid"].uid == 8 ** 7 + 5
    assert ents["links/longhard"].linkname.startswith("long/n")
    assert all(e.pax == {} for e in idx.entries)      # GNU long names produce no PAX records
    _, idx = indexed("v7.tar")
    ents = {e.name: e for e in idx.entries}
    assert ents["v7/areg-ustar"].typeflag == "0" and ents["v7/areg-ustar"].type == "reg"
    assert ents["v7/areg-v7"].typeflag == "0" and ents["v7/areg-v7"].uname == ""
    assert ents["v7/olddir/"].typeflag == "5"
    assert ents["v7/olddir/"].type == "dir"
    assert ents["v7/b256size"].size == len(b"size in base 256\n")
    assert ents["v7/contig"].type == "reg" and ents["v7/contig"].typeflag == "7"
    assert ents["v7/spaces"].size == 6 and ents["v7/spaces"].mode == 0o644
    _, idx = indexed("global.gz")
    g = [e for e in idx.entries if e.typeflag == "g"]
    assert [e.type for e in g] == ["pax_global", "pax_global"]
    assert g[0].pax == {"comment": "first global", "SOCI.test": "g1"}
    assert g[0].header_offset == 0
    # global records are not merged into later entries (Go's behaviour)
    assert all("comment" not in e.pax for e in idx.entries if e.typeflag != "g")


# ---------------------------------------------------------------------------------------------
# sizes and common fields


@pytest.mark.parametrize("name", L.ALL)
def test_sizes_and_compression(indexed, name):
    layer, idx = indexed(name)
    assert idx.compression == layer.compression
    assert idx.compressed_size == len(layer.blob)
    assert idx.uncompressed_size == L.expected_uncompressed_size(layer.tar)
    assert idx.span_size == layer.spans[0]
    assert idx.num_spans == len(idx.span_digests)
    assert all(d.startswith("sha256:") and len(d) == 71 for d in idx.span_digests)


@pytest.mark.parametrize("name, size", [("noeof.tar", 3072), ("noeof.gz", 3072),
                                        ("onezero.tar", 3584), ("onezero.gz", 3584),
                                        ("empty.tar", 1024), ("empty.gz", 1024),
                                        ("zeros1024.gz", 1024)])
def test_uncompressed_size_spelled_out(indexed, name, size):
    """soci-format.md 2.4 on hand-made endings: zero blocks counted only when present, the
    10 KiB record padding never."""
    _, idx = indexed(name)
    assert idx.uncompressed_size == size


def test_empty_archives_have_no_entries(indexed):
    for name in ("empty.tar", "empty.gz", "zeros1024.gz"):
        _, idx = indexed(name)
        assert idx.entries == [] or list(idx.entries) == []


# ---------------------------------------------------------------------------------------------
# gzip checkpoint blob


@pytest.mark.parametrize("name, span", GZIP_SPANS)
def test_gzip_checkpoints_match_oracle(catalog, indexed, name, span):
    layer, idx = indexed(name, span)
    blob = idx.checkpoints
    assert isinstance(blob, bytes)
    count, span_size, cps, _ = parse_blob(blob)
    assert span_size == span
    assert len(blob) == 12 + count * CP_SIZE
    walk = catalog.walk(name)
    assert cps == D.expected_checkpoints(walk.boundaries, span)
    assert cps[0] == (walk.members[0].header_end, 0, 0)
    assert idx.num_spans == count == len(idx.span_digests)


@pytest.mark.parametrize("name, span", GZIP_SPANS)
def test_gzip_windows(indexed, name, span):
    layer, idx = indexed(name, span)
    _, _, cps, windows = parse_blob(idx.checkpoints)
    for (cin, out, bits), w in zip(cps, windows, strict=True):
        assert w == D.expected_window(layer.tar, out), (cin, out, bits)


@pytest.mark.parametrize("name, span", GZIP_SPANS)
def test_gzip_spans_inflate_alone(indexed, name, span):
    """Each span, from its checkpoint (bits primed, window as dictionary) and only its own
    compressed bytes, inflates with Python's zlib to exactly its part of the tar stream."""
    layer, idx = indexed(name, span)
    _, _, cps, windows = parse_blob(idx.checkpoints)
    members = D.zlib_members(layer.blob)
    ranges = D.span_ranges(cps, len(layer.blob))
    for i, ((cin, out, bits), w, (_start, end)) in enumerate(
            zip(cps, windows, ranges, strict=True)):
        got = D.zlib_inflate_from(layer.blob, cin, bits, w, end, members)
        stop = cps[i + 1][1] if i + 1 < len(cps) else len(layer.tar)
        assert got == layer.tar[out:stop], f"span {i} of {len(cps)}: {(cin, out, bits)}"


@pytest.mark.parametrize("name, span", GZIP_SPANS)
def test_gzip_span_digests(catalog, indexed, name, span):
    layer, idx = indexed(name, span)
    cps = D.expected_checkpoints(catalog.walk(name).boundaries, span)
    ranges = D.span_ranges(cps, len(layer.blob))
    assert idx.span_digests == [sha(layer.blob[s:e]) for s, e in ranges]
    # the header bytes belong to no span; the last span runs to the end (trailer included)
    assert ranges[0][0] == catalog.walk(name).members[0].header_end
    assert ranges[-1][1] == len(layer.blob)


@pytest.mark.parametrize("name", ["edge-pax.flush", "stdlib-pax.memlevel1"])
def test_span_size_extremes(catalog, name):
    """A span size larger than the layer gives one checkpoint; span size 1 a checkpoint at
    every block boundary that produced output."""
    layer = catalog.get(name)
    walk = catalog.walk(name)
    for span in (1 << 40, len(layer.tar), 1):
        if span == 1 and len(walk.boundaries) > 500:
            continue
        idx = sn.index_layer(str(layer.path), span_size=span)
        count, span_size, cps, _ = parse_blob(idx.checkpoints)
        assert span_size == span
        assert cps == D.expected_checkpoints(walk.boundaries, span)
        if span >= len(layer.tar):
            assert count == 1
        else:
            assert count > 50


# ---------------------------------------------------------------------------------------------
# plain tar layers: TarZinfo


@pytest.mark.parametrize("name, span", PLAIN_SPANS)
def test_tar_zinfo(indexed, name, span):
    layer, idx = indexed(name, span)
    assert idx.compression == "uncompressed"
    t = FlatTable(idx.checkpoints)
    assert t.scalar(0, "i") == 2
    assert t.scalar(1, "q") == span
    assert t.scalar(2, "q") == len(layer.blob)
    n = -(-len(layer.blob) // span)
    assert idx.num_spans == n == len(idx.span_digests)
    assert idx.span_digests == [sha(layer.blob[i * span:(i + 1) * span]) for i in range(n)]


# ---------------------------------------------------------------------------------------------
# feeding, sources


def _index_chunks(blob: bytes, span: int, chunk: int, mode="auto"):
    ind = _core.Indexer(span, mode)
    for i in range(0, len(blob), chunk):
        ind.feed(blob[i:i + chunk])
    return ind.finish()


def _index_file(path, span, mode="auto"):
    return _core.index_file(str(path), span, mode)


CHUNK_CASES = ([(n, c) for n in ("edge-pax.gz", "global.gz", "v7.tar", "noeof.gz",
                                 "edge-pax.flush") for c in (1, 7, 511, 4096, 1 << 20)]
               + [(n, c) for n in ("stdlib-pax.multi", "bigfile.tar", "stdlib-pax.gz6")
                  for c in (511, 4096, 65536 + 3, 1 << 20)])


@pytest.mark.parametrize("name, chunk", CHUNK_CASES)
def test_chunked_feeding_is_identical(catalog, name, chunk):
    layer = catalog.get(name)
    span = layer.spans[0]
    ref = _index_file(layer.path, span)
    assert set(ref) >= {"compression", "span_size", "compressed_size", "uncompressed_size",
                        "checkpoints", "span_digests", "entries"}
    got = _index_chunks(layer.blob, span, chunk)
    assert got == ref


def test_feed_accepts_any_buffer(catalog):
    """feed(buffer): bytes, bytearray and memoryview chunks give the same result."""
    layer = catalog.get("edge-pax.gz")
    ref = _index_chunks(layer.blob, layer.spans[0], 5000)
    for conv in (bytearray, lambda b: memoryview(b), lambda b: memoryview(bytearray(b))):
        ind = _core.Indexer(layer.spans[0])
        for i in range(0, len(layer.blob), 5000):
            ind.feed(conv(layer.blob[i:i + 5000]))
        assert ind.finish() == ref


@pytest.mark.parametrize("name", ["edge-pax.gz", "stdlib-pax.multi", "v7.tar", "global.gz"])
def test_path_fileobj_and_pathlike_agree(catalog, name):
    layer = catalog.get(name)
    span = layer.spans[0]
    by_str = idx_summary(sn.index_layer(str(layer.path), span_size=span))
    by_path = idx_summary(sn.index_layer(Path(layer.path), span_size=span))
    with open(layer.path, "rb") as f:
        by_file = idx_summary(sn.index_layer(f, span_size=span))
    by_bytesio = idx_summary(sn.index_layer(io.BytesIO(layer.blob), span_size=span))
    inline = idx_summary(sn.index_layer(str(layer.path), span_size=span, hash_thread=False))
    assert by_str == by_path == by_file == by_bytesio == inline  # hash_thread: same digests
    core = _index_file(layer.path, span)
    if layer.compression == "gzip":    # for tar layers the wrapper builds the TarZinfo
        assert core["checkpoints"] == by_str["checkpoints"]
    assert core["span_digests"] == by_str["span_digests"]
    assert core["uncompressed_size"] == by_str["uncompressed_size"]


@pytest.mark.parametrize("name", ["edge-pax.gz", "edge-pax.tar"])
def test_explicit_modes(catalog, name):
    layer = catalog.get(name)
    span = layer.spans[0]
    auto = _index_file(layer.path, span, "auto")
    right = "gzip" if layer.compression == "gzip" else "tar"
    wrong = "tar" if right == "gzip" else "gzip"
    assert _index_file(layer.path, span, right) == auto
    assert _index_chunks(layer.blob, span, 4096, right) == auto
    with pytest.raises(ValueError) as ei:
        _index_file(layer.path, span, wrong)
    check_format_error(ei)


# ---------------------------------------------------------------------------------------------
# hostile input: must raise FormatError (a ValueError) with a message, never crash


def _expect_format_error(data: bytes, span: int = 64 * 1024):
    with pytest.raises(sn.FormatError) as ei:
        sn.index_layer(io.BytesIO(data), span_size=span)
    check_format_error(ei)
    return ei


def _expect_core_error(data: bytes, span: int = 64 * 1024, mode: str = "auto"):
    ind = _core.Indexer(span, mode)
    with pytest.raises(ValueError) as ei:
        ind.feed(data)
        ind.finish()
    check_format_error(ei)


def test_format_error_is_a_value_error():
    assert issubclass(sn.FormatError, ValueError)


def test_truncated_gzip_every_cut(catalog):
    layer = catalog.get("global.gz")
    for cut in range(2, len(layer.blob)):
        _expect_core_error(layer.blob[:cut], mode="auto")
    for cut in (2, 9, 10, 11, len(layer.blob) // 2, len(layer.blob) - 8, len(layer.blob) - 1):
        _expect_format_error(layer.blob[:cut])


def test_truncated_gzip_sampled_cuts(catalog):
    rnd = random.Random(17)
    for name in ("edge-pax.gz", "stdlib-pax.allflags", "stdlib-pax.multi", "bigfile.gz"):
        layer = catalog.get(name)
        member_ends = {m.end for m in catalog.walk(name).members}
        cuts = {len(layer.blob) - k for k in range(1, 9)} | set(range(2, 40))
        cuts |= {rnd.randrange(2, len(layer.blob)) for _ in range(12)}
        for cut in sorted(cuts - member_ends):
            _expect_core_error(layer.blob[:cut])


def test_flipped_deflate_bytes(catalog):
    layer = catalog.get("edge-pax.gz")
    m = catalog.walk("edge-pax.gz").members[0]
    rnd = random.Random(99)
    positions = sorted({rnd.randrange(m.header_end, m.deflate_end) for _ in range(60)})
    for pos in positions + [m.header_end, m.deflate_end - 1]:
        bad = bytearray(layer.blob)
        bad[pos] ^= 0xFF
        _expect_core_error(bytes(bad))
    bad = bytearray(layer.blob)
    bad[positions[len(positions) // 2]] ^= 0xFF
    _expect_format_error(bytes(bad))


def test_bad_gzip_headers():
    tar = L.global_tar()
    gz = L.gz_module(tar, 6)
    _expect_format_error(b"\x1f\x8c" + gz[2:])                 # bad magic: not gzip, bad tar
    _expect_core_error(b"\x1f\x8c" + gz[2:], mode="gzip")
    _expect_core_error(b"\x1f\x8b\x07" + gz[3:])               # compression method 7
    for flag in (0x20, 0x40, 0x80):                            # reserved flag bits
        _expect_format_error(gz[:3] + bytes([flag]) + gz[4:])
    hc = L.gz_headers(tar, fname=b"x", comment=b"y", hcrc=True)
    hend = D.parse_gzip_header(hc, 0)
    bad = bytearray(hc)
    bad[hend - 1] ^= 0x55                                      # FHCRC mismatch
    _expect_format_error(bytes(bad))
    trunc = L.gz_headers(tar, fname=b"a-name-that-never-ends")
    _expect_core_error(trunc[:20])                             # header cut inside FNAME


def test_bad_trailers(catalog):
    gz = L.gz_module(L.global_tar(), 6)
    for pos in (len(gz) - 8, len(gz) - 5, len(gz) - 4, len(gz) - 1):   # CRC, then ISIZE
        bad = bytearray(gz)
        bad[pos] ^= 0x01
        _expect_format_error(bytes(bad))
    # a bad CRC in a middle member of a multi-member layer
    layer = catalog.get("bigfile.multi")
    m = catalog.walk("bigfile.multi").members[3]
    bad = bytearray(layer.blob)
    bad[m.deflate_end] ^= 0x80
    _expect_core_error(bytes(bad))
    bad = bytearray(layer.blob)
    bad[m.deflate_end + 4] ^= 0x01
    _expect_core_error(bytes(bad))


def _bad_tars():
    """(label, tar bytes) that Go's archive/tar rejects."""
    good1 = L.file_member(b"a.txt", b"alpha\n")
    good2 = L.file_member(b"b.txt", L.text(3000, 1))
    out = []
    h = bytearray(L.raw_header(b"c.txt", size=5))
    h[0] ^= 0x01                                           # checksum no longer matches
    out.append(("bad checksum later", L.finish([good1, bytes(h) + L.pad(b"gamma"), good2])))
    out.append(("bad checksum first", L.finish([bytes(h) + L.pad(b"gamma"), good1])))
    out.append(("size past end (huge octal)",
                L.finish([good1, L.raw_header(b"big", size=8 ** 11 - 1) + L.pad(b"x")])))
    out.append(("size past end (last entry, no eof)",
                b"".join([good1, L.raw_header(b"c", size=100_000) + L.pad(b"x" * 700)])))
    out.append(("absurd base-256 size",
                L.finish([good1, L.raw_header(b"c", size_field=b"\x80" + b"\xff" * 11) +
                          L.pad(b"x")])))
    out.append(("negative base-256 size",
                L.finish([good1, L.raw_header(b"c", size_field=b"\xff" * 12) + L.pad(b"x")])))
    out.append(("non-octal size",
                L.finish([good1, L.raw_header(b"c", size_field=b"0000000001x\0") +
                          L.pad(b"x")])))
    recs = {
        "length too large": b"99 path=foo\n",
        "length too small": b"5 path=foo\n",
        "length not a number": b"abc path=x\n",
        "length zero": b"0 path=x\n",
        "no equals sign": b"12 pathfoox\n",
        "no newline": b"12 path=foox",
    }
    for label, rec in recs.items():
        out.append((f"pax {label}", L.finish([good1, L.pax_member(rec),
                                              L.file_member(b"c", b"gamma"), good2])))
    return out


BAD_TARS = _bad_tars()


@pytest.mark.parametrize("label, tar", BAD_TARS, ids=[b[0] for b in BAD_TARS])
def test_hostile_tar_plain_and_gzip(label, tar):
    _expect_format_error(tar)
    _expect_format_error(L.gz_module(tar, 6))


def test_random_mutations_never_crash(catalog):
    """Seeded, bounded: mutated layers either index or raise FormatError."""
    rnd = random.Random(2024)
    sources = [catalog.get("global.gz").blob, catalog.get("v7.gz").blob,
               catalog.get("v7.tar").blob[:8192], catalog.get("global.tar").blob[:9216],
               catalog.get("edge-pax.gz").blob]
    outcomes = {"ok": 0, "error": 0}
    for trial in range(400):
        src = bytearray(sources[trial % len(sources)])
        for _ in range(rnd.choice((1, 1, 2, 3, 8))):
            pos = rnd.randrange(len(src))
            src[pos] = rnd.randrange(256)
        if rnd.random() < 0.2:
            del src[rnd.randrange(len(src)):]
        try:
            idx = sn.index_layer(io.BytesIO(bytes(src)), span_size=rnd.choice((1024, 65536)))
        except sn.FormatError as e:
            assert str(e).strip()
            outcomes["error"] += 1
        else:
            assert idx.uncompressed_size >= 0 and idx.num_spans == len(idx.span_digests)
            outcomes["ok"] += 1
    assert outcomes["error"] > 0


def test_threads_index_concurrently(catalog):
    """The core releases the GIL and shares no state between indexers: layers indexed on a
    thread pool give exactly the results of indexing them one by one."""
    from concurrent.futures import ThreadPoolExecutor

    import soci_native as sn

    names = [n for n in L.ALL if n.endswith(".gz")][:6]
    paths = [str(L.need(catalog, n).path) for n in names]
    one_by_one = [sn.index_layer(p, span_size=64 << 10) for p in paths]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda p: sn.index_layer(p, span_size=64 << 10), paths * 2))
    assert together == one_by_one * 2


@pytest.mark.parametrize("name", L.ALL)
def test_blob_digest_is_the_layer_sha256(indexed, name):
    """The whole blob is hashed in the same pass, so callers can check a layer's digest."""
    layer, idx = indexed(name)
    assert idx.blob_digest == "sha256:" + hashlib.sha256(layer.blob).hexdigest()


def test_zlib_wrapped_member_is_refused():
    """A zlib (RFC 1950) member among gzip members would give an index readers cannot use
    (its trailer is 4 bytes, not 8): the core refuses the layer instead of indexing it."""
    import gzip
    import zlib

    import soci_native as sn

    tar = L.stdlib_tar()
    for blob in (zlib.compress(tar[:5120]) + gzip.compress(tar[5120:]),
                 gzip.compress(tar[:5120]) + zlib.compress(tar[5120:])):
        ix = sn._core.Indexer(64 << 10, "gzip")
        with pytest.raises(sn.FormatError, match="compressed offset"):
            ix.feed(blob)
            ix.finish()


def test_entry_tuples_are_tar_entries():
    """TarEntry is made from the core's tuples as they are: the field orders must agree."""
    from soci_native.layer import TarEntry

    assert tuple(_core.ENTRY_FIELDS) == TarEntry._fields
