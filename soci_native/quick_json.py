"""``json.loads`` of a document for the CLI's fast paths without importing json: its decoder
module compiles regular expressions at import, and importing re (and enum with it) cost a
get-file more than parsing its few small documents. This drives the same C scanner
(``_json.make_scanner``) with json's default settings, so a document it reads is the object
json.loads gives; what json.loads would read another way (a BOM, UTF-16/32) or refuse is a
ValueError (which the fast paths take as "not sure")."""

from __future__ import annotations

import _json

TYPE_CHECKING = False  # not typing's: see pathwalk.py
if TYPE_CHECKING:
    from typing import Any

WHITESPACE = " \t\n\r"  # json.decoder.WHITESPACE's characters


class _Defaults:
    """json.JSONDecoder()'s settings, as the scanner reads them."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {"-Infinity": float("-inf"), "Infinity": float("inf"),
                      "NaN": float("nan")}.__getitem__
    memo: dict[str, str] = {}


_scan = _json.make_scanner(_Defaults())  # type: ignore[arg-type]  # any object with these


def loads(data: bytes) -> Any:
    """json.loads(data) for UTF-8 without a BOM; ValueError for json.detect_encoding's other
    cases and where json.loads raises one."""
    if data[:3] == b"\xef\xbb\xbf" or b"\x00" in data[:4]:
        raise ValueError("not plain UTF-8 JSON")
    try:
        s = data.decode("utf-8", "surrogatepass")  # as json.loads decodes bytes
        start = len(s) - len(s.lstrip(WHITESPACE))
        obj, end = _scan(s, start)
    except StopIteration:  # no value where one must be
        raise ValueError("not JSON") from None
    if s[end:].lstrip(WHITESPACE):
        raise ValueError("extra data after the JSON value")
    return obj
