"""End to end through the `soci-native` command on images built by umoci from real files,
checked with tarfile, skopeo and umoci as independent clients."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

import pytest

STDLIB = Path(sysconfig.get_paths()["stdlib"])
LAYER_DIRS = [["email", "json"], ["asyncio", "lib-dynload"], ["unittest", "xml", "http"]]
TOOLS = [t for t in ("umoci", "skopeo") if shutil.which(t) is None]
pytestmark = pytest.mark.skipif(bool(TOOLS), reason=f"needs {', '.join(TOOLS)} (apt)")
SMALL = ["--min-layer-size", "1000", "--span-size", str(256 << 10)]


def cli(*args: str, root: Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    """``soci-native ARGS`` with store ``root``; with ``ok``, it must succeed. The timeout is
    a guard against a hang (registry tests included), never a measure."""
    env = dict(os.environ, SOCI_NATIVE_ROOT=str(root))
    p = subprocess.run([sys.executable, "-m", "soci_native.cli", *args], env=env, text=True,
                       capture_output=True, timeout=300)
    if ok:
        assert p.returncode == 0, p.stderr
    return p


def cli_json(*args: str, root: Path) -> object:
    return json.loads(cli(*args, "--json", root=root).stdout)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An OCI layout with three gzip layers of stdlib files, built by umoci."""
    base = tmp_path_factory.mktemp("img")
    lay = base / "layout"
    subprocess.run(["umoci", "init", "--layout", str(lay)], check=True)
    subprocess.run(["umoci", "new", "--image", f"{lay}:t"], check=True)
    for dirs in LAYER_DIRS:
        bundle = base / "bundle"
        subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{lay}:t", str(bundle)],
                       check=True, capture_output=True)
        for d in dirs:
            shutil.copytree(STDLIB / d, bundle / "rootfs" / "usr/lib/python" / d,
                            ignore=shutil.ignore_patterns("__pycache__"))
        subprocess.run(["umoci", "repack", "--image", f"{lay}:t", str(bundle)], check=True,
                       capture_output=True)
        shutil.rmtree(bundle)
    return lay


def layers_of(lay: Path) -> list[dict]:
    raw = subprocess.run(["skopeo", "inspect", "--raw", f"oci:{lay}:t"], check=True,
                         capture_output=True).stdout
    return json.loads(raw)["layers"]


def blob(lay: Path, digest: str) -> Path:
    return lay / "blobs" / "sha256" / digest.split(":")[1]


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    return tmp_path / "store"


def test_create_lists_and_toc_matches_tarfile(image: Path, root: Path) -> None:
    out = cli_json("create", f"oci:{image}:t", *SMALL, root=root)
    assert isinstance(out, list) and len(out) == 1
    res = out[0]
    layers = layers_of(image)
    assert [x["digest"] for x in res["layers"]] == [d["digest"] for d in layers]
    assert all(x["status"] == "built" for x in res["layers"])
    indexes = cli_json("index", "list", root=root)
    assert [i["digest"] for i in indexes] == [res["digest"]]
    ztocs = cli_json("ztoc", "list", root=root)
    by_layer = {z["layer_digest"]: z for z in ztocs}
    assert set(by_layer) == {d["digest"] for d in layers}
    assert all(z["span_size"] == 256 << 10 for z in ztocs)
    for d in layers:
        info = cli_json_plain("ztoc", "info", by_layer[d["digest"]]["digest"], root=root)
        with tarfile.open(blob(image, d["digest"])) as tf:
            members = tf.getmembers()
        assert info["num_files"] == len(members)
        got = [(f["filename"].rstrip("/"), f["offset"], f["size"], f["type"])
               for f in info["files"]]
        kinds = {tarfile.REGTYPE: "reg", tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink",
                 tarfile.LNKTYPE: "hardlink"}
        want = [(m.name, m.offset_data, m.size, kinds[m.type]) for m in members]
        assert got == want
        assert info["num_spans"] >= 1 and info["span_size"] == 256 << 10


def cli_json_plain(*args: str, root: Path) -> dict:
    return json.loads(cli(*args, root=root).stdout)


def test_get_file_matches_tarfile(image: Path, root: Path, tmp_path: Path) -> None:
    cli("create", f"oci:{image}:t", *SMALL, root=root)
    ztocs = {z["layer_digest"]: z["digest"] for z in cli_json("ztoc", "list", root=root)}
    rng = random.Random(3)
    for d in layers_of(image):
        with tarfile.open(blob(image, d["digest"])) as tf:
            files = [m for m in tf.getmembers() if m.isfile()]
            for m in rng.sample(files, 8) + [max(files, key=lambda m: m.size)]:
                want = tf.extractfile(m).read()  # type: ignore[union-attr]
                got = subprocess.run(
                    [sys.executable, "-m", "soci_native.cli", "ztoc", "get-file",
                     ztocs[d["digest"]], m.name], capture_output=True, check=True,
                    env=dict(os.environ, SOCI_NATIVE_ROOT=str(root))).stdout
                assert hashlib.sha256(got).digest() == hashlib.sha256(want).digest(), m.name
    out = tmp_path / "f"
    name = "usr/lib/python/json/decoder.py"
    layer0 = layers_of(image)[0]["digest"]
    cli("ztoc", "get-file", ztocs[layer0], "/" + name, "-o", str(out), root=root)
    assert out.read_bytes() == (STDLIB / "json/decoder.py").read_bytes()
    p = cli("ztoc", "get-file", ztocs[layer0], "no/such/file", root=root, ok=False)
    assert p.returncode == 1 and "no such file" in p.stderr


def test_rerun_reuses_ztocs_and_force_rebuilds(image: Path, root: Path) -> None:
    first = cli_json("create", f"oci:{image}:t", *SMALL, root=root)[0]  # type: ignore[index]
    again = cli_json("create", f"oci:{image}:t", *SMALL, root=root)[0]  # type: ignore[index]
    assert [x["status"] for x in again["layers"]] == ["reused"] * 3
    assert again["digest"] == first["digest"]
    assert [x["ztoc"] for x in again["layers"]] == [x["ztoc"] for x in first["layers"]]
    forced = cli_json("create", f"oci:{image}:t", *SMALL, "--force", root=root)[0]  # type: ignore[index]
    assert [x["status"] for x in forced["layers"]] == ["built"] * 3
    assert forced["digest"] == first["digest"]  # deterministic: same bytes again
    other = cli_json("create", f"oci:{image}:t", "--min-layer-size", "1000", root=root)[0]  # type: ignore[index]
    assert [x["status"] for x in other["layers"]] == ["built"] * 3  # new span size: new zTOCs


def test_min_layer_size_skips_and_empty_index_fails(image: Path, root: Path) -> None:
    sizes = sorted(d["size"] for d in layers_of(image))
    res = cli_json("create", f"oci:{image}:t", "--min-layer-size", str(sizes[1]),
                   root=root)[0]  # type: ignore[index]
    statuses = sorted(x["status"] for x in res["layers"])
    assert statuses == ["built", "built", "skipped"]
    p = cli("create", f"oci:{image}:t", "--min-layer-size", str(sizes[-1] + 1), root=root,
            ok=False)
    assert p.returncode == 1 and "every layer was skipped" in p.stderr


def test_prefetch_and_xattr_optimization(image: Path, root: Path, tmp_path: Path) -> None:
    paths = tmp_path / "p.json"
    paths.write_text(json.dumps(["/usr/lib/python/asyncio/tasks.py"]))
    res = cli_json("create", f"oci:{image}:t", *SMALL, "--prefetch-file",
                   "usr/lib/python/json/decoder.py", "--prefetch-files-json", str(paths),
                   "--optimizations", "xattr", root=root)[0]  # type: ignore[index]
    assert len(res["prefetch"]) == 2
    pre = cli_json("prefetch", "list", root=root)
    # identical span lists make identical blobs: one artifact row per digest, as upstream
    assert {p["digest"] for p in pre} == set(res["prefetch"])
    for p in pre:
        art = cli_json_plain("prefetch", "info", p["digest"], "--json", root=root)
        assert art["version"] == "1.0" and art["prefetch_spans"]
        assert all(s["start_span"] <= s["end_span"] for s in art["prefetch_spans"])
        text = cli("prefetch", "info", p["digest"], root=root).stdout.splitlines()
        assert text[0] == f"layer: {p['layer_digest']}"
        assert text[1:] == [f"spans {s['start_span']}-{s['end_span']}"
                            for s in art["prefetch_spans"]]
    manifest = cli_json_plain("index", "info", res["digest"], root=root)
    ztoc_descs = manifest["layers"][:3]
    assert all(d["annotations"]["com.amazon.soci.disable-xattrs"] == "true" for d in ztoc_descs)
    assert [d["mediaType"] for d in manifest["layers"][3:]] == [
        "application/vnd.amazon.soci.prefetch.v1+json"] * 2
    layers = [d["digest"] for d in layers_of(image)]
    assert [d["annotations"]["com.amazon.soci.image-layer-digest"]
            for d in manifest["layers"][3:]] == layers[:2]  # json/ in layer 0, asyncio/ in 1


def test_index_manifest_v1_shape(image: Path, root: Path) -> None:
    res = cli_json("create", f"oci:{image}:t", *SMALL, root=root)[0]  # type: ignore[index]
    m = cli_json_plain("index", "info", res["digest"], root=root)
    raw = subprocess.run(["skopeo", "inspect", "--raw", f"oci:{image}:t"], check=True,
                         capture_output=True).stdout
    assert m["subject"] == {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                            "digest": "sha256:" + hashlib.sha256(raw).hexdigest(),
                            "size": len(raw)}
    assert m["config"]["mediaType"] == "application/vnd.amazon.soci.index.v1+json"
    assert m["annotations"] == {"com.amazon.soci.build-tool-identifier": "AWS SOCI CLI v0.2"}
    for d, layer in zip(m["layers"], layers_of(image), strict=True):
        assert d["annotations"]["com.amazon.soci.image-layer-digest"] == layer["digest"]
        assert d["annotations"]["com.amazon.soci.image-layer-mediaType"] == layer["mediaType"]
        assert d["annotations"]["com.amazon.soci.span-size"] == str(256 << 10)
    store_blob = root / "content" / "blobs" / "sha256" / res["digest"].split(":")[1]
    assert "sha256:" + hashlib.sha256(store_blob.read_bytes()).hexdigest() == res["digest"]
    # content/ is an OCI layout other tools read
    ls = subprocess.run(["umoci", "ls", "--layout", str(root / "content")], capture_output=True,
                        text=True)
    assert ls.returncode == 0, ls.stderr


@pytest.mark.parametrize("form", ["oci-dir", "oci-archive"])
def test_convert_is_accepted_by_skopeo_and_umoci(image: Path, root: Path, tmp_path: Path,
                                                 form: str) -> None:
    dst = f"oci:{tmp_path / 'out'}:soci" if form == "oci-dir" else \
        f"oci-archive:{tmp_path / 'out.tar'}:soci"
    res = cli_json("convert", f"oci:{image}:t", dst, *SMALL, root=root)
    assert isinstance(res, dict)
    raw = subprocess.run(["skopeo", "inspect", "--raw", dst], check=True,
                         capture_output=True).stdout
    top = json.loads(raw)
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == res["index_digest"]
    assert top["mediaType"] == "application/vnd.oci.image.index.v1+json"
    image_entry, soci_entry = top["manifests"]
    assert soci_entry["artifactType"] == "application/vnd.amazon.soci.index.v2+json"
    assert soci_entry["annotations"] == {
        "com.amazon.soci.image-manifest-digest": image_entry["digest"]}
    assert image_entry["annotations"]["com.amazon.soci.index-digest"] == soci_entry["digest"]
    assert soci_entry["platform"] == image_entry["platform"]
    # skopeo copies the whole thing (every blob present and matching its digest)
    copy = tmp_path / "copy"
    subprocess.run(["skopeo", "copy", "--all", dst, f"oci:{copy}:x"], check=True,
                   capture_output=True)
    manifest = json.loads(blob(copy, image_entry["digest"]).read_bytes())
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert [d["digest"] for d in manifest["layers"]] == [d["digest"] for d in layers_of(image)]
    soci = json.loads(blob(copy, soci_entry["digest"]).read_bytes())
    assert soci["config"]["mediaType"] == "application/vnd.amazon.soci.index.v2+json"
    assert "subject" not in soci
    for d in soci["layers"]:
        assert blob(copy, d["digest"]).stat().st_size == d["size"]
    # umoci reads the layout (tags, blobs); resolving the tag to one image is ambiguous by
    # design in v2 (image manifest and SOCI index share the platform), so stat is not used
    if form == "oci-dir":
        ls = subprocess.run(["umoci", "ls", "--layout", str(tmp_path / "out")],
                            capture_output=True, text=True)
        assert ls.returncode == 0 and ls.stdout.split() == ["soci"], ls.stderr
        gc = subprocess.run(["umoci", "gc", "--layout", str(tmp_path / "out")],
                            capture_output=True, text=True)
        assert gc.returncode == 0, gc.stderr
        assert blob(tmp_path / "out", soci_entry["digest"]).exists()  # reachable: kept by gc


def db_ok(root: Path) -> None:
    with sqlite3.connect(root / "artifacts.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_user_errors_are_one_line_and_leave_store_consistent(image: Path, root: Path,
                                                             tmp_path: Path) -> None:
    cli("create", f"oci:{image}:t", *SMALL, root=root)
    before = cli_json("index", "list", root=root)
    cases = [
        ("create", f"oci:{tmp_path}/nope:t"),
        ("create", f"oci:{image}:nosuchtag"),
        ("index", "info", "sha256:" + "0" * 64),
        ("index", "info", "not-a-digest"),
        ("ztoc", "info", "sha256:" + "1" * 64),
        ("create", f"oci-archive:{tmp_path}/garbage.tar"),
    ]
    (tmp_path / "garbage.tar").write_bytes(b"this is not a tar archive" * 100)
    for args in cases:
        p = cli(*args, root=root, ok=False)
        assert p.returncode == 1, (args, p.stdout)
        assert p.stderr.startswith("soci-native: error: ") and p.stderr.count("\n") == 1, p.stderr
        assert "Traceback" not in p.stderr
    # a missing layer blob and a tampered one
    broken = tmp_path / "broken"
    shutil.copytree(image, broken)
    layers = layers_of(broken)
    blob(broken, layers[0]["digest"]).unlink()
    p = cli("create", f"oci:{broken}:t", *SMALL, "--force", root=root, ok=False)
    assert p.returncode == 1 and layers[0]["digest"] in p.stderr
    tampered = tmp_path / "tampered"
    shutil.copytree(image, tampered)
    b = blob(tampered, layers[1]["digest"])
    data = bytearray(b.read_bytes())
    data[-20] ^= 0xFF  # inside the deflate data / trailer: content no longer matches the digest
    b.write_bytes(bytes(data))
    p = cli("create", f"oci:{tampered}:t", *SMALL, "--force", root=root, ok=False)
    assert p.returncode == 1 and layers[1]["digest"] in p.stderr, p.stderr
    assert cli_json("index", "list", root=root) == before
    db_ok(root)
    assert not list((root / "content" / "blobs" / "sha256").glob("*.tmp*"))


def test_index_rm_and_rebuild_db(image: Path, root: Path) -> None:
    res = cli_json("create", f"oci:{image}:t", *SMALL, root=root)[0]  # type: ignore[index]
    (root / "artifacts.db").unlink()
    for extra in ("artifacts.db-wal", "artifacts.db-shm"):
        (root / extra).unlink(missing_ok=True)
    cli("rebuild-db", root=root)
    assert [i["digest"] for i in cli_json("index", "list", root=root)] == [res["digest"]]
    assert len(cli_json("ztoc", "list", root=root)) == 3  # type: ignore[arg-type]
    removed = cli_json("index", "rm", res["digest"], root=root)
    assert res["digest"] in removed["removed"]  # type: ignore[index]
    assert cli_json("index", "list", root=root) == []
    assert cli_json("ztoc", "list", root=root) == []
    db_ok(root)


def test_help_explains_every_command(root: Path) -> None:
    for args in (["--help"], ["create", "--help"], ["convert", "--help"], ["index", "--help"],
                 ["ztoc", "get-file", "--help"], ["rebuild-db", "--help"]):
        p = cli(*args, root=root)
        assert "Usage:" in p.stdout and len(p.stdout.splitlines()) > 4
