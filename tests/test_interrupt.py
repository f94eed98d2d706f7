"""Ctrl-C during `create`: a real SIGINT to the command stops it early (queued layers are
dropped, running ones stop at their next buffer), the store stays consistent, and a rerun
reuses the zTOCs that were finished. The C stop flag is also checked directly."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tarfile
import threading
import time
import zlib
from pathlib import Path

import pytest

LAYERS = 12


def _gzip(data: bytes) -> bytes:
    c = zlib.compressobj(1, zlib.DEFLATED, 31)
    return c.compress(data) + c.flush()


def _put(lay: Path, data: bytes) -> dict:
    d = hashlib.sha256(data).hexdigest()
    (lay / "blobs" / "sha256" / d).write_bytes(data)
    return {"digest": f"sha256:{d}", "size": len(data)}


def build_layout(lay: Path, big: int = 16 << 20) -> list[str]:
    """LAYERS distinct gzip layers of ~big bytes each, cheaply: every layer is a member
    holding a small file of its own, then one shared member (a big file, the tar's end)."""
    (lay / "blobs" / "sha256").mkdir(parents=True)
    (lay / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    payload = base64.b64encode(os.urandom(big * 3 // 4))  # compresses ~25%: real inflate work
    tail = io.BytesIO()
    with tarfile.open(fileobj=tail, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        ti = tarfile.TarInfo("big")
        ti.size = len(payload)
        tf.addfile(ti, io.BytesIO(payload))
    shared = _gzip(tail.getvalue())
    layers = []
    for i in range(LAYERS):
        head = io.BytesIO()
        ti = tarfile.TarInfo(f"layer{i}")
        body = f"layer {i}\n".encode()
        ti.size = len(body)
        head.write(ti.tobuf(format=tarfile.USTAR_FORMAT))
        head.write(body.ljust(512, b"\0"))
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                       **_put(lay, _gzip(head.getvalue()) + shared)})
    config = _put(lay, json.dumps({"architecture": "amd64", "os": "linux",
                                   "rootfs": {"type": "layers", "diff_ids": []}}).encode())
    manifest = json.dumps({"schemaVersion": 2,
                           "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      **config},
                           "layers": layers}).encode()
    m = _put(lay, manifest)
    (lay / "index.json").write_text(json.dumps({
        "schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", **m,
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"org.opencontainers.image.ref.name": "t"}}]}))
    return [x["digest"] for x in layers]


def ztoc_rows(root: Path) -> list[str]:
    if not (root / "artifacts.db").exists():
        return []
    try:
        with sqlite3.connect(root / "artifacts.db") as db:
            return [r[0] for r in db.execute("SELECT original_digest FROM artifacts "
                                             "WHERE type = 'soci_layer'")]
    except sqlite3.OperationalError:  # the schema is not there yet
        return []


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_sigint_stops_create_early_and_rerun_reuses(tmp_path: Path, jobs: str) -> None:
    lay, root = tmp_path / "lay", tmp_path / "store"
    digests = build_layout(lay)
    env = dict(os.environ, SOCI_NATIVE_ROOT=str(root))
    args = [sys.executable, "-m", "soci_native.cli", "create", f"oci:{lay}:t", "--jobs", jobs,
            "--json"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 120
        while not ztoc_rows(root) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, "create finished before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)  # a guard, not a measurement
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0 and "Aborted" in err and "Traceback" not in err, err
    done = ztoc_rows(root)
    # Without the stop, every queued layer would still be indexed before the exit.
    assert 1 <= len(done) < LAYERS, done
    # the store is consistent: SQLite is sound and rebuild-db finds nothing to repair
    with sqlite3.connect(root / "artifacts.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    fixed = json.loads(subprocess.run([sys.executable, "-m", "soci_native.cli", "rebuild-db",
                                       "--json"], env=env, capture_output=True, text=True,
                                      check=True).stdout)
    assert fixed["rows_removed"] == 0 and fixed["corrupt_blobs"] == 0
    # a rerun reuses what was finished and builds the rest
    again = subprocess.run(args, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    status = {x["digest"]: x["status"] for x in json.loads(again.stdout)[0]["layers"]}
    assert {d for d, s in status.items() if s == "reused"} == set(done)
    assert {d for d, s in status.items() if s == "built"} == set(digests) - set(done)


def test_stop_flag_stops_the_c_indexer_between_buffers(tmp_path: Path) -> None:
    import soci_native as sn
    from soci_native.build import stop_indexing

    lay = tmp_path / "lay"
    digest = build_layout(lay, big=64 << 20)[0]
    path = lay / "blobs" / "sha256" / digest.split(":")[1]
    seen: list[BaseException] = []

    def run() -> None:
        try:
            sn.index_layer(str(path))
        except BaseException as e:  # noqa: BLE001 (what the thread saw is the result)
            seen.append(e)

    t = threading.Thread(target=run)
    t.start()
    time.sleep(0.05)
    stop_indexing()
    try:
        t.join(timeout=30)
    finally:
        stop_indexing(False)
    assert not t.is_alive()
    assert len(seen) == 1 and isinstance(seen[0], InterruptedError), seen
    with pytest.raises(InterruptedError):  # a stream fed from Python stops too
        stop_indexing()
        try:
            with open(path, "rb") as f:
                sn.index_layer(f)
        finally:
            stop_indexing(False)
    assert sn.index_layer(str(path)).blob_digest == digest  # cleared: indexing works again
