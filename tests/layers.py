"""Test layers for the indexing core: tar streams and gzip blobs, built here with the standard
library (and pigz when installed), from real data (a slice of the Python standard library) and
hand-made edge cases.

Every layer is a `Layer`: `blob` is the layer as stored in a registry (gzip or plain tar),
`tar` the uncompressed stream (what `gunzip` gives; includes tarfile's 10 KiB record padding).
`Catalog` builds layers lazily, once, and writes them into a directory.

The module also carries the tar-side oracle: `expected_entries` lists what Go's archive/tar
returns for a tar stream (per soci-format.md 2), built from Python's `tarfile` plus a small raw
look at extension headers where tarfile differs from Go on purpose (it strips trailing slashes
from directory names, hides PAX global headers and merges their records into later members).
"""

from __future__ import annotations

import functools
import gzip
import io
import os
import random
import shutil
import struct
import subprocess
import sysconfig
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

BLOCK = 512
RECORD = 10240
KiB = 1024
MiB = 1024 * 1024


@dataclass
class Layer:
    name: str
    blob: bytes                 # the layer blob (gzip or plain tar bytes)
    tar: bytes                  # the uncompressed stream
    compression: str            # "gzip" | "uncompressed"
    spans: tuple = (64 * KiB,)  # span sizes the tests index this layer with
    multi_member: bool = False
    small: bool = False         # cheap enough for byte-by-byte feeding
    path: Path | None = None
    notes: str = ""


# ==============================================================================================
# raw tar headers (hand-made, for the edge cases tarfile will not write)


def _octal(value: int, width: int) -> bytes:
    s = b"%0*o" % (width - 1, value)
    if len(s) > width - 1:
        raise ValueError("does not fit")
    return s + b"\0"


def base256(value: int, width: int) -> bytes:
    """GNU base-256 numeric field (two's complement, top bit of the first byte set)."""
    v = value % (256 ** width) if value < 0 else value
    raw = bytearray(v.to_bytes(width, "big"))
    if value >= 0:
        if raw[0] & 0x80:
            raise ValueError("does not fit")
        raw[0] |= 0x80
    return bytes(raw)


def checksum(header: bytes) -> int:
    return sum(header[:148]) + 8 * 32 + sum(header[156:512])


def fix_checksum(header: bytes) -> bytes:
    h = bytearray(header[:BLOCK])
    h[148:156] = b"%06o\0 " % checksum(bytes(h))
    return bytes(h)


def raw_header(name: bytes, *, size: int = 0, typeflag: bytes = b"0", mode: int = 0o644,
               uid: int = 0, gid: int = 0, mtime: int = 1_600_000_000, linkname: bytes = b"",
               uname: bytes = b"root", gname: bytes = b"root", magic: bytes = b"ustar\x0000",
               devmajor: int = 0, devminor: int = 0, prefix: bytes = b"",
               size_field: bytes | None = None) -> bytes:
    h = bytearray(BLOCK)
    h[0:len(name)] = name
    h[100:108] = _octal(mode, 8)
    h[108:116] = _octal(uid, 8)
    h[116:124] = _octal(gid, 8)
    h[124:136] = size_field if size_field is not None else _octal(size, 12)
    h[136:148] = _octal(mtime, 12)
    h[156:157] = typeflag
    h[157:157 + len(linkname)] = linkname
    if magic:
        h[257:265] = magic
        h[265:265 + len(uname)] = uname
        h[297:297 + len(gname)] = gname
        h[329:337] = _octal(devmajor, 8)
        h[337:345] = _octal(devminor, 8)
        h[345:345 + len(prefix)] = prefix
    return fix_checksum(bytes(h))


def pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % BLOCK)


def pax_record(key: str, value: str) -> bytes:
    body = b" " + key.encode() + b"=" + value.encode() + b"\n"
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n += 1
    return str(n).encode() + body


def pax_member(records: bytes, typeflag: bytes = b"x", name: bytes = b"PaxHeaders/x") -> bytes:
    return raw_header(name, size=len(records), typeflag=typeflag, mtime=0) + pad(records)


def file_member(name: bytes, data: bytes, **kw) -> bytes:
    return raw_header(name, size=len(data), **kw) + pad(data)


def tarinfo_member(ti: tarfile.TarInfo, data: bytes = b"", fmt=tarfile.PAX_FORMAT) -> bytes:
    """One member as tarfile writes it (extension headers included), data padded."""
    if ti.type in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE):
        ti.size = len(data)
    return ti.tobuf(fmt, "utf-8", "surrogateescape") + pad(data)


def finish(members: list, zero_blocks: int = 2, record: bool = True) -> bytes:
    data = b"".join(members) + bytes(BLOCK * zero_blocks)
    if record:
        data += bytes(-len(data) % RECORD)
    return data


# ==============================================================================================
# content


@functools.cache
def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


@functools.cache
def text_corpus() -> bytes:
    """A few hundred KiB of real text (stdlib sources)."""
    out = []
    total = 0
    for p in sorted((stdlib_dir() / "email").rglob("*.py")):
        b = p.read_bytes()
        out.append(b)
        total += len(b)
        if total > 400 * KiB:
            break
    return b"".join(out)


def text(n: int, seed: int = 0) -> bytes:
    corpus = text_corpus()
    start = (seed * 7919) % max(1, len(corpus) - 1)
    rep = corpus[start:] + corpus
    while len(rep) < n:
        rep += corpus
    return rep[:n]


def mixed_bytes(n: int, seed: int) -> bytes:
    """Alternating pseudo-random and text chunks: exercises stored and Huffman blocks."""
    rnd = random.Random(seed)
    out = bytearray()
    i = 0
    while len(out) < n:
        if i % 2 == 0:
            out += rnd.randbytes(rnd.randint(16 * KiB, 80 * KiB))
        else:
            out += text(rnd.randint(32 * KiB, 128 * KiB), seed=i)
        i += 1
    return bytes(out[:n])


# ==============================================================================================
# tar streams


STDLIB_PACKAGES = ("json", "email", "asyncio", "unittest")
STDLIB_CAP = 4 * MiB + 512 * KiB


@functools.cache
def stdlib_tar(fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """Real files: the json, email, asyncio and unittest packages, then lib-dynload .so files
    until about 4.5 MiB, with their real metadata, as tarfile writes them."""
    root = stdlib_dir()
    paths = []
    for pkg in STDLIB_PACKAGES:
        base = root / pkg
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            paths.append(Path(dirpath))
            paths.extend(Path(dirpath) / f for f in sorted(filenames) if not f.endswith(".pyc"))
    dyn = root / "lib-dynload"
    if dyn.is_dir():
        paths.append(dyn)
        paths.extend(sorted(p for p in dyn.iterdir() if p.is_file()))
    buf = io.BytesIO()
    total = 0
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for p in paths:
            st = p.lstat()
            if p.is_file():
                if total + st.st_size > STDLIB_CAP:
                    continue
                total += st.st_size
            arc = "usr/lib/python3/" + str(p.relative_to(root))
            tf.add(str(p), arcname=arc, recursive=False)
    return buf.getvalue()


CONTENT = {
    "hosts": b"127.0.0.1 localhost\n::1 localhost\n",
    "one": b"x",
    "b512": bytes(range(256)) * 2,
    "b513": bytes(range(256)) * 2 + b"!",
}


def _ti(name: str, type_=tarfile.REGTYPE, **kw) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = type_
    ti.mtime = kw.pop("mtime", 1_650_000_000)
    ti.mode = kw.pop("mode", 0o755 if type_ == tarfile.DIRTYPE else 0o644)
    ti.uname = kw.pop("uname", "root")
    ti.gname = kw.pop("gname", "root")
    for k, v in kw.items():
        setattr(ti, k, v)
    return ti


def edge_members(fmt: int) -> list:
    """Members covering the tar edge cases; PAX-only features only when fmt is PAX."""
    pax = fmt == tarfile.PAX_FORMAT
    long150 = "long/" + "n" * 140 + "/file.txt"          # > 100 chars
    long300 = "deep/" + "/".join(["d" * 60] * 4) + "/" + "f" * 40 + ".bin"   # > 255 chars
    longdir = "dirs/" + "D" * 120                          # > 100 chars directory
    longlink = "target/" + "t" * 200                       # > 100 chars link target
    m = [
        tarinfo_member(_ti("./", tarfile.DIRTYPE), fmt=fmt),
        tarinfo_member(_ti("./etc", tarfile.DIRTYPE), fmt=fmt),
        tarinfo_member(_ti("./etc/hosts"), CONTENT["hosts"], fmt=fmt),
        tarinfo_member(_ti("etc/empty"), b"", fmt=fmt),
        tarinfo_member(_ti("etc/one"), CONTENT["one"], fmt=fmt),
        tarinfo_member(_ti("etc/b512"), CONTENT["b512"], fmt=fmt),
        tarinfo_member(_ti("etc/b513", mode=0o4755), CONTENT["b513"], fmt=fmt),
        tarinfo_member(_ti("tmp", tarfile.DIRTYPE, mode=0o1777), fmt=fmt),
        tarinfo_member(_ti(long150), text(3000, 1), fmt=fmt),
        tarinfo_member(_ti(long300), text(70000, 2), fmt=fmt),
        tarinfo_member(_ti(longdir, tarfile.DIRTYPE), fmt=fmt),
        tarinfo_member(_ti("links/sym", tarfile.SYMTYPE, linkname="../etc/hosts"), fmt=fmt),
        tarinfo_member(_ti("links/longsym", tarfile.SYMTYPE, linkname=longlink), fmt=fmt),
        tarinfo_member(_ti("links/hard", tarfile.LNKTYPE, linkname="./etc/hosts"), fmt=fmt),
        tarinfo_member(_ti("links/longhard", tarfile.LNKTYPE, linkname=long150), fmt=fmt),
        tarinfo_member(_ti("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666),
                       fmt=fmt),
        tarinfo_member(_ti("dev/sda", tarfile.BLKTYPE, devmajor=8, devminor=0, mode=0o660),
                       fmt=fmt),
        tarinfo_member(_ti("dev/bigdev", tarfile.CHRTYPE, devmajor=254, devminor=65535),
                       fmt=fmt),
        tarinfo_member(_ti("run/fifo", tarfile.FIFOTYPE), fmt=fmt),
        tarinfo_member(_ti("usr/.wh.removed"), b"", fmt=fmt),
        tarinfo_member(_ti("usr/lib", tarfile.DIRTYPE), fmt=fmt),
        tarinfo_member(_ti("usr/lib/.wh..wh..opq"), b"", fmt=fmt),
        tarinfo_member(_ti("owners/file", uid=1000, gid=1001, uname="user", gname="group"),
                       b"owned\n", fmt=fmt),
        tarinfo_member(_ti("owners/bigid", uid=8 ** 7 + 5, gid=3_000_000, uname="big",
                           gname="big"), b"big ids\n", fmt=fmt),
        tarinfo_member(_ti("times/old", mtime=-1000), b"before 1970\n", fmt=fmt),
        tarinfo_member(_ti("times/future", mtime=8 ** 11 + 10), b"far future\n", fmt=fmt),
        tarinfo_member(_ti("big/mixed.bin"), mixed_bytes(200 * KiB, 5), fmt=fmt),
    ]
    if pax:
        m += [
            tarinfo_member(_ti("xattr/file", pax_headers={
                "SCHILY.xattr.user.foo": "bar",
                "SCHILY.xattr.security.selinux": "system_u:object_r:etc_t:s0",
                "LIBARCHIVE.xattr.user.foo": "YmFy"}), b"with xattrs\n", fmt=fmt),
            tarinfo_member(_ti("times/frac9", mtime=1_700_000_000,
                               pax_headers={"mtime": "1700000000.123456789"}), b"a", fmt=fmt),
            tarinfo_member(_ti("times/frac1", mtime=1_700_000_000,
                               pax_headers={"mtime": "1700000000.5"}), b"b", fmt=fmt),
            tarinfo_member(_ti("times/frac12", mtime=1_600_000_000,
                               pax_headers={"mtime": "1600000000.123456789987",
                                            "atime": "1600000001.25"}), b"c", fmt=fmt),
            tarinfo_member(_ti("unicode/ünïcödé-文件.txt"), "grüße\n".encode(), fmt=fmt),
            tarinfo_member(_ti("owners/longname", uname="u" * 40, gname="g" * 40), b"x",
                           fmt=fmt),
            tarinfo_member(_ti("pax/custom", pax_headers={"comment": "hello world",
                                                          "SOCI.empty": ""}), b"d", fmt=fmt),
        ]
    return m


@functools.cache
def edge_tar(fmt: int) -> bytes:
    return finish(edge_members(fmt))


@functools.cache
def ustar_tar() -> bytes:
    """USTAR format: names split into prefix + name (Go joins them with '/')."""
    name = "p" * 120 + "/q" * 10 + "/file.txt"
    assert 100 < len(name) <= 255
    m = [
        tarinfo_member(_ti("p" * 60 + "/" + "r" * 60, tarfile.DIRTYPE),
                       fmt=tarfile.USTAR_FORMAT),
        tarinfo_member(_ti(name), text(5000, 3), fmt=tarfile.USTAR_FORMAT),
        tarinfo_member(_ti("short"), b"short\n", fmt=tarfile.USTAR_FORMAT),
    ]
    return finish(m)


@functools.cache
def global_tar() -> bytes:
    """PAX global headers ('g'): at the start and in the middle. Go returns each as an entry
    and does not merge its records into later entries."""
    g1 = b"".join([pax_record("comment", "first global"), pax_record("SOCI.test", "g1")])
    g2 = pax_record("comment", "second global")
    m = [
        pax_member(g1, b"g", b"pax_global_header"),
        tarinfo_member(_ti("a.txt"), b"alpha\n"),
        tarinfo_member(_ti("b.txt", mtime=1_700_000_000,
                           pax_headers={"mtime": "1700000000.25"}), text(2000, 4)),
        pax_member(g2, b"g", b"././@PaxHeader"),
        tarinfo_member(_ti("c", tarfile.DIRTYPE)),
        tarinfo_member(_ti("c/d.txt"), b"delta\n"),
    ]
    return finish(m)


@functools.cache
def v7_tar() -> bytes:
    """Hand-patched headers: '\\0' typeflag with ustar magic, a true V7 header (no magic),
    a base-256 encoded size, a '7' (contiguous) entry, and octal fields padded with spaces."""
    m = [
        file_member(b"v7/areg-ustar", b"old style regular\n", typeflag=b"\0"),
        file_member(b"v7/areg-v7", text(1500, 6), typeflag=b"\0", magic=b""),
        raw_header(b"v7/olddir/", typeflag=b"\0", mode=0o755, magic=b""),   # V7 directory
        file_member(b"v7/b256size", b"size in base 256\n",
                    size_field=base256(len(b"size in base 256\n"), 12)),
        file_member(b"v7/contig", b"contiguous file\n", typeflag=b"7"),
    ]
    # octal fields written with leading spaces and a trailing space (old writers)
    h = bytearray(raw_header(b"v7/spaces", size=6))
    h[100:108] = b"   644 \0"
    h[124:136] = b"6 ".rjust(12)
    m.append(fix_checksum(bytes(h)) + pad(b"spaces"))
    m.append(tarinfo_member(_ti("v7/after"), b"after\n"))
    return finish(m)


def _edge_small_members():
    return [
        tarinfo_member(_ti("d", tarfile.DIRTYPE)),
        tarinfo_member(_ti("d/f1"), b"one\n"),
        tarinfo_member(_ti("d/f2"), text(700, 7)),
    ]


@functools.cache
def noeof_tar() -> bytes:
    """No end-of-archive zero blocks at all."""
    return finish(_edge_small_members(), zero_blocks=0, record=False)


@functools.cache
def onezero_tar() -> bytes:
    """A single zero block, then the end."""
    return finish(_edge_small_members(), zero_blocks=1, record=False)


@functools.cache
def bigfile_tar() -> bytes:
    """A 3 MiB file of pseudo-random + text data (many 64 KiB spans) between small files."""
    m = [
        tarinfo_member(_ti("big", tarfile.DIRTYPE)),
        tarinfo_member(_ti("big/before"), b"before\n"),
        tarinfo_member(_ti("big/file.bin"), mixed_bytes(3 * MiB, 11)),
        tarinfo_member(_ti("big/after"), text(10000, 8)),
    ]
    return finish(m)


@functools.cache
def empty_tar() -> bytes:
    """What tarfile writes for an archive with no members (two zero blocks + record pad)."""
    buf = io.BytesIO()
    tarfile.open(fileobj=buf, mode="w").close()
    return buf.getvalue()


# ==============================================================================================
# gzip writers


def gz_module(data: bytes, level: int) -> bytes:
    return gzip.compress(data, compresslevel=level, mtime=0)


def gz_zlib(data: bytes, level: int = 6, mem_level: int = 8, flush_every: int = 0,
            flushes=(zlib.Z_SYNC_FLUSH,), strategy: int = zlib.Z_DEFAULT_STRATEGY,
            flush_first: bool = False) -> bytes:
    """Single gzip member written by zlib (wbits 31), optionally flushing every
    `flush_every` input bytes, cycling through `flushes` (sync/full flushes add empty stored
    blocks, Z_BLOCK-style partial flushes pad with empty fixed blocks)."""
    c = zlib.compressobj(level, zlib.DEFLATED, 31, mem_level, strategy)
    out = []
    if flush_first:
        out.append(c.flush(zlib.Z_SYNC_FLUSH))
    if flush_every:
        for k, i in enumerate(range(0, len(data), flush_every)):
            out.append(c.compress(data[i:i + flush_every]))
            out.append(c.flush(flushes[k % len(flushes)]))
    else:
        out.append(c.compress(data))
    out.append(c.flush(zlib.Z_FINISH))
    return b"".join(out)


def gz_headers(data: bytes, *, fname: bytes | None = b"layer.tar", extra: bytes | None = None,
               comment: bytes | None = None, hcrc: bool = False, ftext: bool = False,
               level: int = 6, mtime: int = 1_700_000_000, os_byte: int = 3) -> bytes:
    """A gzip member with a hand-written header: FEXTRA / FNAME / FCOMMENT / FHCRC / FTEXT."""
    flg = 0
    rest = b""
    if ftext:
        flg |= 1
    if extra is not None:
        flg |= 4
        rest += struct.pack("<H", len(extra)) + extra
    if fname is not None:
        flg |= 8
        rest += fname + b"\0"
    if comment is not None:
        flg |= 16
        rest += comment + b"\0"
    if hcrc:
        flg |= 2
    head = b"\x1f\x8b\x08" + bytes([flg]) + struct.pack("<I", mtime) + bytes([0, os_byte]) + rest
    if hcrc:
        head += struct.pack("<H", zlib.crc32(head) & 0xFFFF)
    c = zlib.compressobj(level, zlib.DEFLATED, -15)
    body = c.compress(data) + c.flush()
    return head + body + struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)


def gz_multi(data: bytes, seed: int, parts: int = 7, empty_member: bool = True) -> bytes:
    """Concatenated gzip members over slices of `data` cut at arbitrary (not entry-aligned)
    points, with varying levels and headers, plus an empty member in the middle."""
    rnd = random.Random(seed)
    cuts = sorted(rnd.sample(range(1, len(data)), parts - 1))
    bounds = [0] + cuts + [len(data)]
    members = []
    for i in range(parts):
        piece = data[bounds[i]:bounds[i + 1]]
        kind = i % 4
        if kind == 0:
            members.append(gz_module(piece, 6))
        elif kind == 1:
            members.append(gz_headers(piece, fname=b"part%d" % i, extra=b"XY\x02\x00ab",
                                      level=1))
        elif kind == 2:
            members.append(gz_module(piece, 9))
        else:
            members.append(gz_zlib(piece, level=6, mem_level=2))
        if empty_member and i == parts // 2:
            members.append(gz_module(b"", 6))
    return b"".join(members)


def have_pigz() -> bool:
    return shutil.which("pigz") is not None


def gz_pigz(data: bytes, *args: str) -> bytes:
    """pigz output (one member; -b sets the independent-block size in KiB, -i makes blocks
    independent). Raises FileNotFoundError when pigz is not installed."""
    exe = shutil.which("pigz")
    if exe is None:
        raise FileNotFoundError("pigz")
    r = subprocess.run([exe, "-c", "-n", "-p", "2", *args], input=data, capture_output=True,
                       check=True)
    return r.stdout


# ==============================================================================================
# the catalog of layers


def _gz(name, tar_fn, gz_fn, spans=(64 * KiB,), **kw):
    return name, lambda: (gz_fn(tar_fn()), tar_fn(), "gzip"), spans, kw


def _plain(name, tar_fn, spans=(64 * KiB,), **kw):
    return name, lambda: (tar_fn(), tar_fn(), "uncompressed"), spans, kw


PAX, GNU = tarfile.PAX_FORMAT, tarfile.GNU_FORMAT
_std_pax = functools.partial(stdlib_tar, PAX)
_std_gnu = functools.partial(stdlib_tar, GNU)
_edge_pax = functools.partial(edge_tar, PAX)
_edge_gnu = functools.partial(edge_tar, GNU)
_SP = (32 * KiB, 1 * MiB)

_SPECS = [
    # plain tar layers
    _plain("stdlib-pax.tar", _std_pax, (64 * KiB, 1 * MiB)),
    _plain("stdlib-gnu.tar", _std_gnu, (1 * MiB,)),
    _plain("edge-pax.tar", _edge_pax, (4 * KiB,), small=True),
    _plain("edge-gnu.tar", _edge_gnu, (4 * KiB,), small=True),
    _plain("ustar.tar", ustar_tar, small=True),
    _plain("global.tar", global_tar, small=True),
    _plain("v7.tar", v7_tar, small=True),
    _plain("noeof.tar", noeof_tar, small=True),
    _plain("onezero.tar", onezero_tar, small=True),
    _plain("bigfile.tar", bigfile_tar, (64 * KiB,)),
    _plain("empty.tar", empty_tar, small=True),
    # gzip layers from real data
    _gz("stdlib-pax.gz1", _std_pax, lambda d: gz_module(d, 1), _SP),
    _gz("stdlib-pax.gz6", _std_pax, lambda d: gz_module(d, 6), _SP),
    _gz("stdlib-pax.gz9", _std_pax, lambda d: gz_module(d, 9), _SP),
    _gz("stdlib-gnu.gz6", _std_gnu, lambda d: gz_module(d, 6), (64 * KiB,)),
    _gz("stdlib-pax.stored", _std_pax, lambda d: gz_module(d, 0), _SP),
    _gz("stdlib-pax.memlevel1", _std_pax, lambda d: gz_zlib(d, 6, mem_level=1), _SP),
    _gz("stdlib-pax.fname-fextra", _std_pax,
        lambda d: gz_headers(d, fname=b"layer.tar", extra=b"SC\x04\x00soci"), _SP),
    _gz("stdlib-pax.allflags", _std_pax,
        lambda d: gz_headers(d, fname=b"l\xe4yer.tar", extra=b"AB\x00\x00" + bytes(300),
                             comment=b"a comment", hcrc=True, ftext=True, level=9), _SP),
    _gz("stdlib-pax.syncflush", _std_pax,
        lambda d: gz_zlib(d, 6, flush_every=100_000,
                          flushes=(zlib.Z_SYNC_FLUSH, zlib.Z_FULL_FLUSH)), _SP),
    _gz("stdlib-pax.multi", _std_pax, lambda d: gz_multi(d, seed=42, parts=9), _SP,
        multi_member=True),
    _gz("stdlib-pax.pigz-b32", _std_pax, lambda d: gz_pigz(d, "-b", "32"), _SP),
    _gz("stdlib-pax.pigz-b32-i", _std_pax, lambda d: gz_pigz(d, "-b", "32", "-i"), _SP),
    # gzip layers from the edge cases
    _gz("edge-pax.gz", _edge_pax, lambda d: gz_module(d, 6), (4 * KiB,), small=True),
    _gz("edge-gnu.gz", _edge_gnu, lambda d: gz_zlib(d, 6, mem_level=2), (4 * KiB,),
        small=True),
    _gz("ustar.gz", ustar_tar, lambda d: gz_module(d, 6), small=True),
    _gz("global.gz", global_tar, lambda d: gz_module(d, 9), small=True),
    _gz("v7.gz", v7_tar, lambda d: gz_module(d, 1), small=True),
    _gz("noeof.gz", noeof_tar, lambda d: gz_module(d, 6), small=True),
    _gz("onezero.gz", onezero_tar, lambda d: gz_module(d, 6), small=True),
    _gz("bigfile.gz", bigfile_tar, lambda d: gz_module(d, 6), (64 * KiB,)),
    _gz("bigfile.multi", bigfile_tar, lambda d: gz_multi(d, seed=7, parts=12), (64 * KiB,),
        multi_member=True),
    _gz("empty.gz", empty_tar, lambda d: gz_module(d, 6), small=True),
    _gz("zeros1024.gz", lambda: bytes(1024), lambda d: gz_module(d, 6), small=True),
    _gz("edge-pax.flush", _edge_pax,
        lambda d: gz_zlib(d, 6, flush_every=3000,
                          flushes=(zlib.Z_SYNC_FLUSH, zlib.Z_FULL_FLUSH, zlib.Z_PARTIAL_FLUSH,
                                   zlib.Z_BLOCK)),
        (1, 1000, 8 * KiB), small=True),
]

SPECS = {name: (build, spans, kw) for name, build, spans, kw in _SPECS}
PIGZ_LAYERS = {n for n in SPECS if ".pigz" in n}
ALL = list(SPECS)
GZIP = [n for n in ALL if not n.endswith(".tar")]
PLAIN = [n for n in ALL if n.endswith(".tar")]
SMALL = [n for n in ALL if SPECS[n][2].get("small")]
MULTI = [n for n in ALL if SPECS[n][2].get("multi_member")]


def need(catalog, name):
    """The layer `name`; skips only when an external tool it needs (pigz) is missing."""
    import pytest

    if name in PIGZ_LAYERS and not have_pigz():
        pytest.skip("pigz is not installed")
    return catalog.get(name)


def layer_span_params(names):
    """pytest params (name, span_size) for every span size a layer is tested with."""
    import pytest

    return [pytest.param(n, s, id=f"{n}@{s}") for n in names for s in SPECS[n][1]]


class Catalog:
    """Builds layers on demand (once) and writes them under `directory`."""

    def __init__(self, directory):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._layers: dict = {}
        self._walks: dict = {}

    def get(self, name: str) -> Layer:
        if name not in self._layers:
            build, spans, kw = SPECS[name]
            blob, tar, comp = build()
            layer = Layer(name, blob, tar, comp, spans, **kw)
            layer.path = self.dir / name
            layer.path.write_bytes(blob)
            self._layers[name] = layer
        return self._layers[name]

    def walk(self, name: str):
        """The deflate oracle's walk of a gzip layer (cached)."""
        from deflate_oracle import walk_gzip

        if name not in self._walks:
            self._walks[name] = walk_gzip(self.get(name).blob)
        return self._walks[name]


# ==============================================================================================
# tar oracle: what Go's archive/tar returns, from tarfile + a raw look at extension headers

TYPE_NAMES = {
    b"0": "reg", b"\0": "reg", b"7": "reg", b"1": "hardlink", b"2": "symlink", b"3": "char",
    b"4": "block", b"5": "dir", b"6": "fifo", b"g": "pax_global", b"S": "sparse",
}
HEADER_ONLY = {b"1", b"2", b"3", b"4", b"5", b"6"}   # Go's isHeaderOnlyType


def _nts(b: bytes) -> str:
    return b.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _num(field: bytes) -> int:
    if field and field[0] & 0x80:
        v = int.from_bytes(field, "big")
        if field[0] & 0x40:
            return v - 256 ** len(field)
        return v & ~(0x80 << (8 * (len(field) - 1)))
    s = field.split(b"\0", 1)[0].strip(b" ")
    return int(s, 8) if s else 0


def parse_pax_records(data: bytes) -> dict:
    """Our own PAX record parser ("%d %s=%s\\n"), for the oracle."""
    res = {}
    pos = 0
    while pos < len(data):
        sp = data.index(b" ", pos)
        n = int(data[pos:sp])
        rec = data[sp + 1:pos + n - 1]
        assert data[pos + n - 1:pos + n] == b"\n"
        k, _, v = rec.partition(b"=")
        res[k.decode("utf-8", "surrogateescape")] = v.decode("utf-8", "surrogateescape")
        pos += n
    return res


def extension_blocks(tar: bytes, start: int, end: int):
    """Parse the extension headers ('x', 'g', 'L', 'K') in tar[start:end]; returns a list of
    (offset, typeflag, header_bytes, payload)."""
    res = []
    pos = start
    while pos < end:
        h = tar[pos:pos + BLOCK]
        size = _num(h[124:136])
        res.append((pos, h[156:157], h, tar[pos + BLOCK:pos + BLOCK + size]))
        pos += BLOCK + size + (-size % BLOCK)
    assert pos == end, (pos, end)
    return res


def go_pax_time(s: str):
    """(seconds, nanoseconds in [0, 1e9)) as Go's parsePAXTime + time.Unix would give."""
    neg = s.startswith("-")
    ss, _, sn = s.partition(".")
    secs = int(ss)
    ns = int((sn + "0" * 9)[:9]) if sn else 0
    if neg and ns:
        secs, ns = secs - 1, 1_000_000_000 - ns
    return secs, ns


def data_end(offset_data: int, typeflag: bytes, size: int) -> int:
    if typeflag in HEADER_ONLY:
        return offset_data
    return offset_data + size + (-size % BLOCK)


def expected_entries(tar: bytes) -> list:
    """One dict per entry Go's archive/tar would return for this stream, in archive order.
    Keys match the TarEntry attributes."""
    entries = []
    prev_end = 0
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as tf:
        members = tf.getmembers()
    for ti in members:
        own_pax: dict = {}
        longname = longlink = None
        # PAX global headers tarfile swallowed between the previous member and this one
        for off, tf_, h, payload in extension_blocks(tar, prev_end, ti.offset):
            assert tf_ == b"g", (off, tf_)
            recs = parse_pax_records(payload)
            entries.append(dict(
                name=recs.get("path", _nts(h[0:100])), type="pax_global", typeflag="g",
                header_offset=off, offset=off + BLOCK + len(payload), size=0, pax=recs,
                sparse=False, global_header=True))
        for off, tf_, _h, payload in extension_blocks(tar, ti.offset, ti.offset_data - BLOCK):
            if tf_ == b"x":
                own_pax.update(parse_pax_records(payload))
            elif tf_ == b"L":
                longname = _nts(payload)
            elif tf_ == b"K":
                longlink = _nts(payload)
            else:
                raise AssertionError(f"unexpected extension header {tf_!r} at {off}")
        raw = tar[ti.offset_data - BLOCK:ti.offset_data]
        typeflag = raw[156:157]
        type_name = TYPE_NAMES.get(typeflag, "unknown")
        if "path" in own_pax:
            name = own_pax["path"]
        elif longname is not None:
            name = longname
        else:
            name = _nts(raw[0:100])
            prefix = _nts(raw[345:500]) if raw[257:265] == b"ustar\x0000" else ""
            if prefix:
                name = prefix + "/" + name
        # cross-check the raw view against tarfile (which strips a directory's trailing '/')
        assert name.rstrip("/") == ti.name.rstrip("/"), (name, ti.name)
        if typeflag == b"\0":       # Go normalises old-style regular files:
            typeflag = b"5" if name.endswith("/") else b"0"   # trailing '/' marks a directory
            type_name = TYPE_NAMES[typeflag]
        if longlink is not None:
            assert longlink == ti.linkname
        if "mtime" in own_pax:
            mtime, mtime_ns = go_pax_time(own_pax["mtime"])
        else:
            mtime, mtime_ns = int(ti.mtime), 0
        entries.append(dict(
            name=name, type=type_name,
            typeflag=typeflag.decode("latin-1"), header_offset=ti.offset,
            offset=ti.offset_data, size=ti.size, linkname=ti.linkname, mode=ti.mode,
            uid=ti.uid, gid=ti.gid, uname=ti.uname, gname=ti.gname, mtime=mtime,
            mtime_ns=mtime_ns, devmajor=ti.devmajor, devminor=ti.devminor, pax=own_pax,
            sparse=False, global_header=False, tarinfo=ti))
        prev_end = data_end(ti.offset_data, typeflag, ti.size)
    # trailing global headers (none in our layers) would be lost: make sure there are none
    return entries


def expected_uncompressed_size(tar: bytes) -> int:
    """soci-format.md 2.4: Go's tar reader position at io.EOF: end of the last member's
    512-aligned data, plus each end-of-archive zero block actually read (0, 1 or 2)."""
    ents = [e for e in expected_entries(tar) if not e["global_header"]]
    end = 0
    if ents:
        last = ents[-1]
        end = data_end(last["offset"], last["typeflag"].encode("latin-1"), last["size"])
    for _ in range(2):
        blk = tar[end:end + BLOCK]
        if len(blk) == BLOCK and blk == bytes(BLOCK):
            end += BLOCK
        else:
            break
    return end
