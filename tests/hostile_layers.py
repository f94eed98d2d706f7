"""Crafted layers for the mount's hostile-input tests (tests/test_mount_hostile.py).

* :func:`one_block_layer`: a gzip tar whose single file of zeros sits in one dynamic-Huffman
  deflate block (1 bit per 258-byte match, ~1030:1), so the indexer can place no checkpoint
  inside it and the whole layer is one span: 1 GiB of output from ~1 MiB.
* :func:`text_layer`: an ordinary gzip tar of repetitive text (back-references cross span
  boundaries, so a checkpoint's window matters to the next span's bytes).
"""

from __future__ import annotations

import gzip
import io
import random
import struct
import tarfile
import zlib
from pathlib import Path

_CL_ORDER = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15]


class _Bits:
    """LSB-first bit writer (RFC 1951 3.1.1)."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.acc = 0
        self.n = 0

    def put(self, value: int, nbits: int) -> None:
        self.acc |= value << self.n
        self.n += nbits
        while self.n >= 8:
            self.out.append(self.acc & 0xFF)
            self.acc >>= 8
            self.n -= 8

    def code(self, code: str) -> None:
        """A Huffman code, written most significant bit first."""
        for c in code:
            self.put(int(c), 1)

    def zeros(self, nbits: int) -> None:
        while nbits and self.n:
            self.put(0, 1)
            nbits -= 1
        self.out += bytes(nbits // 8)
        self.put(0, nbits % 8)

    def align(self) -> None:
        if self.n:
            self.put(0, 8 - self.n)


def _zeros_block(bw: _Bits, count: int) -> None:
    """One final dynamic block producing ``count`` zero bytes: literals 0 (code 10) then
    matches of length 258 (code 0), distance 1 (code 0), then end of block (code 11)."""
    lit = count % 258 or 258
    matches = (count - lit) // 258
    assert lit + 258 * matches == count and lit >= 1
    bw.put(1, 1)  # BFINAL
    bw.put(2, 2)  # dynamic Huffman
    bw.put(286 - 257, 5)
    bw.put(2 - 1, 5)
    bw.put(19 - 4, 4)
    cl_lengths = {0: 2, 1: 2, 2: 2, 18: 2}  # codes 00, 01, 10, 11
    for sym in _CL_ORDER:
        bw.put(cl_lengths.get(sym, 0), 3)
    cl = {0: "00", 1: "01", 2: "10", 18: "11"}

    def zero_run(n: int) -> None:
        while n:
            k = min(n, 138)
            assert k >= 11
            bw.code(cl[18])
            bw.put(k - 11, 7)
            n -= k

    bw.code(cl[2])      # literal 0: length 2
    zero_run(255)       # literals 1..255 unused
    bw.code(cl[2])      # 256 (end of block): 2
    zero_run(28)        # lengths 257..284 unused
    bw.code(cl[1])      # 285 (length 258): 1
    bw.code(cl[1])      # distance code 0: 1
    bw.code(cl[1])      # distance code 1: 1 (makes the code complete)
    for _ in range(lit):
        bw.code("10")
    bw.zeros(2 * matches)
    bw.code("11")


def one_block_layer(path: Path, file_size: int) -> int:
    """Writes the layer; returns its uncompressed (tar) size."""
    ti = tarfile.TarInfo("zeros.bin")
    ti.size = file_size
    header = ti.tobuf(tarfile.GNU_FORMAT)
    assert len(header) == 512
    zeros = -(-file_size // 512) * 512 + 1024  # data, padding, end-of-archive blocks
    bw = _Bits()
    bw.put(0, 1)  # a stored block for the header
    bw.put(0, 2)
    bw.align()
    bw.out += struct.pack("<HH", 512, 0xFFFF ^ 512) + header
    _zeros_block(bw, zeros)
    bw.align()
    crc = zlib.crc32(header)
    chunk = bytes(1 << 20)
    left = zeros
    while left:
        n = min(left, len(chunk))
        crc = zlib.crc32(chunk[:n] if n < len(chunk) else chunk, crc)
        left -= n
    total = 512 + zeros
    path.write_bytes(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + bytes(bw.out)
                     + struct.pack("<II", crc, total & 0xFFFFFFFF))
    return total


def text_layer(path: Path, nfiles: int, file_size: int, seed: int = 3) -> bytes:
    """A gzip tar of text files; returns the tar bytes."""
    rng = random.Random(seed)
    words = [bytes(rng.choice(b"abcdefghijklmnop") for _ in range(rng.randrange(2, 9)))
             for _ in range(400)]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for i in range(nfiles):
            data = b" ".join(rng.choice(words) for _ in range(file_size // 5))[:file_size]
            ti = tarfile.TarInfo(f"f{i}.txt")
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    path.write_bytes(gzip.compress(buf.getvalue(), 6))
    return buf.getvalue()
