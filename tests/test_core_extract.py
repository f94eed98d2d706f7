"""Reading through the index: sn.extract / sn.extract_span / sn.span_range against tarfile and
the tar stream, and hostile checkpoint blobs. See docs/core-api.md, soci-format.md 1.2-1.5."""

import io
import random
import struct
import tarfile
import zlib

import layers as L
import pytest

import soci_native as sn

CP_SIZE = 8 + 8 + 1 + 32768

# layers with regular files to read (the empty archives have none)
READ_LAYERS = [n for n in L.ALL if not n.startswith(("empty", "zeros"))]
READ_SPANS = L.layer_span_params(READ_LAYERS)
BIG_SPANS = L.layer_span_params([n for n in READ_LAYERS if not L.SPECS[n][2].get("small")]
                                + ["edge-pax.flush", "edge-gnu.gz", "edge-pax.tar"])


def cps_of(blob: bytes):
    count, _ = struct.unpack_from("<iq", blob, 0)
    return [struct.unpack_from("<qqB", blob, 12 + i * CP_SIZE) for i in range(count)]


def tarzinfo_span(blob: bytes) -> int:
    (root,) = struct.unpack_from("<I", blob, 0)
    (soff,) = struct.unpack_from("<i", blob, root)
    vt = root - soff
    (o,) = struct.unpack_from("<H", blob, vt + 4 + 2 * 1)
    return struct.unpack_from("<q", blob, root + o)[0]


def own_span_range(layer, idx, offset: int, length: int):
    """soci-format.md 1.3 / 1.5, computed here: (first span, compressed start, compressed end)
    of the spans holding uncompressed [offset, offset+length)."""
    last_byte = offset + length - 1
    csize = len(layer.blob)
    if layer.compression == "gzip":
        cps = cps_of(idx.checkpoints)
        first = max(i for i, c in enumerate(cps) if c[1] <= offset)
        last = max(i for i, c in enumerate(cps) if c[1] <= last_byte)
        start = cps[first][0] - (1 if cps[first][2] else 0)
        end = cps[last + 1][0] if last + 1 < len(cps) else csize
        return first, start, end
    span = tarzinfo_span(idx.checkpoints)
    first, last = offset // span, last_byte // span
    return first, first * span, min((last + 1) * span, csize)


def regular_files(layer):
    with tarfile.open(fileobj=io.BytesIO(layer.tar)) as tf:
        for x in L.expected_entries(layer.tar):
            if x["type"] == "reg":
                yield x, tf.extractfile(x["tarinfo"]).read()


def check_value_error(ei):
    assert isinstance(ei.value, ValueError)
    assert str(ei.value).strip(), "error message must not be empty"


# ---------------------------------------------------------------------------------------------
# files


@pytest.mark.parametrize("name, span", READ_SPANS)
def test_extract_every_regular_file(indexed, name, span):
    layer, idx = indexed(name, span)
    n = 0
    for x, want in regular_files(layer):
        got = sn.extract(str(layer.path), idx.checkpoints, x["offset"], x["size"])
        assert isinstance(got, bytes)
        assert got == want, x["name"]
        n += 1
    assert n > 0


@pytest.mark.parametrize("name, span", READ_SPANS)
def test_extract_span_every_regular_file(indexed, name, span):
    """span_range names the compressed bytes to fetch; extract_span reads from them alone."""
    layer, idx = indexed(name, span)
    csize = len(layer.blob)
    for x, want in regular_files(layer):
        if x["size"] == 0:
            continue
        rng = sn.span_range(idx.checkpoints, x["offset"], x["size"], csize)
        assert tuple(rng) == own_span_range(layer, idx, x["offset"], x["size"]), x["name"]
        first, start, end = rng
        got = sn.extract_span(idx.checkpoints, first, layer.blob[start:end], x["offset"],
                              x["size"])
        assert got == want, x["name"]
        # the bytes may run on into later spans
        got = sn.extract_span(idx.checkpoints, first, layer.blob[start:end + 4096],
                              x["offset"], x["size"])
        assert got == want, x["name"]


def _ranges(layer, idx, span, rnd, count):
    usize = idx.uncompressed_size
    if layer.compression == "gzip":
        marks = [c[1] for c in cps_of(idx.checkpoints)][1:]
    else:
        marks = list(range(span, usize, span))
    marks = [m for m in marks if 0 < m < usize] or [usize // 2]
    out = [(0, usize), (0, 1), (usize - 1, 1)]
    for _ in range(count):
        kind = rnd.randrange(6)
        b = rnd.choice(marks)
        if kind == 0:
            s = rnd.randrange(usize)
            ln = rnd.randint(1, min(usize - s, 3 * span + 10))
        elif kind == 1:                        # starts exactly at a span start
            s, ln = b, rnd.randint(1, min(usize - b, 2 * span + 10))
        elif kind == 2:                        # ends exactly at a span start
            ln = rnd.randint(1, b)
            s = b - ln
        elif kind == 3:                        # straddles a span boundary by a few bytes
            k = rnd.randint(1, min(b, usize - b, 300))
            s, ln = b - k, 2 * k
        elif kind == 4:                        # the bytes on both sides of a boundary
            s, ln = rnd.choice(((b - 1, 1), (b, 1), (b - 1, 2)))
        else:                                  # crosses many spans
            s = rnd.randrange(usize)
            ln = rnd.randint(1, usize - s)
        out.append((s, ln))
    return out


@pytest.mark.parametrize("name, span", BIG_SPANS)
def test_random_ranges(indexed, name, span):
    layer, idx = indexed(name, span)
    rnd = random.Random(zlib.crc32(name.encode()) + span)
    csize = len(layer.blob)
    for s, ln in _ranges(layer, idx, span, rnd, 60):
        want = layer.tar[s:s + ln]
        assert sn.extract(str(layer.path), idx.checkpoints, s, ln) == want, (s, ln)
        first, start, end = sn.span_range(idx.checkpoints, s, ln, csize)
        assert (first, start, end) == own_span_range(layer, idx, s, ln), (s, ln)
        assert sn.extract_span(idx.checkpoints, first, layer.blob[start:end], s, ln) == want


@pytest.mark.parametrize("name", ["edge-pax.gz", "stdlib-pax.multi", "edge-pax.tar"])
def test_extract_span_from_a_later_offset_in_the_span(indexed, name):
    """offset may be anywhere at or after the span's start, also in a later span when the
    bytes run on."""
    layer, idx = indexed(name)
    first, start, _ = sn.span_range(idx.checkpoints, 0, 1, len(layer.blob))
    assert (first, start) == own_span_range(layer, idx, 0, 1)[:2]
    for off in (0, 1, 511, 4097, idx.uncompressed_size // 3):
        got = sn.extract_span(idx.checkpoints, 0, layer.blob[start:], off, 700)
        assert got == layer.tar[off:off + 700]


@pytest.mark.parametrize("name", ["edge-pax.gz", "bigfile.multi", "edge-pax.tar", "noeof.gz"])
def test_zero_length_and_beyond_end(indexed, name):
    layer, idx = indexed(name)
    assert sn.extract(str(layer.path), idx.checkpoints, 0, 0) == b""
    assert sn.extract(str(layer.path), idx.checkpoints, 1000, 0) == b""
    end = len(layer.tar)           # end of all decompressed data (record padding included)
    for off, ln in ((end - 5, 10), (end, 1), (end + 10_000, 5), (0, end + 1)):
        with pytest.raises(ValueError) as ei:
            sn.extract(str(layer.path), idx.checkpoints, off, ln)
        check_value_error(ei)


def test_missing_layer_file_is_oserror(indexed, tmp_path):
    _, idx = indexed("edge-pax.gz")
    with pytest.raises(OSError):
        sn.extract(str(tmp_path / "nope.tar.gz"), idx.checkpoints, 0, 10)


# ---------------------------------------------------------------------------------------------
# hostile checkpoint blobs


def _set(blob: bytes, off: int, fmt: str, value) -> bytes:
    b = bytearray(blob)
    struct.pack_into("<" + fmt, b, off, value)
    return bytes(b)


def _cp(k: int) -> int:
    return 12 + k * CP_SIZE


def _bad_gzip_blobs(blob: bytes, csize: int):
    """(label, blob, span k whose range is read)."""
    count = struct.unpack_from("<i", blob, 0)[0]
    cps = cps_of(blob)
    k = 5
    assert count > k + 2
    return [
        ("short by one", blob[:-1], k),
        ("long by one", blob + b"\0", k),
        ("long by a checkpoint minus one", blob + bytes(CP_SIZE - 1), k),
        ("header only", blob[:12], k),
        ("shorter than the header", blob[:5], k),
        ("empty", b"", k),
        ("negative count", _set(blob, 0, "i", -1), k),
        ("most negative count", _set(blob, 0, "i", -2 ** 31), k),
        # (count + 1 with this length would be a valid legacy v1 blob, soci-format.md 1.2)
        ("count two too many", _set(blob, 0, "i", count + 2), k),
        ("huge count", _set(blob, 0, "i", 2 ** 31 - 1), k),
        ("zero checkpoints", _set(blob[:12], 0, "i", 0), 0),
        ("bits 8", _set(blob, _cp(k) + 16, "B", 8), k),
        ("bits 255", _set(blob, _cp(k) + 16, "B", 255), k),
        ("in past the end", _set(blob, _cp(k), "q", csize + 100), k),
        ("in negative", _set(blob, _cp(k), "q", -1), k),
        ("in most negative", _set(blob, _cp(k), "q", -2 ** 63), k),
        ("out negative", _set(blob, _cp(k) + 8, "q", -1), k),
        ("in 0 with bits", _set(_set(blob, _cp(0), "q", 0), _cp(0) + 16, "B", 3), 0),
        ("out not increasing", _set(blob, _cp(k) + 8, "q", cps[k - 1][1] - 1), k - 1),
        ("in not increasing", _set(blob, _cp(k), "q", cps[k - 1][0] - 1), k - 1),
        ("out huge", _set(blob, _cp(k) + 8, "q", 2 ** 62), k),
    ]


@pytest.fixture(scope="module")
def gz_case(indexed):
    layer, idx = indexed("bigfile.gz", 64 * 1024)
    return layer, idx


BAD_BLOB_LABELS = [b[0] for b in _bad_gzip_blobs(
    struct.pack("<iq", 9, 1) + bytes(9 * CP_SIZE), 10 ** 6)]


@pytest.mark.parametrize("label", BAD_BLOB_LABELS)
def test_malformed_gzip_blob(gz_case, label):
    layer, idx = gz_case
    csize = len(layer.blob)
    cases = {c[0]: c for c in _bad_gzip_blobs(idx.checkpoints, csize)}
    _, bad, k = cases[label]
    cps = cps_of(idx.checkpoints)
    off = cps[k][1] + 100
    ln = 1000
    start = cps[k][0] - (1 if cps[k][2] else 0)
    with pytest.raises(ValueError) as ei:
        sn.extract(str(layer.path), bad, off, ln)
    check_value_error(ei)
    with pytest.raises(ValueError) as ei:
        sn.span_range(bad, off, ln, csize)
    check_value_error(ei)
    with pytest.raises(ValueError) as ei:
        sn.extract_span(bad, k, layer.blob[start:], off, ln)
    check_value_error(ei)


def test_malformed_tar_zinfo(indexed, tmp_path):
    layer, idx = indexed("bigfile.tar", 64 * 1024)
    blob = idx.checkpoints
    (root,) = struct.unpack_from("<I", blob, 0)
    (soff,) = struct.unpack_from("<i", blob, root)
    vt = root - soff

    def field_pos(slot):
        (o,) = struct.unpack_from("<H", blob, vt + 4 + 2 * slot)
        assert o, f"slot {slot} must be present"
        return root + o

    size = len(layer.blob)
    bad = [
        ("truncated", blob[:6]),
        ("empty", b""),
        ("root offset out of range", _set(blob, 0, "I", 0xFFFFFFF0)),
        ("vtable out of range", _set(blob, root, "i", -(2 ** 31) + 1)),
        ("span size zero", _set(blob, field_pos(1), "q", 0)),
        ("span size negative", _set(blob, field_pos(1), "q", -65536)),
        ("size negative", _set(blob, field_pos(2), "q", -1)),
    ]
    for _label, b in bad:
        for call in (lambda b=b: sn.extract(str(layer.path), b, 1000, 100),
                     lambda b=b: sn.span_range(b, 1000, 100, size),
                     lambda b=b: sn.extract_span(b, 0, layer.blob[:70000], 1000, 100)):
            with pytest.raises(ValueError) as ei:
                call()
            check_value_error(ei)
    # a size larger than the file: reading where the file has no bytes fails
    big = _set(blob, field_pos(2), "q", size + 100_000)
    with pytest.raises(ValueError) as ei:
        sn.extract(str(layer.path), big, size + 10, 100)
    check_value_error(ei)


def test_truncated_layer_file(gz_case, tmp_path):
    layer, idx = gz_case
    short = tmp_path / "short.tar.gz"
    short.write_bytes(layer.blob[:len(layer.blob) // 2])
    cps = cps_of(idx.checkpoints)
    off = cps[-2][1] + 10
    with pytest.raises(ValueError) as ei:
        sn.extract(str(short), idx.checkpoints, off, 1000)
    check_value_error(ei)
    # what is still there reads fine
    assert sn.extract(str(short), idx.checkpoints, 0, 1000) == layer.tar[:1000]


def test_extract_span_bad_arguments(gz_case):
    layer, idx = gz_case
    cps = cps_of(idx.checkpoints)
    k = 4
    start = cps[k][0] - (1 if cps[k][2] else 0)
    end = cps[k + 1][0]
    data = layer.blob[start:end]
    off = cps[k][1] + 50
    cases = [
        ("span id past the end", lambda: sn.extract_span(idx.checkpoints, len(cps), data, off, 10)),
        ("huge span id", lambda: sn.extract_span(idx.checkpoints, 2 ** 31 - 1, data, off, 10)),
        ("offset before the span", lambda: sn.extract_span(idx.checkpoints, k, data,
                                                           cps[k][1] - 1, 10)),
        ("bytes too short", lambda: sn.extract_span(idx.checkpoints, k, data[:len(data) // 3],
                                                    cps[k + 1][1] - 100, 50)),
        ("no bytes", lambda: sn.extract_span(idx.checkpoints, k, b"", off, 10)),
        ("past the span's bytes", lambda: sn.extract_span(idx.checkpoints, k, data,
                                                          cps[k + 1][1] + 10, 10)),
    ]
    for _label, call in cases:
        with pytest.raises(ValueError) as ei:
            call()
        check_value_error(ei)
    with pytest.raises((ValueError, OverflowError, TypeError)):
        sn.extract_span(idx.checkpoints, -1, data, off, 10)
    with pytest.raises((ValueError, OverflowError, TypeError)):
        sn.extract(str(layer.path), idx.checkpoints, -1, 10)
    with pytest.raises((ValueError, OverflowError, TypeError)):
        sn.extract(str(layer.path), idx.checkpoints, 10, -1)


def test_garbage_span_bytes_never_wrong_length(gz_case):
    layer, idx = gz_case
    cps = cps_of(idx.checkpoints)
    rnd = random.Random(8)
    for k in (0, 3, len(cps) - 1):
        for _ in range(10):
            junk = rnd.randbytes(rnd.randint(1, 70000))
            try:
                got = sn.extract_span(idx.checkpoints, k, junk, cps[k][1] + 10, 500)
            except ValueError as e:
                assert str(e).strip()
            else:
                assert len(got) == 500


def test_random_blob_and_data_mutations(gz_case, tmp_path):
    """Seeded, bounded: mutated checkpoint blobs or layer bytes give a ValueError or bytes of
    exactly the requested length; never a crash."""
    layer, idx = gz_case
    blob = idx.checkpoints
    count = struct.unpack_from("<i", blob, 0)[0]
    rnd = random.Random(77)
    usize = idx.uncompressed_size
    errors = 0
    for _ in range(150):
        b = bytearray(blob)
        k = rnd.randrange(count)
        region = rnd.choice(("header", "in", "out", "bits", "window"))
        if region == "header":
            pos = rnd.randrange(12)
        elif region == "in":
            pos = _cp(k) + rnd.randrange(8)
        elif region == "out":
            pos = _cp(k) + 8 + rnd.randrange(8)
        elif region == "bits":
            pos = _cp(k) + 16
        else:
            pos = _cp(k) + 17 + rnd.randrange(32768)
        b[pos] = rnd.randrange(256)
        off = rnd.randrange(usize - 1)
        ln = rnd.randint(1, min(200_000, usize - off))
        try:
            got = sn.extract(str(layer.path), bytes(b), off, ln)
        except ValueError as e:
            assert str(e).strip()
            errors += 1
        else:
            assert len(got) == ln
    assert errors > 0
    # corrupted compressed bytes under a valid blob
    path = tmp_path / "corrupt.tar.gz"
    cps = cps_of(blob)
    for _ in range(30):
        data = bytearray(layer.blob)
        k = rnd.randrange(count)
        lo = cps[k][0]
        hi = cps[k + 1][0] if k + 1 < count else len(data) - 8
        for _ in range(rnd.randint(1, 5)):
            data[rnd.randrange(lo, hi)] ^= 1 << rnd.randrange(8)
        path.write_bytes(bytes(data))
        ln = 5000
        off = cps[k][1] + rnd.randrange(1000)
        try:
            got = sn.extract(str(path), blob, off, ln)
        except ValueError as e:
            assert str(e).strip()
        else:
            assert len(got) == ln
