"""Self-tests of the test oracles (deflate walker, checkpoint rule, tar expectations) against
Python's zlib and tarfile. They do not touch soci_native."""

import gzip
import io
import random
import struct
import tarfile
import zlib

import deflate_oracle as D
import layers as L
import pytest

# ---------------------------------------------------------------------------------------------
# the walker against zlib


@pytest.mark.parametrize("name", L.GZIP)
def test_walker_output_equals_zlib(catalog, name):
    layer = L.need(catalog, name)
    walk = catalog.walk(name)
    assert walk.output == gzip.decompress(layer.blob)
    assert walk.output == layer.tar
    # members found by the walker == members found by zlib alone
    assert [(m.start, m.end) for m in walk.members] == D.zlib_members(layer.blob)
    assert walk.members[-1].end == len(layer.blob)
    # boundaries are in stream order, exactly one final block per member
    assert [b.in_ for b in walk.boundaries] == sorted(b.in_ for b in walk.boundaries)
    assert sum(b.last for b in walk.boundaries) == len(walk.members)
    assert all(0 <= b.bits <= 7 for b in walk.boundaries)
    assert walk.boundaries[0] == D.Boundary(walk.members[0].header_end, 0, 0, False, "header", 0)


@pytest.mark.parametrize("name", ["stdlib-pax.memlevel1", "stdlib-pax.multi", "edge-pax.flush",
                                  "bigfile.multi", "stdlib-pax.pigz-b32", "edge-gnu.gz",
                                  "stdlib-pax.allflags"])
def test_every_boundary_inflates_with_zlib(catalog, name):
    """Each boundary (in, bits, out) is a real block start: zlib, primed with the top `bits`
    bits of byte in-1 and the 32 KiB window, inflates from it to exactly the next boundary's
    output (and on across member boundaries)."""
    layer = L.need(catalog, name)
    walk = catalog.walk(name)
    members = D.zlib_members(layer.blob)
    bnd = [b for b in walk.boundaries]
    checked = 0
    for i, b in enumerate(bnd[:-1]):
        if b.last:
            continue
        nxt = bnd[i + 1]
        if nxt.kind == "header":
            continue
        window = D.expected_window(walk.output, b.out)
        got = D.zlib_inflate_from(layer.blob, b.in_, b.bits, window, nxt.in_, members)
        assert got == walk.output[b.out:nxt.out], (i, b)
        checked += 1
    assert checked > 0
    # a wrong bit count must not decode to the same bytes (the check can fail)
    j = next(k for k, x in enumerate(bnd[:-1]) if x.bits and not x.last and x.kind == "block"
             and bnd[k + 1].out > x.out)
    b = bnd[j]
    window = D.expected_window(walk.output, b.out)
    try:
        bad = D.zlib_inflate_from(layer.blob, b.in_, (b.bits % 7) + 1 if b.bits != 7 else 6,
                                  window, bnd[j + 1].in_, members)
    except zlib.error:
        bad = None
    assert bad != walk.output[b.out:bnd[j + 1].out]


def test_boundaries_match_z_block_flushes():
    """zlib's deflate with Z_BLOCK ends a block without padding; the bytes emitted so far are
    exactly the whole bytes before the block end: in - (bits != 0) == emitted."""
    rnd = random.Random(5)
    data = L.text(200_000, 3) + rnd.randbytes(50_000) + L.text(100_000, 9)
    c = zlib.compressobj(6, zlib.DEFLATED, 31)
    out = []
    marks = []  # (uncompressed bytes fed, compressed bytes emitted)
    fed = 0
    for i in range(0, len(data), 9_000):
        piece = data[i:i + 9_000]
        out.append(c.compress(piece))
        out.append(c.flush(zlib.Z_BLOCK))
        fed += len(piece)
        marks.append((fed, sum(map(len, out))))
    out.append(c.flush())
    gz = b"".join(out)
    walk = D.walk_gzip(gz)
    assert walk.output == data
    by_out = {}
    for b in walk.boundaries:
        if b.kind == "block" and not b.last:
            by_out.setdefault(b.out, b)
    bit_counts = set()
    for fed, emitted in marks[:-1]:
        b = by_out[fed]
        assert b.in_ - (1 if b.bits else 0) == emitted, (fed, b, emitted)
        bit_counts.add(b.bits)
    assert len(bit_counts) > 3   # unaligned ends of many sizes were exercised


def test_walker_rejects_corruption():
    data = L.text(50_000, 1)
    gz = gzip.compress(data, 6, mtime=0)
    with pytest.raises(D.OracleError):
        D.walk_gzip(gz[:-1])
    bad = bytearray(gz)
    bad[-8] ^= 1
    with pytest.raises(D.OracleError):
        D.walk_gzip(bytes(bad))
    with pytest.raises(D.OracleError):
        D.walk_gzip(b"\x1f\x8c" + gz[2:])
    with pytest.raises(D.OracleError):
        D.walk_gzip(gz + b"\0\0")


def test_hand_written_headers_parse():
    data = L.text(10_000, 2)
    for kw in ({}, {"extra": b"ab\x02\x00xy"}, {"comment": b"c"}, {"hcrc": True},
               {"fname": None, "extra": b"", "comment": b"", "hcrc": True, "ftext": True}):
        gz = L.gz_headers(data, **kw)
        assert gzip.decompress(gz) == data
        walk = D.walk_gzip(gz)
        assert walk.output == data
        # the header ends where zlib says the deflate data begins
        d = zlib.decompressobj(31)
        d.decompress(gz[:walk.members[0].header_end])
        assert d.decompress(gz[walk.members[0].header_end:]) == data


def test_align_prefix_is_an_empty_block_of_every_residue():
    for r in range(8):
        v, n = D.align_prefix(r)
        assert n % 8 == r
        # followed by an empty final fixed block (3 + 7 bits), zlib decodes it to nothing
        v |= (0b011) << n          # BFINAL=1, BTYPE=01 (fixed), then EOB = 7 zero bits
        raw = v.to_bytes((n + 10 + 7) // 8, "little")
        d = zlib.decompressobj(-15)
        assert d.decompress(raw) == b"" and d.eof


def test_primed_stream_handles_unaligned_stored_block():
    """A stored block that starts mid-byte: plain bit shifting would misalign its LEN field;
    the primed stream keeps it decodable."""
    rnd = random.Random(3)
    for n in range(1000, 1100):
        data = L.text(n, 4) + rnd.randbytes(5000)     # random data -> a stored block
        c = zlib.compressobj(6, zlib.DEFLATED, -15)
        raw = c.compress(data[:n]) + c.flush(zlib.Z_BLOCK) + c.compress(data[n:]) + c.flush()
        gz = b"\x1f\x8b\x08\x00" + bytes(6) + raw + struct.pack("<II", zlib.crc32(data),
                                                                   len(data))
        walk = D.walk_gzip(gz)
        assert walk.output == data
        b = next(x for x in walk.boundaries if x.kind == "block" and not x.last)
        if b.bits and walk.blocks["stored"]:
            break
    else:
        raise AssertionError("no unaligned stored block produced")
    got = D.zlib_inflate_from(gz, b.in_, b.bits, D.expected_window(data, b.out), len(gz))
    assert got == data[b.out:]
    # the naive shift (no alignment prefix) breaks on it: the check can tell
    seg = gz[b.in_ - 1:len(gz) - 8]
    naive = (int.from_bytes(seg, "little") >> (8 - b.bits)).to_bytes(len(seg), "little")
    try:
        bad = zlib.decompressobj(-15, zdict=D.expected_window(data, b.out)).decompress(naive)
    except zlib.error:
        bad = None
    assert bad != data[b.out:]
    assert D.primed_stream(gz, 12, 0, 20) == gz[12:20]


# ---------------------------------------------------------------------------------------------
# the checkpoint rule


def _b(in_, out, last=False, kind="block", bits=0, member=0):
    return D.Boundary(in_, bits, out, last, kind, member)


def test_rule_first_checkpoint_after_header():
    bnd = [_b(10, 0, kind="header"), _b(100, 5000), _b(200, 9000, last=True)]
    assert D.expected_checkpoints(bnd, 4000) == [(10, 0, 0), (100, 5000, 0)]
    # strictly greater: a block ending at exactly span_size is not a checkpoint
    assert D.expected_checkpoints(bnd, 5000) == [(10, 0, 0)]


def test_rule_final_block_excluded_and_empty_first_block():
    bnd = [_b(18, 0, kind="header"), _b(20, 0, bits=5), _b(30, 100, last=True)]
    # an empty non-final block before any output: total out == 0 -> a second checkpoint
    assert D.expected_checkpoints(bnd, 10) == [(18, 0, 0), (20, 0, 5)]
    assert D.expected_checkpoints(bnd[:1] + bnd[2:], 10) == [(18, 0, 0)]


def test_rule_multi_member_counters_are_global():
    bnd = [_b(10, 0, kind="header"), _b(50, 700), _b(90, 1000, last=True),
           _b(108, 1000, kind="header", member=1), _b(150, 1500, member=1, bits=2),
           _b(170, 2600, member=1, last=True)]
    # the header of member 1 is a candidate with bits 0 at out 1000 (1000 - 0 > 900)
    assert D.expected_checkpoints(bnd, 900) == [(10, 0, 0), (108, 1000, 0)]
    assert D.expected_checkpoints(bnd, 600) == [(10, 0, 0), (50, 700, 0), (150, 1500, 2)]


# ---------------------------------------------------------------------------------------------
# tar expectations


def test_expected_sizes_of_hand_made_endings():
    assert L.expected_uncompressed_size(L.noeof_tar()) == len(L.noeof_tar())
    assert L.expected_uncompressed_size(L.onezero_tar()) == len(L.onezero_tar())
    assert len(L.onezero_tar()) == len(L.noeof_tar()) + 512
    assert L.expected_uncompressed_size(L.empty_tar()) == 1024
    assert L.expected_uncompressed_size(bytes(1024)) == 1024
    t = L.stdlib_tar(L.PAX)
    assert len(t) % L.RECORD == 0
    usize = L.expected_uncompressed_size(t)
    assert t[usize - 1024:] == bytes(len(t) - usize + 1024)


def test_expected_entries_follow_tarfile_offsets():
    for tar in (L.stdlib_tar(L.PAX), L.stdlib_tar(L.GNU), L.edge_tar(L.PAX),
                L.edge_tar(L.GNU), L.v7_tar(), L.ustar_tar(), L.global_tar()):
        ents = L.expected_entries(tar)
        with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
            members = tf.getmembers()
            assert [e["offset"] for e in ents if not e["global_header"]] == \
                [m.offset_data for m in members]
            for e, m in zip([e for e in ents if not e["global_header"]], members,
                            strict=True):
                if m.isreg():
                    assert tar[e["offset"]:e["offset"] + e["size"]] == tf.extractfile(m).read()


def test_expected_entries_edge_cases():
    ents = {e["name"]: e for e in L.expected_entries(L.edge_tar(L.PAX))}
    assert ents["./etc/"]["type"] == "dir"
    assert ents["times/frac9"]["mtime"] == 1_700_000_000
    assert ents["times/frac9"]["mtime_ns"] == 123_456_789
    assert ents["times/frac12"]["mtime_ns"] == 123_456_789
    assert ents["xattr/file"]["pax"]["SCHILY.xattr.user.foo"] == "bar"
    assert ents["owners/bigid"]["uid"] == 8 ** 7 + 5
    g = L.expected_entries(L.global_tar())
    assert [e["type"] for e in g] == ["pax_global", "reg", "reg", "pax_global", "dir", "reg"]
    assert g[0]["offset"] == 512 + len(L.pax_record("comment", "first global")) + \
        len(L.pax_record("SOCI.test", "g1"))
    assert g[1]["pax"] == {}
    gnu = {e["name"]: e for e in L.expected_entries(L.edge_tar(L.GNU))}
    assert gnu["times/old"]["mtime"] == -1000
    assert gnu["owners/bigid"]["uid"] == 8 ** 7 + 5
    raw = L.edge_tar(L.GNU)
    off = gnu["owners/bigid"]["offset"] - 512
    assert raw[off + 108] & 0x80          # uid really is base-256 encoded
    v7 = {e["name"]: e for e in L.expected_entries(L.v7_tar())}
    raw = L.v7_tar()
    off = v7["v7/areg-v7"]["offset"] - 512
    assert raw[off + 156] == 0 and v7["v7/areg-v7"]["typeflag"] == "0"   # normalised as Go does
    assert v7["v7/contig"]["type"] == "reg"
    off = v7["v7/olddir/"]["offset"] - 512
    assert raw[off + 156] == 0
    assert v7["v7/olddir/"]["type"] == "dir" and v7["v7/olddir/"]["typeflag"] == "5"
    off = v7["v7/b256size"]["offset"] - 512
    assert L.v7_tar()[off + 124] == 0x80


def test_go_pax_time():
    assert L.go_pax_time("1.5") == (1, 500_000_000)
    assert L.go_pax_time("-1.5") == (-2, 500_000_000)
    assert L.go_pax_time("12") == (12, 0)
    assert L.go_pax_time("1.1234567891") == (1, 123_456_789)


def test_pax_record_lengths():
    for k, v in (("a", "b"), ("path", "x" * 95), ("path", "y" * 996)):
        r = L.pax_record(k, v)
        assert int(r.split(b" ")[0]) == len(r)
        assert L.parse_pax_records(r) == {k: v}


def test_fix_checksum_matches_tarfile():
    h = L.raw_header(b"some/name", size=123)
    ti = tarfile.TarInfo.frombuf(h, "utf-8", "surrogateescape")
    assert ti.name == "some/name" and ti.size == 123
    bad = bytearray(h)
    bad[0] ^= 1
    with pytest.raises(tarfile.HeaderError):
        tarfile.TarInfo.frombuf(bytes(bad), "utf-8", "surrogateescape")
    assert struct.unpack("12s", L.base256(5, 12))[0] == b"\x80" + bytes(10) + b"\x05"


@pytest.mark.parametrize("name", L.MULTI)
def test_multi_member_corpus_exercises_member_boundaries(catalog, name):
    """The multi-member layers really have spans that cross a member boundary and
    checkpoints right after a later member's header (else those paths go untested)."""
    walk = catalog.walk(name)
    layer = catalog.get(name)
    span = min(layer.spans)
    cps = D.expected_checkpoints(walk.boundaries, span)
    ranges = D.span_ranges(cps, len(layer.blob))
    crossing = [r for r in ranges if any(r[0] < m.end < r[1] for m in walk.members)]
    at_header = [c for c in cps if any(c[0] == m.header_end for m in walk.members[1:])]
    assert len(walk.members) > 5 and crossing and at_header
    # an empty member sits in the middle
    assert any(m.out_start == m.out_end for m in walk.members)
