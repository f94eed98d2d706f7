"""The local artifact store: atomic blobs, digest checks, artifacts.db, index.json, GC, rebuild."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest

from soci_native import store as st
from soci_native.store import (
    EMPTY_JSON_DIGEST,
    INDEX_ARTIFACT_TYPE_V1,
    INDEX_ARTIFACT_TYPE_V2,
    MEDIA_TYPE_PREFETCH,
    MEDIA_TYPE_ZTOC,
    SCHEMA_VERSION,
    ArtifactRecord,
    BlobNotFoundError,
    Store,
    StoreError,
    default_root,
)

SPAN = 1 << 22


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def fake_digest(label: str) -> str:
    return sha(label.encode())


def temp_files(store: Store) -> list[str]:
    names = os.listdir(store.blobs_dir) + os.listdir(store.content_dir)
    return [n for n in names if n.startswith(".tmp")]


def ztoc_desc(data: bytes, layer: str, span: int = SPAN) -> dict[str, object]:
    return {
        "mediaType": MEDIA_TYPE_ZTOC,
        "digest": sha(data),
        "size": len(data),
        "annotations": {
            "com.amazon.soci.image-layer-digest": layer,
            "com.amazon.soci.image-layer-mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "com.amazon.soci.span-size": str(span),
        },
    }


def prefetch_desc(data: bytes, layer: str) -> dict[str, object]:
    return {
        "mediaType": MEDIA_TYPE_PREFETCH,
        "digest": sha(data),
        "size": len(data),
        "annotations": {"com.amazon.soci.image-layer-digest": layer},
    }


def index_manifest(
    version: str, layers: list[dict[str, object]], subject: str | None = None
) -> bytes:
    """A SOCI index manifest as `soci` serialises it (field order, compact)."""
    doc: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": INDEX_ARTIFACT_TYPE_V1 if version == "v1" else INDEX_ARTIFACT_TYPE_V2,
            "digest": EMPTY_JSON_DIGEST,
            "size": 2,
        },
        "layers": layers,
    }
    if subject is not None:
        doc["subject"] = {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": subject,
            "size": 1234,
        }
    doc["annotations"] = {"com.amazon.soci.build-tool-identifier": "AWS SOCI CLI v0.2"}
    return json.dumps(doc, separators=(",", ":")).encode()


@pytest.fixture
def store(tmp_path: Path):
    s = Store(tmp_path / "root")
    yield s
    s.close()


# --- layout and root -------------------------------------------------------------------------


def test_default_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SOCI_NATIVE_ROOT", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_root() == tmp_path / "explicit"
    monkeypatch.delenv("SOCI_NATIVE_ROOT")
    assert default_root() == tmp_path / "xdg" / "soci-native"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_root() == tmp_path / "home" / ".local" / "share" / "soci-native"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert default_root() == tmp_path / "home" / ".local" / "share" / "soci-native"


def test_new_store_is_an_oci_layout(store: Store) -> None:
    content = store.root / "content"
    assert json.loads((content / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    assert json.loads((content / "index.json").read_text()) == {
        "schemaVersion": 2,
        "manifests": [],
    }
    assert (content / "blobs" / "sha256").is_dir()
    assert (store.root / "artifacts.db").is_file()
    conn = sqlite3.connect(store.root / "artifacts.db")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        conn.close()


def test_reopen_keeps_contents(tmp_path: Path) -> None:
    with Store(tmp_path) as s:
        d, _ = s.put_blob(b"x")
        s.add_artifact(ArtifactRecord(d, 1, "soci_layer", MEDIA_TYPE_ZTOC))
        s.add_index_entry(d, 1)
    with Store(tmp_path, create=False) as s:
        assert s.read_blob(d) == b"x"
        assert s.get_artifact(d) is not None
        assert [e["digest"] for e in s.index_entries()] == [d]


def test_create_false_on_missing_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no soci-native store"):
        Store(tmp_path / "nothing", create=False)
    assert not (tmp_path / "nothing").exists()


# --- blobs -----------------------------------------------------------------------------------


def test_put_and_read_blob(store: Store) -> None:
    data = os.urandom(3000)
    digest, size = store.put_blob(data)
    assert (digest, size) == (sha(data), 3000)
    assert store.blob_path(digest) == store.blobs_dir / digest[7:]
    assert store.has_blob(digest)
    assert store.read_blob(digest) == data
    with store.open_blob(digest) as f:
        assert f.read() == data
    assert store.put_blob(data) == (digest, size)  # idempotent
    assert list(store.iter_blobs()) == [digest]
    assert temp_files(store) == []


def test_put_blob_stream(store: Store) -> None:
    chunks = [os.urandom(100_000) for _ in range(7)]
    whole = b"".join(chunks)
    assert store.put_blob_stream(iter(chunks), expected_digest=sha(whole)) == (
        sha(whole),
        len(whole),
    )
    assert store.read_blob(sha(whole)) == whole
    assert store.put_blob_stream([]) == (sha(b""), 0)
    assert store.read_blob(sha(b"")) == b""


def test_stream_digest_mismatch_leaves_nothing(store: Store) -> None:
    wrong = fake_digest("something else")
    with pytest.raises(StoreError, match="does not match") as e:
        store.put_blob_stream([b"abc", b"def"], expected_digest=wrong)
    assert wrong in str(e.value) and sha(b"abcdef") in str(e.value)
    assert not store.has_blob(wrong) and not store.has_blob(sha(b"abcdef"))
    assert os.listdir(store.blobs_dir) == []


def test_stream_error_midway_leaves_nothing(store: Store) -> None:
    def chunks():
        yield b"partial data"
        raise ConnectionError("network dropped")

    with pytest.raises(ConnectionError):
        store.put_blob_stream(chunks())
    assert os.listdir(store.blobs_dir) == []


def test_crash_at_rename_leaves_no_blob(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    data = b"important zTOC bytes" * 100
    digest = sha(data)
    calls = []

    def failing_replace(src: object, dst: object) -> None:
        calls.append((src, dst))
        raise OSError(5, "simulated I/O error during rename")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(StoreError, match="simulated I/O error"):
        store.put_blob(data)
    assert calls, "the store did not go through os.replace"
    assert Path(str(calls[0][1])) == store.blob_path(digest)
    assert Path(str(calls[0][0])).parent == store.blobs_dir  # temp file on the same filesystem
    assert not store.has_blob(digest)
    assert not store.blob_path(digest).exists()
    assert temp_files(store) == []
    monkeypatch.undo()
    assert store.put_blob(data) == (digest, len(data))
    assert store.read_blob(digest) == data


def test_killed_writer_temp_files_are_ignored_and_cleaned(store: Store) -> None:
    # What a writer killed mid-write leaves: a partial temp file next to the blobs.
    data = b"{" + b"x" * 100
    partial = store.blobs_dir / ".tmp-99999-deadbeefdeadbeef"
    partial.write_bytes(data[:10])
    assert list(store.iter_blobs()) == []
    assert not store.has_blob(sha(data))
    assert store.cleanup_temp() == 0  # young: might belong to a live writer
    assert partial.exists()
    old = time.time() - 7200
    os.utime(partial, (old, old))
    counts = store.rebuild_db()
    assert counts["temp_files_removed"] == 1
    assert not partial.exists()
    assert store.put_blob(data)[0] == sha(data)


BAD_DIGESTS = [
    "sha256:../../../../etc/passwd",
    "sha256:" + "0" * 63,
    "sha256:" + "0" * 65,
    "sha256:" + "A" * 64,
    "sha256:" + "0" * 64 + "\n",
    "sha256:" + "0" * 62 + "/.",
    "sha512:" + "0" * 128,
    "0" * 64,
    "../" + "0" * 64,
    "",
    "sha256:" + "g" * 64,
]


@pytest.mark.parametrize("bad", BAD_DIGESTS)
def test_digest_validation(store: Store, bad: str) -> None:
    for call in (
        store.blob_path,
        store.has_blob,
        store.read_blob,
        store.open_blob,
        store.delete_blob,
        store.get_artifact,
        store.remove_artifact,
        store.remove_index,
        store.remove_index_entry,
    ):
        with pytest.raises(StoreError, match="invalid"):
            call(bad)
    with pytest.raises(StoreError, match="invalid"):
        store.put_blob_stream([b"x"], expected_digest=bad)
    with pytest.raises(StoreError, match="invalid"):
        store.add_index_entry(bad, 1)
    with pytest.raises(StoreError, match="invalid"):
        ArtifactRecord(bad, 1, "soci_layer", MEDIA_TYPE_ZTOC)
    with pytest.raises(StoreError, match="invalid"):
        store.find_ztoc(bad, SPAN)
    assert os.listdir(store.blobs_dir) == []


def test_path_traversal_cannot_delete_outside(tmp_path: Path) -> None:
    s = Store(tmp_path / "root")
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    rel = os.path.relpath(victim, s.blobs_dir)
    with pytest.raises(StoreError):
        s.delete_blob("sha256:" + rel)
    with pytest.raises(StoreError):
        s.read_blob("sha256:" + rel)
    assert victim.read_text() == "keep me"
    s.close()


def test_corrupt_blob_detected(store: Store) -> None:
    data = os.urandom(5000)
    digest, _ = store.put_blob(data)
    damaged = bytearray(data)
    damaged[2500] ^= 0x01
    store.blob_path(digest).write_bytes(bytes(damaged))
    with pytest.raises(StoreError, match="corrupt") as e:
        store.read_blob(digest)
    assert digest in str(e.value)
    assert store.read_blob(digest, verify=False) == bytes(damaged)
    assert not store.verify_blob(digest)
    store.put_blob(data)  # storing it again repairs it
    assert store.read_blob(digest) == data and store.verify_blob(digest)


def test_missing_and_deleted_blob(store: Store) -> None:
    d = fake_digest("absent")
    with pytest.raises(BlobNotFoundError, match=d):
        store.read_blob(d)
    assert not store.delete_blob(d)
    d2, _ = store.put_blob(b"here")
    assert store.delete_blob(d2)
    assert not store.has_blob(d2)


# --- artifacts.db ----------------------------------------------------------------------------


def test_artifact_rows(store: Store) -> None:
    layer = fake_digest("layer")
    old = ArtifactRecord(
        digest=fake_digest("z-old"),
        size=10,
        type="soci_layer",
        media_type=MEDIA_TYPE_ZTOC,
        original_digest=layer,
        span_size=SPAN,
        image_ref="example.com/a:1",
        platform="linux/amd64",
        created="2024-01-01T00:00:00Z",
    )
    new = ArtifactRecord(
        digest=fake_digest("z-new"),
        size=11,
        type="soci_layer",
        media_type=MEDIA_TYPE_ZTOC,
        original_digest=layer,
        span_size=SPAN,
        image_ref="example.com/b:1",
        platform="linux/arm64/v8",
        created="2024-06-01T02:00:00+02:00",
    )
    other_span = ArtifactRecord(
        digest=fake_digest("z-span"),
        size=12,
        type="soci_layer",
        media_type=MEDIA_TYPE_ZTOC,
        original_digest=layer,
        span_size=1 << 20,
        created="2025-01-01T00:00:00.123456789Z",
    )
    idx = ArtifactRecord(
        digest=fake_digest("idx"),
        size=500,
        type="soci_index",
        media_type="application/vnd.oci.image.manifest.v1+json",
        artifact_type=INDEX_ARTIFACT_TYPE_V1,
        original_digest=fake_digest("manifest"),
        image_digest=fake_digest("image"),
        image_ref="example.com/a:1",
        platform="linux/amd64",
        manifest_version="v1",
        created="2023-01-01T00:00:00Z",
    )
    assert new.created == "2024-06-01T00:00:00.000000Z"
    assert other_span.created == "2025-01-01T00:00:00.123456Z"
    store.add_artifacts([new, other_span])
    store.add_artifact(old)
    store.add_artifact(idx)
    assert store.get_artifact(idx.digest) == idx
    assert store.get_artifact(fake_digest("none")) is None
    assert [r.digest for r in store.list_artifacts()] == [
        idx.digest,
        old.digest,
        new.digest,
        other_span.digest,
    ]
    assert store.list_artifacts(type="soci_index") == [idx]
    assert store.list_artifacts(image_ref="example.com/a:1") == [idx, old]
    assert store.list_artifacts(platform="linux/arm64/v8") == [new]
    assert store.list_artifacts(type="soci_layer", original_digest=layer) == [
        old,
        new,
        other_span,
    ]
    # find_ztoc: needs the blob to be present; newest first; span must match exactly.
    assert store.find_ztoc(layer, SPAN) is None
    d_old, _ = store.put_blob(b"old ztoc")
    store.add_artifact(ArtifactRecord(**{**old.__dict__, "digest": d_old}))
    store.remove_artifact(old.digest)
    assert store.find_ztoc(layer, SPAN) == store.get_artifact(d_old)
    assert store.find_ztoc(layer, 12345) is None
    assert store.find_ztoc(fake_digest("other layer"), SPAN) is None
    # upsert
    updated = ArtifactRecord(**{**idx.__dict__, "image_ref": "example.com/a:2"})
    store.add_artifact(updated)
    assert store.get_artifact(idx.digest) == updated
    assert len(store.list_artifacts()) == 4
    assert store.remove_artifact(idx.digest)
    assert not store.remove_artifact(idx.digest)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"type": "zTOC"},
        {"size": -1},
        {"span_size": 0},
        {"manifest_version": "v3"},
        {"created": "yesterday"},
        {"original_digest": "sha256:abc"},
    ],
)
def test_record_validation(kwargs: dict[str, object]) -> None:
    base: dict[str, object] = {
        "digest": fake_digest("r"),
        "size": 1,
        "type": "soci_layer",
        "media_type": MEDIA_TYPE_ZTOC,
    }
    with pytest.raises(StoreError):
        ArtifactRecord(**{**base, **kwargs})  # type: ignore[arg-type]


def test_schema_newer_than_supported(tmp_path: Path) -> None:
    Store(tmp_path).close()
    conn = sqlite3.connect(tmp_path / "artifacts.db")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer than this soci-native"):
        Store(tmp_path)


def test_schema_created_from_version_zero(tmp_path: Path) -> None:
    # An empty database file (user_version 0, no tables) is migrated on open.
    tmp_path.mkdir(exist_ok=True)
    sqlite3.connect(tmp_path / "artifacts.db").close()
    with Store(tmp_path) as s:
        s.add_artifact(ArtifactRecord(fake_digest("a"), 1, "soci_layer", MEDIA_TYPE_ZTOC))
        assert len(s.list_artifacts()) == 1


def test_corrupt_database_file(tmp_path: Path) -> None:
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "artifacts.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="rebuild-db"):
        Store(tmp_path)


# --- concurrency -----------------------------------------------------------------------------

N_PROCS = 4
N_EACH = 50


def _writer(root: str, worker: int, n: int) -> None:
    s = Store(root)
    try:
        for i in range(n):
            data = f"worker {worker} blob {i} ".encode() * (i + 1)
            digest, size = s.put_blob(data)
            s.add_artifact(
                ArtifactRecord(
                    digest=digest,
                    size=size,
                    type="soci_layer",
                    media_type=MEDIA_TYPE_ZTOC,
                    original_digest=fake_digest(f"layer {worker} {i}"),
                    span_size=SPAN,
                    image_ref=f"example.com/w{worker}:latest",
                )
            )
            s.add_index_entry(digest, size, annotations={"worker": str(worker), "i": str(i)})
    finally:
        s.close()


def test_concurrent_processes(tmp_path: Path) -> None:
    root = tmp_path / "root"  # not created yet: the workers race to create the store too
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(root), w, N_EACH)) for w in range(N_PROCS)]
    for p in procs:
        p.start()
    # While they run, hold the database's write lock for a while: their writes must wait
    # (busy timeout), not fail with "database is locked".
    deadline = time.monotonic() + 30
    while not (root / "artifacts.db").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    conn = sqlite3.connect(root / "artifacts.db", timeout=30, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    time.sleep(1.0)
    conn.execute("COMMIT")
    conn.close()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * N_PROCS
    with Store(root) as s:
        assert s.integrity_check() == ["ok"]
        rows = s.list_artifacts()
        assert len(rows) == N_PROCS * N_EACH
        doc = json.loads(s.index_json_path.read_text())
        entries = doc["manifests"]
        assert len(entries) == N_PROCS * N_EACH
        assert {e["digest"] for e in entries} == {r.digest for r in rows}
        for w in range(N_PROCS):
            mine = s.list_artifacts(image_ref=f"example.com/w{w}:latest")
            assert len(mine) == N_EACH
        for i in range(N_EACH):
            for w in range(N_PROCS):
                data = f"worker {w} blob {i} ".encode() * (i + 1)
                assert s.read_blob(sha(data)) == data
        assert temp_files(s) == []


def test_threads_share_one_store(store: Store) -> None:
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(25):
                d, n = store.put_blob(f"thread {t} {i}".encode())
                store.add_artifact(ArtifactRecord(d, n, "soci_layer", MEDIA_TYPE_ZTOC))
                store.add_index_entry(d, n)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(store.list_artifacts()) == 100
    assert len(store.index_entries()) == 100


# --- SOCI indexes: add, rebuild, remove ------------------------------------------------------


def _ztoc(store: Store, label: str) -> tuple[dict[str, object], str]:
    data = b"\x10\x00\x00\x00ztoc " + label.encode() + os.urandom(64)
    store.put_blob(data)
    layer = fake_digest("layer " + label)
    return ztoc_desc(data, layer), layer


def test_add_index(store: Store) -> None:
    z1, l1 = _ztoc(store, "one")
    pf = b'{"version":"1.0","prefetch_spans":[{"start_span":0,"end_span":2}]}'
    store.put_blob(pf)
    subject = fake_digest("image manifest")
    manifest = index_manifest("v1", [z1, prefetch_desc(pf, l1)], subject=subject)
    rec = store.add_index(
        manifest,
        image_ref="example.com/app:1",
        image_digest=fake_digest("image index"),
        platform="linux/arm64/v8",
    )
    assert rec.digest == sha(manifest) and rec.size == len(manifest)
    assert rec.manifest_version == "v1" and rec.artifact_type == INDEX_ARTIFACT_TYPE_V1
    assert rec.original_digest == subject
    assert store.get_artifact(rec.digest) == rec
    assert store.has_blob(EMPTY_JSON_DIGEST) and store.read_blob(EMPTY_JSON_DIGEST) == b"{}"
    zrec = store.get_artifact(str(z1["digest"]))
    assert zrec is not None and zrec.type == "soci_layer"
    assert (zrec.original_digest, zrec.span_size, zrec.platform) == (l1, SPAN, "linux/arm64/v8")
    prec = store.get_artifact(sha(pf))
    assert prec is not None and prec.type == "soci_prefetch" and prec.original_digest == l1
    assert store.find_ztoc(l1, SPAN) == zrec
    assert [r.digest for r in store.ztocs_for_index(rec.digest)] == [z1["digest"], sha(pf)]
    (entry,) = store.index_entries()
    assert entry["digest"] == rec.digest and entry["size"] == len(manifest)
    assert entry["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert entry["artifactType"] == INDEX_ARTIFACT_TYPE_V1
    assert entry["platform"] == {"architecture": "arm64", "os": "linux", "variant": "v8"}
    assert store.read_manifest(rec.digest)["subject"]["digest"] == subject
    # A reused zTOC keeps its first row when a second index references it.
    again = store.add_index(
        index_manifest("v2", [z1]), image_ref="example.com/other:2", platform="linux/amd64"
    )
    assert again.manifest_version == "v2" and again.original_digest is None
    assert store.get_artifact(str(z1["digest"])) == zrec
    assert len(store.index_entries()) == 2


def test_add_index_rejects_bad_input(store: Store) -> None:
    z, _ = _ztoc(store, "z")
    missing = ztoc_desc(b"never stored", fake_digest("l"))
    with pytest.raises(StoreError, match="not in the store"):
        store.add_index(index_manifest("v2", [z, missing]))
    with pytest.raises(StoreError, match="must have a subject"):
        store.add_index(index_manifest("v1", [z]))
    with pytest.raises(StoreError, match="not a SOCI index"):
        store.add_index(b'{"schemaVersion":2,"config":{"mediaType":"x","digest":"y"}}')
    with pytest.raises(StoreError, match="invalid JSON"):
        store.add_index(b"\x00\x01")
    assert store.list_artifacts(type="soci_index") == []
    assert store.index_entries() == []


def test_rebuild_db(tmp_path: Path) -> None:
    s = Store(tmp_path)
    za, la = _ztoc(s, "a")
    zb, lb = _ztoc(s, "b")
    zc, lc = _ztoc(s, "c")
    pf = b'{"version":"1.0","prefetch_spans":[{"start_span":1,"end_span":1}]}'
    s.put_blob(pf)
    subject = fake_digest("image manifest v1")
    v1 = index_manifest("v1", [za, zb, prefetch_desc(pf, lb)], subject=subject)
    v2 = index_manifest("v2", [zb, zc])
    v2_registered = index_manifest("v2", [zc])
    # Hand-made: only the blobs are written (as if copied into content/ by another tool).
    s.put_blob(b"{}")  # the config blob
    v1_digest, _ = s.put_blob(v1)
    v2_digest, _ = s.put_blob(v2)
    # Registered through add_index: index.json remembers ref, platform, image manifest.
    image_manifest = fake_digest("image manifest v2")
    reg = s.add_index(
        v2_registered,
        image_ref="example.com/reg:1",
        image_digest=fake_digest("reg image"),
        original_digest=image_manifest,
        platform="linux/amd64",
        created="2024-05-05T05:05:05Z",
    )
    # Noise a rebuild must skip: other JSON, a non-JSON blob, a large blob, a corrupt manifest.
    s.put_blob(b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json"}')
    s.put_blob(b"\x1f\x8b" + os.urandom(100))
    s.put_blob(b"{" + b" " * (st.MAX_MANIFEST_SIZE + 10) + b"}")
    corrupt = index_manifest("v1", [zc], subject=fake_digest("x"))
    corrupt_digest, _ = s.put_blob(corrupt)
    s.blob_path(corrupt_digest).write_bytes(corrupt.replace(b"v0.2", b"v9.9"))
    s.close()

    for suffix in ("", "-wal", "-shm"):
        Path(str(tmp_path / "artifacts.db") + suffix).unlink(missing_ok=True)
    s = Store(tmp_path)
    assert s.list_artifacts() == []
    counts = s.rebuild_db()
    assert counts["indexes_added"] == 3
    assert counts["ztocs_added"] == 3
    assert counts["prefetches_added"] == 1
    assert counts["corrupt_blobs"] == 1
    assert counts["entries_added"] == 2  # the two hand-made indexes join index.json
    assert counts["rows_removed"] == 0

    r1 = s.get_artifact(v1_digest)
    assert r1 is not None
    assert (r1.type, r1.manifest_version, r1.original_digest) == ("soci_index", "v1", subject)
    assert r1.artifact_type == INDEX_ARTIFACT_TYPE_V1
    r2 = s.get_artifact(v2_digest)
    assert r2 is not None and r2.manifest_version == "v2" and r2.original_digest is None
    rr = s.get_artifact(reg.digest)
    assert rr is not None
    assert (rr.original_digest, rr.image_ref, rr.platform, rr.image_digest, rr.created) == (
        image_manifest,
        "docker://example.com/reg:1",  # stored normalized (imageref.normalize)
        "linux/amd64",
        reg.image_digest,
        "2024-05-05T05:05:05.000000Z",
    )
    for z, layer in ((za, la), (zb, lb), (zc, lc)):
        rec = s.get_artifact(str(z["digest"]))
        assert rec is not None
        assert (rec.type, rec.original_digest, rec.span_size) == ("soci_layer", layer, SPAN)
        assert s.find_ztoc(layer, SPAN) == rec
    prec = s.get_artifact(sha(pf))
    assert prec is not None and prec.type == "soci_prefetch" and prec.original_digest == lb
    assert s.get_artifact(corrupt_digest) is None
    assert {e["digest"] for e in s.index_entries()} == {v1_digest, v2_digest, reg.digest}
    # Idempotent.
    again = s.rebuild_db()
    assert again["indexes_added"] == again["ztocs_added"] == again["entries_added"] == 0
    assert len(s.list_artifacts()) == 7

    # Rows (and index.json entries) whose blob disappeared are dropped.
    s.delete_blob(str(za["digest"]))
    s.delete_blob(v2_digest)
    counts = s.rebuild_db()
    assert counts["rows_removed"] == 2 and counts["entries_removed"] == 1
    assert counts["missing_layer_blobs"] == 1  # v1 still names zTOC a
    assert s.get_artifact(str(za["digest"])) is None and s.get_artifact(v2_digest) is None
    assert {e["digest"] for e in s.index_entries()} == {v1_digest, reg.digest}
    assert s.integrity_check() == ["ok"]
    s.close()


def test_remove_index_garbage_collects(store: Store) -> None:
    shared, shared_layer = _ztoc(store, "shared")
    only_a, _ = _ztoc(store, "only a")
    only_b, _ = _ztoc(store, "only b")
    pf = b'{"version":"1.0","prefetch_spans":[{"start_span":0,"end_span":0}]}'
    store.put_blob(pf)
    a = store.add_index(
        index_manifest(
            "v1", [shared, only_a, prefetch_desc(pf, shared_layer)], subject=fake_digest("ma")
        )
    )
    b = store.add_index(index_manifest("v2", [shared, only_b]), original_digest=fake_digest("mb"))
    unrelated, _ = store.put_blob(b"an orphan zTOC nobody references")
    store.add_artifact(ArtifactRecord(unrelated, 32, "soci_layer", MEDIA_TYPE_ZTOC))

    with pytest.raises(StoreError, match="not a SOCI index"):
        store.remove_index(str(shared["digest"]))
    with pytest.raises(StoreError, match="no SOCI index"):
        store.remove_index(fake_digest("nope"))

    removed = store.remove_index(a.digest)
    assert removed == [a.digest, only_a["digest"], sha(pf)]
    for gone in (a.digest, str(only_a["digest"]), sha(pf)):
        assert store.get_artifact(gone) is None and not store.has_blob(gone)
    for kept in (b.digest, str(shared["digest"]), str(only_b["digest"]), unrelated):
        assert store.get_artifact(kept) is not None and store.has_blob(kept)
    assert store.has_blob(EMPTY_JSON_DIGEST)  # still used by b
    assert [e["digest"] for e in store.index_entries()] == [b.digest]
    assert store.find_ztoc(shared_layer, SPAN) is not None

    removed = store.remove_index(b.digest)
    assert set(removed) == {b.digest, shared["digest"], only_b["digest"]}
    assert {r.digest for r in store.list_artifacts()} == {unrelated}
    assert not store.has_blob(EMPTY_JSON_DIGEST)
    assert store.index_entries() == []
    assert set(store.iter_blobs()) == {unrelated}


def test_remove_index_keep_blobs(store: Store) -> None:
    z, _ = _ztoc(store, "z")
    idx = store.add_index(index_manifest("v2", [z]))
    assert store.remove_index(idx.digest, delete_blobs=False) == [idx.digest, z["digest"]]
    assert store.list_artifacts() == []
    assert store.has_blob(idx.digest) and store.has_blob(str(z["digest"]))
    assert store.index_entries() == []
    # The blobs are still there, so a rebuild finds the index again.
    assert store.rebuild_db()["indexes_added"] == 1


# --- content/ as an OCI layout ---------------------------------------------------------------


def _check_layout(content: Path) -> None:
    """The OCI image-layout rules that matter here, checked by hand."""
    assert json.loads((content / "oci-layout").read_text())["imageLayoutVersion"] == "1.0.0"
    index = json.loads((content / "index.json").read_text())
    assert index["schemaVersion"] == 2
    for desc in index["manifests"]:
        assert set(desc) >= {"mediaType", "digest", "size"}
        path = content / "blobs" / "sha256" / desc["digest"].removeprefix("sha256:")
        data = path.read_bytes()
        assert len(data) == desc["size"] and sha(data) == desc["digest"]
        manifest = json.loads(data)
        for ref in [manifest["config"], *manifest["layers"]]:
            blob = content / "blobs" / "sha256" / ref["digest"].removeprefix("sha256:")
            assert blob.stat().st_size == ref["size"]


def test_content_is_valid_oci_layout(store: Store) -> None:
    z1, _ = _ztoc(store, "1")
    z2, _ = _ztoc(store, "2")
    store.add_index(index_manifest("v1", [z1], subject=fake_digest("m1")), platform="linux/amd64")
    store.add_index(
        index_manifest("v2", [z1, z2]),
        platform="linux/arm64",
        annotations={"org.opencontainers.image.ref.name": "soci-index-arm64"},
    )
    content = store.root / "content"
    _check_layout(content)

    umoci = shutil.which("umoci")
    if umoci is None:
        pytest.skip("umoci not installed (apt install umoci): only the built-in checks ran")
    out = subprocess.run(
        [umoci, "ls", "--layout", str(content)], capture_output=True, text=True, timeout=20
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["soci-index-arm64"]
    # umoci notices a broken layout, so the check above can fail.
    (content / "oci-layout").write_text('{"imageLayoutVersion":"0.0.1"}')
    bad = subprocess.run(
        [umoci, "ls", "--layout", str(content)], capture_output=True, text=True, timeout=20
    )
    assert bad.returncode != 0


def test_open_waits_for_a_writer_on_a_new_database(tmp_path: Path) -> None:
    """A store whose database file another process has just created (still in rollback-journal
    mode) while a third holds a write transaction: the switch to WAL must wait for it, not
    call the database unusable (SQLite answers that switch with SQLITE_BUSY at once)."""
    tmp_path.mkdir(exist_ok=True)
    holder = sqlite3.connect(tmp_path / "artifacts.db", isolation_level=None,
                             check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.5, lambda: holder.execute("COMMIT"))
    release.start()
    try:
        with Store(tmp_path) as s:
            s.add_artifact(ArtifactRecord(fake_digest("a"), 1, "soci_layer", MEDIA_TYPE_ZTOC))
            assert len(s.list_artifacts()) == 1
    finally:
        release.join()
        holder.close()
