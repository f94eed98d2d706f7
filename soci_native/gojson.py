"""JSON bytes as Go's encoding/json.Marshal writes them, so manifests we write are
byte-identical to the reference's: compact, struct fields in declaration order (callers build
dicts in that order), map keys sorted (callers pass maps through `gomap`), and Go's string
escaping (<, >, & and U+2028/U+2029 as \\u escapes; \\b and \\f short, as since Go 1.22)."""

from __future__ import annotations

import json
from typing import Any

_GO_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028",
               "\u2029": "\\u2029"}


def _go_string(s: str) -> str:
    # json.dumps(ensure_ascii=False) escapes like Go (1.22+) except for Go's HTML-safe extras
    out = json.dumps(s, ensure_ascii=False)
    for ch, esc in _GO_ESCAPES.items():
        out = out.replace(ch, esc)
    return out


def _encode(v: Any) -> str:
    if isinstance(v, str):
        return _go_string(v)
    if isinstance(v, bool) or v is None:
        return json.dumps(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, dict):
        return "{" + ",".join(_go_string(k) + ":" + _encode(x) for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_encode(x) for x in v) + "]"
    raise TypeError(f"cannot encode {type(v).__name__} as Go JSON")


def marshal(v: Any) -> bytes:
    return _encode(v).encode("utf-8", "replace")


def gomap(m: dict[str, str]) -> dict[str, str]:
    """A map[string]string as Go emits it: keys in sorted (byte) order."""
    return {k: m[k] for k in sorted(m, key=lambda k: k.encode("utf-8", "surrogateescape"))}
