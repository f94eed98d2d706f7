#!/usr/bin/env python3
"""Writes seed inputs for the libFuzzer targets in csrc/fuzz_*.c (see fuzz/run.sh).

    python fuzz/make_seeds.py OUT_DIR      -> OUT_DIR/{tar,index,blob,ztoc,inflate}/<name>

Seeds are made at run time, never committed. Each target's input format is described at the
top of its C file:
  tar:   [split seed][tar stream]
  index: [config][split seed][layer: tar or gzip]
  blob:  [14-byte control][blob][compressed bytes] (raw) or the compact blob encoding
Valid tars come from Python's tarfile (ustar, GNU, PAX: long names, links, devices, PAX
global headers, base-256 numbers) and from GNU tar if present (v7, sparse files in all
flavours). The (blob, gzip) pairs need soci_native (the built package); without it the blob
target gets only hand-made seeds and a warning is printed.
"""

from __future__ import annotations

import gzip
import io
import os
import random
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import zlib
from pathlib import Path

MAX_TAR = 60 * 1024  # tar / index targets run with -max_len=65536
MAX_BLOB = 256 * 1024  # blob target's -max_len (run.sh)
WINSIZE = 32768
CP_SIZE = 8 + 8 + 1 + WINSIZE


def _info(name: str, **kw) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.mtime = kw.pop("mtime", 1700000000)
    ti.mode = kw.pop("mode", 0o644)
    ti.uname, ti.gname = "user", "group"
    for k, v in kw.items():
        setattr(ti, k, v)
    return ti


def _tar(fmt: int, members: list[tuple[tarfile.TarInfo, bytes | None]], **kw) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, **kw) as tf:
        for ti, data in members:
            if data is not None:
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
            else:
                tf.addfile(ti)
    return buf.getvalue()


def _all_kinds(long: bool) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    deep = "d" * 60 + "/" + "e" * 70 + "/" if long else "dir/"
    return [
        (_info(deep, type=tarfile.DIRTYPE, mode=0o755), None),
        (_info(deep + "file.txt"), b"hello world\n" * 5),
        (_info(deep + "empty"), b""),
        (_info(deep + "block-sized"), bytes(range(256)) * 2),
        (
            _info(
                "link-to-file",
                type=tarfile.SYMTYPE,
                linkname=deep + "file.txt" + ("x" * 120 if long else ""),
            ),
            None,
        ),
        (_info("hard", type=tarfile.LNKTYPE, linkname=deep + "file.txt"), None),
        (_info("dev/null", type=tarfile.CHRTYPE, devmajor=1, devminor=3), None),
        (_info("dev/sda", type=tarfile.BLKTYPE, devmajor=8, devminor=0), None),
        (_info("pipe", type=tarfile.FIFOTYPE), None),
    ]


def trim(data: bytes) -> bytes:
    """Drops the record padding after the end-of-archive blocks (members must not end in NUL)."""
    return data[: (len(data.rstrip(b"\0")) + 511) // 512 * 512 + 1024]


def python_tars() -> dict[str, bytes]:
    t: dict[str, bytes] = {}
    t["ustar"] = _tar(tarfile.USTAR_FORMAT, _all_kinds(False))
    t["gnu_long"] = _tar(tarfile.GNU_FORMAT, _all_kinds(True))
    t["pax_long"] = _tar(tarfile.PAX_FORMAT, _all_kinds(True))
    # PAX: records that override the header (fractional/negative mtime, ids, names, custom keys)
    ti = _info(
        "plain",
        mtime=-1.25,
        uid=1 << 40,
        gid=7,
        pax_headers={
            "mtime": "-1.25",
            "comment": "x" * 50,
            "SCHILY.xattr.user.k": "v",
            "uname": "ünï",
            "path": "päx/name",
        },
    )
    t["pax_records"] = _tar(tarfile.PAX_FORMAT, [(ti, b"data")])
    # a PAX global header (typeflag g) in front
    t["pax_global"] = _tar(
        tarfile.PAX_FORMAT,
        [(_info("a"), b"1"), (_info("b"), b"22")],
        pax_headers={"comment": "global", "mtime": "123.456"},
    )
    # GNU base-256 numbers (uid too big for octal, negative mtime)
    t["gnu_base256"] = _tar(
        tarfile.GNU_FORMAT, [(_info("big", uid=1 << 33, gid=1 << 34, mtime=-5), b"z")]
    )
    for k in list(t):
        if k != "ustar":  # one keeps tarfile's 10 KiB record padding after the end marker
            t[k] = trim(t[k])
    # extreme PAX numbers and times (regression: mtime INT64_MIN with a fraction was UB)
    ti = _info(
        "extreme",
        pax_headers={
            "mtime": "-9223372036854775808.5",
            "atime": "9223372036854775807.999999999999",
            "ctime": "-0.5",
            "uid": "9223372036854775807",
            "gid": "-9223372036854775808",
        },
    )
    t["pax_extreme"] = trim(_tar(tarfile.PAX_FORMAT, [(ti, b"x")]))
    # a PAX size record overriding the header's size field
    t["pax_size"] = trim(
        _tar(tarfile.PAX_FORMAT, [(_info("sized", pax_headers={"size": "5"}), b"12345")])
    )
    t["empty_archive"] = b"\0" * 1024
    t["one_zero_block"] = b"\0" * 512
    t["no_end_marker"] = _tar(tarfile.USTAR_FORMAT, [(_info("f"), b"abc")])[:1024]
    return t


def gnu_tars(tmp: Path) -> dict[str, bytes]:
    """v7 and sparse archives from GNU tar, if it is installed."""
    tar = shutil.which("tar")
    if not tar:
        print("make_seeds: GNU tar not found: no v7/sparse seeds", file=sys.stderr)
        return {}
    try:
        if (
            "GNU tar"
            not in subprocess.run([tar, "--version"], capture_output=True, text=True).stdout
        ):
            print("make_seeds: tar is not GNU tar: no v7/sparse seeds", file=sys.stderr)
            return {}
    except OSError:
        return {}
    src = tmp / "src"
    src.mkdir()
    (src / "small.txt").write_bytes(b"v7 content\n")
    with open(src / "sparse.bin", "wb") as f:  # holes between small data islands
        for off in (0, 20000, 70000, 140000):  # > 4 map entries: extension blocks in GNU format
            f.seek(off)
            f.write(b"S" * 700)
        f.truncate(200000)
    with open(src / "sparse2.bin", "wb") as f:  # fits the 4 map entries of an old GNU header
        f.seek(30000)
        f.write(b"T" * 100)
        f.truncate(50000)
    out: dict[str, bytes] = {}
    variants = {
        "v7": ["--format=v7", "small.txt"],
        "gnu_sparse": ["--format=gnu", "-S", "sparse.bin", "small.txt"],
        "gnu_sparse_small": ["--format=gnu", "-S", "sparse2.bin"],
        "pax_sparse_0.0": ["--format=pax", "-S", "--sparse-version=0.0", "sparse.bin"],
        "pax_sparse_0.1": ["--format=pax", "-S", "--sparse-version=0.1", "sparse.bin"],
        "pax_sparse_1.0": ["--format=pax", "-S", "--sparse-version=1.0", "sparse.bin", "small.txt"],
    }
    for name, args in variants.items():
        dst = tmp / f"{name}.tar"
        r = subprocess.run(
            [
                tar,
                "-C",
                str(src),
                "--owner=0",
                "--group=0",
                "--mtime=@1700000000",
                "-cf",
                str(dst),
                *args,
            ],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            print(f"make_seeds: tar {name}: {r.stderr.strip()}", file=sys.stderr)
            continue
        data = dst.read_bytes()
        # drop the record padding (10 KiB blocking factor) after the end marker; no member
        # here ends in a zero byte, so this keeps every entry and the two zero blocks
        out[name] = trim(data)
    return out


def text_payload(n: int, rng: random.Random) -> bytes:
    words = [
        b"layer",
        b"span",
        b"checkpoint",
        b"gzip",
        b"inflate",
        b"window",
        b"zTOC",
        b"soci",
        b"\n",
        b"0123456789",
        b"tar",
        b"entry",
    ]
    parts, size = [], 0
    while size < n:
        w = rng.choice(words) + (b" " if rng.random() < 0.8 else bytes([rng.randrange(256)]))
        parts.append(w)
        size += len(w)
    return b"".join(parts)[:n]


def big_tar(rng: random.Random, n: int) -> bytes:
    return _tar(
        tarfile.PAX_FORMAT, [(_info("big.txt"), text_payload(n, rng)), (_info("tail"), b"end\n")]
    )


def gz(data: bytes, level: int = 6) -> bytes:
    return gzip.compress(data, compresslevel=level, mtime=0)


def write(d: Path, name: str, data: bytes, limit: int) -> None:
    if len(data) > limit:
        print(f"make_seeds: skipping {d.name}/{name}: {len(data)} bytes > {limit}", file=sys.stderr)
        return
    (d / name).write_bytes(data)


def blob_seeds(out: Path, tmp: Path, rng: random.Random) -> int:
    try:
        import soci_native  # noqa: PLC0415
    except ImportError as e:
        print(
            f"make_seeds: soci_native not importable ({e}): no valid (blob, gzip) seeds; "
            "run `make install` or set PYTHON",
            file=sys.stderr,
        )
        return 0
    made = 0
    for name, raw, span, level in (
        ("text", big_tar(rng, 150000), 32768, 6),
        ("text_l1", big_tar(rng, 90000), 16384, 1),
        ("stored", _tar(tarfile.GNU_FORMAT, _all_kinds(True)), 1024, 0),
        ("multi", None, 4096, 6),
    ):
        if raw is None:  # two gzip members
            comp = gz(big_tar(rng, 20000), 6) + gz(big_tar(rng, 20000), 9)
        else:
            comp = gz(raw, level)
        path = tmp / f"{name}.tar.gz"
        path.write_bytes(comp)
        ix = soci_native.index_layer(str(path), span_size=span)
        if ix.compression != "gzip":
            continue
        blob = bytes(ix.checkpoints)
        usize = ix.uncompressed_size
        count = struct.unpack_from("<i", blob, 0)[0]
        # raw: [flags][pick][offset][length][blob length] blob comp
        for k, (off, ln, pick) in enumerate(
            ((0, 4096, 0), (usize // 2, 20000, 0), (max(0, usize - 100), 100, count - 1))
        ):
            ctrl = struct.pack("<BBIII", 0, pick, off, ln, len(blob))
            write(out, f"raw_{name}_{k}", ctrl + blob + comp, MAX_BLOB)
            made += 1
        # compact: [flags|1][pick][offset][length][offset hi] [count][span] checkpoints comp
        for k, wl in enumerate((WINSIZE, 64)):
            parts = [
                struct.pack("<BBIII", 1, 0, usize // 3, 5000, 0),
                struct.pack("<BI", count, span),
            ]
            for i in range(count):
                r = 12 + i * CP_SIZE
                cin, cout, bits = struct.unpack_from("<QQB", blob, r)
                win = blob[r + 17 + WINSIZE - wl : r + 17 + WINSIZE]
                parts.append(struct.pack("<IIBH", cin, cout, bits, wl) + win)
            write(out, f"compact_{name}_{k}", b"".join(parts) + comp, MAX_BLOB)
            made += 1
        # a pread-source variant
        ctrl = struct.pack("<BBIII", 2, 0, usize // 4, 3000, len(blob))
        write(out, f"fd_{name}", ctrl + blob + comp, MAX_BLOB)
        made += 1
    return made


def ztoc_seeds(out: Path, tmp: Path, tars: dict[str, bytes]) -> None:
    """Real zTOCs (plain tar and gzip) written by the core, for the zTOC reader target."""
    try:
        import soci_native  # noqa: PLC0415
    except ImportError:
        return
    for name, data in sorted(tars.items()):
        for kind, blob in (("tar", data), ("gz", gz(data))):
            path = tmp / f"z_{name}.{kind}"
            path.write_bytes(blob)
            try:
                ix = soci_native.index_layer(str(path), span_size=4096, build_tool="fuzz",
                                             entries=False)
            except ValueError:
                continue
            if ix.ztoc is not None:
                write(out, f"{kind}_{name}", ix.ztoc, MAX_BLOB)


def tree_seeds(out: Path, ztocs: Path) -> None:
    """The mount tree target: the zTOC seeds (first byte even) and synthetic layer stacks
    (first byte odd; see fuzz_tree.c): whiteouts, opaque markers, dot parts, hard links."""
    for p in sorted(ztocs.iterdir()):
        write(out, f"z_{p.name}", b"\0" + p.read_bytes(), MAX_BLOB)
    kinds = {"reg": 0, "dir": 1, "sym": 2, "hard": 3, "chr": 4, "other": 8}
    stacks = [
        [[("dir", "a/"), ("reg", "a/f"), ("reg", "a/g"), ("sym", "s\x01a/f"),
          ("hard", "h\x01a/g"), ("dir", "o/"), ("reg", "o/x")],
         [("reg", "a/.wh.f"), ("reg", "o/.wh..wh..opq"), ("reg", "o/y"), ("dir", "a/g/"),
          ("reg", "./a/../a/z"), ("hard", "q\x01o"), ("other", "w")]],
        [[("reg", ".wh.gone"), ("reg", "d/.wh..wh..opq"), ("reg", "//x//y/"), ("reg", "x/y/z"),
          ("chr", "dev"), ("reg", "n\x00ul")]],
    ]
    for i, stack in enumerate(stacks):
        text = b"\f".join(b"\n".join(bytes([kinds[k] | (0x80 if j % 3 == 0 else 0)])
                                     + n.encode("utf-8", "surrogateescape")
                                     for j, (k, n) in enumerate(layer)) for layer in stack)
        write(out, f"synthetic_{i}", b"\x01" + text, MAX_BLOB)


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(sys.argv[1])
    rng = random.Random(1234)
    dirs = {t: out / t for t in ("tar", "index", "blob", "ztoc", "inflate", "tree")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="soci-fuzz-seeds-") as td:
        tmp = Path(td)
        tars = python_tars()
        tars.update(gnu_tars(tmp))
        tars["pax_text"] = big_tar(rng, 20000)
        for i, (name, data) in enumerate(sorted(tars.items())):
            # split seeds: whole, 1-byte, 511..513, random classes (see piece_size in fuzz_tar.c)
            for seed in (4 if len(data) > 8192 else 0, 3, 4 + 8 * i, 7):
                write(dirs["tar"], f"{name}_s{seed}", bytes([seed]) + data, MAX_TAR)
            # index: tar layer, auto and forced tar mode; various span sizes
            write(dirs["index"], f"tar_{name}", bytes([((i % 7) << 2) | 0, 0x22]) + data, MAX_TAR)
            write(
                dirs["index"], f"tarmode_{name}", bytes([(3 << 2) | 2 | 0x80, 0x05]) + data, MAX_TAR
            )
            # gzip layers: auto/gzip mode, inline/threaded hashing
            for level in (1, 6, 9):
                cfg = (
                    (((i + level) % 7) << 2)
                    | (1 if level == 9 else 0)
                    | (0x80 if level == 6 else 0)
                )
                write(
                    dirs["index"],
                    f"gz{level}_{name}",
                    bytes([cfg, 0x13 + level]) + gz(data, level),
                    MAX_TAR,
                )
        # gzip layers with many checkpoints at a 1 KiB span: compressible tar of ~200 KB
        bt = big_tar(rng, 200000)
        write(dirs["index"], "gz_big_span1k", bytes([0 << 2, 0x02]) + gz(bt, 6), MAX_TAR)
        write(
            dirs["index"],
            "gz_big_span4k_thread",
            bytes([(2 << 2) | 1 | 0x80, 0x03]) + gz(bt, 9),
            MAX_TAR,
        )
        write(
            dirs["index"],
            "gz_stored",
            bytes([1 << 2, 0x04]) + gz(python_tars()["ustar"], 0),
            MAX_TAR,
        )
        two = gz(python_tars()["ustar"][:-1024], 6) + gz(python_tars()["gnu_long"], 6)
        write(dirs["index"], "gz_two_members", bytes([0, 0x05]) + two, MAX_TAR)
        # a zlib-wrapped member followed by a gzip one (47 accepts both; see fuzz_index.c)
        write(
            dirs["index"],
            "zlib_then_gz",
            bytes([1, 0x06])
            + zlib.compress(python_tars()["ustar"][:3072])
            + gz(python_tars()["ustar"][3072:]),
            MAX_TAR,
        )
        write(
            dirs["index"],
            "zstd_magic",
            bytes([0, 0]) + bytes.fromhex("28b52ffd") + b"\0" * 20,
            MAX_TAR,
        )
        write(
            dirs["index"],
            "xz_magic",
            bytes([0, 0]) + bytes.fromhex("fd377a585a00") + b"\0" * 20,
            MAX_TAR,
        )
        write(
            dirs["index"],
            "zlib_wrapped",
            bytes([1 << 2, 0x06]) + zlib.compress(python_tars()["ustar"]),
            MAX_TAR,
        )
        ztoc_seeds(dirs["ztoc"], tmp, tars)
        tree_seeds(dirs["tree"], dirs["ztoc"])
        # blob target: hand-made structural seeds always, real pairs with soci_native
        hdr = struct.pack("<iq", 1, 4096)
        cp0 = struct.pack("<QQB", 10, 0, 0) + bytes(WINSIZE)
        comp = gz(python_tars()["ustar"])
        write(
            dirs["blob"],
            "hand_v2",
            struct.pack("<BBIII", 0, 0, 100, 500, 12 + CP_SIZE) + hdr + cp0 + comp,
            MAX_BLOB,
        )
        write(
            dirs["blob"], "hand_v1", struct.pack("<BBIII", 0, 0, 0, 700, 12) + hdr + comp, MAX_BLOB
        )
        write(
            dirs["blob"],
            "hand_compact",
            struct.pack("<BBIII", 1, 0, 10, 600, 0)
            + struct.pack("<BI", 1, 4096)
            + struct.pack("<IIBH", 10, 0, 0, 0)
            + comp,
            MAX_BLOB,
        )
        write(
            dirs["blob"],
            "hand_compact_v1",
            struct.pack("<BBIII", 1 | 8, 0, 10, 600, 0) + struct.pack("<BI", 1, 4096) + comp,
            MAX_BLOB,
        )
        n = blob_seeds(dirs["blob"], tmp, rng)
        # fuzz_inflate reads fuzz_blob's input format: the same seeds
        shutil.copytree(dirs["blob"], dirs["inflate"], dirs_exist_ok=True)
    counts = {t: len(os.listdir(d)) for t, d in dirs.items()}
    print(f"make_seeds: wrote {counts} under {out} ({n} from soci_native)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
