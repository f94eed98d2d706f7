"""``soci-native mount`` and ``soci-native umount`` (click commands; cli.py registers them).

``mount`` without ``-f`` starts the filesystem in a detached child process (``python -m
soci_native.mount … --foreground --ready-fd N``, its own session, stdio on the log file) and
returns once the child reports the mount live (from FUSE ``init``), or fails with the child's
error. The child writes ``<root>/mounts/<key>.json`` (pid, mountpoint, image, log file) so
``umount`` can wait for it to exit; SIGINT/SIGTERM/SIGHUP make libfuse unmount cleanly.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

import click

from soci_native.cliopts import ByteSize, registry_flags, registry_options, resolve_creds

# Everything else is imported where it is used: cli.py registers these commands on every
# start, and `soci-native --help` should not pay for logging, subprocess or pathlib.
if TYPE_CHECKING:
    import logging
    from collections.abc import Callable
    from pathlib import Path

    from soci_native.registry import RegistryOptions


def _log() -> logging.Logger:
    import logging

    return logging.getLogger("soci_native.mount")

def _root(ctx: click.Context) -> Path:
    obj = ctx.find_object(dict)
    root = obj.get("root") if obj else None
    from pathlib import Path

    from soci_native.store import default_root

    return Path(root or default_root()).absolute()


def _key(mountpoint: str) -> str:
    import hashlib

    return hashlib.sha256(mountpoint.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def state_paths(root: Path, mountpoint: str) -> tuple[Path, Path]:
    """(pid file, default log file) of a mount."""
    d = root / "mounts"
    return d / f"{_key(mountpoint)}.json", d / f"{_key(mountpoint)}.log"


def _fail(msg: str) -> None:
    click.echo(f"soci-native: error: {msg}", err=True)
    sys.exit(1)


def _setup_logging(debug: bool) -> None:
    import logging

    log = _log()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(
        "%(asctime)s soci-native[%(process)d] %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.DEBUG if debug else logging.INFO)
    log.propagate = False


def _write_fd(fd: int, text: str) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, text.encode("utf-8", "replace"))
        os.close(fd)


@click.command("mount", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("image")
@click.argument("mountpoint", type=click.Path(file_okay=False))
@click.option("-p", "--platform", help="Platform image to mount (os/arch[/variant]). "
              "Default: the host's.")
@click.option("--layer", "layer", metavar="DIGEST",
              help="Mount only this layer (whiteouts shown as 0:0 character devices, opaque "
                   "directories with trusted.overlay.opaque=y, as overlayfs expects).")
@click.option("--index", "index_digest", metavar="DIGEST",
              help="Use this stored SOCI index instead of looking one up.")
@click.option("-f", "--foreground", is_flag=True, help="Stay in the foreground (Ctrl-C "
              "unmounts). Default: run in the background once mounted.")
@click.option("--cache-dir", type=click.Path(file_okay=False),
              help="Uncompressed span cache. Default: <root>/cache/spans.")
@click.option("--cache-size", type=ByteSize(), default="1GiB", show_default=True,
              help="Span cache bound (least recently used spans are evicted; a span larger "
                   "than half of it is never cached, its reads are inflated on demand).")
@click.option("--page-cache-push", "push_max", type=ByteSize(), default="32MiB",
              show_default=True, metavar="SIZE",
              help="As a directory is listed (and as a read is first served from a cached "
                   "span: the span's other files), its files up to SIZE whose spans are "
                   "already in the span cache are put into the kernel's page cache in the "
                   "background, so reading them makes no FUSE request. The caps count pages "
                   "(a 1-byte file takes 4 KiB): at most twice SIZE per directory, the cache "
                   "size per mount for both. 0: off.")
@click.option("--stats", "print_stats", is_flag=True,
              help="Print .soci-native/stats.json at unmount (foreground; else to the log).")
@click.option("--prefetch", is_flag=True,
              help="Fetch the spans the index's prefetch artifacts list before mounting.")
@click.option("--allow-other", is_flag=True,
              help="Let other users access the mount (non-root: needs user_allow_other in "
                   "/etc/fuse.conf).")
@click.option("--log-file", type=click.Path(dir_okay=False),
              help="Background mode's log. Default: <root>/mounts/<key>.log.")
@click.option("--debug", is_flag=True, hidden=True, help="libfuse debug output.")
@click.option("--ready-fd", type=int, hidden=True)
@click.option("--secrets-fd", type=int, hidden=True)
@click.option("--background-fetch", "background_fetch", type=click.FloatRange(min=0), default=0,
              metavar="SPANS_PER_S",
              help="Fetch the rest of the image behind the reads at this many spans per "
                   "second (0: off, the default), until the span cache is full.")
@registry_flags
@click.pass_context
def mount_command(ctx: click.Context, image: str, mountpoint: str, platform: str | None,
                  layer: str | None, index_digest: str | None, foreground: bool,
                  cache_dir: str | None, cache_size: int, print_stats: bool, prefetch: bool,
                  allow_other: bool, log_file: str | None, debug: bool,
                  ready_fd: int | None, secrets_fd: int | None, background_fetch: float,
                  push_max: int, **kw: Any) -> None:
    """Mount IMAGE's root filesystem read-only at MOUNTPOINT, loading file bytes lazily.

    The image's SOCI index is taken from the local store (`soci-native create IMAGE`, or a
    SOCI-enabled image from `convert`); for a registry image (docker://HOST/REPO:TAG) that
    has none there, it is discovered in the registry (v2 annotation, referrers API, referrers
    tag) and fetched, and spans are read with HTTP range requests. All layers are merged
    with overlay semantics (whiteouts, opaque directories, later layers win); metadata
    comes from the zTOCs alone, and reading a file fetches, verifies and inflates only the
    spans holding it. Layers without a zTOC are read whole when mounting.
    `MOUNTPOINT/.soci-native/stats.json` (hidden) reports per-layer fetch statistics.
    Unmount with `soci-native umount`.
    """
    from pathlib import Path

    root = _root(ctx)
    mp = os.path.abspath(mountpoint)
    if ready_fd is None:  # the child was spawned after these checks
        _check_mountpoint(mp)
    pidfile, default_log = state_paths(root, mp)
    if secrets_fd is not None:
        kw.update(_read_secrets(secrets_fd))
    if not foreground:
        given = kw.get("creds")
        creds = resolve_creds(kw)  # asked here, on the user's terminal, not in the daemon
        log_path = Path(log_file).absolute() if log_file else default_log
        if given and ":" in given:
            # a password on this command line: a forked daemon would keep it in its
            # /proc/PID/cmdline, so a new interpreter gets it through a pipe instead
            _spawn(ctx, root, mp, log_path, {"creds": creds} if creds else {})
            return
        reg = registry_options(kw)
        _daemon(root, mp, log_path, debug, lambda fd: _run(
            image, mp, root, pidfile, str(log_path), platform=platform, layer=layer,
            index_digest=index_digest, cache_dir=cache_dir, cache_size=cache_size,
            print_stats=print_stats, prefetch=prefetch, allow_other=allow_other, debug=debug,
            ready_fd=fd, registry=reg, background_fetch=background_fetch, push_max=push_max))
        return
    _setup_logging(debug)
    _run(image, mp, root, pidfile, log_file or "", platform=platform, layer=layer,
         index_digest=index_digest, cache_dir=cache_dir, cache_size=cache_size,
         print_stats=print_stats, prefetch=prefetch, allow_other=allow_other, debug=debug,
         ready_fd=ready_fd, registry=registry_options(kw), background_fetch=background_fetch,
         push_max=push_max)


# Options whose values are secret: never on the daemon's command line (readable by every
# user in /proc/PID/cmdline) nor in its environment; they go through an inherited pipe.
_SECRET_PARAMS = ("creds", "password_stdin")


def _read_secrets(fd: int) -> dict[str, Any]:
    with os.fdopen(fd, "rb") as f:
        doc = json.loads(f.read(1 << 16) or b"{}")
    return {k: v for k, v in doc.items() if k in _SECRET_PARAMS and isinstance(v, str)}


def _secrets_pipe(values: dict[str, str]) -> int | None:
    """The read end of a pipe holding ``values`` (JSON, written and closed already: the
    pipe's buffer holds it), or None when there is nothing secret."""
    if not values:
        return None
    r, w = os.pipe()
    try:
        os.write(w, json.dumps(values).encode())
    finally:
        os.close(w)
    return r


def _check_mountpoint(mp: str) -> None:
    """The failures libfuse would report only as a number, said up front and plainly."""
    import shutil

    if not os.path.lexists(mp):
        _fail(f"mountpoint {mp} does not exist (create it: mkdir -p {mp})")
    if not os.path.isdir(mp):
        _fail(f"mountpoint {mp} is not a directory")
    if is_mounted(mp):
        _fail(f"{mp} is already a mount point (unmount it with `soci-native umount {mp}`)")
    with contextlib.suppress(OSError):
        if any(os.scandir(mp)):
            _fail(f"mountpoint {mp} is not empty: the mount would hide what is in it; use an "
                  "empty directory")
    if shutil.which("fusermount3") is None and os.geteuid() != 0:
        _fail("fusermount3 not found: install FUSE 3 (Debian/Ubuntu: apt-get install fuse3)")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        why = "does not exist" if not os.path.exists("/dev/fuse") else "is not usable by you"
        _fail(f"/dev/fuse {why}: FUSE needs it (load the fuse module; in a container, pass "
              "--device /dev/fuse and CAP_SYS_ADMIN)")
    if os.geteuid() != 0 and not os.access(mp, os.W_OK):
        _fail(f"no write access to mountpoint {mp}: fusermount3 mounts only on directories "
              "you may write to")


def is_mounted(mp: str) -> bool:
    """Whether ``mp`` is a mount point, by /proc/self/mountinfo: os.path.ismount cannot stat
    a FUSE mount whose daemon died (ENOTCONN) and would call it unmounted."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                fields = line.split(" ")
                if len(fields) > 4 and _unescape(fields[4]) == mp:
                    return True
    except OSError:
        return os.path.ismount(mp)
    return False


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as \ooo octal escapes
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _fuse_lines(log_file: Path, since: int) -> str:
    """What libfuse/fusermount3 wrote to the log since ``since`` (its lines carry no
    timestamp, ours do): the cause of a failed mount, for the one-line error."""
    try:
        with open(log_file, "rb") as f:
            f.seek(since)
            text = f.read(64 << 10).decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [x.strip() for x in text.splitlines()
             if x.strip() and not re.match(r"\d{4}-\d\d-\d\d |soci-native: ", x)]
    return "; ".join(lines[-3:])


def _spawn(ctx: click.Context, root: Path, mp: str, log_file: Path,
           secret: dict[str, str]) -> None:
    """Runs this command again with --foreground in a new interpreter, detached, and waits
    for it to report the mount live (or fail): for a password given on the command line,
    which a forked daemon (:func:`_daemon`) would keep in its /proc/PID/cmdline."""
    import subprocess

    from soci_native.store import FILE_MODE, private_dirs

    args = [sys.executable, "-m", "soci_native.mount"]
    skip = ("foreground", "ready_fd", "secrets_fd", "log_file", "mountpoint", *_SECRET_PARAMS)
    for p in ctx.command.params:
        if p.name in skip or p.name is None:
            continue
        value = ctx.params.get(p.name)
        if isinstance(p, click.Argument):
            args.append(str(value))
        elif isinstance(p, click.Option) and p.is_flag and p.secondary_opts:
            if value != p.default:  # an on/off pair set away from its default
                args.append(p.opts[-1] if value else p.secondary_opts[-1])
        elif isinstance(p, click.Option) and value is not None and value is not False:
            # (not ``value not in (None, False)``: 0 == False, and a 0 given must be passed on)
            args.append(p.opts[-1])
            if not p.is_flag:
                args.append(str(value))
    private_dirs(log_file.parent)
    secrets = _secrets_pipe(secret)
    r, w = os.pipe()
    args += [mp, "--foreground", "--ready-fd", str(w), "--log-file", str(log_file)]
    if secrets is not None:
        args += ["--secrets-fd", str(secrets)]
    env = dict(os.environ, SOCI_NATIVE_ROOT=str(root))
    since = log_file.stat().st_size if log_file.exists() else 0
    try:
        with open(os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                          FILE_MODE), "ab") as logf:
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                    pass_fds=(w,) if secrets is None else (w, secrets),
                                    start_new_session=True, env=env)
    finally:
        os.close(w)
        if secrets is not None:
            os.close(secrets)

    def reap() -> int | None:
        try:
            return proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    _await_ready(r, proc.pid, reap, mp, log_file, since)


def _daemon(root: Path, mp: str, log_file: Path, debug: bool,
            run: Callable[[int], None]) -> None:
    """Runs the mount in a forked child detached from the terminal (its own session, output
    to ``log_file``) and waits for it to report the mount live (or fail). A fork, not a new
    interpreter: the child starts with this process's imports done (a fresh `python -m`
    paid them all again: ~0.15 s of CPU of a 53k-entry mount's ~1.1). It keeps this
    process's command line as its own /proc/PID/cmdline, so a password given there goes
    through :func:`_spawn` instead."""
    from soci_native.store import FILE_MODE, private_dirs

    private_dirs(log_file.parent)
    since = log_file.stat().st_size if log_file.exists() else 0
    logfd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, FILE_MODE)
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the daemon: never returns into click
        code = 1
        try:
            os.close(r)
            os.setsid()
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(logfd, 1)
            os.dup2(logfd, 2)
            os.close(null)
            os.close(logfd)
            os.environ["SOCI_NATIVE_ROOT"] = str(root)  # for what the daemon runs
            _setup_logging(debug)
            run(w)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)
    os.close(w)
    os.close(logfd)
    _await_ready(r, pid, lambda: _wait(pid, 10.0), mp, log_file, since)


def _await_ready(r: int, pid: int, reap: Callable[[], int | None], mp: str, log_file: Path,
                 since: int) -> None:
    """Reads the daemon's report from pipe ``r``: "OK" once the mount is live, else "ERR
    why" (or nothing, if it died): then reaps it (``reap``) and fails with the reason, or
    with the last lines of its log (written after ``since``)."""
    with os.fdopen(r, "rb") as rf:
        msg = rf.read().decode("utf-8", "replace").strip()
    if msg == "OK":
        click.echo(f"mounted at {mp} (pid {pid}, log {log_file})", err=True)
        return
    status = reap()
    if msg.startswith("ERR "):
        cause = _fuse_lines(log_file, since) if msg.startswith("ERR FUSE could not") else ""
        _fail(f"{msg[4:]} ({cause})" if cause else msg[4:])
    tail = ""
    with contextlib.suppress(OSError):
        tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-10:])
    _fail(f"mounting {mp} failed (exit {status}); last lines of {log_file}:\n{tail}")


def _wait(pid: int, timeout: float) -> int | None:
    """The child's exit code, killing it after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        time.sleep(0.02)


def _run(image: str, mp: str, root: Path, pidfile: Path, log_file: str, *,
         platform: str | None, layer: str | None, index_digest: str | None,
         cache_dir: str | None, cache_size: int, print_stats: bool, prefetch: bool,
         allow_other: bool, debug: bool, ready_fd: int | None,
         registry: RegistryOptions | None = None, background_fetch: float = 0.0,
         push_max: int) -> None:
    from pathlib import Path

    from soci_native.images import ImageError
    from soci_native.layer import FormatError
    from soci_native.mount.image import MountError, MountOptions, open_mount
    from soci_native.store import StoreError

    os.umask(0o077)  # what a mount writes (span cache, store, pid file) is private
    opts = MountOptions(image, root, platform, layer, index_digest,
                        Path(cache_dir).absolute() if cache_dir else None, cache_size, prefetch,
                        registry)
    try:
        from soci_native.mount.fs import serve  # loads libfuse
        mounted = open_mount(opts)
    except (MountError, ImageError, StoreError, FormatError, OSError) as e:
        if ready_fd is not None:
            _write_fd(ready_fd, f"ERR {e}\n")
        _fail(str(e) or type(e).__name__)
        return
    mounted.extra["log_file"] = log_file or None
    _abort_fetches_on_signal(mounted)
    if ready_fd is not None:
        os.chdir("/")  # a daemon pins no directory; everything it keeps is absolute or open
    ready = False
    log = _log()

    def on_ready() -> None:
        nonlocal ready
        ready = True
        mounted.start_background_fetch(background_fetch)
        log.info("mounted %s at %s (%d layers, %d inodes)", image, mp, len(mounted.layers),
                 mounted.tree.inodes)
        if ready_fd is not None:
            _write_fd(ready_fd, "OK\n")

    pidfile.parent.mkdir(parents=True, exist_ok=True)
    pidfile.write_text(json.dumps({"pid": os.getpid(), "mountpoint": mp, "image": image,
                                   "log": log_file or None}))
    failed: str | None = None
    try:
        serve(mounted, mp, allow_other=allow_other, debug=debug, on_ready=on_ready,
              push_max=push_max)
    except Exception as e:
        # the loop also returns non-zero when a signal ended it; that is a normal stop
        # once the mount was live. Otherwise libfuse could not mount (it said why on stderr).
        if ready:
            log.info("FUSE loop ended (%s)", e)
        else:
            # the error only says the mount failed; libfuse wrote the cause on stderr (the log)
            failed = f"FUSE could not mount {mp}"
            log.debug("FUSE serve failed: %s", e)
    finally:
        with contextlib.suppress(OSError):
            pidfile.unlink()
        stats = mounted.stats()
        mounted.close()
    if failed or not ready:
        if ready_fd is not None:
            _write_fd(ready_fd, f"ERR {failed or f'FUSE could not mount {mp}'}\n")
        _fail(failed or f"FUSE could not mount {mp}")
    log.info("unmounted %s", mp)
    if print_stats:
        click.echo(json.dumps(stats, indent=2))


# `umount` sends this to a mount whose unmount is refused as busy: the fetches it is
# waiting for end at once (EIO), so the readers holding files open let go.
ABORT_SIGNAL = signal.SIGUSR1


def _abort_fetches_on_signal(mounted: Any) -> None:
    """Aborts the image source's running registry requests on :data:`ABORT_SIGNAL`.
    libfuse's loop holds the main thread, so Python's own handler would not run; the
    signal's wakeup fd (written by the C-level handler in any thread) wakes a thread here."""
    import threading

    # a registry image's source module is loaded by then; looking for the class by name
    # would import the registry client and urllib3 (~25 ms) into every local mount
    source_mod = sys.modules.get("soci_native.registry.source")
    src = mounted.source
    if source_mod is None or not isinstance(src, source_mod.RegistrySource):
        return
    r, w = os.pipe()
    os.set_blocking(w, False)
    signal.signal(ABORT_SIGNAL, lambda *_: None)  # never the default (terminate)
    signal.set_wakeup_fd(w, warn_on_full_buffer=False)

    def watch() -> None:
        while True:
            got = os.read(r, 64)
            if not got:
                return
            if ABORT_SIGNAL in got:
                _log().warning("unmount requested while busy: ending registry fetches (reads "
                            "that need the registry get EIO from now on)")
                src.client.shutdown()

    threading.Thread(target=watch, name="soci-abort-on-signal", daemon=True).start()


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie nobody reaped yet counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[-1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in (b"Z", b"X")


@click.command("umount", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("mountpoint", type=click.Path(file_okay=False))
@click.option("-z", "--lazy", is_flag=True, help="Detach even if busy (fusermount3 -z).")
@click.option("--timeout", type=float, default=10.0, show_default=True,
              help="Seconds to wait for the mount's process to exit.")
@click.pass_context
def umount_command(ctx: click.Context, mountpoint: str, lazy: bool, timeout: float) -> None:
    """Unmount a `soci-native mount` (fusermount3 -u) and wait for its process to exit."""
    import shutil
    import subprocess

    mp = os.path.abspath(mountpoint)
    if not os.path.lexists(mp):
        _fail(f"{mp} does not exist")
    if not is_mounted(mp):
        _fail(f"{mp} is not mounted")
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    cmd = [tool, "-u"] + (["-z"] if lazy else []) + [mp] if tool else \
        ["umount"] + (["-l"] if lazy else []) + [mp]
    pidfile, _ = state_paths(_root(ctx), mp)
    pid: int | None = None
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        pid = int(json.loads(pidfile.read_text())["pid"])  # before it goes with the mount
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0 and "busy" in p.stderr.lower() and pid is not None and _alive(pid):
        # busy: perhaps only readers waiting on a hanging registry; make the mount end its
        # fetches (they get EIO and let go of their files), then try again for a while
        with contextlib.suppress(OSError):
            os.kill(pid, ABORT_SIGNAL)
        retry_until = time.monotonic() + min(timeout, 5.0)
        while p.returncode != 0 and time.monotonic() < retry_until:
            time.sleep(0.1)
            p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        hint = " (files are open in it: close them, or detach it with --lazy)" \
            if "busy" in p.stderr.lower() else ""
        _fail(f"{' '.join(cmd)} failed: {p.stderr.strip() or p.returncode}{hint}")
    if pid is None or pid == os.getpid():
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.05)
    _fail(f"{mp} is unmounted but its process {pid} is still running")


__all__ = ["ByteSize", "mount_command", "state_paths", "umount_command"]
