"""containerd's filter syntax, as List (Walk) sends it, for snapshot infos.

    filter   := selector ("," selector)*        every selector must hold (AND)
    selector := fieldpath [("==" | "!=" | "~=") value]
    fieldpath:= field ("." field)*              field: [A-Za-z0-9_-]+ or a "quoted string"
    value    := "quoted" | /regexp/ | a run of characters up to the next ","

A selector without an operator asks for the field to be present and non-empty. Several filter
strings in one request are alternatives (OR). Fields of a snapshot: ``name``, ``parent``,
``kind`` (view/active/committed) and ``labels.<key>``.
containerd's metadata layer relies on this after a remote Prepare: it lists
``labels."containerd.io/snapshot.ref"==<chain id>,parent==<parent>`` (it checks the answer
again itself, but a filter that matched nothing would fail the pull).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass

Fields = Callable[[tuple[str, ...]], "str | None"]

_FIELD = re.compile(r"[A-Za-z0-9_\-]+")
_OPS = ("==", "!=", "~=")


class FilterError(ValueError):
    pass


@dataclass(frozen=True)
class Selector:
    path: tuple[str, ...]
    op: str  # "" (present), "==", "!=", "~="
    value: str
    regex: re.Pattern[str] | None = None

    def matches(self, fields: Fields) -> bool:
        got = fields(self.path)
        if self.op == "":
            return bool(got)
        if self.op == "==":
            return got == self.value
        if self.op == "!=":
            return got != self.value
        assert self.regex is not None
        return got is not None and self.regex.search(got) is not None


def _quoted(s: str, i: int) -> tuple[str, int]:
    """A Go-style double-quoted string starting at s[i] == '"'."""
    j = i + 1
    while j < len(s):
        if s[j] == "\\":
            j += 2
            continue
        if s[j] == '"':
            try:
                return str(json.loads(s[i:j + 1])), j + 1
            except ValueError as e:
                raise FilterError(f"bad quoted string {s[i:j + 1]!r}: {e}") from None
        j += 1
    raise FilterError(f"unterminated quoted string in {s!r}")


def _selector(s: str, i: int) -> tuple[Selector, int]:
    path: list[str] = []
    while True:
        if i < len(s) and s[i] == '"':
            part, i = _quoted(s, i)
        else:
            m = _FIELD.match(s, i)
            if m is None:
                raise FilterError(f"expected a field name at {i} in {s!r}")
            part, i = m.group(), m.end()
        path.append(part)
        if i < len(s) and s[i] == ".":
            i += 1
            continue
        break
    op = s[i:i + 2]
    if op not in _OPS:
        return Selector(tuple(path), "", ""), i
    i += 2
    if i < len(s) and s[i] == '"':
        value, i = _quoted(s, i)
    elif i < len(s) and s[i] == "/":
        end = s.find("/", i + 1)
        if end < 0:
            raise FilterError(f"unterminated /regexp/ in {s!r}")
        value, i = s[i + 1:end], end + 1
    else:
        end = s.find(",", i)
        end = len(s) if end < 0 else end
        value, i = s[i:end], end
    regex = None
    if op == "~=":
        try:
            regex = re.compile(value)
        except re.error as e:
            raise FilterError(f"bad regexp {value!r}: {e}") from None
    return Selector(tuple(path), op, value, regex), i


def parse(s: str) -> list[Selector]:
    """One filter string (selectors joined by commas, all of which must match)."""
    out: list[Selector] = []
    i = 0
    s = s.strip()
    while i < len(s):
        sel, i = _selector(s, i)
        out.append(sel)
        while i < len(s) and s[i] == " ":
            i += 1
        if i < len(s):
            if s[i] != ",":
                raise FilterError(f"expected ',' at {i} in {s!r}")
            i += 1
            while i < len(s) and s[i] == " ":
                i += 1
    return out


def compile_filters(filters: list[str]) -> Callable[[Fields], bool]:
    """A predicate over a field lookup: true when any filter string matches (none: all)."""
    parsed = [parse(f) for f in filters if f.strip()]
    if not parsed:
        return lambda _fields: True
    return lambda fields: any(all(sel.matches(fields) for sel in sels) for sels in parsed)
