"""What a new user meets first: upstream's flag names, size suffixes, one-line errors that
say what is wrong, `convert` into an existing layout, SOCI-enabled local images. Through the
real `soci-native` command on umoci-built images, checked with skopeo and umoci."""

# ruff: noqa: F811 (the fixtures imported from test_cli are parameters here)
from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from test_cli import SMALL, STDLIB, cli, cli_json, image, layers_of, root  # noqa: F401 (fixtures)


def one_line_error(p: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    err = p.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("soci-native: error: "), err
    for n in needles:
        assert n in err, (n, err)
    return err


def test_root_also_after_the_subcommand(image: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    digest = cli("create", f"oci:{image}:t", *SMALL, "-q", "--root", str(a), root=b).stdout.strip()
    assert (a / "artifacts.db").exists() and not (b / "artifacts.db").exists()
    listed = cli("index", "list", "-q", "--root", str(a), root=b).stdout.split()
    assert listed == [digest]
    assert cli("--root", str(b), "index", "list", "-q", "--root", str(a), root=b).stdout.split() \
        == [digest]  # the later one wins
    assert cli("index", "list", "-q", root=b).stdout.split() == []


def test_upstream_flag_names(image: Path, root: Path, tmp_path: Path) -> None:
    helps = {c: cli(*c.split(), "--help", root=root).stdout
             for c in ("push", "convert", "prefetch info", "create")}
    for flag in ("--user", "-u,", "--skip-verify", "-k,"):
        assert flag in helps["push"], flag
    assert "--standalone" in helps["convert"] and "changes nothing" in \
        " ".join(helps["convert"].split())
    assert "--json" in helps["prefetch info"]
    assert "--debug" in cli("--help", root=root).stdout
    # --standalone is accepted and the result is the same image
    plain = cli_json("convert", f"oci:{image}:t", f"oci:{tmp_path / 'a'}:s", *SMALL, root=root)
    alone = cli_json("convert", "--standalone", f"oci:{image}:t", f"oci:{tmp_path / 'b'}:s",
                     *SMALL, root=root)
    assert plain["index_digest"] == alone["index_digest"]  # type: ignore[index]


def test_span_and_min_layer_size_take_suffixes(image: Path, root: Path) -> None:
    a = cli_json("create", f"oci:{image}:t", "--min-layer-size", "1K", "--span-size", "256K",
                 root=root)[0]  # type: ignore[index]
    b = cli_json("create", f"oci:{image}:t", *SMALL, root=root)[0]  # type: ignore[index]
    assert a["digest"] == b["digest"]
    assert [x["status"] for x in b["layers"]] == ["reused"] * 3
    p = cli("create", f"oci:{image}:t", "--span-size", "4X", root=root, ok=False)
    assert p.returncode == 2 and "is not a size" in p.stderr
    big = max(layers_of(image), key=lambda d: d["size"])["size"]
    out = cli_json("create", f"oci:{image}:t", "--min-layer-size", f"{big // 1024}K",
                   "--span-size", "1M", root=root)[0]  # type: ignore[index]
    assert [x["status"] for x in out["layers"]].count("built") >= 1
    assert all(x["status"] == "skipped" for x in out["layers"] if x["size"] < big // 1024 * 1024)


def test_tiny_span_size_is_refused_unless_forced(image: Path, root: Path) -> None:
    p = cli("create", f"oci:{image}:t", "--min-layer-size", "1K", "--span-size", "1000",
            root=root, ok=False)
    one_line_error(p, "--span-size 1000", "larger than the layer", "--force")
    assert cli("index", "list", "-q", root=root).stdout.strip() == ""
    forced = cli_json("create", f"oci:{image}:t", "--min-layer-size", "1K", "--span-size",
                      "1000", "--force", root=root)[0]  # type: ignore[index]
    assert any(x["ztoc_size"] and x["ztoc_size"] > x["size"] for x in forced["layers"])


def test_clear_one_line_errors(image: Path, root: Path, tmp_path: Path) -> None:
    os.chdir(tmp_path)
    (tmp_path / "lay").symlink_to(image)
    one_line_error(cli("create", "oc:lay:t", root=root, ok=False), "unknown transport 'oc'")
    (tmp_path / "empty").mkdir()
    one_line_error(cli("create", "docker-archive:empty", root=root, ok=False),
                   "docker-archive:empty is a directory", "oci:empty")
    one_line_error(cli("create", f"oci:{image}:t", "-p", "linux/s390x", root=root, ok=False),
                   "no linux/s390x image")
    host = subprocess.run(["skopeo", "inspect", "--config", f"oci:{image}:t"], check=True,
                          capture_output=True, text=True).stdout
    plat = "{os}/{architecture}".format(**json.loads(host))
    other = "linux/s390x" if plat != "linux/s390x" else "linux/arm64"
    one_line_error(cli("create", f"oci:{image}:t", *SMALL, "-p", plat, "-p", other, root=root,
                       ok=False), f"no {other} image")
    one_line_error(cli("index", "rm", "--ref", "oci:nothing:here", root=root, ok=False),
                   "no SOCI index", "oci:nothing:here")


def test_all_zstd_image_says_so_per_layer(image: Path, root: Path,
                                          tmp_path: Path) -> None:
    z = tmp_path / "z"
    subprocess.run(["skopeo", "copy", "-q", "--dest-compress", "--dest-compress-format", "zstd",
                    f"oci:{image}:t", f"oci:{z}:t"], check=True)
    layers = layers_of_ref(f"oci:{z}:t")
    assert all(d["mediaType"].endswith("+zstd") for d in layers)
    err = one_line_error(cli("create", f"oci:{z}:t", "--min-layer-size", "0", root=root,
                             ok=False), "every layer was skipped")
    for d in layers:
        assert f"{d['digest'][:19]}: zstd-compressed" in err
    assert "min-layer-size" not in err


def layers_of_ref(ref: str) -> list[dict]:
    raw = subprocess.run(["skopeo", "inspect", "--raw", ref], check=True,
                         capture_output=True).stdout
    return json.loads(raw)["layers"]


def test_convert_into_existing_layout_adds_a_tag(image: Path, root: Path,
                                                tmp_path: Path) -> None:
    lay = tmp_path / "lay"
    subprocess.run(["skopeo", "copy", "-q", f"oci:{image}:t", f"oci:{lay}:latest"], check=True)
    subprocess.run(["skopeo", "copy", "-q", f"oci:{image}:t", f"oci:{lay}:other"], check=True)
    before = {p.name: (p.stat().st_mode, p.stat().st_mtime_ns, p.stat().st_ino)
              for p in (lay / "blobs/sha256").iterdir()}
    old = os.umask(0o027)
    try:
        cli("convert", f"oci:{lay}:latest", f"oci:{lay}:soci", *SMALL, root=root)
    finally:
        os.umask(old)
    tags = sorted(m["annotations"]["org.opencontainers.image.ref.name"]
                  for m in json.loads((lay / "index.json").read_text())["manifests"])
    assert tags == ["latest", "other", "soci"]
    for t in tags:  # every tag still resolves, for skopeo and umoci
        subprocess.run(["skopeo", "inspect", "--raw", f"oci:{lay}:{t}"], check=True,
                       capture_output=True)
    ls = subprocess.run(["umoci", "ls", "--layout", str(lay)], capture_output=True, text=True,
                        check=True)
    assert sorted(ls.stdout.split()) == ["latest", "other", "soci"]
    subprocess.run(["umoci", "stat", "--image", f"{lay}:other"], check=True, capture_output=True)
    after = {p.name: p.stat() for p in (lay / "blobs/sha256").iterdir()}
    for name, (mode, mtime, ino) in before.items():  # existing blobs untouched
        st = after[name]
        assert (st.st_mode, st.st_mtime_ns, st.st_ino) == (mode, mtime, ino), name
    new = set(after) - set(before)
    assert new
    for name in new:  # new files follow the umask (0666 & ~027)
        assert stat.S_IMODE(after[name].st_mode) == 0o640, name
    assert stat.S_IMODE((lay / "index.json").stat().st_mode) == 0o640
    # converting the same tag again replaces that tag only
    cli("convert", f"oci:{lay}:other", f"oci:{lay}:soci", *SMALL, root=root)
    tags2 = [m["annotations"]["org.opencontainers.image.ref.name"]
             for m in json.loads((lay / "index.json").read_text())["manifests"]]
    assert sorted(tags2) == ["latest", "other", "soci"]


def test_index_pull_from_a_soci_enabled_archive(image: Path, root: Path,
                                                tmp_path: Path) -> None:
    arch = tmp_path / "app-soci.tar"
    conv = cli_json("convert", f"oci:{image}:t", f"oci-archive:{arch}:v1", *SMALL, root=root)
    fresh = tmp_path / "fresh"
    pulled = cli_json("index", "pull", f"oci-archive:{arch}:v1", root=fresh)
    soci = conv["soci_indexes"][0]  # type: ignore[index]
    assert [(p["digest"], p["manifest_version"], p["found_by"]) for p in pulled] == \
        [(soci["digest"], "v2", "v2-annotation")]  # type: ignore[union-attr]
    ztocs = {z["digest"] for z in cli_json("ztoc", "list", root=fresh)}  # type: ignore[union-attr]
    assert ztocs == {x["ztoc"] for x in soci["layers"] if x["ztoc"]}
    # the zTOCs read files back from the archive in the fresh store
    z = next(iter(ztocs))
    got = cli("ztoc", "get-file", z, "usr/lib/python/json/__init__.py", root=fresh,
              ok=False)
    if got.returncode != 0:  # that file lives in another layer: find any zTOC holding it
        for z in ztocs:
            got = cli("ztoc", "get-file", z, "usr/lib/python/json/__init__.py", root=fresh,
                      ok=False)
            if got.returncode == 0:
                break
    assert got.returncode == 0, got.stderr
    import sysconfig
    assert got.stdout == (Path(sysconfig.get_paths()["stdlib"]) / "json/__init__.py").read_text()
    # an image without a SOCI index says so in one line
    one_line_error(cli("index", "pull", f"oci:{image}:t", root=tmp_path / "other", ok=False),
                   "no SOCI index in")


def test_debug_logs_registry_requests(image: Path, root: Path, tmp_path: Path) -> None:
    import reg_server

    if not reg_server.available():
        pytest.skip("needs docker-registry (apt)")
    with reg_server.Registry.start(tmp_path / "reg") as reg:
        ref = f"docker://{reg.host}/app:v1"
        subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{image}:t", ref],
                       check=True)
        quiet = cli("create", ref, *SMALL, root=root)
        assert "/v2/app/manifests/v1" not in quiet.stderr
        p = cli("--debug", "create", ref, *SMALL, root=root)
        lines = [x for x in p.stderr.splitlines() if x.startswith("debug: ")]
        assert any("GET /v2/app/manifests/v1" in x for x in lines), p.stderr
        assert any("/v2/app/blobs/sha256:" in x for x in lines), p.stderr


def test_rebuild_db_recovers_from_a_corrupt_database(image: Path, root: Path) -> None:
    digest = cli("create", f"oci:{image}:t", *SMALL, "-q", root=root).stdout.strip()
    for suffix in ("-wal", "-shm"):
        Path(f"{root / 'artifacts.db'}{suffix}").unlink(missing_ok=True)
    (root / "artifacts.db").write_bytes(b"this is not SQLite" * 100)
    one_line_error(cli("index", "list", root=root, ok=False), "artifacts.db is unusable",
                   "rebuild-db")
    out = cli_json("rebuild-db", root=root)
    assert isinstance(out, dict) and out["indexes_added"] == 1 and out["ztocs_added"] == 3
    aside = Path(out["moved_aside"])
    assert aside.parent == root and aside.read_bytes().startswith(b"this is not SQLite")
    assert cli("index", "list", "-q", root=root).stdout.split() == [digest]
    again = cli_json("create", f"oci:{image}:t", *SMALL, root=root)[0]  # type: ignore[index]
    assert [x["status"] for x in again["layers"]] == ["reused"] * 3


def test_references_are_stored_absolute_and_compared_normalized(image: Path,
                                                               tmp_path: Path) -> None:
    root = tmp_path / "store"
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "lay").symlink_to(image)
    subprocess.run(["skopeo", "copy", "-q", f"oci:{image}:t", f"oci-archive:{a / 'img.tar'}:t"],
                   check=True)

    def run(cwd: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        old = os.getcwd()
        os.chdir(cwd)
        try:
            return cli(*args, root=root, ok=ok)
        finally:
            os.chdir(old)

    first = run(a, "create", "oci:lay:t", *SMALL, "-q").stdout.strip()
    second = run(a, "create", "img.tar:t", *SMALL, "-q").stdout.strip()
    assert first == second  # the same image, named two ways: one index, found by each name
    recs = json.loads(run(b, "index", "list", "--json").stdout)
    assert len(recs) == 1
    assert set(recs[0]["image_refs"]) == {f"oci:{a / 'lay'}:t", f"{a / 'img.tar'}:t"}
    for ref in (f"oci:{a / 'lay'}:t", f"{a / 'img.tar'}:t"):
        assert run(b, "index", "list", "-q", "--ref", ref).stdout.split() == [first], ref
    assert run(a, "index", "list", "-q", "--ref", "oci:lay:t").stdout.split() == [first]
    assert run(a, "index", "list", "-q", "--ref", "oci:other:t").stdout.split() == []
    ztocs = run(b, "ztoc", "list", "-q", "--image-ref", f"oci:{a / 'lay'}:t").stdout.split()
    assert len(ztocs) == 3
    # get-file from another directory finds the layer through the stored absolute path
    by_layer = {z["layer_digest"]: z["digest"]
                for z in json.loads(run(b, "ztoc", "list", "--json").stdout)}
    z0 = by_layer[layers_of(image)[0]["digest"]]  # the layer with json/
    got = run(b, "ztoc", "get-file", z0, "usr/lib/python/json/__init__.py")
    assert got.stdout == (STDLIB / "json/__init__.py").read_text()


def test_registry_references_compare_normalized(tmp_path: Path) -> None:
    from soci_native import index as sindex
    from soci_native.store import Store

    with Store(tmp_path / "store") as store:
        zd, zsize = store.put_blob(b"not really a zTOC")  # the index only names it
        desc = sindex.ztoc_descriptor(zd, zsize, "application/vnd.oci.image.layer.v1.tar+gzip",
                                      "sha256:" + "2" * 64, 4 << 20, False)
        manifest = sindex.index_manifest(2, [desc], None, sindex.BUILD_TOOL)
        rec = store.add_index(manifest, image_ref="127.0.0.1:5000/app:v1",
                              original_digest="sha256:" + "1" * 64, platform="linux/amd64")
        assert rec.image_ref == "docker://127.0.0.1:5000/app:v1"
        for q in ("docker://127.0.0.1:5000/app:v1", "127.0.0.1:5000/app:v1"):
            assert [r.digest for r in store.list_artifacts(type="soci_index", image_ref=q)] \
                == [rec.digest], q
        assert store.list_artifacts(type="soci_index", image_ref="127.0.0.1:5000/app:v2") == []
        store.add_index(manifest, image_ref="docker://alpine",
                        original_digest="sha256:" + "1" * 64, platform="linux/amd64")
        for q in ("docker://docker.io/library/alpine:latest", "docker://alpine:latest",
                  "docker://127.0.0.1:5000/app:v1"):
            assert len(store.list_artifacts(type="soci_index", image_ref=q)) == 1, q
        assert store.image_refs(rec.digest) == ["docker://docker.io/library/alpine:latest",
                                                "docker://127.0.0.1:5000/app:v1"]
