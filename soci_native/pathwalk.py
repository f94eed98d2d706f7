"""Finding the regular file a path names in a layer's entries the way the image would resolve
it: symbolic links in every directory component and at the end (a link kept in another
layer of the image included), then hard links.

Imports only posixpath: `ztoc get-file`'s fast path (soci_native/quick_getfile.py) and the
click command walk paths with this same code."""

from __future__ import annotations

import posixpath

# Not typing.TYPE_CHECKING: importing typing costs the fast path a few ms (mypy treats any
# TYPE_CHECKING as true)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Protocol, TypeVar

    class Entry(Protocol):
        """What the walk reads of an entry (ztoc.FileMetadata has it)."""

        @property
        def type(self) -> str: ...
        @property
        def linkname(self) -> str: ...

    E = TypeVar("E", bound=Entry)

MAX_LINKS = 40  # as Linux's path walk


class PathError(Exception):
    """A path that does not name a regular file in the layer; the message says why."""


def clean(path: str) -> str:
    """Go's filepath.Clean("/" + path) without the leading slash, as the reference does."""
    return posixpath.normpath("/" + path).lstrip("/")


def lazy(make: Callable[[str], Callable[[str], E | None]], key: str) -> Callable[[str], E | None]:
    """The lookup ``make(key)``, made when first asked: another layer's zTOC is read (and
    verified, and its names indexed) only if the walk looks in it, which it does only for a
    name this layer does not list."""
    made: list[Callable[[str], E | None]] = []

    def find(name: str) -> E | None:
        if not made:
            made.append(make(key))
        return made[0](name)
    return find


def resolve(path: str, here: Callable[[str], E | None],
            others: Sequence[Callable[[str], E | None]] = ()) -> E:
    """The regular file ``path`` names in this layer (``here``, a lookup by cleaned name),
    following symbolic links in every directory component and at the end, and hard links.
    A link that is not in this layer is looked for in ``others`` (the image's other layers):
    merged-/usr images keep ``bin -> usr/bin`` in one layer and the files in another."""
    todo = [c for c in clean(path).split("/") if c]
    done = ""
    hops = 0
    while todo:
        part = todo.pop(0)
        name = posixpath.join(done, part) if done else part
        f = here(name) or next((g for g in (o(name) for o in others)
                                if g is not None and g.type == "symlink"), None)
        if f is not None and f.type == "symlink":
            hops += 1
            if hops > MAX_LINKS:
                raise PathError(f"{path}: too many levels of symbolic links")
            base = "" if f.linkname.startswith("/") else posixpath.dirname(name)
            target = clean(posixpath.join(base, f.linkname))
            todo = [c for c in target.split("/") if c] + todo
            done = ""
            continue
        done = name  # a directory a layer does not list is still a directory (its parent's)
    f = here(done)
    for _ in range(MAX_LINKS):
        if f is None or f.type != "hardlink":
            break
        f = here(clean(f.linkname))
    if f is None:
        where = f" (resolved to /{done})" if done != clean(path) else ""
        raise PathError(f"{path}: no such file in this layer{where}")
    if f.type != "reg":
        raise PathError(f"{path} is a {f.type}, not a regular file")
    return f
