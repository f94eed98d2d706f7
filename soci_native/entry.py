"""The `soci-native` console script: the top-level help and --version without importing click.

Importing click costs several times a bare interpreter's start, so ``soci-native``,
``soci-native -h``/``--help`` and ``--version`` are answered from text that click itself
rendered: the first top-level help shown at full width (a terminal of >= 80 columns, or no
terminal) is saved in the user's cache directory, under a signature made of the size and
mtime of every module of soci_native and of click. Any edit or upgrade of either changes the
signature, so the saved text is rendered again by click rather than shown stale. Everything
else (a narrower terminal, subcommands, other flags) goes through click as always, but for
`ztoc get-file` from a local image and `ztoc info`, answered without click when
soci_native.quick_getfile and quick_info can (they fall back to click for anything else).

This module imports only os and sys: it runs before anything else of the CLI.
"""

from __future__ import annotations

import os
import sys

from soci_native import __version__

PROG = "soci-native"
HELP_FLAGS = ("-h", "--help")
# click renders help at min(terminal columns, 80) - 2, so every width >= 80 gives this text
FULL_WIDTH = 78


def main() -> None:
    args = sys.argv[1:]
    quick = len(args) <= 1 and os.path.basename(sys.argv[0]) == PROG
    if quick and args == ["--version"]:
        sys.stdout.write(f"{PROG}, version {__version__}\n")
        sys.exit(0)
    saved = None
    if quick and (not args or args[0] in HELP_FLAGS) and terminal_columns() >= FULL_WIDTH + 2:
        sig = signature()
        text = read_saved(sig)
        if text is not None:
            # no arguments: click shows the help as a usage error (stderr, exit 2)
            (sys.stdout if args else sys.stderr).write(text + "\n")
            sys.exit(0 if args else 2)
        saved = sig
    # `ztoc get-file` of a local image and `ztoc info` without click, when they can
    if "get-file" in args:
        from soci_native.quick_getfile import main as get_file

        get_file(args)
    if "info" in args:
        from soci_native.quick_info import main as info

        info(args)
    from soci_native.cli import main as cli_main

    if saved is not None:
        save(saved, render_help(cli_main))
    cli_main()


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


def cache_file() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, PROG, f"help-{FULL_WIDTH}.txt")


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


def signature() -> str:
    """One line that changes whenever soci_native's or click's modules do (or the locale)."""
    # gettext picks click's messages by these (click ships no translations, but one could)
    locale = [os.environ.get(k, "") for k in ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG")]
    parts = [__version__, sys.version.split()[0], "locale", *locale,
             *module_stats(os.path.dirname(__file__))]
    cdir = click_dir()
    parts += ["click", *(module_stats(cdir) if cdir else ["missing"])]
    return " ".join(parts)


def read_saved(sig: str) -> str | None:
    try:
        with open(cache_file(), encoding="utf-8") as f:
            first, _, text = f.read().partition("\n")
    except (OSError, UnicodeDecodeError):
        return None
    return text if first == sig and text else None


def render_help(cmd: object) -> str:
    """click's own top-level help at full width, as `soci-native --help` prints it (less
    echo's newline)."""
    import click

    assert isinstance(cmd, click.Command)
    settings = {**cmd.context_settings, "terminal_width": FULL_WIDTH}
    with click.Context(cmd, info_name=PROG, **settings) as ctx:
        return cmd.get_help(ctx)


def save(sig: str, text: str) -> None:
    """Written whole to a temporary name, then renamed: a reader sees the old text or the new
    one. A cache that cannot be written (read-only home) only costs the next start's speed."""
    path = cache_file()
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(f"{sig}\n{text}")
        os.replace(tmp, path)
    except OSError:
        import contextlib

        with contextlib.suppress(OSError):
            os.unlink(tmp)
