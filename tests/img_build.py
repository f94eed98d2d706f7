"""Test images for soci_native.images, built by real tools from real data.

`build(root)` makes, under `root`:

* `lay/`: an OCI image layout made with umoci (`init`, `new`, then `unpack` / copy files from
  the Python standard library into the rootfs / `repack`, once per layer), so its layers are
  gzip tars written by Go's archive/tar + compress/gzip. Tags: `v1` (three layers, host
  architecture), `other` (same layers, config re-made by `umoci config --architecture` for a
  second platform);
* `a.tar`: `skopeo copy oci:lay:v1 oci-archive:a.tar:v1`;
* `d.tar`: `skopeo copy oci:lay:v1 docker-archive:d.tar:img:v1` (layers stored uncompressed);
* `multi/`: a copy of `lay` plus hand-written JSON: an OCI index (tag `multi`) listing the host
  image, the other-platform image, a buildx-style attestation manifest (`unknown/unknown`) and
  an entry whose manifest blob is absent; a Docker manifest list (tag `dlist`) over
  hand-written Docker schema2 manifests of the same images;
* `flat/`: the same blobs with index.json itself being the multi-platform index (no tags);
* `legacy.tar`: a docker save archive in the pre-OCI layout, written here with tarfile:
  `<id>/layer.tar` files (one uncompressed, one gzip), a duplicated layer stored as a symlink
  the way docker save does it, two images in manifest.json;
* `dock25.tar`: a Docker-25-style save: the OCI layout of `a.tar` (index.json annotated with
  `io.containerd.image.name`) plus a legacy manifest.json pointing into blobs/.

Digests, sizes and bytes are checked in the tests against `skopeo inspect` and `umoci stat`.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sysconfig
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

STDLIB = Path(sysconfig.get_paths()["stdlib"])
# (layer, stdlib package copied into the rootfs as /usr/lib/python/<name>)
LAYER_PACKAGES = ["json", "email", "asyncio"]
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
REF_NAME = "org.opencontainers.image.ref.name"


def tools_missing() -> list[str]:
    return [t for t in ("umoci", "skopeo") if shutil.which(t) is None]


def run(*args: str, cwd: Path | None = None) -> bytes:
    r = subprocess.run(args, cwd=cwd, capture_output=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({r.returncode}): {r.stderr.decode()}")
    return r.stdout


def skopeo(*args: str) -> bytes:
    return run("skopeo", "--insecure-policy", *args)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def blob_file(layout: Path, digest: str) -> Path:
    alg, enc = digest.split(":", 1)
    return layout / "blobs" / alg / enc


def put_blob(layout: Path, data: bytes) -> str:
    dg = sha256(data)
    p = blob_file(layout, dg)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return dg


def desc(mt: str, data: bytes, **extra: object) -> dict:
    return {"mediaType": mt, "digest": sha256(data), "size": len(data), **extra}


def index_entries(layout: Path) -> list[dict]:
    return json.loads((layout / "index.json").read_bytes())["manifests"]


def entry_for(layout: Path, tag: str) -> dict:
    return next(e for e in index_entries(layout)
                if e.get("annotations", {}).get(REF_NAME) == tag)


@dataclass
class Built:
    root: Path
    lay: Path
    a_tar: Path
    d_tar: Path
    multi: Path
    flat: Path
    legacy: Path
    legacy_dir: Path
    dock25: Path
    host_platform: dict          # os/architecture of the v1 image (umoci: the host's)
    other_platform: dict         # platform written in the index for the `other` image
    v1: dict = field(default_factory=dict)      # index.json entry of lay:v1
    other: dict = field(default_factory=dict)   # index.json entry of lay:other
    attestation: dict = field(default_factory=dict)
    soci: dict = field(default_factory=dict)     # artifact entry (artifactType) in `multi`
    missing: dict = field(default_factory=dict)  # index entry whose manifest is absent
    legacy_layers: list = field(default_factory=list)  # [(member, bytes)] of legacy image 1
    legacy_config: bytes = b""


def _copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))


def make_umoci_layout(root: Path) -> tuple[Path, dict, dict]:
    lay = root / "lay"
    run("umoci", "init", "--layout", str(lay))
    run("umoci", "new", "--image", f"{lay}:v1")
    for i, pkg in enumerate(LAYER_PACKAGES):
        bundle = root / f"bundle{i}"
        run("umoci", "unpack", "--image", f"{lay}:v1", str(bundle))
        _copy_tree(STDLIB / pkg, bundle / "rootfs" / "usr" / "lib" / "python" / pkg)
        run("umoci", "repack", "--image", f"{lay}:v1", str(bundle))
        shutil.rmtree(bundle)
    v1 = entry_for(lay, "v1")
    cfg = json.loads(blob_file(lay, json.loads(blob_file(lay, v1["digest"]).read_bytes())
                                   ["config"]["digest"]).read_bytes())
    host = {"architecture": cfg["architecture"], "os": cfg["os"]}
    other_arch = "arm64" if cfg["architecture"] != "arm64" else "amd64"
    run("umoci", "config", "--image", f"{lay}:v1", "--architecture", other_arch,
        "--tag", "other")
    other = {"architecture": other_arch, "os": "linux"}
    if other_arch == "arm64":
        other["variant"] = "v8"
    return lay, host, other


def _attestation(layout: Path) -> dict:
    statement = dumps({"_type": "https://in-toto.io/Statement/v0.1", "subject": []})
    cfg = dumps({"architecture": "unknown", "os": "unknown", "config": {},
                 "rootfs": {"type": "layers", "diff_ids": [sha256(statement)]}})
    put_blob(layout, statement)
    put_blob(layout, cfg)
    man = dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                 "config": desc(OCI_CONFIG, cfg),
                 "layers": [desc("application/vnd.in-toto+json", statement,
                                 annotations={"in-toto.io/predicate-type":
                                              "https://spdx.dev/Document"})]})
    put_blob(layout, man)
    return desc(OCI_MANIFEST, man, annotations={
        "vnd.docker.reference.digest": "sha256:" + "0" * 64,
        "vnd.docker.reference.type": "attestation-manifest"},
        platform={"architecture": "unknown", "os": "unknown"})


def _soci_like(layout: Path, platform: dict) -> dict:
    """An artifact entry as `soci convert` adds one: same platform as the image, listed first
    here so that a selector that does not skip artifacts picks it."""
    empty = b"{}"
    put_blob(layout, empty)
    man = dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                 "config": desc("application/vnd.amazon.soci.index.v2+json", empty),
                 "layers": []})
    put_blob(layout, man)
    return {**desc(OCI_MANIFEST, man), "platform": platform,
            "artifactType": "application/vnd.amazon.soci.index.v2+json"}


def _docker_manifest(layout: Path, oci_entry: dict) -> bytes:
    m = json.loads(blob_file(layout, oci_entry["digest"]).read_bytes())

    def d(x: dict, mt: str) -> dict:
        return {"mediaType": mt, "size": x["size"], "digest": x["digest"]}

    man = dumps({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
                 "config": d(m["config"], DOCKER_CONFIG),
                 "layers": [d(x, DOCKER_LAYER_GZIP) for x in m["layers"]]})
    put_blob(layout, man)
    return man


def make_multi(root: Path, lay: Path, host: dict, other: dict, b: Built) -> None:
    multi = root / "multi"
    shutil.copytree(lay, multi)
    v1, oth = entry_for(lay, "v1"), entry_for(lay, "other")
    b.v1, b.other = v1, oth
    b.attestation = _attestation(multi)
    gone = b"this manifest is not in the layout"
    b.missing = desc(OCI_MANIFEST, gone, platform={"architecture": "s390x", "os": "linux"})

    def plat(e: dict, p: dict) -> dict:
        return {"mediaType": e["mediaType"], "digest": e["digest"], "size": e["size"],
                "platform": p}

    b.soci = _soci_like(multi, host)
    entries = [b.soci, plat(v1, host), plat(oth, other), b.attestation, b.missing]
    index = dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries})
    put_blob(multi, index)
    dm1, dm2 = _docker_manifest(multi, v1), _docker_manifest(multi, oth)
    dlist = dumps({"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": [
        {**desc(DOCKER_MANIFEST, dm1), "platform": host},
        {**desc(DOCKER_MANIFEST, dm2), "platform": other}]})
    put_blob(multi, dlist)
    top = {"schemaVersion": 2, "manifests": [
        {**desc(OCI_INDEX, index), "annotations": {REF_NAME: "multi"}},
        {**desc(DOCKER_LIST, dlist), "annotations": {REF_NAME: "dlist"}},
        {**v1, "annotations": {REF_NAME: "v1"}},
    ]}
    (multi / "index.json").write_bytes(dumps(top))

    flat = root / "flat"
    shutil.copytree(multi, flat)
    bare_attestation = {k: v for k, v in b.attestation.items() if k != "annotations"}
    (flat / "index.json").write_bytes(dumps({"schemaVersion": 2, "manifests": [
        plat(v1, host), plat(oth, other), bare_attestation, b.missing]}))
    b.multi, b.flat = multi, flat


def _tar_add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.mode = 0o444
    tf.addfile(ti, io.BytesIO(data))


def _tar_symlink(tf: tarfile.TarFile, name: str, target: str) -> None:
    ti = tarfile.TarInfo(name)
    ti.type = tarfile.SYMTYPE
    ti.linkname = target
    tf.addfile(ti)


def make_legacy(root: Path, lay: Path, b: Built) -> None:
    """docker save, pre-OCI layout, hand-written from the umoci image's blobs."""
    m = json.loads(blob_file(lay, b.v1["digest"]).read_bytes())
    config = blob_file(lay, m["config"]["digest"]).read_bytes()
    gz = [blob_file(lay, x["digest"]).read_bytes() for x in m["layers"]]
    l0 = gzip.decompress(gz[0])   # stored uncompressed, as docker save does
    l1 = gz[1]                    # stored gzip (as some non-docker writers do)
    cfg_name = hashlib.sha256(config).hexdigest() + ".json"
    ids = ["a" * 64, "b" * 64, "c" * 64]
    layers = [f"{ids[0]}/layer.tar", f"{ids[1]}/layer.tar", f"{ids[2]}/layer.tar"]
    b.legacy_layers = [(layers[0], l0), (layers[1], l1), (layers[2], l0)]
    b.legacy_config = config
    manifest = [
        {"Config": cfg_name, "RepoTags": ["img:legacy"], "Layers": layers},
        {"Config": cfg_name, "RepoTags": ["example.com/other/img:2"], "Layers": layers[:1]},
    ]
    path = root / "legacy.tar"
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
        _tar_add(tf, cfg_name, config)
        for i in ids:
            _tar_add(tf, f"{i}/VERSION", b"1.0")
        _tar_add(tf, layers[0], l0)
        _tar_add(tf, layers[1], l1)
        _tar_symlink(tf, layers[2], f"../{layers[0]}")  # duplicate layer: docker's symlink
        _tar_add(tf, "manifest.json", dumps(manifest))
        _tar_add(tf, "repositories", dumps({"img": {"legacy": ids[1]}}))
    b.legacy = path
    d = b.legacy_dir = root / "legacy_dir"  # the same archive unpacked (tar xf)
    with tarfile.open(path) as tf:
        for ti in tf:
            dst = d / ti.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            if ti.issym():
                os.symlink(ti.linkname, dst)
            else:
                dst.write_bytes(tf.extractfile(ti).read())


def make_dock25(root: Path, b: Built) -> None:
    """Docker 25+ save: an OCI layout plus the legacy manifest.json, one tar."""
    path = root / "dock25.tar"
    with tarfile.open(b.a_tar) as src, tarfile.open(path, "w") as out:
        for ti in src:
            if ti.name == "index.json":
                idx = json.loads(src.extractfile(ti).read())
                for e in idx["manifests"]:
                    e["annotations"] = {"io.containerd.image.name": "docker.io/library/img:v1",
                                        REF_NAME: "v1"}
                _tar_add(out, "index.json", dumps(idx))
            elif ti.isfile():
                out.addfile(ti, src.extractfile(ti))
            else:
                out.addfile(ti)
        m = json.loads(blob_file(b.lay, b.v1["digest"]).read_bytes())
        legacy = [{"Config": "blobs/sha256/" + m["config"]["digest"][7:],
                   "RepoTags": ["img:v1"],
                   "Layers": ["blobs/sha256/" + x["digest"][7:] for x in m["layers"]]}]
        _tar_add(out, "manifest.json", dumps(legacy))
    b.dock25 = path


def build(root: Path) -> Built:
    lay, host, other = make_umoci_layout(root)
    a_tar, d_tar = root / "a.tar", root / "d.tar"
    skopeo("copy", "-q", f"oci:{lay}:v1", f"oci-archive:{a_tar}:v1")
    skopeo("copy", "-q", f"oci:{lay}:v1", f"docker-archive:{d_tar}:img:v1")
    b = Built(root, lay, a_tar, d_tar, root / "multi", root / "flat", root / "legacy.tar",
              root / "legacy_dir", root / "dock25.tar", host, other)
    make_multi(root, lay, host, other, b)
    make_legacy(root, lay, b)
    make_dock25(root, b)
    return b


def umoci_layers(lay: Path, tag: str) -> list[dict]:
    """Layer descriptors and diff_ids as `umoci stat` reports them."""
    out = json.loads(run("umoci", "stat", "--image", f"{lay}:{tag}", "--json"))
    return [{**h["layer"], "diff_id": h["diff_id"]} for h in out["history"] if h.get("layer")]


def copy_layout(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for p in dst.rglob("*"):
        if p.is_file():
            os.chmod(p, 0o644)
    return dst
