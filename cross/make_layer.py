"""Writes the gzip layer cross/aarch64.sh feeds to both builds of cross/probe.c.

    make_layer.py OUT.tar.gz   (prints the blob's sha256, from hashlib, for a check)

Deterministic (fixed seed, mtime 0), a few MiB: text that compresses well, incompressible
bytes (stored deflate blocks), a run of zeros, a long name (PAX) and a symlink, so the
spans cross block types and tar headers. Python's zlib and hashlib are the independent side.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import random
import sys
import tarfile


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o644
    tar.addfile(info, io.BytesIO(data))


def layer() -> bytes:
    rnd = random.Random(20261201)
    letters = b"abcdefghijklmnopqrstuvwxyz"
    words = [bytes(rnd.choices(letters, k=rnd.randint(2, 9))) for _ in range(400)]
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, "text/words.txt", b" ".join(rnd.choice(words) for _ in range(300_000)))
        _add(tar, "bin/random.bin", rnd.randbytes(700_000))
        _add(tar, "zeros", bytes(400_000))
        _add(tar, "d/" + "long-name-" * 20 + ".txt", b"pax\n" * 1000)
        link = tarfile.TarInfo("d/link")
        link.type, link.linkname, link.mtime = tarfile.SYMTYPE, "../zeros", 1_700_000_000
        tar.addfile(link)
    return gzip.compress(raw.getvalue(), compresslevel=6, mtime=0)


def main() -> int:
    blob = layer()
    with open(sys.argv[1], "wb") as f:
        f.write(blob)
    print(hashlib.sha256(blob).hexdigest())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
