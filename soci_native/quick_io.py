"""What the console script's fast paths (soci_native/entry.py, quick_args.py, quick_info.py)
share with click's main, importing only os, sys and errno: whether click is asked for shell
completion, and a pipe gone under stdout ending the command as click ends it."""

from __future__ import annotations

import errno
import os
import sys

TYPE_CHECKING = False  # not typing's: see pathwalk.py
if TYPE_CHECKING:
    from typing import NoReturn


def completing() -> bool:
    """Whether click is asked for shell completion (_PROG_COMPLETE set): click's to answer."""
    return any(k.startswith("_") and k.endswith("_COMPLETE") for k in os.environ)


class PacifiedFlush:
    """A stream whose flush ignores a pipe gone, as click leaves stdout and stderr after
    one (the interpreter's last flush would report it otherwise)."""

    def __init__(self, wrapped: object) -> None:
        self.wrapped = wrapped

    def flush(self) -> None:
        try:
            self.wrapped.flush()  # type: ignore[attr-defined]
        except OSError as e:
            if e.errno != errno.EPIPE:
                raise

    def __getattr__(self, name: str) -> object:
        return getattr(self.wrapped, name)


def pipe_gone(e: OSError) -> NoReturn:
    """click's main on an error writing: a pipe gone (a reader that stopped, `| head`) is
    exit 1 with nothing more said; any other error is raised again."""
    if e.errno != errno.EPIPE:
        raise e
    sys.stdout = PacifiedFlush(sys.stdout)
    sys.stderr = PacifiedFlush(sys.stderr)
    sys.exit(1)
