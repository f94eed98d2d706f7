"""containerd's Snapshots service over the snapshot state and directories.

Plain snapshots are containerd's overlayfs snapshotter's: ``<root>/snapshots/<id>/fs`` (the
upper, or the layer's files once committed) and ``.../work``; an active snapshot mounts as
overlayfs over its committed ancestors' ``fs`` (a bind mount with no parent), a view as a
read-only bind of its one parent or a lower-only overlay of several.

A Prepare whose labels name a target layer (:mod:`~soci_native.snapshotter.remote`) that has
a zTOC gets its ``fs`` lazily mounted by the mount daemon, is committed under the target
name with those labels, and is answered ALREADY_EXISTS, which tells containerd the layer is
unpacked. Any failure on that path falls back to the ordinary answer (the mounts), so
containerd unpacks the layer itself; a Prepare without target labels never gets
ALREADY_EXISTS (containerd would retry it forever).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import subprocess
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import empty_pb2, timestamp_pb2
from google.protobuf.message import Message

from soci_native.snapshotter import filters
from soci_native.snapshotter.metadata import (
    KIND_ACTIVE,
    KIND_NAMES,
    KIND_VIEW,
    Metadata,
    MetaError,
    Snapshot,
)
from soci_native.snapshotter.mountd import MountdClient, MountdError
from soci_native.snapshotter.mountinfo import is_mounted
from soci_native.snapshotter.proto import mount_pb2, snapshots_pb2
from soci_native.snapshotter.remote import REMOTE_LABEL, Plan, Resolver, Target, target_of

log = logging.getLogger("soci_native.snapshotter")

SERVICE = "containerd.services.snapshots.v1.Snapshots"
PRELOAD_AGAIN = 60.0  # seconds before an image's other layers are preloaded again
LIST_BATCH = 100


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def _overlay_index_off() -> bool:
    return os.path.exists("/sys/module/overlay/parameters/index")


def _ts(ns: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)


def _disk_usage(path: Path) -> tuple[int, int]:
    """(bytes in allocated blocks, inodes) under path, each hard-linked inode once."""
    seen: set[tuple[int, int]] = set()
    size = inodes = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            inodes += 1
            size += st.st_blocks * 512
    return size, inodes


class Snapshots:
    """The ten RPCs. ``lazy`` is the remote path (None: plain snapshots only)."""

    def __init__(self, root: Path, lazy: LazyMounter | None) -> None:
        self.root = root
        self.dir = root / "snapshots"
        self.dir.mkdir(parents=True, exist_ok=True)
        for d in (root, self.dir):  # container files and span caches: root's alone
            os.chmod(d, 0o700)
        self.meta = Metadata(root / "metadata.db")
        self.lazy = lazy

    # -- paths and mounts

    def fs(self, s: Snapshot) -> Path:
        return self.dir / str(s.id) / "fs"

    def mounts(self, s: Snapshot) -> list[mount_pb2.Mount]:
        parents = [str(self.fs(p)) for p in self.meta.chain(s.parent)] if s.parent else []
        fs = str(self.fs(s))
        if s.kind == KIND_ACTIVE and not parents:
            return [mount_pb2.Mount(type="bind", source=fs, options=["rw", "rbind"])]
        if s.kind == KIND_VIEW and len(parents) <= 1:
            return [mount_pb2.Mount(type="bind", source=parents[0] if parents else fs,
                                    options=["ro", "rbind"])]
        opts = ["index=off"] if _overlay_index_off() else []
        if s.kind == KIND_ACTIVE:
            work = str(self.dir / str(s.id) / "work")
            opts += [f"workdir={work}", f"upperdir={fs}"]
        opts.append("lowerdir=" + ":".join(parents))
        return [mount_pb2.Mount(type="overlay", source="overlay", options=opts)]

    def info(self, s: Snapshot) -> snapshots_pb2.Info:
        return snapshots_pb2.Info(name=s.key, parent=s.parent, kind=s.kind,  # type: ignore[arg-type]
                                  created_at=_ts(s.created_ns), updated_at=_ts(s.updated_ns),
                                  labels=s.labels)

    def _new(self, key: str, parent: str, kind: int, labels: dict[str, str]) -> Snapshot:
        s = self.meta.create(key, parent, kind, labels)
        d = self.dir / str(s.id)
        try:
            (d / "fs").mkdir(parents=True)
            if kind == KIND_ACTIVE:
                (d / "work").mkdir()
        except OSError:
            self.meta.remove(key)
            shutil.rmtree(d, ignore_errors=True)
            raise
        return s

    def _drop(self, s: Snapshot) -> None:
        """Removes a snapshot's directory, unmounting a lazy layer first."""
        fs = self.fs(s)
        if s.remote and self.lazy is not None:
            self.lazy.unmount(fs)
        if is_mounted(fs):  # never recurse into a mount
            subprocess.run(["umount", "-l", str(fs)], capture_output=True)
        if is_mounted(fs):
            log.error("%s is still mounted; leaving %s", fs, fs.parent)
            return
        shutil.rmtree(fs.parent, ignore_errors=True)

    # -- RPCs

    def Prepare(self, req: Any) -> Any:
        labels = dict(req.labels)
        log.debug("Prepare labels %s", labels)
        s = self._new(req.key, req.parent, KIND_ACTIVE, labels)
        target = target_of(labels)
        if target is not None and self.lazy is not None:
            other = self.meta.get(target.chain)
            if other is not None:  # mounted lazily before (e.g. for another namespace)
                if other.parent == s.parent:
                    self.meta.remove(s.key)
                    self._drop(s)
                    raise _Abort(grpc.StatusCode.ALREADY_EXISTS,
                                 f"target snapshot {target.chain} already exists")
                # on another parent containerd would reject it: an ordinary snapshot
            elif self._try_remote(s, target, labels):
                raise _Abort(grpc.StatusCode.ALREADY_EXISTS,
                             f"target snapshot {target.chain} already exists")
        return snapshots_pb2.PrepareSnapshotResponse(mounts=self.mounts(s))

    def _try_remote(self, s: Snapshot, t: Target, labels: dict[str, str]) -> bool:
        assert self.lazy is not None
        fs = self.fs(s)
        try:
            plan = self.lazy.mount(t, fs)
        except Exception as e:  # any failure: containerd unpacks the layer itself
            log.warning("lazy mount of %s failed, falling back to a normal unpack: %s",
                        t.layer, e)
            return False
        if plan is None:
            return False
        labels = {**labels, REMOTE_LABEL: "true"}
        try:
            self.meta.commit(t.chain, s.key, labels, 0, 0, remote=plan.to_json())
            log.info("layer %s mounted lazily as %s", t.layer, t.chain)
            return True
        except MetaError as e:
            log.info("committing %s: %s", t.chain, e)
            self.lazy.unmount(fs)
            other = self.meta.get(t.chain)
            if e.code != "ALREADY_EXISTS" or other is None or other.parent != s.parent:
                # containerd would not accept that one (it checks the parent): unpack here
                return False
            # the target exists already, on the same parent (another namespace pulled it)
            self.meta.remove(s.key)
            self._drop(s)
            return True

    def View(self, req: Any) -> Any:
        s = self._new(req.key, req.parent, KIND_VIEW, dict(req.labels))
        return snapshots_pb2.ViewSnapshotResponse(mounts=self.mounts(s))

    def Mounts(self, req: Any) -> Any:
        s = self.meta.need(req.key)
        if s.kind not in (KIND_ACTIVE, KIND_VIEW):
            raise _Abort(grpc.StatusCode.FAILED_PRECONDITION,
                         f"snapshot {req.key} is {KIND_NAMES.get(s.kind)}: no mounts")
        return snapshots_pb2.MountsResponse(mounts=self.mounts(s))

    def Commit(self, req: Any) -> Any:
        s = self.meta.need(req.key)
        size, inodes = _disk_usage(self.fs(s)) if s.kind == KIND_ACTIVE else (0, 0)
        self.meta.commit(req.name, req.key, dict(req.labels), size, inodes)
        with contextlib.suppress(OSError):
            shutil.rmtree(self.dir / str(s.id) / "work")
        return empty_pb2.Empty()

    def Remove(self, req: Any) -> Any:
        s = self.meta.remove(req.key)
        self._drop(s)
        return empty_pb2.Empty()

    def Stat(self, req: Any) -> Any:
        return snapshots_pb2.StatSnapshotResponse(info=self.info(self.meta.need(req.key)))

    def Update(self, req: Any) -> Any:
        s = self.meta.need(req.info.name)
        labels = dict(s.labels)
        paths = list(req.update_mask.paths) if req.HasField("update_mask") else []
        if not paths:
            labels = dict(req.info.labels)
        for p in paths:
            if p == "labels":
                labels = dict(req.info.labels)
            elif p.startswith("labels."):
                k = p[len("labels."):]
                if k in req.info.labels:
                    labels[k] = req.info.labels[k]
                else:
                    labels.pop(k, None)
            else:
                raise _Abort(grpc.StatusCode.INVALID_ARGUMENT,
                             f"cannot update {p!r} of snapshot {s.key}: only labels change")
        s = self.meta.set_labels(s.key, labels)
        return snapshots_pb2.UpdateSnapshotResponse(info=self.info(s))

    def List(self, req: Any) -> Iterator[Any]:
        try:
            match = filters.compile_filters(list(req.filters))
        except filters.FilterError as e:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
        batch: list[snapshots_pb2.Info] = []
        for s in self.meta.all():
            if match(_fields(s)):
                batch.append(self.info(s))
            if len(batch) >= LIST_BATCH:
                yield snapshots_pb2.ListSnapshotsResponse(info=batch)
                batch = []
        if batch:
            yield snapshots_pb2.ListSnapshotsResponse(info=batch)

    def Usage(self, req: Any) -> Any:
        s = self.meta.need(req.key)
        if s.kind == KIND_ACTIVE:
            size, inodes = _disk_usage(self.fs(s))
        elif s.remote:
            size, inodes = int(s.remote.get("layer_size", 0)), 0
        else:
            size, inodes = s.size, s.inodes
        return snapshots_pb2.UsageResponse(size=size, inodes=inodes)

    def Cleanup(self, req: Any) -> Any:
        """Removes directories that no snapshot owns (left by a crash mid-Prepare/Remove)."""
        ids = self.meta.ids()
        for d in self.dir.iterdir():
            if d.name.isdigit() and int(d.name) not in ids:
                fs = d / "fs"
                if self.lazy is not None:
                    self.lazy.unmount(fs)
                if not is_mounted(fs):
                    shutil.rmtree(d, ignore_errors=True)
        return empty_pb2.Empty()


def _fields(s: Snapshot) -> filters.Fields:
    def get(path: tuple[str, ...]) -> str | None:
        if path == ("name",):
            return s.key
        if path == ("parent",):
            return s.parent
        if path == ("kind",):
            return KIND_NAMES.get(s.kind, "unknown")
        if len(path) >= 2 and path[0] == "labels":
            return s.labels.get(".".join(path[1:]))
        return None
    return get


class LazyMounter:
    """Plans and performs lazy layer mounts through the mount daemon, a few at a time."""

    def __init__(self, resolver: Resolver, mountd: MountdClient, store_root: Path,
                 cache_root: Path, cache_size: int, timeout: float, concurrency: int,
                 background_fetch: float, prefetch: bool = True) -> None:
        self.resolver = resolver
        self.mountd = mountd
        self.store_root = store_root
        self.cache_root = cache_root
        self.cache_size = cache_size
        self.timeout = timeout
        self.background_fetch = background_fetch
        self.prefetch = prefetch
        self._slots = threading.BoundedSemaphore(concurrency)
        self._lock = threading.Lock()
        self._preloaded: OrderedDict[str, float] = OrderedDict()

    def mount(self, t: Target, fs: Path) -> Plan | None:
        with self._slots:
            plan = self.resolver.plan(t)
            if plan is None:
                return None
            self._preload_siblings(t, plan)
            self.mount_plan(plan, fs)
            return plan

    def _request(self, plan: Plan, cache_dir: Path) -> dict[str, Any]:
        return {"image": plan.image, "layer": plan.layer, "index": plan.index,
                "store": str(self.store_root), "cache_dir": str(cache_dir),
                "cache_size": self.cache_size, "mount_timeout": self.timeout,
                "background_fetch": self.background_fetch, "prefetch": self.prefetch,
                "registry": self.resolver.registry_json()}

    def mount_plan(self, plan: Plan, fs: Path) -> None:
        self.mountd.ensure()
        self.mountd.call("mount", timeout=self.timeout + 30, mountpoint=str(fs),
                         **self._request(plan, self.cache_root / fs.parent.name))

    def _preload_siblings(self, t: Target, plan: Plan) -> None:
        """On the first layer of an image, asks the mount daemon to load the other layers'
        zTOCs and trees now: containerd prepares the layers one after the other, so each
        later mount then only has to start its FUSE loop."""
        now = time.monotonic()
        with self._lock:
            if now - self._preloaded.get(plan.image, -PRELOAD_AGAIN) < PRELOAD_AGAIN:
                return
            self._preloaded[plan.image] = now
            while len(self._preloaded) > 256:
                self._preloaded.popitem(last=False)
        siblings = self.resolver.siblings(t)

        def send() -> None:
            for p in siblings:
                cache = self.cache_root / f"pre-{p.layer[-12:]}-{secrets.token_hex(4)}"
                try:
                    self.mountd.ensure()
                    self.mountd.call("preload", timeout=30, **self._request(p, cache))
                except (OSError, MountdError) as e:
                    log.info("preloading %s: %s", p.layer, e)

        if siblings:
            threading.Thread(target=send, name="preload", daemon=True).start()

    def unmount(self, fs: Path) -> None:
        try:
            self.mountd.call("unmount", timeout=60, mountpoint=str(fs))
        except (OSError, MountdError) as e:
            log.warning("unmounting %s: %s", fs, e)

    def adopt(self, snaps: list[tuple[Snapshot, Path]]) -> None:
        """Makes sure every lazily mounted snapshot is served, mounting again what the mount
        daemon no longer serves (it was restarted, or the machine was)."""
        self.mountd.ensure()
        live = {m["mountpoint"] for m in self.mountd.call("list")["mounts"]}
        for orphan in live - {str(fs) for _, fs in snaps}:  # its snapshot is gone
            log.info("unmounting %s: no snapshot owns it", orphan)
            self.unmount(Path(orphan))
        for s, fs in snaps:
            if str(fs) in live and is_mounted(fs):
                continue
            assert s.remote is not None
            if is_mounted(fs):  # a dead FUSE connection from an earlier daemon
                subprocess.run(["umount", "-l", str(fs)], capture_output=True)
            try:
                self.mount_plan(Plan(**s.remote), fs)
                log.info("mounted %s again at %s", s.key, fs)
            except (OSError, MountdError, TypeError) as e:
                log.error("cannot mount %s again: %s", s.key, e)


def grpc_handler(svc: Snapshots) -> grpc.GenericRpcHandler:
    """The service's method table (no generated servicer: the messages are all it needs)."""
    sp = snapshots_pb2
    unary: dict[str, type[Message]] = {
        "Prepare": sp.PrepareSnapshotRequest, "View": sp.ViewSnapshotRequest,
        "Mounts": sp.MountsRequest, "Commit": sp.CommitSnapshotRequest,
        "Remove": sp.RemoveSnapshotRequest, "Stat": sp.StatSnapshotRequest,
        "Update": sp.UpdateSnapshotRequest, "Usage": sp.UsageRequest,
        "Cleanup": sp.CleanupRequest,
    }
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for name, req_type in unary.items():
        handlers[name] = grpc.unary_unary_rpc_method_handler(
            _unary(name, getattr(svc, name)), request_deserializer=req_type.FromString,
            response_serializer=lambda m: m.SerializeToString())
    handlers["List"] = grpc.unary_stream_rpc_method_handler(
        _stream(svc.List), request_deserializer=sp.ListSnapshotsRequest.FromString,
        response_serializer=lambda m: m.SerializeToString())
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


def _status(e: Exception) -> tuple[grpc.StatusCode, str]:
    if isinstance(e, _Abort):
        return e.code, str(e)
    if isinstance(e, MetaError):
        return getattr(grpc.StatusCode, e.code, grpc.StatusCode.UNKNOWN), str(e)
    log.exception("internal error")
    return grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}"


def _unary(name: str, fn: Callable[[Any], Any]) -> Callable[[Any, Any], Any]:
    def call(req: Any, ctx: Any) -> Any:
        log.debug("%s %s", name, getattr(req, "key", "") or getattr(req, "name", ""))
        try:
            return fn(req)
        except Exception as e:
            code, msg = _status(e)
            if code != grpc.StatusCode.ALREADY_EXISTS:
                log.debug("%s: %s %s", name, code.name, msg)
            ctx.abort(code, msg)
    return call


def _stream(fn: Callable[[Any], Iterator[Any]]) -> Callable[[Any, Any], Iterator[Any]]:
    def call(req: Any, ctx: Any) -> Iterator[Any]:
        try:
            yield from fn(req)
        except Exception as e:
            ctx.abort(*_status(e))
    return call
