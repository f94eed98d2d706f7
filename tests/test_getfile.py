"""`ztoc get-file` on hand-built layouts: links in another layer (merged /usr), bounded
memory on a large file (peak RSS of the real command), one-line errors for bad -o paths;
and `--prefetch-file` matching cleaned names (./ prefixes) with a warning for paths found
nowhere. Files are checked against tarfile's reading of the same layers."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import pytest
from peak_rss import split_peak, wrapped
from test_cli import cli

Member = tuple[tarfile.TarInfo, bytes | None]


def put(lay: Path, data: bytes) -> dict:
    d = hashlib.sha256(data).hexdigest()
    (lay / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (lay / "blobs" / "sha256" / d).write_bytes(data)
    return {"digest": f"sha256:{d}", "size": len(data)}


def put_file(lay: Path, path: Path) -> dict:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    (lay / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    os.replace(path, lay / "blobs" / "sha256" / h.hexdigest())
    return {"digest": f"sha256:{h.hexdigest()}", "size": (lay / "blobs" / "sha256" /
                                                          h.hexdigest()).stat().st_size}


def entry(name: str, data: bytes | None = None, link: str | None = None) -> Member:
    ti = tarfile.TarInfo(name)
    if link is not None:
        ti.type, ti.linkname = tarfile.SYMTYPE, link
    elif data is None:
        ti.type, ti.mode = tarfile.DIRTYPE, 0o755
    else:
        ti.size = len(data)
    return ti, data


def gz_layer(members: list[Member]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for ti, data in members:
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    c = zlib.compressobj(6, zlib.DEFLATED, 31)
    return c.compress(buf.getvalue()) + c.flush()


def layout(lay: Path, layers: list[dict]) -> str:
    (lay / "oci-layout").parent.mkdir(parents=True, exist_ok=True)
    (lay / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    config = put(lay, json.dumps({"architecture": "amd64", "os": "linux",
                                  "rootfs": {"type": "layers", "diff_ids": []}}).encode())
    m = put(lay, json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **x}
                   for x in layers]}).encode())
    (lay / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", **m,
        "platform": {"architecture": "amd64", "os": "linux"},
        "annotations": {"org.opencontainers.image.ref.name": "t"}}]}))
    return f"oci:{lay}:t"


OPTS = ["--min-layer-size", "0", "--span-size", "64K", "-p", "linux/amd64"]


@pytest.fixture()
def merged_usr(tmp_path: Path) -> tuple[str, bytes]:
    """Layer 1: bin -> usr/bin, lib -> /usr/lib; layer 2: ./usr/bin/tool (./-prefixed names, as
    most real layers), a link in its own layer and a file reached through two links."""
    tool = os.urandom(300_000)
    base = gz_layer([entry("./"), entry("./bin", link="usr/bin"), entry("./lib", link="/usr/lib"),
                     entry("./usr/"), entry("./usr/bin/"), entry("./usr/lib/")])
    top = gz_layer([entry("./usr/"), entry("./usr/bin/"), entry("./usr/bin/tool", tool),
                    entry("./usr/lib/"), entry("./usr/lib/real.so", b"so" * 1000),
                    entry("./usr/lib/alias.so", link="real.so"), entry("./usr/bin/dir/")])
    ref = layout(tmp_path / "lay", [put(tmp_path / "lay", base), put(tmp_path / "lay", top)])
    return ref, tool


def ztoc_of_layer(root: Path, n: int, ref: str) -> str:
    out = json.loads(cli("create", ref, *OPTS, "--json", root=root).stdout)
    return str(out[0]["layers"][n]["ztoc"])


def test_get_file_follows_links_across_layers(merged_usr: tuple[str, bytes],
                                              tmp_path: Path) -> None:
    ref, tool = merged_usr
    root = tmp_path / "store"
    z = ztoc_of_layer(root, 1, ref)
    for path in ("/bin/tool", "bin/tool", "./bin/tool", "/usr/bin/tool", "/lib/../bin/tool"):
        p = subprocess.run([sys.executable, "-m", "soci_native.cli", "ztoc", "get-file", z, path],
                           env=dict(os.environ, SOCI_NATIVE_ROOT=str(root)),
                           capture_output=True)
        assert p.returncode == 0, (path, p.stderr)
        assert p.stdout == tool, path
    out = tmp_path / "so"
    cli("ztoc", "get-file", z, "/lib/alias.so", "-o", str(out), root=root)
    assert out.read_bytes() == b"so" * 1000
    p = cli("ztoc", "get-file", z, "/bin/missing", root=root, ok=False)
    assert p.returncode == 1 and len(p.stderr.strip().splitlines()) == 1
    assert "no such file" in p.stderr and "/usr/bin/missing" in p.stderr
    p = cli("ztoc", "get-file", z, "/bin/dir", root=root, ok=False)
    assert p.returncode == 1 and "is a dir, not a regular file" in p.stderr
    # the base layer's zTOC has the link but not the file: it says where it looked
    base = ztoc_of_layer(root, 0, ref)
    p = cli("ztoc", "get-file", base, "/bin/tool", root=root, ok=False)
    assert p.returncode == 1 and "/usr/bin/tool" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.parametrize("where", ["missing-dir", "a-directory", "read-only"])
def test_get_file_unwritable_output_is_one_line(merged_usr: tuple[str, bytes], tmp_path: Path,
                                                where: str) -> None:
    ref, _ = merged_usr
    root = tmp_path / "store"
    z = ztoc_of_layer(root, 1, ref)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    target = {"missing-dir": tmp_path / "no" / "such" / "f", "a-directory": tmp_path,
              "read-only": ro / "f"}[where]
    if where == "read-only" and os.access(ro, os.W_OK):
        target = Path("/proc/version")  # root writes anywhere; /proc files refuse writes
    p = cli("ztoc", "get-file", z, "/bin/tool", "-o", str(target), root=root, ok=False)
    err = p.stderr.strip()
    assert p.returncode == 1 and len(err.splitlines()) == 1, err
    assert err.startswith(f"soci-native: error: cannot write {target}: "), err


def test_get_file_streams_in_bounded_memory(tmp_path: Path) -> None:
    """A 768 MiB file: the command's peak RSS stays far below the file's size."""
    size = 768 << 20
    raw = tmp_path / "layer.gz"
    pattern = hashlib.sha256(b"x").digest() * 2048  # 64 KiB that compresses, not to nothing
    ti = tarfile.TarInfo("./big")
    ti.size = size
    c = zlib.compressobj(1, zlib.DEFLATED, 31)
    with open(raw, "wb") as f:
        f.write(c.compress(ti.tobuf(format=tarfile.PAX_FORMAT)))
        for _ in range(size // len(pattern)):
            f.write(c.compress(pattern))
        f.write(c.compress(b"\0" * 1024))
        f.write(c.flush())
    lay = tmp_path / "lay"
    ref = layout(lay, [put_file(lay, raw)])
    root = tmp_path / "store"
    out = json.loads(cli("create", ref, "--min-layer-size", "0", "-p", "linux/amd64", "--json",
                         root=root).stdout)
    z = out[0]["layers"][0]["ztoc"]
    dest = tmp_path / "big"
    env = dict(os.environ, SOCI_NATIVE_ROOT=str(root))
    p = subprocess.run(wrapped([sys.executable, "-m", "soci_native.cli", "ztoc", "get-file", z,
                                "big", "-o", str(dest)]), env=env, text=True, capture_output=True)
    err, peak_kib = split_peak(p.stderr)
    assert p.returncode == 0, err
    assert dest.stat().st_size == size
    with open(dest, "rb") as f:
        assert f.read(len(pattern)) == pattern
        f.seek(size - len(pattern))
        assert f.read() == pattern
    # 768 MiB would be held by a buffering copy
    assert peak_kib < 300 << 10, f"peak RSS {peak_kib} KiB"


def prefetch_spans(root: Path, out: dict) -> dict[str, list]:
    spans = {}
    for d in out["prefetch"]:
        art = json.loads(cli("prefetch", "info", d, "--json", root=root).stdout)
        info = cli("prefetch", "info", d, root=root).stdout.splitlines()[0]
        spans[info.split(": ", 1)[1]] = art["prefetch_spans"]
    return spans


def test_prefetch_files_match_cleaned_names_and_warn_when_missing(
        merged_usr: tuple[str, bytes], tmp_path: Path) -> None:
    ref, _ = merged_usr
    root = tmp_path / "store"
    p = cli("create", ref, *OPTS, "--json", "--prefetch-file", "/usr/bin/tool",
            "--prefetch-file", "usr/lib/real.so", "--prefetch-file", "/not/anywhere",
            root=root)
    out = json.loads(p.stdout)[0]
    assert len(out["prefetch"]) == 1  # both files are in layer 2: one artifact
    spans = prefetch_spans(root, out)
    assert list(spans) == [out["layers"][1]["digest"]]
    assert spans[out["layers"][1]["digest"]]
    warnings = [x for x in p.stderr.splitlines() if x.startswith("warning:")]
    assert len(warnings) == 1 and "/not/anywhere" in warnings[0], p.stderr
    assert "usr/bin/tool" not in "".join(warnings)



def test_odd_names_found_by_their_cleaned_path() -> None:
    """Entries stored as "a//b", "./c/./d", "e/../f" (a crafted or odd tar) are found by
    the cleaned path, as cleaning every name would find them; a path no name cleans to is
    a miss; names are indexed once in C (ztoc.name_lookup), not cleaned in Python."""
    import dataclasses

    import fb_oracle
    from test_ztoc import TOOL

    from soci_native import getfile, index_layer, ztoc
    from soci_native.index import clean_prefetch_path

    names = ["plain/file", "a//b", "./c/./d", "e/../f", "/g/h/", "x/..", ".", "j/k/.",
             "dup/one", "dup//one", "..//up/../../u", "é//\udcff/z"]
    members: list[Member] = []
    for n in names:
        ti = tarfile.TarInfo("m")
        ti.size = 3
        members.append((ti, n.encode("utf-8", "surrogateescape")[:3].ljust(3, b"_")))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for ti, data in members:
            tf.addfile(ti, io.BytesIO(data))
    ix = index_layer(io.BytesIO(buf.getvalue()), span_size=4096)
    entries = [e._replace(name=n) for e, n in zip(ix.entries, names, strict=True)]
    raw = fb_oracle.ztoc_bytes(dataclasses.replace(ix, entries=entries), TOOL)
    everything: dict[str, ztoc.FileMetadata] = {}
    for f in ztoc.from_bytes(raw).files:
        everything[clean_prefetch_path(f.name)] = f

    find = getfile.lookup_in(raw)
    for want in [*everything, "missing", "a/b/c", "plain"]:
        plain = ztoc.find_file(raw, want)  # the plain C lookup first, as before
        assert find(want) == (plain if plain is not None else everything.get(want)), want
    assert all(find(p) is not None for p in ("a/b", "c/d", "f", "u", "j/k"))
