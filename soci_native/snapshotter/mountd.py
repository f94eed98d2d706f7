"""The mount daemon: one long-lived process serving every lazily mounted layer's FUSE mount.

The snapshotter starts it detached (its own session) and talks to it over a unix socket in
``<root>/mountd/``, one JSON request and one JSON answer per connection. Because the FUSE
mounts live here and not in the gRPC server, restarting the snapshotter leaves running
containers' lower layers readable; a new snapshotter finds the daemon by its socket and
adopts what it serves. One process for all mounts (one FUSE loop thread each) keeps the
idle memory to one interpreter, however many layers are mounted.

Requests: ``ping``; ``mount`` (mountpoint, image, layer, index, store, cache_dir,
cache_size, background_fetch, registry options) answers once the mount is live;
``preload`` (the same without mountpoint) loads a layer's zTOC and tree in the background
for a mount request to come;
``unmount`` (mountpoint) detaches it and removes its span cache; ``list``; ``shutdown``
unmounts everything and exits (SIGTERM/SIGINT do the same).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from soci_native.snapshotter.mountinfo import is_mounted

log = logging.getLogger("soci_native.snapshotter.mountd")

SOCKET_NAME = "mountd.sock"
PID_NAME = "mountd.pid"
LOG_NAME = "mountd.log"
MAX_REQUEST = 1 << 20
MAX_PRELOADS = 64
PRELOAD_CONCURRENCY = 2
PRELOAD_TTL = 60.0  # an unclaimed preloaded layer is dropped after this many seconds


class MountdError(Exception):
    pass


# What the first mount needs (the registry client, the mount's layers, tree and FUSE loop):
# imported behind the daemon's start, not inside a container's pull (~0.2 s of imports).
MOUNT_MODULES = ("soci_native.registry.source", "soci_native.discover", "soci_native.mount.image",
                 "soci_native.mount.fs")
WARM_HOST = "soci-native.invalid"  # no certs.d directory has this name: the common context


def warm_imports(modules: tuple[str, ...], tls_insecure: tuple[bool, ...] = ()) -> None:
    """Imports ``modules`` in a background thread; a request that needs one meanwhile just
    waits for that import to finish (the import lock), as it would have imported it itself.
    Then makes the registry TLS context for each ``tls_insecure`` setting (a host without a
    certs.d directory): the first registry client of a pull then finds it made (loading the
    system's CAs is ~45 ms of CPU, paid by each process's first client)."""
    import importlib

    def run() -> None:
        for m in modules:
            try:
                importlib.import_module(m)
            except Exception as e:  # the request importing it later reports the error
                log.info("importing %s ahead failed: %s", m, e)
        for insecure in tls_insecure:
            try:
                from soci_native.registry.tls import ssl_context

                ssl_context(WARM_HOST, insecure=insecure)
            except Exception as e:  # the first client makes it (and reports a problem)
                log.info("making the TLS context ahead failed: %s", e)

    threading.Thread(target=run, name="warm-imports", daemon=True).start()


# ------------------------------------------------------------------------------------ client

def _call(sock_path: Path, req: dict[str, Any], timeout: float) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(sock_path))
        s.sendall(json.dumps(req).encode() + b"\n")
        buf = bytearray()
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
            if len(buf) > MAX_REQUEST * 16:
                raise MountdError("mount daemon answer too large")
    if not buf:
        raise MountdError("mount daemon closed the connection without answering")
    ans = json.loads(buf)
    if not isinstance(ans, dict):
        raise MountdError("mount daemon sent a malformed answer")
    if ans.get("error"):
        raise MountdError(str(ans["error"]))
    return ans


class MountdClient:
    """Talks to (and if needed starts) the mount daemon of one snapshotter root."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self.sock = state_dir / SOCKET_NAME

    def call(self, op: str, timeout: float = 60.0, **kw: Any) -> dict[str, Any]:
        return _call(self.sock, {"op": op, **kw}, timeout)

    def alive(self) -> bool:
        try:
            self.call("ping", timeout=5)
            return True
        except (OSError, MountdError, ValueError):
            return False

    def ensure(self, timeout: float = 20.0) -> None:
        """Starts the daemon unless one answers on the socket."""
        if self.alive():
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.sock.unlink()
        with open(self.dir / LOG_NAME, "ab") as logf:
            proc = subprocess.Popen(
                [sys.executable, "-m", "soci_native.snapshotter.mountd", "--state",
                 str(self.dir)], stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                start_new_session=True, cwd="/")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise MountdError(f"the mount daemon exited ({proc.returncode}); see "
                                  f"{self.dir / LOG_NAME}")
            if self.alive():
                return
            time.sleep(0.05)
        raise MountdError(f"the mount daemon did not answer within {timeout:.0f} s")

    def pid(self) -> int | None:
        try:
            return int(self.call("ping", timeout=5)["pid"])
        except (OSError, MountdError, ValueError, KeyError, TypeError):
            return None


# ------------------------------------------------------------------------------------ server

@dataclass
class _Preload:
    at: float
    done: threading.Event = field(default_factory=threading.Event)
    mounted: Any = None


@dataclass
class _Mount:
    mountpoint: str
    request: dict[str, Any]
    cache_dir: Path
    thread: threading.Thread | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    error: str = ""
    mounted: Any = None  # MountedImage


def _fusermount() -> list[str]:
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    return [tool, "-u", "-z"] if tool else ["umount", "-l"]


class Daemon:
    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self.mounts: dict[str, _Mount] = {}
        self.preloads: dict[tuple[str, str, str], _Preload] = {}
        self.preload_slots = threading.BoundedSemaphore(PRELOAD_CONCURRENCY)
        self.lock = threading.Lock()
        self.stopping = threading.Event()

    # -- mounts

    @staticmethod
    def _options(req: dict[str, Any]) -> Any:
        from soci_native.mount.image import MountOptions
        from soci_native.registry import RegistryOptions

        reg = RegistryOptions(**(req.get("registry") or {}))
        return MountOptions(str(req["image"]), Path(str(req["store"])), None,
                            str(req["layer"]), str(req["index"]), Path(str(req["cache_dir"])),
                            int(req.get("cache_size") or 1 << 30), bool(req.get("prefetch")),
                            reg, float(req.get("background_fetch") or 0.0),
                            prefetch_in_background=True)

    @staticmethod
    def _key(req: dict[str, Any]) -> tuple[str, str, str]:
        return str(req["image"]), str(req["layer"]), str(req["index"])

    def preload(self, req: dict[str, Any]) -> dict[str, Any]:
        """Loads a layer's zTOC and tree ahead of its mount request (the snapshotter asks for
        the image's other layers while containerd prepares the first)."""
        from soci_native.mount.image import open_mount

        key = self._key(req)
        self._expire_preloads()
        with self.lock:
            if key in self.preloads or len(self.preloads) >= MAX_PRELOADS:
                return {"ok": True, "queued": False}
            p = _Preload(time.monotonic())
            self.preloads[key] = p

        def load() -> None:
            try:
                with self.preload_slots:  # a few at once: each builds a tree in memory
                    p.mounted = open_mount(self._options(req))
            except Exception as e:
                shutil.rmtree(str(req["cache_dir"]), ignore_errors=True)
                log.info("preloading %s failed: %s", req.get("layer"), e)
            p.done.set()

        threading.Thread(target=load, name="preload", daemon=True).start()
        return {"ok": True, "queued": True}

    def _expire_preloads(self) -> None:
        now = time.monotonic()
        with self.lock:
            old = [k for k, p in self.preloads.items()
                   if p.done.is_set() and now - p.at > PRELOAD_TTL]
            gone = [self.preloads.pop(k) for k in old]
        for p in gone:
            if p.mounted is not None:
                p.mounted.close()
                shutil.rmtree(p.mounted.cache.root, ignore_errors=True)

    def _open(self, req: dict[str, Any]) -> Any:
        from soci_native.mount.image import open_mount

        with self.lock:
            p = self.preloads.pop(self._key(req), None)
        if p is not None and p.done.wait(float(req.get("mount_timeout") or 30)) and p.mounted:
            return p.mounted
        return open_mount(self._options(req))

    def mount(self, req: dict[str, Any]) -> dict[str, Any]:
        mp = os.path.abspath(str(req["mountpoint"]))
        with self.lock:
            if mp in self.mounts:
                return {"ok": True, "already": True}
            m = _Mount(mp, req, Path(str(req["cache_dir"])))
            self.mounts[mp] = m
        try:
            m.mounted = self._open(req)
            m.cache_dir = Path(m.mounted.cache.root)
        except Exception as e:
            with self.lock:
                self.mounts.pop(mp, None)
            shutil.rmtree(m.cache_dir, ignore_errors=True)
            log.warning("mount %s failed: %s", mp, e)
            return {"error": f"{type(e).__name__}: {e}"}
        m.thread = threading.Thread(target=self._serve, args=(m,), name=f"fuse {mp}",
                                    daemon=True)
        m.thread.start()
        if not m.ready.wait(float(req.get("mount_timeout") or 30)) or m.error:
            self.unmount(mp)
            return {"error": m.error or f"FUSE did not come up at {mp}"}
        log.info("mounted layer %s of %s at %s", req["layer"], req["image"], mp)
        return {"ok": True}

    def _serve(self, m: _Mount) -> None:
        from soci_native.mount.fs import serve

        def ready() -> None:
            m.mounted.start_background_fetch(float(m.request.get("background_fetch") or 0))
            m.ready.set()

        try:
            serve(m.mounted, m.mountpoint, allow_other=True, on_ready=ready)
        except Exception as e:
            if not m.ready.is_set():
                m.error = f"FUSE could not mount {m.mountpoint}: {e}"
            log.info("FUSE loop for %s ended: %s", m.mountpoint, e)
        finally:
            m.mounted.close()
            shutil.rmtree(m.cache_dir, ignore_errors=True)
            m.ready.set()
            with self.lock:
                if self.mounts.get(m.mountpoint) is m:
                    del self.mounts[m.mountpoint]

    def unmount(self, mp: str) -> dict[str, Any]:
        mp = os.path.abspath(mp)
        with self.lock:
            m = self.mounts.get(mp)
        if m is None:
            return {"ok": True, "mounted": False}
        if is_mounted(mp):
            p = subprocess.run([*_fusermount(), mp], capture_output=True, text=True)
            if p.returncode != 0:
                log.warning("unmounting %s: %s", mp, p.stderr.strip())
        if m.thread is not None:
            m.thread.join(timeout=30)
        shutil.rmtree(m.cache_dir, ignore_errors=True)
        with self.lock:
            if self.mounts.get(mp) is m:
                del self.mounts[mp]
        log.info("unmounted %s", mp)
        return {"ok": True, "mounted": True}

    def listing(self) -> dict[str, Any]:
        with self.lock:
            items = list(self.mounts.values())
        out = []
        for m in items:
            info: dict[str, Any] = {"mountpoint": m.mountpoint, "layer": m.request.get("layer"),
                                    "image": m.request.get("image"),
                                    "cache_dir": str(m.cache_dir), "live": m.ready.is_set()}
            if m.mounted is not None and m.ready.is_set():
                with contextlib.suppress(Exception):
                    st = m.mounted.stats()
                    info["totals"] = st["totals"]
                    info["cache_bytes"] = st["cache_bytes"]
                    info["prefetched_spans"] = st["prefetched_spans"]
            out.append(info)
        return {"ok": True, "mounts": out, "pid": os.getpid()}

    def shutdown(self) -> None:
        self.stopping.set()
        with self.lock:
            mps = list(self.mounts)
            for p in self.preloads.values():
                p.at = -PRELOAD_TTL
        for mp in mps:
            self.unmount(mp)
        for p in list(self.preloads.values()):
            p.done.wait(30)
        self._expire_preloads()

    # -- the socket

    def handle(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(60)
                buf = bytearray()
                while not buf.endswith(b"\n") and len(buf) < MAX_REQUEST:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
                req = json.loads(buf)
                if not isinstance(req, dict):
                    raise ValueError("a request is a JSON object")
                ans = self.dispatch(req)
            except Exception as e:
                log.exception("bad request")
                ans = {"error": f"{type(e).__name__}: {e}"}
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps(ans).encode() + b"\n")

    def dispatch(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if op == "ping":
            return {"ok": True, "pid": os.getpid()}
        if op == "mount":
            return self.mount(req)
        if op == "preload":
            return self.preload(req)
        if op == "unmount":
            return self.unmount(str(req["mountpoint"]))
        if op == "list":
            return self.listing()
        if op == "shutdown":
            threading.Thread(target=self._exit, daemon=True).start()
            return {"ok": True}
        return {"error": f"unknown request {op!r}"}

    def _exit(self) -> None:
        self.shutdown()
        os._exit(0)

    def run(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        sock_path = self.dir / SOCKET_NAME
        with contextlib.suppress(FileNotFoundError):
            sock_path.unlink()
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(str(sock_path))
        os.chmod(sock_path, 0o600)
        srv.listen(64)
        (self.dir / PID_NAME).write_text(str(os.getpid()))
        log.info("mount daemon %d serving %s", os.getpid(), sock_path)
        warm_imports(MOUNT_MODULES, tls_insecure=(False,))
        while not self.stopping.is_set():
            try:
                conn, _ = srv.accept()
            except InterruptedError:
                continue
            except OSError:
                if self.stopping.is_set():
                    break
                raise
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="soci-native-mountd")
    ap.add_argument("--state", required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s mountd[%(process)d] %(levelname)s %(message)s")
    d = Daemon(Path(args.state).absolute())

    def stop(signum: int, frame: Any) -> None:
        threading.Thread(target=d._exit, daemon=True).start()

    # Installed before any FUSE loop starts, so libfuse (which only takes signals still at
    # their default) leaves them to us: a signal unmounts every layer, not just the last.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)
    d.run()


if __name__ == "__main__":
    main()
