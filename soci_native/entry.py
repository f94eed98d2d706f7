"""The `soci-native` console script: help and --version without importing click.

Importing click costs several times a bare interpreter's start, so ``soci-native``,
``soci-native -h``/``--help``, a command's help (``soci-native COMMAND -h``/``--help``, e.g.
``ztoc --help``) and ``--version`` are answered from text that click itself rendered: the
first such help shown at full width (a terminal of >= 80 columns, or no terminal) is saved in
the user's cache directory, under a signature made of the directories of soci_native and
click, click's version and the size and mtime of every module of both. Any edit, upgrade or
other venv changes the signature, so the saved text is rendered again by click rather than
shown stale. Everything else (a narrower terminal, deeper subcommands, other flags) goes
through click as always, but for `ztoc get-file` from a local image and `ztoc info`,
answered without click when soci_native.quick_getfile and quick_info can (they fall back to
click for anything else).

Shell completion (click run with _SOCI_NATIVE_COMPLETE set, no arguments) is click's to
answer, never the saved help's.

This module imports only os, stat and sys: it runs before anything else of the CLI.
"""

from __future__ import annotations

import os
import stat  # os imports it: no cost
import sys

from soci_native import __version__, quick_io

TYPE_CHECKING = False  # not typing's: see pathwalk.py
if TYPE_CHECKING:
    from typing import TextIO

PROG = "soci-native"
HELP_FLAGS = ("-h", "--help")
# click's commands (`soci-native`'s list_commands; tests/test_fast_help.py checks it): click
# takes exactly these words, no prefix nor other case
COMMANDS = frozenset({"convert", "create", "index", "mount", "prefetch", "push", "rebuild-db",
                      "rpull", "snapshotter", "umount", "unmount", "ztoc"})
# click renders help at min(terminal columns, 80) - 2, so every width >= 80 gives this text
FULL_WIDTH = 78
# a saved help is a few KiB: anything bigger at its name is not one
MAX_SAVED = 64 * 1024


def main() -> None:
    args = sys.argv[1:]
    # click names the program after argv[0]; completion runs it with no arguments
    console = os.path.basename(sys.argv[0]) == PROG and not quick_io.completing()
    if console and args == ["--version"]:
        sys.stdout.write(f"{PROG}, version {__version__}\n")
        sys.exit(0)
    topic = help_topic(args) if console else None
    unsaved = None  # (signature, topic) of a help click renders below, to save
    if topic is not None and terminal_columns() >= FULL_WIDTH + 2:
        sig = signature()
        text = read_saved(sig, topic)
        if text is not None:
            # no arguments: click shows the help as a usage error (stderr, exit 2)
            show(text, sys.stdout if args else sys.stderr)
            sys.exit(0 if args else 2)
        unsaved = sig, topic
    # `ztoc get-file` of a local image and `ztoc info` without click, when they can
    if "get-file" in args:
        from soci_native.quick_getfile import main as get_file

        get_file(args)
    if "info" in args:
        from soci_native.quick_info import main as info

        info(args)
    from soci_native.cli import main as cli_main

    if unsaved is not None:
        sig, topic = unsaved
        text = render_help(cli_main, topic, args[-1] if args else "")
        if text is not None:
            save(sig, topic, text)
    cli_main()


def show(text: str, stream: TextIO) -> None:
    """Writes a saved help as click echoes it, a pipe gone as click's main takes it."""
    try:
        stream.write(text + "\n")
        stream.flush()
    except OSError as e:
        quick_io.pipe_gone(e)


def help_topic(args: list[str]) -> str | None:
    """Which saved help answers ``args``: "" the top level's (``[]``, ``-h``, ``--help``), a
    command's name for ``COMMAND -h|--help``; None when none does (any other word is left
    to click without a look at the cache: only these names are files there, so `Ztoc` on a
    case-insensitive file system cannot read ztoc's)."""
    if not args or (len(args) == 1 and args[0] in HELP_FLAGS):
        return ""
    if len(args) == 2 and args[1] in HELP_FLAGS and args[0] in COMMANDS:
        from soci_native.rootopt import env_root_ok

        return args[0] if env_root_ok() else None
    return None


def terminal_columns() -> int:
    """The columns click's help formatter sees (shutil.get_terminal_size's rule, without
    importing shutil): COLUMNS if set, else the terminal of stdout, else 80."""
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
        columns = columns or 80
    return columns


def cache_file(topic: str) -> str | None:
    """Where the help of ``topic`` (see :func:`help_topic`) is kept: under $XDG_CACHE_HOME
    if it is an absolute path (the XDG spec has a relative one ignored), else ~/.cache;
    None (nothing saved) when the home directory is no absolute path either, since a
    relative one would put the cache wherever the command runs."""
    from soci_native.rootopt import xdg_dir  # os only

    base = xdg_dir("XDG_CACHE_HOME", ".cache")
    if not os.path.isabs(base):
        return None
    name = f"help-{FULL_WIDTH}-{topic}.txt" if topic else f"help-{FULL_WIDTH}.txt"
    return os.path.join(base, PROG, name)


def module_stats(top: str) -> list[str]:
    out = []
    for d, dirs, files in os.walk(top):
        dirs[:] = sorted(x for x in dirs if x != "__pycache__")
        for f in sorted(files):
            if f.endswith(".py"):
                st = os.stat(os.path.join(d, f))
                out.append(f"{os.path.relpath(os.path.join(d, f), top)}:{st.st_size}:"
                           f"{st.st_mtime_ns}")
    return out


def click_dir() -> str | None:
    """Where `import click` would load click from (the first sys.path entry holding it)."""
    for p in sys.path:
        d = os.path.join(p or ".", "click")
        if os.path.isfile(os.path.join(d, "__init__.py")):
            return d
    return None


def click_version(cdir: str) -> str:
    """The version in the name of click's dist-info beside ``cdir`` ("unknown" if none)."""
    try:
        names = os.listdir(os.path.dirname(cdir))
    except OSError:
        return "unknown"
    found = sorted(n[6:-10] for n in names if n.startswith("click-") and n.endswith(".dist-info"))
    return ",".join(found) or "unknown"


def signature() -> str:
    """One line that changes whenever soci_native's or click's modules do (or the locale),
    or either is loaded from elsewhere (another venv, checkout or store path whose files
    happen to match in size and mtime)."""
    # gettext picks click's messages by these (click ships no translations, but one could)
    locale = [os.environ.get(k, "") for k in ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG")]
    here = os.path.dirname(os.path.abspath(__file__))
    parts = [__version__, sys.version.split()[0], "locale", *locale, here, *module_stats(here)]
    cdir = click_dir()
    parts += ["click", *([os.path.abspath(cdir), click_version(cdir), *module_stats(cdir)]
                         if cdir else ["missing"])]
    return " ".join(parts)


def own_dir(path: str) -> bool:
    """Whether ``path`` is a directory of this user's (the effective uid's): another's could
    swap the saved text or the temporary file under us."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()


def read_saved(sig: str, topic: str) -> str | None:
    """The help saved for ``topic`` under signature ``sig``; None (click renders it) when
    there is none, or it is anything but a small regular file of this user's: never a link
    followed, a FIFO waited on, or a big file read."""
    path = cache_file(topic)
    if path is None or not own_dir(os.path.dirname(path)):
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() \
                or st.st_size > MAX_SAVED:
            return None
        data = os.read(fd, MAX_SAVED + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        first, _, text = data.decode("utf-8").partition("\n")
    except UnicodeDecodeError:
        return None
    return text if first == sig and text and len(data) <= MAX_SAVED else None


def render_help(cmd: object, topic: str, flag: str) -> str | None:
    """click's own help at full width, as `soci-native --help` (topic "") or `soci-native
    TOPIC FLAG` prints it (less echo's newline), in the contexts click's main makes for it;
    None when click would not print a help for it (no such command, FLAG not its help)."""
    import click

    assert isinstance(cmd, click.Group)
    settings = {**cmd.context_settings, "terminal_width": FULL_WIDTH}
    with click.Context(cmd, info_name=PROG, **settings) as ctx:
        if not topic:
            return cmd.get_help(ctx)
        sub = cmd.get_command(ctx, topic)
        if sub is None:
            return None
        with sub.context_class(sub, info_name=topic, parent=ctx, **sub.context_settings) as sc:
            if not sub.add_help_option or flag not in sub.get_help_option_names(sc):
                return None
            return sub.get_help(sc)


def save(sig: str, topic: str, text: str) -> None:
    """Written whole to a temporary name, then renamed: a reader sees the old text or the new
    one. The temporary file is made new (nothing there is followed or reused) in a directory
    of this user's. A cache that cannot be written (read-only home) only costs the next
    start's speed."""
    path = cache_file(topic)
    data = f"{sig}\n{text}".encode()
    if path is None or len(data) > MAX_SAVED:
        return  # read_saved would not read it
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        if not own_dir(os.path.dirname(path)):
            return
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o644)
    except OSError:
        return  # a name taken is left as it is
    try:
        with open(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError:
        import contextlib

        with contextlib.suppress(OSError):
            os.unlink(tmp)
