"""The layers of an image are started largest first (a big layer started last would run
alone while the other jobs' cores idle); the results still come in layer order."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import zlib
from pathlib import Path

from soci_native.build import BuildOptions, build_layers, hash_on_thread
from soci_native.images import Descriptor, open_image, resolve
from soci_native.store import Store


def _put(lay: Path, data: bytes) -> dict:
    d = hashlib.sha256(data).hexdigest()
    (lay / "blobs" / "sha256" / d).write_bytes(data)
    return {"digest": f"sha256:{d}", "size": len(data)}


def _layer(name: str, size: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        ti = tarfile.TarInfo(name)
        data = os.urandom(size)
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
    c = zlib.compressobj(1, zlib.DEFLATED, 31)
    return c.compress(buf.getvalue()) + c.flush()


def test_largest_layer_starts_first(tmp_path: Path) -> None:
    lay = tmp_path / "lay"
    (lay / "blobs" / "sha256").mkdir(parents=True)
    (lay / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    sizes = [20_000, 300_000, 5_000, 120_000]
    layers = [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
               **_put(lay, _layer(f"f{i}", n))} for i, n in enumerate(sizes)]
    config = _put(lay, json.dumps({"architecture": "amd64", "os": "linux",
                                   "rootfs": {"type": "layers", "diff_ids": []}}).encode())
    manifest = _put(lay, json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
        "layers": layers}).encode())
    (lay / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", **manifest,
        "platform": {"architecture": "amd64", "os": "linux"},
        "annotations": {"org.opencontainers.image.ref.name": "t"}}]}))
    image = resolve(open_image(f"oci:{lay}:t"))[0]
    finished: list[Descriptor] = []
    results = build_layers(open_image(f"oci:{lay}:t"), Store(tmp_path / "store"), image.layers,
                           BuildOptions(jobs=1, min_layer_size=0), on_layer=finished.append)
    # one job: the order they finish in is the order they were started in
    assert [d.size for d in finished] == sorted((d.size for d in image.layers), reverse=True)
    assert [r.layer.digest for r in results] == [x["digest"] for x in layers]
    assert all(r.status == "built" for r in results)


def test_hashing_gets_a_thread_only_while_a_core_is_spare() -> None:
    assert hash_on_thread(1, cores=2) and hash_on_thread(3, cores=4)
    assert not hash_on_thread(2, cores=2) and not hash_on_thread(8, cores=4)
    assert not hash_on_thread(1, cores=1)
    assert hash_on_thread(1) == (len(os.sched_getaffinity(0)) > 1)


def test_a_layer_the_rest_cannot_cover_hashes_on_a_thread() -> None:
    """With every core inflating, a layer bigger than everything else still queued or running
    would run alone for a while: it gets a hasher thread; similar or smaller ones hash inline."""
    assert hash_on_thread(2, cores=2, size=200, others=30)  # the big one, a small one beside
    assert not hash_on_thread(2, cores=2, size=30, others=200)  # the small one beside it
    assert not hash_on_thread(2, cores=2, size=100, others=100)  # equal layers
    assert not hash_on_thread(2, cores=2, size=100, others=150)
    assert hash_on_thread(2, cores=2, size=100, others=0)  # the last one left
    assert not hash_on_thread(2, cores=1, size=100, others=0)  # no core to give it
    assert hash_on_thread(1, cores=2, size=30, others=200)  # a core to spare anyway
