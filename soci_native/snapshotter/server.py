"""Running the snapshotter: the gRPC server on a unix socket, the mount daemon, adoption of
lazily mounted snapshots left by an earlier run, and a clean stop on SIGTERM/SIGINT (the
mounts stay: they belong to the mount daemon and to the containers using them)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from soci_native.snapshotter.config import Config
from soci_native.snapshotter.mountd import MountdClient, warm_imports

log = logging.getLogger("soci_native.snapshotter")

# What the first remote Prepare needs to resolve an image and find its index: imported while
# the server waits, not inside a container's pull.
RESOLVE_MODULES = ("soci_native.registry.source", "soci_native.images", "soci_native.remote",
                   "soci_native.discover", "soci_native.mount.image", "soci_native.store")


@dataclass
class Paths:
    root: Path
    store: Path

    @property
    def mountd(self) -> Path:
        return self.root / "mountd"

    @property
    def cache(self) -> Path:
        return self.root / "cache"


def build_service(paths: Paths, cfg: Config, lazy: bool = True) -> Any:
    from soci_native.registry import RegistryOptions
    from soci_native.snapshotter.remote import Resolver
    from soci_native.snapshotter.service import LazyMounter, Snapshots

    mounter = None
    if lazy:
        reg = RegistryOptions(insecure=cfg.registry_insecure,
                              auth_file=cfg.registry_auth_file or None,
                              max_attempts=cfg.registry_retries,
                              timeout=cfg.mount_timeout)
        resolver = Resolver(paths.store, reg, cfg.min_layer_size)
        mounter = LazyMounter(resolver, MountdClient(paths.mountd), paths.store, paths.cache,
                              cfg.cache_max_bytes_per_layer, cfg.mount_timeout,
                              cfg.max_concurrent_mounts, cfg.background_spans_per_second,
                              cfg.prefetch)
    return Snapshots(paths.root, mounter)


def serve(address: str, paths: Paths, cfg: Config, ready: threading.Event | None = None) -> None:
    import grpc

    from soci_native.snapshotter.service import grpc_handler

    paths.root.mkdir(parents=True, exist_ok=True)
    svc = build_service(paths, cfg)
    remote = [(s, svc.fs(s)) for s in svc.meta.all() if s.remote]
    if svc.lazy is not None:
        svc.lazy.mountd.ensure()  # up before the first pull needs it
        svc.lazy.adopt(remote)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(address)
    Path(address).parent.mkdir(parents=True, exist_ok=True)
    server = grpc.server(ThreadPoolExecutor(cfg.grpc_workers, thread_name_prefix="grpc"),
                         handlers=[grpc_handler(svc)],
                         options=[("grpc.max_receive_message_length", 16 << 20)])
    if server.add_insecure_port("unix:" + address) == 0:
        raise OSError(f"cannot listen on {address}")
    server.start()
    warm_imports(RESOLVE_MODULES, tls_insecure=(cfg.registry_insecure,))
    os.chmod(address, 0o660)
    log.info("soci-native snapshotter serving %s (root %s, store %s, %d lazy snapshots)",
             address, paths.root, paths.store, len(remote))
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    if ready is not None:
        ready.set()
    stop.wait()
    log.info("stopping (lazy mounts stay with the mount daemon)")
    server.stop(5).wait(10)
    svc.meta.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(address)
