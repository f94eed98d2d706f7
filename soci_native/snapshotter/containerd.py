"""A small client for the containerd gRPC services `soci-native rpull` needs: content (Info,
Update, Write), images (Create, Update), leases (Create, Delete), snapshots (Stat, Prepare,
Commit, Remove: containerd's own service, which forwards to the named snapshotter) and diff
(Apply).

Calls carry the namespace (and, inside :meth:`Containerd.lease`, the lease) as the
``containerd-namespace`` / ``containerd-lease`` metadata containerd reads. Failures are
:class:`ContainerdError` with the gRPC status name in ``code``.
"""

from __future__ import annotations

import contextlib
import queue
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grpc
from google.protobuf import empty_pb2, field_mask_pb2

from soci_native.snapshotter.proto import (
    content_pb2,
    descriptor_pb2,
    diff_pb2,
    images_pb2,
    leases_pb2,
    mount_pb2,
    snapshots_pb2,
)

WRITE_CHUNK = 1 << 20  # containerd accepts messages up to 16 MiB; 1 MiB keeps memory flat
LEASE_EXPIRE = 24 * 3600  # as ctr's pull: a crashed pull's content is collected a day later


class ContainerdError(Exception):
    def __init__(self, code: str, msg: str) -> None:
        super().__init__(msg)
        self.code = code


def descriptor(media_type: str, digest: str, size: int) -> descriptor_pb2.Descriptor:
    return descriptor_pb2.Descriptor(media_type=media_type, digest=digest, size=size)


class Containerd:
    def __init__(self, address: str, namespace: str, timeout: float = 300.0) -> None:
        self.address = address
        self.namespace = namespace
        self.timeout = timeout
        self.lease_id = ""
        self._channel = grpc.insecure_channel(
            "unix:" + address, options=[("grpc.max_receive_message_length", 16 << 20)])

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Containerd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        md = (("containerd-namespace", self.namespace),)
        return md + (("containerd-lease", self.lease_id),) if self.lease_id else md

    def _call(self, service: str, method: str, req: Any, resp_type: Any) -> Any:
        fn: Callable[..., Any] = self._channel.unary_unary(
            f"/containerd.services.{service}/{method}",
            request_serializer=type(req).SerializeToString,
            response_deserializer=resp_type.FromString)
        try:
            return fn(req, metadata=self._metadata(), timeout=self.timeout)
        except grpc.RpcError as e:
            raise _error(e, f"{service.rsplit('.', 1)[-1]}.{method}") from None

    # ---- leases: everything written inside one is safe from containerd's GC until the end

    @contextlib.contextmanager
    def lease(self) -> Iterator[str]:
        lid = "soci-native-rpull-" + secrets.token_hex(8)
        expire = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + LEASE_EXPIRE))
        self._call("leases.v1.Leases", "Create",
                   leases_pb2.CreateRequest(id=lid, labels={"containerd.io/gc.expire": expire}),
                   leases_pb2.CreateResponse)
        self.lease_id = lid
        try:
            yield lid
        finally:
            self.lease_id = ""
            with contextlib.suppress(ContainerdError):
                self._call("leases.v1.Leases", "Delete", leases_pb2.DeleteRequest(id=lid),
                           empty_pb2.Empty)

    # ---- content

    def has_content(self, digest: str) -> bool:
        try:
            self._call("content.v1.Content", "Info", content_pb2.InfoRequest(digest=digest),
                       content_pb2.InfoResponse)
        except ContainerdError as e:
            if e.code == "NOT_FOUND":
                return False
            raise
        return True

    def set_labels(self, digest: str, labels: dict[str, str]) -> None:
        info = content_pb2.Info(digest=digest, labels=labels)
        mask = field_mask_pb2.FieldMask(paths=[f"labels.{k}" for k in labels])
        self._call("content.v1.Content", "Update",
                   content_pb2.UpdateRequest(info=info, update_mask=mask),
                   content_pb2.UpdateResponse)

    def write_content(self, digest: str, size: int, chunks: Iterable[bytes],
                      labels: dict[str, str]) -> None:
        """Streams a blob into the content store; containerd checks its size and digest at
        the commit. A blob already there only gets the labels."""
        if self.has_content(digest):
            self.set_labels(digest, labels)
            return
        reqs: queue.Queue[content_pb2.WriteContentRequest | None] = queue.Queue()
        fn = self._channel.stream_stream(
            "/containerd.services.content.v1.Content/Write",
            request_serializer=content_pb2.WriteContentRequest.SerializeToString,
            response_deserializer=content_pb2.WriteContentResponse.FromString)
        ref = "soci-native-rpull-" + digest
        responses = fn(iter(reqs.get, None), metadata=self._metadata(), timeout=self.timeout)
        try:
            offset = 0
            # one request, one answer: never more than a chunk in flight
            for data in _rechunk(chunks, WRITE_CHUNK):
                reqs.put(content_pb2.WriteContentRequest(
                    action=content_pb2.WRITE, ref=ref, total=size, offset=offset, data=data))
                next(responses)
                offset += len(data)
                if offset > size:
                    raise ContainerdError("DATA_LOSS", f"blob {digest} is larger than its "
                                          f"descriptor's {size} bytes")
            reqs.put(content_pb2.WriteContentRequest(
                action=content_pb2.COMMIT, ref=ref, total=size, offset=offset,
                expected=digest, labels=labels))
            next(responses)
        except grpc.RpcError as e:
            err = _error(e, "Content.Write")
            if err.code != "ALREADY_EXISTS":  # written meanwhile by another pull
                raise err from None
            self.set_labels(digest, labels)
        finally:
            reqs.put(None)
            responses.cancel()

    # ---- images

    def put_image(self, name: str, target: descriptor_pb2.Descriptor) -> None:
        img = images_pb2.Image(name=name, target=target)
        try:
            self._call("images.v1.Images", "Create", images_pb2.CreateImageRequest(image=img),
                       images_pb2.CreateImageResponse)
        except ContainerdError as e:
            if e.code != "ALREADY_EXISTS":
                raise
            self._call("images.v1.Images", "Update",
                       images_pb2.UpdateImageRequest(
                           image=img, update_mask=field_mask_pb2.FieldMask(paths=["target"])),
                       images_pb2.UpdateImageResponse)

    # ---- snapshots (containerd's service: it keeps its own records and forwards)

    def stat_snapshot(self, snapshotter: str, key: str) -> bool:
        try:
            self._call("snapshots.v1.Snapshots", "Stat",
                       snapshots_pb2.StatSnapshotRequest(snapshotter=snapshotter, key=key),
                       snapshots_pb2.StatSnapshotResponse)
        except ContainerdError as e:
            if e.code == "NOT_FOUND":
                return False
            raise
        return True

    def prepare(self, snapshotter: str, key: str, parent: str,
                labels: dict[str, str]) -> list[mount_pb2.Mount]:
        r = self._call("snapshots.v1.Snapshots", "Prepare",
                       snapshots_pb2.PrepareSnapshotRequest(
                           snapshotter=snapshotter, key=key, parent=parent, labels=labels),
                       snapshots_pb2.PrepareSnapshotResponse)
        return list(r.mounts)

    def commit(self, snapshotter: str, name: str, key: str, labels: dict[str, str]) -> None:
        self._call("snapshots.v1.Snapshots", "Commit",
                   snapshots_pb2.CommitSnapshotRequest(
                       snapshotter=snapshotter, name=name, key=key, labels=labels),
                   empty_pb2.Empty)

    def remove(self, snapshotter: str, key: str) -> None:
        self._call("snapshots.v1.Snapshots", "Remove",
                   snapshots_pb2.RemoveSnapshotRequest(snapshotter=snapshotter, key=key),
                   empty_pb2.Empty)

    # ---- diff

    def apply(self, layer: descriptor_pb2.Descriptor,
              mounts: list[mount_pb2.Mount]) -> descriptor_pb2.Descriptor:
        r = self._call("diff.v1.Diff", "Apply", diff_pb2.ApplyRequest(diff=layer, mounts=mounts),
                       diff_pb2.ApplyResponse)
        applied: descriptor_pb2.Descriptor = r.applied
        return applied


def _error(e: grpc.RpcError, what: str) -> ContainerdError:
    code = e.code() if isinstance(e, grpc.Call) else None
    name = code.name if code is not None else "UNKNOWN"
    details = e.details() if isinstance(e, grpc.Call) else str(e)
    return ContainerdError(name, f"containerd {what}: {details or name}")


def _rechunk(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    buf = bytearray()
    for c in chunks:
        buf += c
        while len(buf) >= size:
            yield bytes(buf[:size])
            del buf[:size]
    if buf:
        yield bytes(buf)
