"""The top-level ``--root`` option's environment variable and value check, and the XDG base
directory rule, without click (only os is imported), for the console script's fast paths
(soci_native/entry.py, quick_args.py), which answer only when click would take the value too,
and for the store."""

from __future__ import annotations

import os


def dir_ok(path: str) -> bool:
    """What click.Path(file_okay=False) accepts: a path not there, or a readable one that is
    not a regular file."""
    import stat

    try:
        st = os.stat(path)
    except OSError:
        return True
    return not stat.S_ISREG(st.st_mode) and os.access(path, os.R_OK)


def env_root() -> str:
    """$SOCI_NATIVE_ROOT (``--root``'s envvar), "" when unset."""
    return os.environ.get("SOCI_NATIVE_ROOT", "")


def env_root_ok() -> bool:
    """Whether click takes $SOCI_NATIVE_ROOT, which it checks before it gets to a
    subcommand, even to show that subcommand's help."""
    env = env_root()
    return not env or dir_ok(env)


def xdg_dir(var: str, fallback: str) -> str:
    """$``var`` (an XDG base directory) if it is an absolute path (the XDG spec has a relative
    one ignored), else ``fallback`` under the home directory (os.path.expanduser's: relative
    when $HOME is, "~" itself when there is none)."""
    base = os.environ.get(var, "")
    return base if os.path.isabs(base) else os.path.join(os.path.expanduser("~"), fallback)


def data_root() -> str:
    """The store's default place: $XDG_DATA_HOME/soci-native, else
    ~/.local/share/soci-native ("~" left in when there is no home, for the caller to refuse)."""
    return os.path.join(xdg_dir("XDG_DATA_HOME", os.path.join(".local", "share")), "soci-native")
