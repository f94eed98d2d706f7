"""The CRI path: containerd 1.6's own CRI plugin (``snapshotter = "soci"``,
``disable_snapshot_annotations = false``) pulls an image with a SOCI index through the
soci-native snapshotter, as a kubelet's PullImage would.

crictl is not packaged in Debian 12, so the test is the kubelet's side itself: one
``runtime.v1.ImageService/PullImage`` call over containerd's socket, its two protobuf messages
encoded by hand here (an independent client: nothing of soci-native's is on that path). Then
the layers with a zTOC are lazy mounts, containerd's content store never holds their blobs,
and a container of the pulled image (``ctr -n k8s.io run``) prints the exact output that needs
all three layers.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import ctr_env as ce
import pytest
import reg_server


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field (wire type 2)."""
    n, out = len(payload), bytearray([number << 3 | 2])
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out) + payload


def _string_field_1(msg: bytes) -> str:
    """Field 1 of PullImageResponse (``image_ref``), the only field it has."""
    assert msg[0] == 0x0A, msg
    n, shift, i = 0, 0, 1
    while True:
        b = msg[i]
        n |= (b & 0x7F) << shift
        i += 1
        shift += 7
        if not b & 0x80:
            break
    return msg[i:i + n].decode()


def cri_pull(address: Path, ref: str) -> str:
    import grpc

    # PullImageRequest{image: ImageSpec{image: ref}}
    req = _field(1, _field(1, ref.encode()))
    with grpc.insecure_channel(f"unix:{address}") as ch:
        call = ch.unary_unary("/runtime.v1.ImageService/PullImage",
                              request_serializer=lambda b: b,
                              response_deserializer=lambda b: b)
        return _string_field_1(call(req, timeout=300))


@pytest.fixture(scope="module")
def env() -> Any:
    ce.need_tools("the CRI test")
    base = ce.short_tempdir()
    reg = sn = ctrd = None
    try:
        reg = reg_server.Registry.start(base / "reg")
        ref = f"{reg.host}/cri:v1"
        ce.push(ce.build_image(base / "img"), ref)
        store = base / "store"
        ce.soci("create", f"docker://{ref}", *ce.CREATE_OPTS, root=store)
        ce.soci("push", f"docker://{ref}", root=store)
        layers = ce.layer_digests(ref)
        sn = ce.Snapshotter.start(base / "sn", base / "sn.sock")
        ctrd = ce.Containerd.start(base / "ctrd", base / "sn.sock", cri_registry=reg.host)
        yield base, ref, layers, sn, ctrd
    finally:
        ce.teardown(base, ctrd, sn, reg)


def test_cri_pull_mounts_lazily_and_runs(env: Any) -> None:
    _, ref, layers, sn, ctrd = env
    image_ref = cri_pull(ctrd.address, ref)
    assert image_ref.startswith("sha256:"), image_ref  # the config's digest
    assert sorted(m["layer"] for m in sn.mounts()) == sorted(layers[:2]), \
        sn.log.read_text()[-3000:]
    blobs = ctrd.content_blobs()
    assert layers[0] not in blobs and layers[1] not in blobs  # never downloaded
    assert layers[2] in blobs  # no zTOC: the CRI plugin unpacked it
    out = subprocess.run(["ctr", "--address", str(ctrd.address), "-n", "k8s.io", "run", "--rm",
                          "--snapshotter", "soci", ref, "cri1", "/bin/sh", "-c", ce.COMMAND],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert out.stdout == ce.EXPECTED
