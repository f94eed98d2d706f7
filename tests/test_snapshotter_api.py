"""The Snapshots API as containerd's gRPC client sees it, against a real snapshotter process on
a unix socket (grpc's own client; no containerd): the state rules and their status codes,
mounts, labels, filters, usage, and the remote path's fallbacks (a Prepare with target labels
for an image without an index, or naming a layer the image does not have, is an ordinary
snapshot; a Prepare without labels is never ALREADY_EXISTS)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ctr_env as ce
import grpc
import pytest
import reg_server
from google.protobuf import empty_pb2, field_mask_pb2

from soci_native.snapshotter.proto import snapshots_pb2 as sp

SVC = "/containerd.services.snapshots.v1.Snapshots/"


class Client:
    def __init__(self, sock: Path) -> None:
        self.ch = grpc.insecure_channel(f"unix:{sock}")

    def call(self, name: str, req: Any, resp: Any) -> Any:
        fn = self.ch.unary_unary(SVC + name, request_serializer=lambda m: m.SerializeToString(),
                                 response_deserializer=resp.FromString)
        return fn(req, timeout=60)

    def code(self, name: str, req: Any, resp: Any) -> grpc.StatusCode:
        with pytest.raises(grpc.RpcError) as e:
            self.call(name, req, resp)
        return e.value.code()  # type: ignore[no-any-return]

    def list(self, *filters: str) -> list[Any]:
        fn = self.ch.unary_stream(SVC + "List", request_serializer=lambda m: m.SerializeToString(),
                                  response_deserializer=sp.ListSnapshotsResponse.FromString)
        return [i for r in fn(sp.ListSnapshotsRequest(filters=list(filters)), timeout=60)
                for i in r.info]


@pytest.fixture(scope="module")
def api() -> Iterator[tuple[Client, ce.Snapshotter, Path]]:
    ce.need_tools("the snapshotter API tests")
    base = ce.short_tempdir()
    sn = ce.Snapshotter.start(base / "sn", base / "sn.sock")
    try:
        yield Client(base / "sn.sock"), sn, base
    finally:
        ce.teardown(base, None, sn, None)


def test_state_rules_and_codes(api: Any) -> None:
    c, sn, _ = api
    prep = c.call("Prepare", sp.PrepareSnapshotRequest(key="ns/1/a"), sp.PrepareSnapshotResponse)
    (m,) = prep.mounts
    assert m.type == "bind" and "rw" in m.options and Path(m.source).is_dir()
    Path(m.source, "f.txt").write_text("hello")  # what an unpack would write
    assert c.code("Prepare", sp.PrepareSnapshotRequest(key="ns/1/a"),
                  sp.PrepareSnapshotResponse) == grpc.StatusCode.ALREADY_EXISTS
    assert c.code("Prepare", sp.PrepareSnapshotRequest(key="ns/1/b", parent="ns/1/a"),
                  sp.PrepareSnapshotResponse) == grpc.StatusCode.INVALID_ARGUMENT
    assert c.code("Prepare", sp.PrepareSnapshotRequest(key="ns/1/b", parent="nope"),
                  sp.PrepareSnapshotResponse) == grpc.StatusCode.NOT_FOUND
    c.call("Commit", sp.CommitSnapshotRequest(name="ns/2/A", key="ns/1/a",
                                              labels={"l": "1"}), empty_pb2.Empty)
    assert c.code("Mounts", sp.MountsRequest(key="ns/1/a"),
                  sp.MountsResponse) == grpc.StatusCode.NOT_FOUND
    info = c.call("Stat", sp.StatSnapshotRequest(key="ns/2/A"), sp.StatSnapshotResponse).info
    assert (info.kind, dict(info.labels)) == (sp.COMMITTED, {"l": "1"})
    assert c.call("Usage", sp.UsageRequest(key="ns/2/A"), sp.UsageResponse).size >= 5
    # an active child: overlay over the committed one
    prep = c.call("Prepare", sp.PrepareSnapshotRequest(key="ns/3/b", parent="ns/2/A"),
                  sp.PrepareSnapshotResponse)
    (m,) = prep.mounts
    lower = next(o for o in m.options if o.startswith("lowerdir="))[len("lowerdir="):]
    assert m.type == "overlay" and Path(lower, "f.txt").read_text() == "hello"
    assert any(o.startswith("upperdir=") for o in m.options)
    view = c.call("View", sp.ViewSnapshotRequest(key="ns/3/v", parent="ns/2/A"),
                  sp.ViewSnapshotResponse)
    assert view.mounts[0].type == "bind" and "ro" in view.mounts[0].options
    assert view.mounts[0].source == lower
    assert c.code("Remove", sp.RemoveSnapshotRequest(key="ns/2/A"),
                  empty_pb2.Empty) == grpc.StatusCode.FAILED_PRECONDITION  # has children
    # labels: update one by mask, list with containerd's filter syntax
    upd = sp.UpdateSnapshotRequest(info=sp.Info(name="ns/2/A", labels={"x": "2"}),
                                   update_mask=field_mask_pb2.FieldMask(paths=["labels.x"]))
    got = c.call("Update", upd, sp.UpdateSnapshotResponse).info
    assert dict(got.labels) == {"l": "1", "x": "2"}
    bad = sp.UpdateSnapshotRequest(info=sp.Info(name="ns/2/A"),
                                   update_mask=field_mask_pb2.FieldMask(paths=["parent"]))
    assert c.code("Update", bad, sp.UpdateSnapshotResponse) == grpc.StatusCode.INVALID_ARGUMENT
    assert [i.name for i in c.list('labels."x"==2,kind==committed')] == ["ns/2/A"]
    assert sorted(i.name for i in c.list("parent==ns/2/A")) == ["ns/3/b", "ns/3/v"]
    assert len(c.list()) == 3
    for key in ("ns/3/b", "ns/3/v", "ns/2/A"):
        c.call("Remove", sp.RemoveSnapshotRequest(key=key), empty_pb2.Empty)
    assert c.list() == []
    assert not Path(lower).exists()
    # Cleanup removes what no snapshot owns (a crash between mkdir and the state write)
    stray = sn.root / "snapshots" / "999" / "fs"
    stray.mkdir(parents=True)
    (stray / "junk").write_text("x")
    c.call("Cleanup", sp.CleanupRequest(), empty_pb2.Empty)
    assert not stray.parent.exists()
    assert c.code("Stat", sp.StatSnapshotRequest(key="ns/2/A"),
                  sp.StatSnapshotResponse) == grpc.StatusCode.NOT_FOUND


def test_remote_labels_without_an_index_fall_back(api: Any) -> None:
    c, sn, base = api
    with reg_server.Registry.start(base / "reg") as reg:
        lay = ce.build_image(base / "img")
        ce.push(lay, f"{reg.host}/noindex:v1")
        layer = ce.layer_digests(f"{reg.host}/noindex:v1")[0]
        for i, (ref, dg) in enumerate([(f"{reg.host}/noindex:v1", layer),
                                       (f"{reg.host}/noindex:v1", "sha256:" + "0" * 64),
                                       (f"{reg.host}/missing:v1", layer)]):
            labels = {"containerd.io/snapshot.ref": f"sha256:{i:064x}",
                      "containerd.io/snapshot/cri.image-ref": ref,
                      "containerd.io/snapshot/cri.layer-digest": dg}
            prep = c.call("Prepare", sp.PrepareSnapshotRequest(key=f"ns/9/x{i}", labels=labels),
                          sp.PrepareSnapshotResponse)
            assert prep.mounts[0].type == "bind"  # an ordinary snapshot: containerd unpacks
            c.call("Remove", sp.RemoveSnapshotRequest(key=f"ns/9/x{i}"), empty_pb2.Empty)
    assert "falling back" in sn.log.read_text() or "normal unpack" in sn.log.read_text()


def test_remote_prepare_background_fetch_and_remove(tmp_path: Path) -> None:
    """The remote path through gRPC alone: ALREADY_EXISTS, the committed snapshot under the
    target name with its labels and parent (what containerd lists next), the configured
    background fetch within the configured cache bound, and after Remove no mount, no
    cache and no further registry traffic for that layer."""
    import fault_proxy

    ce.need_tools("the snapshotter API tests")
    base = ce.short_tempdir()
    limit = 192 << 10
    cfg = base / "c.toml"
    cfg.write_text(f"[background_fetch]\nspans_per_second = 40.0\n"
                   f"[cache]\nmax_bytes_per_layer = {limit}\n")
    reg = reg_server.Registry.start(base / "reg")
    proxy = fault_proxy.FaultProxy("127.0.0.1", reg.port)
    sn = None
    try:
        ref = f"127.0.0.1:{proxy.port}/bg:v1"
        ce.push(ce.build_image(base / "img"), ref)
        ce.soci("create", f"docker://{ref}", *ce.CREATE_OPTS, root=base / "store")
        ce.soci("push", f"docker://{ref}", root=base / "store")
        layer = ce.layer_digests(ref)[0]
        sn = ce.Snapshotter.start(base / "sn", base / "sn.sock", config=cfg)
        c = Client(base / "sn.sock")
        labels = {"containerd.io/snapshot.ref": "sha256:" + "ab" * 32,
                  "containerd.io/snapshot/remote/stargz.reference": ref,
                  "containerd.io/snapshot/remote/stargz.digest": layer}
        assert c.code("Prepare", sp.PrepareSnapshotRequest(key="ns/1/extract x",
                                                           labels=labels),
                      sp.PrepareSnapshotResponse) == grpc.StatusCode.ALREADY_EXISTS
        target = labels["containerd.io/snapshot.ref"]
        found = c.list(f'labels."containerd.io/snapshot.ref"=={target},parent==""')
        assert [i.name for i in found] == [target]
        assert found[0].kind == sp.COMMITTED and found[0].parent == ""
        assert c.list("name==ns/1/extract x") == []  # the active key became the committed one
        # the same target asked for on another parent: containerd would reject the existing
        # one (it checks the parent), so this one is an ordinary snapshot to unpack into
        c.call("Prepare", sp.PrepareSnapshotRequest(key="ns/1/p"), sp.PrepareSnapshotResponse)
        c.call("Commit", sp.CommitSnapshotRequest(name="ns/1/P", key="ns/1/p"), empty_pb2.Empty)
        prep = c.call("Prepare", sp.PrepareSnapshotRequest(key="ns/2/extract y",
                                                           parent="ns/1/P", labels=labels),
                      sp.PrepareSnapshotResponse)
        assert prep.mounts[0].type == "overlay"
        for key in ("ns/2/extract y", "ns/1/P"):
            c.call("Remove", sp.RemoveSnapshotRequest(key=key), empty_pb2.Empty)

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            (m,) = sn.mounts()
            if m["totals"]["spans_fetched"] >= 2:
                break
            time.sleep(0.2)
        assert m["totals"]["spans_fetched"] >= 2  # nobody read: the background fetch did
        assert 0 < m["cache_bytes"] <= limit
        c.call("Remove", sp.RemoveSnapshotRequest(key=target), empty_pb2.Empty)
        assert sn.mounts() == []
        assert not Path(m["cache_dir"]).exists() and not os.path.ismount(m["mountpoint"])
        blob_gets = proxy.stats.total_requests("GET", f"/blobs/{layer}")
        time.sleep(1.0)  # 40 spans/s would have asked for more by now
        assert proxy.stats.total_requests("GET", f"/blobs/{layer}") == blob_gets
    finally:
        proxy.close()
        ce.teardown(base, None, sn, reg)
