"""Where `ztoc get-file` writes: stdout or the -o file, with errors that name it (a full disk,
/proc, a path that cannot be created) as one line.

Imports only sys: `ztoc get-file`'s fast path (soci_native/quick_getfile.py) and the click
command write with this same code."""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # not typing's: see pathwalk.py
if TYPE_CHECKING:
    from typing import BinaryIO


class OutputError(Exception):
    """The output cannot be opened or written; the message names it and says why."""


class Output:
    """A binary output whose write errors name the file (a pipe gone is left as it is)."""

    def __init__(self, fh: BinaryIO, name: str) -> None:
        self.fh, self.name = fh, name

    def write(self, data: bytes) -> int:
        try:
            return int(self.fh.write(data))
        except BrokenPipeError:
            raise
        except OSError as e:
            raise OutputError(f"cannot write {self.name}: {e.strerror or e}") from None


def create(path: str) -> BinaryIO:
    """``path`` opened for writing (truncated); an unwritable path is an OutputError."""
    try:
        return open(path, "wb")  # noqa: SIM115 (the caller closes it)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from None


class open_output:  # noqa: N801 (used as a function: `with open_output(path) as out`)
    """stdout (flushed at the end), or the -o file (created at once; closed at the end, its
    close checked: a full disk may show only then)."""

    def __init__(self, output: str | None) -> None:
        self.output = output
        self.fh = sys.stdout.buffer if output is None else create(output)

    def __enter__(self) -> Output:
        return Output(self.fh, "stdout" if self.output is None else self.output)

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if self.output is None:
            if exc_type is None:
                self.fh.flush()
            return
        try:
            self.fh.close()
        except OSError as e:
            raise OutputError(f"cannot write {self.output}: {e.strerror or e}") from None
