"""soci_native.images: image sources (oci, oci-archive, docker-archive, bare paths) and platform
resolution, checked against images made by umoci and skopeo (see tests/img_build.py) and
against what those tools report about them (`skopeo inspect --raw/--config`, `umoci stat`)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import img_build as ib
import pytest

from soci_native import images as im
from soci_native.images import Descriptor, ImageError, Platform, open_image, resolve

HOST = Platform.host()


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> ib.Built:
    missing = ib.tools_missing()
    if missing:
        pytest.skip(f"needs {' and '.join(missing)} (apt-get install skopeo umoci) to build "
                    "the test images")
    return ib.build(tmp_path_factory.mktemp("images"))


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _members(layer: bytes) -> dict[str, bytes]:
    """name -> content of the regular files of a (gzip) tar layer, via Python's tarfile."""
    with tarfile.open(fileobj=io.BytesIO(layer), mode="r:*") as tf:
        return {ti.name: tf.extractfile(ti).read() for ti in tf if ti.isfile()}


def _stdlib_files(pkg: str) -> dict[str, bytes]:
    root = ib.STDLIB / pkg
    return {f"usr/lib/python/{pkg}/{p.relative_to(root).as_posix()}": p.read_bytes()
            for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


# ---- oci: layout directory -------------------------------------------------------------------

def test_oci_dir_reads_back_what_skopeo_and_umoci_report(built: ib.Built) -> None:
    ref = f"oci:{built.lay}:v1"
    with open_image(ref) as src:
        desc, raw = src.root()
        assert raw == ib.skopeo("inspect", "--raw", ref)
        assert desc.digest == built.v1["digest"] == ib.sha256(raw)
        assert desc.media_type == im.OCI_MANIFEST and desc.size == len(raw)
        [img] = resolve(src)
        assert img.source_ref == ref
        assert img.manifest_bytes == raw and img.manifest_json == json.loads(raw)
        assert img.manifest.digest == desc.digest
        assert img.manifest.platform == img.platform
        cfg_raw = ib.skopeo("inspect", "--config", "--raw", ref)
        assert src.read_blob(img.config_desc) == cfg_raw
        assert img.config == json.loads(cfg_raw)
        assert img.config_desc.media_type == im.OCI_CONFIG
        assert str(img.platform) == f"{built.host_platform['os']}/" \
                                    f"{built.host_platform['architecture']}"

        stat = ib.umoci_layers(built.lay, "v1")
        assert len(img.layers) == len(stat) == len(ib.LAYER_PACKAGES)
        assert [(d.media_type, d.digest, d.size) for d in img.layers] == \
            [(s["mediaType"], s["digest"], s["size"]) for s in stat]
        assert img.config["rootfs"]["diff_ids"] == [s["diff_id"] for s in stat]
        for d, s, pkg in zip(img.layers, stat, ib.LAYER_PACKAGES, strict=True):
            data = src.read_blob(d)
            path = src.blob_path(d)
            assert path is not None and Path(path).read_bytes() == data
            assert Path(path) == ib.blob_file(built.lay, d.digest)
            assert im.layer_compression(d.media_type) == "gzip"
            assert ib.sha256(gzip.decompress(data)) == s["diff_id"]
            files = _members(data)
            for name, content in _stdlib_files(pkg).items():
                assert files[name] == content, name


def test_oci_descriptors_reencode_byte_identical_to_go(built: ib.Built) -> None:
    """index.json and manifests written by umoci/skopeo (Go encoding/json) re-marshal to the
    same bytes through Descriptor.from_json/to_json + go_json."""
    for raw in (
        (built.lay / "index.json").read_bytes(),
        ib.skopeo("inspect", "--raw", f"oci:{built.lay}:v1"),
        ib.skopeo("inspect", "--raw", f"oci:{built.lay}:other"),
    ):
        doc = json.loads(raw)
        out = {"schemaVersion": doc["schemaVersion"]}
        if "manifests" in doc:
            out["manifests"] = [Descriptor.from_json(d).to_json() for d in doc["manifests"]]
        else:
            out["config"] = Descriptor.from_json(doc["config"]).to_json()
            out["layers"] = [Descriptor.from_json(d).to_json() for d in doc["layers"]]
        assert im.go_json(out) == raw.removesuffix(b"\n")  # json.Encoder adds a newline


def test_oci_tags(built: ib.Built) -> None:
    with pytest.raises(ImageError, match=r"holds 2 images.*tags: other, v1"):
        open_image(f"oci:{built.lay}").root()
    with pytest.raises(ImageError, match=r"no image tagged 'nope'.*tags: other, v1"):
        open_image(f"oci:{built.lay}:nope").root()
    with open_image(f"oci:{built.lay}:other") as src:
        desc, _ = src.root()
        assert desc.digest == built.other["digest"] != built.v1["digest"]
        [img] = resolve(src)
        assert img.platform.matches(Platform.from_json(built.other_platform))
    entries = ib.index_entries(built.lay)
    for i, e in enumerate(entries):
        with open_image(f"oci:{built.lay}:@{i}") as src:
            assert src.root()[0].digest == e["digest"]
    with pytest.raises(ImageError, match="out of range"):
        open_image(f"oci:{built.lay}:@{len(entries)}").root()


# ---- oci-archive -----------------------------------------------------------------------------

def test_oci_archive_reads_blobs_in_place(built: ib.Built) -> None:
    ref = f"oci-archive:{built.a_tar}:v1"
    before = set(os.listdir(built.root))
    with open_image(ref) as src:
        desc, raw = src.root()
        assert raw == ib.skopeo("inspect", "--raw", ref)
        assert desc.digest == built.v1["digest"]
        [img] = resolve(src)
        assert src.read_blob(img.config_desc) == ib.skopeo("inspect", "--config", "--raw", ref)
        for d in img.layers:
            want = ib.blob_file(built.lay, d.digest).read_bytes()
            assert src.blob_path(d) is None
            assert src.read_blob(d) == want
            with src.open_blob(d) as f:
                with pytest.raises(OSError):
                    f.fileno()  # a window into the tar, not a file of its own
                assert f.seekable() and f.readable()
                assert f.seek(0, io.SEEK_END) == d.size
                mid = d.size // 2
                f.seek(mid)
                assert f.read(100) == want[mid:mid + 100]
                assert f.read(10 * d.size) == want[mid + 100:]  # stops at the blob's end
                assert f.read(1) == b""
                f.seek(0)
                with gzip.GzipFile(fileobj=f) as gz, tarfile.open(fileobj=gz, mode="r|") as tf:
                    names = [ti.name for ti in tf]
                assert names == list(_members_names(want))
    assert set(os.listdir(built.root)) == before  # nothing extracted next to it


def _members_names(layer: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(layer), mode="r:gz") as tf:
        return tf.getnames()


def test_oci_archive_windows_are_independent(built: ib.Built) -> None:
    with open_image(f"oci-archive:{built.a_tar}") as src:
        [img] = resolve(src)
        a, b = img.layers[1], img.layers[2]
        fa, fb = src.open_blob(a), src.open_blob(b)
        chunks_a, chunks_b = [], []
        while True:
            ca, cb = fa.read(777), fb.read(1000)
            if not ca and not cb:
                break
            chunks_a.append(ca)
            chunks_b.append(cb)
        fa.close()
        fb.close()
        assert hashlib.sha256(b"".join(chunks_a)).hexdigest() == a.digest[7:]
        assert hashlib.sha256(b"".join(chunks_b)).hexdigest() == b.digest[7:]


def test_sources_close_their_files(built: ib.Built) -> None:
    n = _fds()
    for ref in (f"oci-archive:{built.a_tar}", f"docker-archive:{built.d_tar}",
                str(built.legacy) + ":img:legacy", f"oci:{built.lay}:v1"):
        with open_image(ref) as src:
            [img] = resolve(src)
            with src.open_blob(img.layers[0]) as f:
                f.read(10)
    assert _fds() == n


# ---- docker-archive --------------------------------------------------------------------------

def test_docker_archive_from_skopeo(built: ib.Built) -> None:
    ref = f"docker-archive:{built.d_tar}"
    sk_raw = ib.skopeo("inspect", "--raw", ref)
    sk = json.loads(sk_raw)
    with open_image(ref) as src:
        desc, raw = src.root()
        assert desc.media_type == im.DOCKER_MANIFEST
        assert desc.digest == ib.sha256(raw) and src.read_blob(desc) == raw
        # skopeo labels the uncompressed layer files .tar.gzip; ours say what they are, and
        # otherwise the synthesised manifest is the same JSON, byte for byte.
        assert raw == sk_raw.replace(b"rootfs.diff.tar.gzip", b"rootfs.diff.tar")
        [img] = resolve(src)
        assert img.config_desc.digest == sk["config"]["digest"]
        assert img.config_desc.media_type == im.DOCKER_CONFIG
        assert src.read_blob(img.config_desc) == \
            ib.skopeo("inspect", "--config", "--raw", ref)
        assert [(d.digest, d.size) for d in img.layers] == \
            [(x["digest"], x["size"]) for x in sk["layers"]]
        assert all(d.media_type == im.DOCKER_LAYER for d in img.layers)
        assert all(im.layer_compression(d.media_type) == "unknown" for d in img.layers)
        # the layers are the OCI image's layers, decompressed: digests = umoci's diff_ids
        stat = ib.umoci_layers(built.lay, "v1")
        assert [d.digest for d in img.layers] == [s["diff_id"] for s in stat]
        for d, s in zip(img.layers, stat, strict=True):
            data = src.read_blob(d)
            assert data == gzip.decompress(ib.blob_file(built.lay, s["digest"]).read_bytes())
            assert _members(data)
        assert img.platform.matches(Platform.from_json(built.host_platform))
    with open_image(f"docker-archive:{built.d_tar}:img:v1") as src2:
        assert src2.root()[1] == raw  # deterministic, and selectable by its name
    with pytest.raises(ImageError, match=r"no image named 'img:v2'.*img:v1"):
        open_image(f"docker-archive:{built.d_tar}:img:v2")


def test_docker_archive_legacy_layout(built: ib.Built) -> None:
    for ref in (f"docker-archive:{built.legacy}:img:legacy", f"{built.legacy}:img:legacy",
                f"docker-archive:{built.legacy}:@0", f"docker-archive:{built.legacy_dir}:@0"):
        with open_image(ref) as src:
            desc, raw = src.root()
            doc = json.loads(raw)
            assert list(doc) == ["schemaVersion", "mediaType", "config", "layers"]
            assert doc["config"] == {"mediaType": im.DOCKER_CONFIG,
                                     "size": len(built.legacy_config),
                                     "digest": ib.sha256(built.legacy_config)}
            want = [{"mediaType": mt, "size": len(data), "digest": ib.sha256(data)}
                    for mt, (_, data) in zip(
                        [im.DOCKER_LAYER, im.DOCKER_LAYER_GZIP, im.DOCKER_LAYER],
                        built.legacy_layers, strict=True)]
            assert doc["layers"] == want
            assert raw == json.dumps(doc, separators=(",", ":")).encode()
            [img] = resolve(src)
            assert img.config == json.loads(built.legacy_config)
            for d, (_, data) in zip(img.layers, built.legacy_layers, strict=True):
                assert src.read_blob(d) == data
                path = src.blob_path(d)
                if "legacy_dir" in ref:
                    assert path is not None and Path(path).read_bytes() == data
                else:
                    assert path is None
    with open_image(f"docker-archive:{built.legacy}:example.com/other/img:2") as src:
        assert len(resolve(src)[0].layers) == 1
    with pytest.raises(ImageError, match=r"holds 2 images.*img:legacy, example.com/other/img:2"):
        open_image(f"docker-archive:{built.legacy}")


def test_docker_archive_prefers_oci_layout(built: ib.Built) -> None:
    for ref in (f"docker-archive:{built.dock25}", f"docker-archive:{built.dock25}:img:v1",
                f"docker-archive:{built.dock25}:docker.io/library/img:v1", str(built.dock25)):
        with open_image(ref) as src:
            assert isinstance(src, im.OCILayoutSource)
            desc, raw = src.root()
            assert desc.digest == built.v1["digest"] and desc.media_type == im.OCI_MANIFEST
            [img] = resolve(src)
            assert [d.media_type for d in img.layers] == [im.OCI_LAYER_GZIP] * 3
    with pytest.raises(ImageError, match="no image tagged 'img:v9'"):
        open_image(f"docker-archive:{built.dock25}:img:v9").root()


# ---- bare paths ------------------------------------------------------------------------------

def test_bare_paths_are_detected(built: ib.Built, tmp_path: Path) -> None:
    cases = [(f"{built.lay}:v1", im.OCILayoutSource, built.v1["digest"]),
             (str(built.a_tar), im.OCILayoutSource, built.v1["digest"]),
             (f"{built.a_tar}:v1", im.OCILayoutSource, built.v1["digest"]),
             (str(built.d_tar), im.DockerArchiveSource, None)]
    for ref, cls, digest in cases:
        with open_image(ref) as src:
            assert type(src) is cls and src.ref == ref
            if digest:
                assert src.root()[0].digest == digest
            assert len(resolve(src)) == 1
    plain = tmp_path / "plain.tar"
    with tarfile.open(plain, "w") as tf:
        tf.add(ib.STDLIB / "json" / "__init__.py", "x.py")
    with pytest.raises(ImageError, match="not an image"):
        open_image(str(plain))
    with pytest.raises(ImageError, match="neither an OCI image layout"):
        open_image(str(tmp_path))
    with pytest.raises(ImageError, match="not an OCI image layout"):
        open_image(f"oci:{tmp_path}")
    with pytest.raises(ImageError, match="is a directory"):
        open_image(f"oci-archive:{built.lay}")
    with pytest.raises(ImageError, match="not a directory"):
        open_image(f"oci:{built.a_tar}")


@pytest.mark.parametrize("ref,name", [
    ("docker://docker.io/library/alpine:3.19", "docker.io/library/alpine:3.19"),
    ("docker://alpine:3.19", "docker.io/library/alpine:3.19"),
    ("ghcr.io/org/repo:tag", "ghcr.io/org/repo:tag"),
    ("registry.local:5000/x/y@sha256:" + "a" * 64, "registry.local:5000/x/y@sha256:" + "a" * 64),
])
def test_registry_references_open_registry_sources(ref: str, name: str) -> None:
    from soci_native.registry import RegistrySource

    with open_image(ref) as src:  # nothing is fetched before root()
        assert isinstance(src, RegistrySource)
        assert str(src.reference) == name


def test_bare_short_names_are_paths_not_registry_references() -> None:
    with pytest.raises(ImageError, match="no such file or directory.*docker://"):
        open_image("alpine:3.19")


def test_unsupported_transports() -> None:
    with pytest.raises(ImageError, match="unsupported transport 'containers-storage'"):
        open_image("containers-storage:alpine")
    with pytest.raises(ImageError, match="no such file or directory"):
        open_image("oci:/nonexistent/layout:tag")


# ---- platforms -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["multi", "flat", "dlist"])
def test_index_platform_selection(built: ib.Built, kind: str) -> None:
    ref = {"multi": f"oci:{built.multi}:multi", "flat": f"oci:{built.flat}",
           "dlist": f"oci:{built.multi}:dlist"}[kind]
    host = Platform.from_json(built.host_platform)
    other = Platform.from_json(built.other_platform)
    with open_image(ref) as src:
        root, _ = src.root()
        assert root.media_type == (im.DOCKER_MANIFEST_LIST if kind == "dlist" else im.OCI_INDEX)
        want_mt = im.DOCKER_MANIFEST if kind == "dlist" else im.OCI_MANIFEST

        if HOST.matches(host):  # the v1 image was made by umoci on this machine
            [img] = resolve(src)
            assert img.platform == host and img.manifest.platform == host
            assert img.manifest.media_type == want_mt
            assert img.config["architecture"] == host.architecture

        [img] = resolve(src, [other])
        assert img.platform == other  # the index's platform, variant included
        assert img.config["architecture"] == other.architecture
        if other.architecture == "arm64":  # arm64 without a variant matches arm64/v8
            [img2] = resolve(src, [Platform.parse("linux/arm64")])
            assert img2.manifest.digest == img.manifest.digest
            [img3] = resolve(src, [Platform.parse("linux/aarch64")])
            assert img3.manifest.digest == img.manifest.digest

        both = resolve(src, [other, host, other])
        assert [i.platform for i in both] == [other, host]
        assert len({i.manifest.digest for i in both}) == 2
        for i in both:
            assert [(d.digest, d.size) for d in i.layers] == \
                [(s["digest"], s["size"]) for s in ib.umoci_layers(built.lay, "v1")]

        everything = resolve(src, all_platforms=True)  # attestation and absent one skipped
        assert [i.platform for i in everything] == [host, other]

        with pytest.raises(ImageError) as e:
            resolve(src, [Platform.parse("linux/riscv64")])
        msg = str(e.value)
        assert "no image for platform linux/riscv64" in msg
        assert str(host) in msg and str(other) in msg and "unknown" not in msg

        if kind != "dlist":
            with pytest.raises(ImageError, match=r"linux/s390x .*not in the archive"):
                resolve(src, [Platform.parse("linux/s390x")])


def test_single_manifest_platform_comes_from_config(built: ib.Built) -> None:
    with open_image(f"oci:{built.lay}:other") as src:
        [img] = resolve(src, all_platforms=True)
        assert img.platform == Platform("linux", built.other_platform["architecture"])
        assert img.manifest.platform == img.platform
        with pytest.raises(ImageError, match="single-platform image"):
            resolve(src, [Platform.parse("linux/s390x")])


def test_platform_parse_str_json() -> None:
    p = Platform.parse("linux/arm64/v8")
    assert p == Platform("linux", "arm64", "v8") and str(p) == "linux/arm64/v8"
    assert p.to_json() == {"architecture": "arm64", "os": "linux", "variant": "v8"}
    assert list(Platform("windows", "amd64", None, "10.0.17763.1", ("win32k",)).to_json()) == \
        ["architecture", "os", "os.version", "os.features"]
    assert Platform.parse("windows(10.0.17763)/amd64").os_version == "10.0.17763"
    assert str(Platform.parse("Linux/x86_64")) == "linux/amd64"
    assert Platform.parse("linux").os == "linux"
    assert Platform.parse("arm64").architecture == "arm64"
    for bad in ("", "linux/", "a/b/c/d", "bogus"):
        with pytest.raises(ImageError, match="invalid platform"):
            Platform.parse(bad)
    rt = Platform.from_json({"architecture": "arm", "os": "linux", "variant": "v7"})
    assert rt == Platform("linux", "arm", "v7")
    with pytest.raises(ImageError):
        Platform.from_json({"os": "linux"})


def test_platform_matching_is_containerd_like() -> None:
    P = Platform.parse
    assert P("linux/arm64").matches(P("linux/arm64/v8"))
    assert P("linux/arm64/v8").matches(Platform("linux", "aarch64"))
    assert P("linux/amd64").matches(Platform("linux", "x86_64"))
    assert P("linux/arm").matches(P("linux/arm/v7"))
    assert not P("linux/arm/v6").matches(P("linux/arm/v7"))
    assert not P("linux/arm64").matches(P("linux/amd64"))
    assert not P("linux/amd64").matches(P("windows/amd64"))
    assert not P("linux/arm64/v9").matches(P("linux/arm64"))
    h = Platform.host()
    assert h.architecture in ("amd64", "arm64", "arm", "386", "ppc64le", "s390x", "riscv64") \
        or h.architecture
    if h.architecture == "arm64":
        assert h.variant == "v8"
    assert h.matches(h.normalized())


# ---- descriptors, JSON -----------------------------------------------------------------------

def test_descriptor_json_field_order_is_go_order() -> None:
    d = Descriptor("application/vnd.oci.image.manifest.v1+json", "sha256:" + "ab" * 32, 123,
                   annotations={"z": "1", "a": "<&>"},
                   platform=Platform("linux", "arm64", "v8"),
                   artifact_type="application/vnd.amazon.soci.index.v2+json",
                   urls=("https://example.invalid/x",), data=b"{}")
    j = d.to_json()
    assert list(j) == ["mediaType", "digest", "size", "urls", "annotations", "data",
                       "platform", "artifactType"]
    assert list(j["annotations"]) == ["a", "z"]
    assert im.go_json(j) == (
        b'{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:'
        + b"ab" * 32 + b'","size":123,"urls":["https://example.invalid/x"],'
        b'"annotations":{"a":"\\u003c\\u0026\\u003e","z":"1"},"data":"e30=",'
        b'"platform":{"architecture":"arm64","os":"linux","variant":"v8"},'
        b'"artifactType":"application/vnd.amazon.soci.index.v2+json"}')
    assert Descriptor.from_json(j) == d
    small = Descriptor("application/octet-stream", "sha256:" + "0" * 64, 0)
    assert small.to_json() == {"mediaType": "application/octet-stream",
                               "digest": "sha256:" + "0" * 64, "size": 0}
    assert im.go_json({"k": "é\u2028"}) == '{"k":"é\\u2028"}'.encode()


@pytest.mark.parametrize("bad", [
    {"mediaType": "x", "digest": "sha256:abc", "size": 1},
    {"mediaType": "x", "digest": "sha256:../../../etc/passwd", "size": 1},
    {"mediaType": "x", "digest": "md5:" + "0" * 32, "size": 1},
    {"mediaType": "x", "digest": "sha256:" + "0" * 64, "size": -1},
    {"mediaType": "x", "digest": "sha256:" + "0" * 64, "size": True},
    {"mediaType": "x", "digest": "sha256:" + "0" * 64, "size": 1, "annotations": {"a": 1}},
    {"mediaType": 3, "digest": "sha256:" + "0" * 64, "size": 1},
    ["not", "an", "object"],
])
def test_descriptor_rejects_malformed(bad: object) -> None:
    with pytest.raises(ImageError, match="invalid"):
        Descriptor.from_json(bad)


def test_layer_compression() -> None:
    lc = im.layer_compression
    assert lc("application/vnd.oci.image.layer.v1.tar") == "uncompressed"
    assert lc("application/vnd.oci.image.layer.v1.tar+gzip") == "gzip"
    assert lc("application/vnd.oci.image.layer.v1.tar+zstd") == "zstd"
    assert lc("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip") == "gzip"
    assert lc("application/vnd.oci.image.layer.nondistributable.v1.tar") == "uncompressed"
    assert lc("application/vnd.docker.image.rootfs.diff.tar") == "unknown"
    assert lc("application/vnd.docker.image.rootfs.diff.tar.gzip") == "gzip"
    assert lc("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip") == "gzip"
    assert lc("application/vnd.docker.image.rootfs.foreign.diff.tar") == "unknown"
    for bad in ("application/vnd.oci.image.layer.v1.tar+gzip+encrypted", "application/json",
                "application/vnd.in-toto+json"):
        with pytest.raises(ImageError, match="unsupported layer media type"):
            lc(bad)


# ---- broken images ---------------------------------------------------------------------------

def _v1_manifest(layout: Path, built: ib.Built) -> dict:
    return json.loads(ib.blob_file(layout, built.v1["digest"]).read_bytes())


def test_missing_blobs(built: ib.Built, tmp_path: Path) -> None:
    lay = ib.copy_layout(built.lay, tmp_path / "lay")
    m = _v1_manifest(lay, built)
    layer = m["layers"][1]["digest"]
    ib.blob_file(lay, layer).unlink()
    with open_image(f"oci:{lay}:v1") as src:
        [img] = resolve(src)  # layers are not read by resolve
        assert not src.has_blob(layer) and src.blob_path(layer) is None
        with pytest.raises(ImageError, match=f"missing blob {layer}"):
            src.read_blob(img.layers[1])
        with pytest.raises(ImageError, match="missing blob"):
            src.open_blob(layer)
    ib.blob_file(lay, m["config"]["digest"]).unlink()
    with open_image(f"oci:{lay}:v1") as src, \
            pytest.raises(ImageError, match=f"missing blob {m['config']['digest']}"):
        resolve(src)
    ib.blob_file(lay, built.v1["digest"]).unlink()
    with pytest.raises(ImageError, match=f"missing blob {built.v1['digest']}"):
        open_image(f"oci:{lay}:v1").root()


def test_digest_and_size_mismatch(built: ib.Built, tmp_path: Path) -> None:
    lay = ib.copy_layout(built.lay, tmp_path / "lay")
    m = _v1_manifest(lay, built)
    cfg = ib.blob_file(lay, m["config"]["digest"])
    data = bytearray(cfg.read_bytes())
    data[10] ^= 0x20
    cfg.write_bytes(bytes(data))
    with open_image(f"oci:{lay}:v1") as src, \
            pytest.raises(ImageError, match=f"digest mismatch for blob {m['config']['digest']}"):
        resolve(src)
    layer = ib.blob_file(lay, m["layers"][0]["digest"])
    layer.write_bytes(layer.read_bytes() + b"\0")
    with open_image(f"oci:{lay}:v1") as src:
        with pytest.raises(ImageError, match="size mismatch"):
            src.read_blob(Descriptor.from_json(m["layers"][0]))
        with pytest.raises(ImageError, match="digest mismatch"):
            src.read_blob(m["layers"][0]["digest"])  # no size to compare: the hash catches it


def test_digest_mismatch_inside_archive(built: ib.Built, tmp_path: Path) -> None:
    data = bytearray(built.a_tar.read_bytes())
    m = _v1_manifest(built.lay, built)
    layer = ib.blob_file(built.lay, m["layers"][2]["digest"]).read_bytes()
    at = bytes(data).index(layer)
    data[at + len(layer) // 2] ^= 0xFF
    bad = tmp_path / "bad.tar"
    bad.write_bytes(bytes(data))
    with open_image(f"oci-archive:{bad}:v1") as src:
        [img] = resolve(src)
        with pytest.raises(ImageError, match="digest mismatch"):
            src.read_blob(img.layers[2])
        assert src.read_blob(img.layers[1])  # the others are fine


def test_corrupt_archives(built: ib.Built, tmp_path: Path) -> None:
    data = built.a_tar.read_bytes()
    with tarfile.open(built.a_tar) as tf:
        offsets = [ti.offset for ti in tf]  # header offsets: cut at and inside member bounds
    cuts = {len(data) // 2}
    cuts |= {o for o in offsets[1:]} | {o + 100 for o in offsets} | {o + 700 for o in offsets}
    trunc = tmp_path / "trunc.tar"
    wrong = []
    for cut in sorted(cuts):
        trunc.write_bytes(data[:cut])
        try:
            with open_image(f"oci-archive:{trunc}") as src:
                for d in resolve(src)[0].layers:
                    src.read_blob(d)
            wrong.append((cut, "no error"))
        except ImageError as e:
            if "unreadable archive" not in str(e):
                wrong.append((cut, str(e)))
    assert not wrong, f"archive of {len(data)} bytes cut short: {wrong}"
    junk = tmp_path / "junk.tar"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(ImageError, match="unreadable archive"):
        open_image(f"oci-archive:{junk}")
    with pytest.raises(ImageError, match="unreadable archive"):
        open_image(str(junk))
    empty = tmp_path / "empty.tar"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="unreadable archive"):
        open_image(f"docker-archive:{empty}")
    gz = tmp_path / "a.tar.gz"
    gz.write_bytes(gzip.compress(data))
    with pytest.raises(ImageError, match=r"gzip-compressed.*gunzip"):
        open_image(f"oci-archive:{gz}")
    n = _fds()
    for p in (trunc, junk, empty, gz):
        with pytest.raises(ImageError):
            open_image(str(p))
    assert _fds() == n


def test_unsupported_documents(built: ib.Built, tmp_path: Path) -> None:
    lay = ib.copy_layout(built.lay, tmp_path / "lay")
    m = _v1_manifest(lay, built)

    def tag(name: str, doc: dict, mt: str = im.OCI_MANIFEST) -> str:
        raw = ib.dumps(doc)
        ib.put_blob(lay, raw)
        idx = json.loads((lay / "index.json").read_bytes())
        idx["manifests"].append({**ib.desc(mt, raw), "annotations": {ib.REF_NAME: name}})
        (lay / "index.json").write_bytes(ib.dumps(idx))
        return f"oci:{lay}:{name}"

    enc = {**m, "layers": [{**m["layers"][0],
                            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip+encrypted"}]}
    art = {**m, "config": {"mediaType": "application/vnd.amazon.soci.index.v2+json",
                           "digest": ib.put_blob(lay, b"{}"), "size": 2}}
    s1 = {"schemaVersion": 1, "name": "x", "tag": "y", "fsLayers": []}
    cases = [
        (tag("enc", enc), "unsupported layer media type"),
        (tag("art", art), "not a container image"),
        (tag("s1", s1, im.DOCKER_SCHEMA1[1]), "schema 1"),
        (tag("weird", m, "application/x-weird"), "unsupported media type"),
    ]
    for ref, msg in cases:
        with open_image(ref) as src, pytest.raises(ImageError, match=msg):
            resolve(src)
    bad_layout = tmp_path / "bad"
    shutil.copytree(built.lay, bad_layout)
    (bad_layout / "index.json").write_text("{not json")
    with pytest.raises(ImageError, match="invalid JSON"):
        open_image(f"oci:{bad_layout}")
