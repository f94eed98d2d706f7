"""Whether a path is a mount point, from ``/proc/self/mountinfo``: unlike
``os.path.ismount`` this never stats the path, so a FUSE mount whose server is gone (every
stat fails with ENOTCONN) or hangs still counts as mounted and gets unmounted."""

from __future__ import annotations

import os
import re

_ESCAPE = re.compile(r"\\([0-7]{3})")


def mount_points() -> set[str]:
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except OSError:
        return set()
    out = set()
    for line in lines:
        parts = line.split(" ")
        if len(parts) > 4:
            out.add(_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), parts[4]))
    return out


def is_mounted(path: str | os.PathLike[str]) -> bool:
    return os.path.abspath(os.fspath(path)) in mount_points()
