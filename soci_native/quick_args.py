"""The command lines of the CLI's fast paths (soci_native/quick_getfile.py, quick_info.py)
read as click reads them, with only os imported: ``[--root R] ztoc [--root R] COMMAND
[OPTIONS] ARGS`` with a command's options anywhere among its arguments, the last of an option
given twice, ``--root`` after a subcommand overriding one before and $SOCI_NATIVE_ROOT taking
the place of the first. Anything else (help, another option, ``--``, a value that looks like
an option) is :class:`~soci_native.catalog.Unsure`: the caller leaves it to click."""

from __future__ import annotations

import sys

from soci_native import quick_io
from soci_native.catalog import Unsure
from soci_native.rootopt import data_root, dir_ok, env_root

TYPE_CHECKING = False  # not typing's: see pathwalk.py
if TYPE_CHECKING:
    from collections.abc import Callable

PROG = "soci-native"


class Args:
    """`soci-native ztoc COMMAND` with ``valued`` options (name -> attribute), ``flags``
    (name -> attribute) and ``count`` arguments (:attr:`positional`); the attributes are
    None/False when not given."""

    def __init__(self, argv: list[str], command: str, count: int,
                 valued: dict[str, str] | None = None, flags: dict[str, str] | None = None
                 ) -> None:
        valued, flags = valued or {}, flags or {}
        for attr in (*valued.values(), *flags.values()):
            setattr(self, attr, False if attr in flags.values() else None)
        self.roots: list[tuple[int, str]] = []  # (level, value): click checks each one
        commands: list[str] = []
        self.positional: list[str] = []
        i = 0
        while i < len(argv):
            a = argv[i]
            i += 1
            level = len(commands)  # 0: soci-native's options, 1: ztoc's, 2: the command's
            if not a.startswith("-"):
                (commands if level < 2 else self.positional).append(a)
                continue
            if level == 2 and a in flags:
                setattr(self, flags[a], True)
                continue
            name, eq, value = a.partition("=") if a.startswith("--") else (a, "", "")
            if name != "--root" and (level < 2 or name not in valued):
                raise Unsure(a)  # --help, --debug, registry flags, "--", "-", -vo OUT, ...
            if not eq:
                if i == len(argv):
                    raise Unsure(a)
                value = argv[i]
                i += 1
            if not value or value.startswith("-"):
                raise Unsure(a)  # click reads these, but they are more likely mistakes
            if name == "--root":
                self.roots.append((level, value))
            else:
                setattr(self, valued[name], value)
        if commands != ["ztoc", command] or len(self.positional) != count:
            raise Unsure(f"not `ztoc {command}` with {count} arguments")

    def root(self) -> str:
        """The store's root as the click command settles it (the last --root, else
        $SOCI_NATIVE_ROOT, else store.default_root's rule), each value given checked as
        click.Path(file_okay=False) checks it."""
        given = [v for _, v in self.roots]
        env = env_root()
        if env and not any(level == 0 for level, _ in self.roots):
            given.insert(0, env)
        if not all(map(dir_ok, given)):
            raise Unsure("--root")
        if given:
            return given[-1]
        return data_root()


def fast_path(main: Callable[[list[str]], bool]) -> Callable[[list[str]], bool]:
    """A fast path's ``main(argv)`` (it exits when it answers, returns False to leave the
    command to click), made to end on Ctrl-C as click's main does: "Aborted!" on stderr,
    exit 1. It also makes completion click's to answer."""

    def run(argv: list[str]) -> bool:
        if quick_io.completing():
            return False
        try:
            return main(argv)
        except KeyboardInterrupt:
            sys.stderr.write("\nAborted!\n")
            sys.exit(1)
    return run
