"""The layers of an image are started largest first (a big layer started last would run
alone while the other jobs' cores idle); the results still come in layer order."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import threading
import zlib
from pathlib import Path

import pytest

from soci_native import FormatError, _core, build
from soci_native.build import BuildOptions, build_layers, hash_on_thread
from soci_native.images import Descriptor, ResolvedImage, open_image, resolve
from soci_native.store import Store


def _put(lay: Path, data: bytes) -> dict:
    d = hashlib.sha256(data).hexdigest()
    (lay / "blobs" / "sha256" / d).write_bytes(data)
    return {"digest": f"sha256:{d}", "size": len(data)}


def _tar_of(data: bytes, name: str = "f") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        ti = tarfile.TarInfo(name)
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def _layer(name: str, size: int) -> bytes:
    c = zlib.compressobj(1, zlib.DEFLATED, 31)
    return c.compress(_tar_of(os.urandom(size), name)) + c.flush()


def _image(tmp_path: Path, blobs: list[bytes]) -> tuple[ResolvedImage, Path, list[dict]]:
    """An OCI layout (tag t) of these gzip layers: the image, the layout, its layer descriptors."""
    lay = tmp_path / "lay"
    (lay / "blobs" / "sha256").mkdir(parents=True)
    (lay / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    layers = [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **_put(lay, b)}
              for b in blobs]
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
    return resolve(open_image(f"oci:{lay}:t"))[0], lay, layers


def test_largest_layer_starts_first(tmp_path: Path) -> None:
    sizes = [20_000, 300_000, 5_000, 120_000]
    image, lay, layers = _image(tmp_path, [_layer(f"f{i}", n) for i, n in enumerate(sizes)])
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


def _random_layer(size: int) -> bytes:
    """A gzip layer of about ``size`` compressed bytes (random content, so it does not shrink)."""
    return _layer("big", size)


def _index(path: Path, **kw: object) -> dict:
    return _core.index_file(str(path), 1 << 20, "auto", "t", False, **kw)  # type: ignore[arg-type]


def test_inline_hashing_moves_to_a_thread_once_a_core_is_given(tmp_path: Path) -> None:
    """An inline-hashing indexer given a SpareCores pool takes a core from it between chunks
    and hashes the rest of its layer on a thread: the same zTOC as either way alone."""
    path = tmp_path / "l.tar.gz"
    path.write_bytes(_random_layer(12 << 20))
    inline, threaded = _index(path, hash_thread=False), _index(path, hash_thread=True)
    assert not inline["hashed_on_thread"] and threaded["hashed_on_thread"]
    spare = _core.SpareCores()
    kept = _index(path, hash_thread=False, spare=spare)  # nothing given: stays inline
    assert not kept["hashed_on_thread"] and spare.free == 0
    spare.give(2)
    moved = _index(path, hash_thread=False, spare=spare)
    assert moved["hashed_on_thread"] and spare.free == 2  # taken, and given back at the end
    for r in (threaded, kept, moved):
        assert {k: v for k, v in r.items() if k != "hashed_on_thread"} == \
            {k: v for k, v in inline.items() if k != "hashed_on_thread"}
    small = tmp_path / "s.tar.gz"
    small.write_bytes(_random_layer(2 << 20))  # less left than a thread is worth
    assert not _index(small, hash_thread=False, spare=spare)["hashed_on_thread"]
    assert spare.free == 2


def test_a_failing_layer_gives_back_the_core_its_hasher_took(tmp_path: Path) -> None:
    """A layer that took a core and then fails (cut short: its last member never ends) gives
    the core back: another layer of the build may use it."""
    path = tmp_path / "l.tar.gz"
    path.write_bytes(_random_layer(12 << 20)[:-100])
    spare = _core.SpareCores()
    spare.give(1)
    with pytest.raises(FormatError):
        _index(path, hash_thread=False, spare=spare)
    assert spare.free == 1


def test_a_job_out_of_layers_gives_its_core_to_a_running_layer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With every core inflating, layers hash inline; once a job finds no layer left, the
    layer still running takes its core and hashes on a thread from there."""
    sizes = [12 << 20, 5_000]
    image, lay, _ = _image(tmp_path, [_random_layer(n) for n in sizes])
    small_done = threading.Event()
    seen: dict[int, bool] = {}
    real = _core.index_file

    def index_file(path: str, *args: object) -> dict:
        size = os.stat(path).st_size
        if size > 1 << 20:  # the big layer starts once the small one is done (and gave up)
            assert small_done.wait(60)
        r = real(path, *args)  # type: ignore[arg-type]
        seen[size] = r["hashed_on_thread"]
        return r
    monkeypatch.setattr(_core, "index_file", index_file)
    monkeypatch.setattr(build, "usable_cores", lambda: 2)
    results = build_layers(open_image(f"oci:{lay}:t"), Store(tmp_path / "store"), image.layers,
                           BuildOptions(jobs=2, min_layer_size=0),
                           on_layer=lambda d: d.size < 1 << 20 and small_done.set())
    assert all(r.status == "built" for r in results)
    big = max(seen)
    assert seen == {big: True, min(seen): False}


def test_no_core_is_given_while_more_jobs_run_than_cores(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With more jobs than cores (--jobs counts every CPU, the affinity allows fewer), a job
    that finds no layer left frees no core while the others still fill every one: a core is
    given only once fewer jobs run than there are cores, so each core is given once."""
    image, lay, _ = _image(tmp_path, [_layer(f"f{i}", 5_000 + i) for i in range(3)])
    together = threading.Barrier(3, timeout=60)  # all three jobs run at once
    pools: list[_core.SpareCores] = []
    real = _core.index_file

    def index_file(path: str, *args: object) -> dict:
        pools.append(args[-1])  # type: ignore[arg-type]
        together.wait()
        return real(path, *args)  # type: ignore[arg-type]
    monkeypatch.setattr(_core, "index_file", index_file)
    monkeypatch.setattr(build, "usable_cores", lambda: 2)
    results = build_layers(open_image(f"oci:{lay}:t"), Store(tmp_path / "store"), image.layers,
                           BuildOptions(jobs=3, min_layer_size=0))
    assert all(r.status == "built" for r in results)
    assert len({id(p) for p in pools}) == 1
    assert pools[0].free == 2  # the two cores, once each (none taken: the layers are small)


def test_a_read_file_takes_a_core_only_while_enough_is_left(tmp_path: Path) -> None:
    """A file read() (not mapped: its group may write it) moves its hashing as a mapped one
    does, and like one it takes no core with less left than a thread is worth."""
    path = tmp_path / "l.tar.gz"
    path.write_bytes(_random_layer(12 << 20))
    os.chmod(path, 0o664)
    inline = _index(path, hash_thread=False)
    spare = _core.SpareCores()
    spare.give(1)
    read0 = _core.file_read_counts()[1]
    moved = _index(path, hash_thread=False, spare=spare)
    assert _core.file_read_counts()[1] == read0 + 1
    assert moved["hashed_on_thread"] and spare.free == 1
    assert {k: v for k, v in moved.items() if k != "hashed_on_thread"} == \
        {k: v for k, v in inline.items() if k != "hashed_on_thread"}
    small = tmp_path / "s.tar.gz"
    small.write_bytes(_random_layer(3 << 20))  # over a chunk, under what a thread is worth
    os.chmod(small, 0o664)
    assert not _index(small, hash_thread=False, spare=spare)["hashed_on_thread"]
    assert spare.free == 1


def _read_pos(path: Path) -> int | None:
    """How far this process has read ``path`` through an open descriptor (None: not open)."""
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                with open(f"/proc/self/fdinfo/{fd}") as f:
                    return int(f.readline().split()[1])  # "pos:\t<offset>"
        except (FileNotFoundError, ValueError, IndexError):
            continue
    return None


def _give_once_read_to(path: Path, pos: int, spare: _core.SpareCores, done: threading.Event,
                       after: list[int | None]) -> None:
    """Gives ``spare`` a core once ``path`` is read to ``pos`` (not if ``done`` first); where
    the read was just after goes to ``after``."""
    while not done.is_set():
        now = _read_pos(path)
        if now is not None and now >= pos:
            spare.give()
            after.append(_read_pos(path))
            return


def test_a_core_given_near_a_read_files_end_is_not_taken(tmp_path: Path) -> None:
    """A core given while a read() file is being indexed, with less of it left than a thread
    is worth, stays in the pool: the file's size says what is left."""
    path = tmp_path / "l.tar.gz"
    c = zlib.compressobj(1, zlib.DEFLATED, 31)  # text-like: inflating it takes a while
    path.write_bytes(c.compress(_tar_of(os.urandom(24 << 20).hex().encode())) + c.flush())
    os.chmod(path, 0o664)
    size = path.stat().st_size
    for _ in range(10):  # until the give lands in the window (the machine may be busy)
        spare = _core.SpareCores()
        done = threading.Event()
        after: list[int | None] = []  # where the read was once the core was given
        t = threading.Thread(target=_give_once_read_to,
                             args=(path, size - (5 << 20), spare, done, after))
        t.start()
        try:
            r = _index(path, hash_thread=False, spare=spare)
        finally:
            done.set()
            t.join()
        if after and after[0] is not None and after[0] < size:  # reads followed the give
            assert not r["hashed_on_thread"] and spare.free == 1
            return
    pytest.fail("no core could be given before the file's end")
