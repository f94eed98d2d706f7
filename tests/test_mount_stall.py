"""A registry that stalls under a live mount (issue 8 §3): reads fail with EIO in bounded
time, and `umount` works while a span fetch hangs. A real FUSE mount of a real registry
(docker-registry) behind the fault proxy (tests/fault_proxy.py), which stalls blob reads."""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mnt_image as mi
import pytest


@pytest.fixture(scope="module")
def img(tmp_path_factory: pytest.TempPathFactory) -> mi.Image:
    from test_mount import _unavailable

    why = _unavailable()
    if why is not None:
        pytest.skip(why)
    return mi.build(tmp_path_factory.mktemp("stall-img"))


@pytest.fixture(scope="module")
def reg(img: mi.Image, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    import reg_server

    if not reg_server.available():
        pytest.skip("needs docker-registry (apt)")
    with reg_server.Registry.start(tmp_path_factory.mktemp("stall-reg")) as r:
        mi.run("skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{img.layout}:t",
               f"docker://{r.host}/st/img:t")
        mi.cli("convert", f"docker://{r.host}/st/img:t", f"docker://{r.host}/st/img:soci",
               *mi.CREATE_OPTS, root=tmp_path_factory.mktemp("stall-builder"))
        yield r


def _mount(proxy: Any, tmp_path: Path, *opts: str) -> tuple[Path, Path]:
    root, mp = tmp_path / "store", tmp_path / "mnt"
    mp.mkdir()
    p = mi.mount_cmd(f"docker://{proxy.netloc}/st/img:soci", str(mp), "--cache-dir",
                     str(tmp_path / "cache"), *opts, root=root, ok=False)
    if "not permitted" in p.stderr or "ermission denied" in p.stderr:
        pytest.skip(f"mounting FUSE is not permitted here: {p.stderr.strip()}")
    assert p.returncode == 0, p.stderr
    return root, mp


def test_stalled_span_fetch_is_eio_in_bounded_time(reg: Any, img: mi.Image,
                                                   tmp_path: Path) -> None:
    from fault_proxy import FaultProxy, delay, on

    with FaultProxy("127.0.0.1", reg.port) as proxy:
        root, mp = _mount(proxy, tmp_path, "--timeout", "3", "--read-timeout", "1",
                          "--retries", "2")
        try:
            proxy.add_fault(delay(30), match=on("GET", r"/blobs/"))  # headers never come
            t0 = time.monotonic()
            with pytest.raises(OSError) as e:
                (mp / "data/big.bin").read_bytes()
            took = time.monotonic() - t0
            assert e.value.errno == errno.EIO
            assert took < 15, took  # --timeout 3 (old: the read waited for the registry)
            proxy.clear_faults()  # back: the same mount serves the file
            assert (mp / "data/big.bin").read_bytes() == \
                (img.ref / "data/big.bin").read_bytes()
        finally:
            mi.umount_cmd(mp, root)
            mi.force_unmount(mp)


def test_umount_works_while_a_fetch_hangs(reg: Any, img: mi.Image, tmp_path: Path) -> None:
    from fault_proxy import FaultProxy, delay, on

    with FaultProxy("127.0.0.1", reg.port) as proxy:
        # a deadline far away: only unmounting can end the hanging fetch in time
        root, mp = _mount(proxy, tmp_path, "--timeout", "300", "--read-timeout", "300")
        pid = int(__import__("json").loads(
            next((root / "mounts").glob("*.json")).read_text())["pid"])
        proxy.add_fault(delay(60), match=on("GET", r"/blobs/"))
        got: list[BaseException | bytes] = []

        def reader() -> None:
            try:
                got.append((mp / "data/big.bin").read_bytes())
            except BaseException as e:
                got.append(e)

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        deadline = time.monotonic() + 10
        while not proxy.stats.total_requests("GET", r"/blobs/") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert t.is_alive()  # the read hangs on the registry
        t0 = time.monotonic()
        p = mi.umount_cmd(mp, root)
        took = time.monotonic() - t0
        try:
            assert p.returncode == 0, p.stderr
            assert not mi.is_mounted(mp) and not mi.pid_alive(pid)
            assert took < 20, took
            t.join(timeout=20)
            assert not t.is_alive() and isinstance(got[0], OSError), got
        finally:
            mi.force_unmount(mp)
