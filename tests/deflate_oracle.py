"""An independent, pure-Python gzip/deflate block walker: the oracle for checkpoint placement.

Nothing here uses the code under test. `walk_gzip` parses every gzip member header (FTEXT,
FHCRC, FEXTRA, FNAME, FCOMMENT), decodes the deflate stream itself (stored, fixed and dynamic
Huffman blocks, RFC 1951) producing the output, checks each member's CRC-32/ISIZE trailer, and
records every position at which zlib's ``inflate(..., Z_BLOCK)`` stops with "end of header /
end of block" (``data_type & 128``):

* right after each gzip member header (bits = 0, never "last");
* after every deflate block, "last" being the BFINAL bit of the block that just ended.

A position is a bit offset ``p`` into the compressed file at which the next block starts (or
the header ended). zlib reports it as ``in`` = bytes consumed = ``ceil(p / 8)`` and
``bits`` = unused bits left in the byte ``in - 1`` = ``8 * in - p`` (0..7).  Deflate is
LSB-first, so those unused bits are the *top* ``bits`` bits of byte ``in - 1``.

`expected_checkpoints` applies soci-format.md 1.2's rule to that list. `zlib_inflate_from`
inflates with Python's zlib (not our decoder) from such a position, given a 32 KiB window,
crossing gzip member boundaries: the tests use it to check both this walker and the blob.
Python's zlib has no inflatePrime(); `primed_stream` stands in for it (see `align_prefix`).
"""

from __future__ import annotations

import struct
import zlib
from typing import NamedTuple

WINSIZE = 32768


class OracleError(ValueError):
    pass


class Boundary(NamedTuple):
    in_: int        # compressed bytes consumed (first full byte of what follows)
    bits: int       # unused bits of byte in_-1 that belong to what follows (0..7)
    out: int        # uncompressed bytes produced so far (global over members)
    last: bool      # the block that just ended had BFINAL set
    kind: str       # "header" (after a gzip member header) or "block" (after a block)
    member: int     # index of the gzip member


class Member(NamedTuple):
    start: int          # compressed offset of the member's first header byte
    header_end: int     # first byte of the deflate data
    deflate_end: int    # first byte of the 8-byte trailer
    end: int            # one past the trailer
    out_start: int
    out_end: int


class Walk(NamedTuple):
    boundaries: list
    members: list
    output: bytes
    blocks: dict        # counts per block type: {"stored": n, "fixed": n, "dynamic": n}


# ----------------------------------------------------------------------------------------------
# Huffman tables

_LEN_BASE = [3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83,
             99, 115, 131, 163, 195, 227, 258]
_LEN_EXTRA = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5,
              5, 0]
_DIST_BASE = [1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769,
              1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577]
_DIST_EXTRA = [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11,
               11, 12, 12, 13, 13]
_CL_ORDER = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15]


def _reverse(code: int, length: int) -> int:
    r = 0
    for _ in range(length):
        r = (r << 1) | (code & 1)
        code >>= 1
    return r


def build_table(lengths, what="code"):
    """Canonical Huffman decode table indexed by the next `maxlen` input bits (LSB-first).

    Entry = (symbol << 4) | code_length, or -1 for bit patterns no code uses (incomplete code).
    Returns (table, maxlen)."""
    maxlen = max(lengths) if lengths else 0
    if maxlen == 0:
        return [-1], 0
    bl_count = [0] * 16
    for n in lengths:
        bl_count[n] += 1
    bl_count[0] = 0
    # over-subscription check (RFC 1951 codes must not be over-subscribed)
    left = 1
    for n in range(1, 16):
        left = (left << 1) - bl_count[n]
        if left < 0:
            raise OracleError(f"over-subscribed {what} lengths")
    next_code = [0] * 16
    code = 0
    for n in range(1, 16):
        code = (code + bl_count[n - 1]) << 1
        next_code[n] = code
    size = 1 << maxlen
    table = [-1] * size
    for sym, n in enumerate(lengths):
        if n:
            c = next_code[n]
            next_code[n] += 1
            r = _reverse(c, n)
            entry = (sym << 4) | n
            step = 1 << n
            table[r::step] = [entry] * len(range(r, size, step))
    return table, maxlen


_FIXED_LIT = build_table([8] * 144 + [9] * 112 + [7] * 24 + [8] * 8, "fixed literal")
_FIXED_DIST = build_table([5] * 30, "fixed distance")


# ----------------------------------------------------------------------------------------------
# gzip header

FTEXT, FHCRC, FEXTRA, FNAME, FCOMMENT = 1, 2, 4, 8, 16


def parse_gzip_header(data: bytes, pos: int) -> int:
    """Parse one gzip member header at pos; return the offset of the first deflate byte."""
    start = pos
    if len(data) - pos < 10:
        raise OracleError(f"truncated gzip header at {pos}")
    if data[pos] != 0x1F or data[pos + 1] != 0x8B:
        raise OracleError(f"bad gzip magic at {pos}")
    if data[pos + 2] != 8:
        raise OracleError(f"unknown compression method at {pos}")
    flg = data[pos + 3]
    if flg & 0xE0:
        raise OracleError(f"reserved gzip flags set at {pos}")
    pos += 10
    if flg & FEXTRA:
        if len(data) - pos < 2:
            raise OracleError("truncated FEXTRA length")
        (xlen,) = struct.unpack_from("<H", data, pos)
        pos += 2 + xlen
    if flg & FNAME:
        z = data.find(b"\0", pos)
        if z < 0:
            raise OracleError("unterminated FNAME")
        pos = z + 1
    if flg & FCOMMENT:
        z = data.find(b"\0", pos)
        if z < 0:
            raise OracleError("unterminated FCOMMENT")
        pos = z + 1
    if flg & FHCRC:
        if len(data) - pos < 2:
            raise OracleError("truncated FHCRC")
        (hcrc,) = struct.unpack_from("<H", data, pos)
        if hcrc != zlib.crc32(data[start:pos]) & 0xFFFF:
            raise OracleError("gzip header CRC mismatch")
        pos += 2
    if pos > len(data):
        raise OracleError("truncated gzip header")
    return pos


# ----------------------------------------------------------------------------------------------
# deflate walker


def _inflate_member(data: bytes, pos: int, out: bytearray, out_base: int, member: int,
                    boundaries: list, blocks: dict) -> int:
    """Decode one raw deflate stream starting at byte `pos`, appending to `out` (which holds
    the output of all earlier members too, so len(out) is the global out counter; `out_base`
    is where this member's output starts: back-references may not reach before it).

    Returns the offset of the first byte after the stream (the trailer). Appends a Boundary
    after every block."""
    n = len(data)
    hold = 0
    nbits = 0
    from_bytes = int.from_bytes
    append = out.append
    fixed_lit, fixed_dist = _FIXED_LIT, _FIXED_DIST

    while True:
        # ---- block header
        if nbits < 3:
            chunk = data[pos:pos + 8]
            hold |= from_bytes(chunk, "little") << nbits
            nbits += 8 * len(chunk)
            pos += len(chunk)
            if nbits < 3:
                raise OracleError("truncated deflate block header")
        bfinal = hold & 1
        btype = (hold >> 1) & 3
        hold >>= 3
        nbits -= 3

        if btype == 0:
            blocks["stored"] += 1
            # drop to a byte boundary, give back whole bytes still held
            drop = nbits & 7
            hold >>= drop
            nbits -= drop
            pos -= nbits >> 3
            hold = 0
            nbits = 0
            if n - pos < 4:
                raise OracleError("truncated stored block length")
            length, nlength = struct.unpack_from("<HH", data, pos)
            if length != (~nlength & 0xFFFF):
                raise OracleError(f"stored block length check failed at {pos}")
            pos += 4
            if n - pos < length:
                raise OracleError("truncated stored block")
            out += data[pos:pos + length]
            pos += length
        elif btype == 3:
            raise OracleError("invalid block type 3")
        else:
            if btype == 1:
                blocks["fixed"] += 1
                (lit_table, lit_bits), (dist_table, dist_bits) = fixed_lit, fixed_dist
            else:
                blocks["dynamic"] += 1
                # ---- dynamic header
                if nbits < 14:
                    chunk = data[pos:pos + 8]
                    hold |= from_bytes(chunk, "little") << nbits
                    nbits += 8 * len(chunk)
                    pos += len(chunk)
                    if nbits < 14:
                        raise OracleError("truncated dynamic header")
                hlit = (hold & 31) + 257
                hdist = ((hold >> 5) & 31) + 1
                hclen = ((hold >> 10) & 15) + 4
                hold >>= 14
                nbits -= 14
                if hlit > 286 or hdist > 30:
                    raise OracleError("too many length or distance symbols")
                cl_lengths = [0] * 19
                for i in range(hclen):
                    if nbits < 3:
                        chunk = data[pos:pos + 8]
                        hold |= from_bytes(chunk, "little") << nbits
                        nbits += 8 * len(chunk)
                        pos += len(chunk)
                        if nbits < 3:
                            raise OracleError("truncated code length codes")
                    cl_lengths[_CL_ORDER[i]] = hold & 7
                    hold >>= 3
                    nbits -= 3
                cl_table, cl_bits = build_table(cl_lengths, "code length")
                cl_mask = (1 << cl_bits) - 1
                lengths = []
                total = hlit + hdist
                while len(lengths) < total:
                    if nbits < 16:
                        chunk = data[pos:pos + 8]
                        hold |= from_bytes(chunk, "little") << nbits
                        nbits += 8 * len(chunk)
                        pos += len(chunk)
                    e = cl_table[hold & cl_mask]
                    if e < 0 or (e & 15) > nbits:
                        raise OracleError("bad or truncated code length code")
                    hold >>= e & 15
                    nbits -= e & 15
                    sym = e >> 4
                    if sym < 16:
                        lengths.append(sym)
                    elif sym == 16:
                        if not lengths:
                            raise OracleError("repeat with no previous length")
                        rep = 3 + (hold & 3)
                        hold >>= 2
                        nbits -= 2
                        lengths.extend([lengths[-1]] * rep)
                    elif sym == 17:
                        rep = 3 + (hold & 7)
                        hold >>= 3
                        nbits -= 3
                        lengths.extend([0] * rep)
                    else:
                        rep = 11 + (hold & 127)
                        hold >>= 7
                        nbits -= 7
                        lengths.extend([0] * rep)
                    if nbits < 0:
                        raise OracleError("truncated code lengths")
                if len(lengths) > total:
                    raise OracleError("code lengths overrun")
                if lengths[256] == 0:
                    raise OracleError("no end-of-block code")
                lit_table, lit_bits = build_table(lengths[:hlit], "literal/length")
                dist_table, dist_bits = build_table(lengths[hlit:], "distance")

            lit_mask = (1 << lit_bits) - 1
            dist_mask = (1 << dist_bits) - 1
            # ---- symbols
            while True:
                if nbits < 48:
                    chunk = data[pos:pos + 8]
                    hold |= from_bytes(chunk, "little") << nbits
                    nbits += 8 * len(chunk)
                    pos += len(chunk)
                e = lit_table[hold & lit_mask]
                if e < 0:
                    raise OracleError("invalid literal/length code")
                ln = e & 15
                hold >>= ln
                nbits -= ln
                sym = e >> 4
                if sym < 256:
                    append(sym)
                elif sym == 256:
                    break
                else:
                    sym -= 257
                    if sym >= 29:
                        raise OracleError("invalid length symbol")
                    x = _LEN_EXTRA[sym]
                    length = _LEN_BASE[sym] + (hold & ((1 << x) - 1))
                    hold >>= x
                    nbits -= x
                    e = dist_table[hold & dist_mask]
                    if e < 0:
                        raise OracleError("invalid distance code")
                    ln = e & 15
                    hold >>= ln
                    nbits -= ln
                    dsym = e >> 4
                    if dsym >= 30:
                        raise OracleError("invalid distance symbol")
                    x = _DIST_EXTRA[dsym]
                    dist = _DIST_BASE[dsym] + (hold & ((1 << x) - 1))
                    hold >>= x
                    nbits -= x
                    # distances may reach into earlier members? No: each member is its own
                    # deflate stream; only this member's output is addressable.
                    if dist > len(out) - out_base:
                        raise OracleError("distance too far back")
                    start = len(out) - dist
                    if dist >= length:
                        out += out[start:start + length]
                    else:
                        pat = out[start:]
                        out += (pat * (length // dist + 1))[:length]
                if nbits < 0:
                    raise OracleError("truncated deflate data")
            if nbits < 0:
                raise OracleError("truncated deflate data")

        # ---- block boundary: bit position p = 8*pos - nbits
        p = 8 * pos - nbits
        in_ = (p + 7) >> 3
        boundaries.append(Boundary(in_, 8 * in_ - p, len(out), bool(bfinal), "block", member))
        if bfinal:
            return in_


def walk_gzip(data: bytes) -> Walk:
    """Walk every member of a (possibly multi-member) gzip file. Raises OracleError on any
    corruption. Trailing bytes after the last member are an error, like zlib's reset-and-go-on
    loop would make them (a garbage "next member header")."""
    data = bytes(data)
    boundaries: list = []
    members: list = []
    out = bytearray()
    blocks = {"stored": 0, "fixed": 0, "dynamic": 0}
    pos = 0
    member = 0
    if not data:
        raise OracleError("empty input")
    while pos < len(data):
        start = pos
        out_start = len(out)
        pos = parse_gzip_header(data, pos)
        header_end = pos
        boundaries.append(Boundary(pos, 0, len(out), False, "header", member))
        deflate_end = _inflate_member(data, pos, out, out_start, member, boundaries, blocks)
        if len(data) - deflate_end < 8:
            raise OracleError("truncated gzip trailer")
        crc, isize = struct.unpack_from("<II", data, deflate_end)
        if crc != zlib.crc32(out[out_start:]):
            raise OracleError(f"CRC mismatch in member {member}")
        if isize != (len(out) - out_start) & 0xFFFFFFFF:
            raise OracleError(f"ISIZE mismatch in member {member}")
        pos = deflate_end + 8
        members.append(Member(start, header_end, deflate_end, pos, out_start, len(out)))
        member += 1
    return Walk(boundaries, members, bytes(out), blocks)


# ----------------------------------------------------------------------------------------------
# soci-format.md 1.2: where checkpoints go


def expected_checkpoints(boundaries, span_size: int):
    """Apply the checkpoint rule of soci-format.md 1.2 to a boundary list.

    A candidate is every position where zlib's inflate(Z_BLOCK) returns with data_type & 128:
    after each member header, after each block. The end of a block with BFINAL set is reported
    with data_type & 64 and excluded. A candidate becomes a checkpoint when total out == 0, or
    when out - out_of_last_checkpoint > span_size (strictly). Counters are global over members.
    Returns [(in, out, bits)]."""
    cps = []
    last = 0
    for b in boundaries:
        if b.last:
            continue
        if b.out == 0 or b.out - last > span_size:
            cps.append((b.in_, b.out, b.bits))
            last = b.out
    return cps


def expected_window(stream: bytes, out: int) -> bytes:
    """The 32 KiB of uncompressed data before `out`, zero-filled at the front."""
    w = stream[max(0, out - WINSIZE):out]
    return bytes(WINSIZE - len(w)) + w


def span_ranges(cps, compressed_size: int):
    """soci-format.md 1.3 compressed [start, end) per span from [(in, out, bits)]."""
    ranges = []
    for i, (cin, _out, bits) in enumerate(cps):
        start = cin - (1 if bits else 0)
        end = cps[i + 1][0] if i + 1 < len(cps) else compressed_size
        ranges.append((start, end))
    return ranges


# ----------------------------------------------------------------------------------------------
# zlib-based inflate from an arbitrary bit position (independent of the walker above)


def zlib_members(data: bytes):
    """[(start, end)] of every gzip member, found with Python's zlib alone."""
    res = []
    pos = 0
    while pos < len(data):
        d = zlib.decompressobj(31)
        d.decompress(data[pos:])
        if not d.eof:
            raise OracleError(f"gzip member at {pos} does not end")
        end = len(data) - len(d.unused_data)
        res.append((pos, end))
        pos = end
    return res


class _BitWriter:
    def __init__(self):
        self.value = 0
        self.n = 0

    def put(self, v: int, n: int):
        """Append n bits of v, LSB first (deflate's order for header fields and extra bits)."""
        self.value |= (v & ((1 << n) - 1)) << self.n
        self.n += n

    def code(self, c: int, n: int):
        """Append a Huffman code (sent most significant bit first)."""
        self.put(_reverse(c, n), n)


def align_prefix(residue: int):
    """A non-final, empty dynamic-Huffman deflate block whose length in bits is congruent to
    `residue` modulo 8. Returns (bits_value, nbits).

    It stands in for zlib's inflatePrime(), which Python's zlib lacks: putting it before the
    bit stream that starts at bit p of the compressed file (p % 8 == residue) keeps every
    original byte boundary on a byte boundary, so stored blocks (which re-align to bytes)
    still decode. Its lit/len code has only end-of-block (one code of length 1, allowed as an
    incomplete code) and no distance codes: it produces no output.

    Length = 3 + 14 + 3*HCLEN + 8 per code-18 run + 2 per single zero + 2 + 2 + 1, with
    HCLEN in {18, 19} (code-length symbol 1 is 18th in the permuted order) and 0..3 single
    zero codes, which reaches every residue."""
    for hclen in (18, 19):
        for z in range(4):
            if (22 + 3 * hclen + 2 * z) % 8 == residue % 8:
                break
        else:
            continue
        break
    w = _BitWriter()
    w.put(0, 1)             # BFINAL = 0
    w.put(2, 2)             # BTYPE = 2: dynamic
    w.put(0, 5)             # HLIT = 257
    w.put(0, 5)             # HDIST = 1
    w.put(hclen - 4, 4)
    cl_len = {18: 1, 0: 2, 1: 2}    # canonical codes: 18 -> 0, 0 -> 10, 1 -> 11
    cl_code = {18: (0b0, 1), 0: (0b10, 2), 1: (0b11, 2)}
    for i in range(hclen):
        w.put(cl_len.get(_CL_ORDER[i], 0), 3)
    for _ in range(z):      # single zero lengths for literals 0..z-1
        w.code(*cl_code[0])
    rem = 256 - z
    while rem:
        take = min(138, rem)
        if 0 < rem - take < 11:
            take = rem - 11
        w.code(*cl_code[18])
        w.put(take - 11, 7)
        rem -= take
    w.code(*cl_code[1])     # literal/length 256 (end of block): length 1
    w.code(*cl_code[0])     # the one distance code: length 0
    w.code(0, 1)            # end of block
    assert w.n % 8 == residue % 8
    return w.value, w.n


def primed_stream(data: bytes, cin: int, bits: int, end: int) -> bytes:
    """A raw deflate stream equivalent to the bits of `data` from bit 8*cin - bits (the top
    `bits` bits of byte cin-1, deflate being LSB-first) up to byte `end`: those bits preceded
    by `align_prefix`, so that byte boundaries of `data` stay byte boundaries."""
    if bits == 0:
        return data[cin:end]
    seg = data[cin - 1:end]
    orig = int.from_bytes(seg, "little") >> (8 - bits)
    orig_n = 8 * len(seg) - (8 - bits)
    pv, pn = align_prefix(8 - bits)
    total = pn + orig_n
    assert total % 8 == 0
    return (pv | (orig << pn)).to_bytes(total // 8, "little")


def zlib_inflate_from(data: bytes, cin: int, bits: int, window: bytes, end: int,
                      members=None) -> bytes:
    """Inflate with zlib the compressed bytes from bit position (cin, bits) up to byte `end`
    (exclusive), priming with `window` as dictionary. When a gzip member's deflate stream ends
    before `end`, its 8-byte trailer is skipped and the following members are inflated as gzip.
    Returns all output zlib produces from those bytes."""
    if members is None:
        members = zlib_members(data)
    first = None
    for i, (ms, me) in enumerate(members):
        if ms <= cin < me:
            first = i
            break
    if first is None:
        raise OracleError(f"position {cin} is in no gzip member")
    ms, me = members[first]
    deflate_end = me - 8
    seg_end = min(end, deflate_end)
    d = zlib.decompressobj(-15, zdict=window)
    res = [d.decompress(primed_stream(data, cin, bits, seg_end))]
    if end <= deflate_end:
        return b"".join(res)
    if not d.eof:
        raise OracleError("deflate stream did not end where the member trailer starts")
    for ms, me in members[first + 1:]:
        if ms >= end:
            break
        g = zlib.decompressobj(31)
        res.append(g.decompress(data[ms:min(end, me)]))
    return b"".join(res)

