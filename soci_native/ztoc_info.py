"""``soci-native ztoc info``: a zTOC's summary and file list as the reference prints it (JSON,
two-space indent, files by offset with their first and last span).

Written for 10^5-entry zTOCs: the file list is formatted in C (csrc/ztoc_info.c: sorted by
offset, span ids by binary search over the checkpoints, names escaped as json does), with no
Python object per entry; ``json.dumps(indent=2)`` runs the pure Python encoder, and a tuple
per entry plus per-entry formatting in Python were most of the command's time. The output is
byte for byte what ``json.dumps(doc, indent=2)`` gives (tests/test_ztoc_info.py compares
them).
"""

from __future__ import annotations

import itertools
import json
import operator

from soci_native import _core
from soci_native.filestream import gzip_span_size

# Not typing.TYPE_CHECKING, and ztoc (dataclasses) only on an error: `ztoc info`'s fast path
# (soci_native/quick_info.py) imports this module
TYPE_CHECKING = False
if TYPE_CHECKING:
    from soci_native import ztoc


def _error(msg: str) -> Exception:
    from soci_native.ztoc import ZtocError

    return ZtocError(msg)


def _tar_span_size(checkpoints: bytes) -> int:
    from soci_native import tarzinfo

    return tarzinfo.decode(checkpoints).span_size


def span_starts(checkpoints: bytes) -> list[int]:
    """Each span's first uncompressed offset in a gzip checkpoint blob (what
    ``span_range`` searches)."""
    return [int(out) for _in, out, _bits in _core.checkpoint_table(checkpoints)]


def span_size(checkpoints: bytes, algorithm: str) -> int:
    if algorithm == "gzip":
        return gzip_span_size(checkpoints)
    return _tar_span_size(checkpoints)


def check_entries(names: list[str], offs: list[int], sizes: list[int]) -> list[int]:
    """What :func:`~soci_native.ztoc.sorted_files` checks, for columns of entries already
    by offset: each starts at or after the previous one's data padded to 512 (for offsets
    >= 0, roundup512(end) > next ⟺ end > next rounded down to 512). Returns the ends."""
    ends = list(map(operator.add, offs, sizes))
    floors = map(operator.and_, offs[1:], itertools.repeat(~511))
    bad = [i for i, x in enumerate(map(operator.gt, ends, floors)) if x]
    if bad:
        raise _error(f"invalid TOC entry {names[bad[0] + 1]!r}: overlaps the previous entry")
    return ends


def info_parts(buf: ztoc.ZtocBuffer, size: int) -> tuple[bytes, bytes, bytes]:
    """``ztoc info``'s JSON text (no trailing newline) for the zTOC bytes ``buf``, whose
    stored blob is ``size`` bytes, in three pieces to write one after the other (joining
    10^7 bytes only to write them would copy them twice). Raises ZtocError for a malformed
    zTOC."""
    try:
        r = _core.ztoc_parse(buf, False)
        step = 0 if r["algorithm"] == "gzip" else _tar_span_size(r["checkpoints"])
        listed, multi, overlap, uncovered = _core.ztoc_info_files(buf, step)
    except ValueError as e:
        raise _error(str(e)) from None
    if overlap >= 0:
        from soci_native import ztoc

        name = sorted(ztoc.from_bytes(buf).files, key=operator.attrgetter(
            "uncompressed_offset"))[overlap].name
        raise _error(f"invalid TOC entry {name!r}: overlaps the previous entry")
    if uncovered >= 0:
        raise _error(f"no checkpoint at or before uncompressed offset {uncovered}")
    head = json.dumps({"version": r["version"], "build_tool": r["build_tool"], "size": size,
                       "span_size": span_size(r["checkpoints"], r["algorithm"]),
                       "num_spans": r["max_span_id"] + 1, "num_files": r["num_files"],
                       "num_multi_span_files": multi, "files": []}, indent=2)
    tail = '  "files": []\n}'
    assert head.endswith(tail)
    head = head[:-len(tail)] + '  "files": '
    if not listed:
        return head.encode(), b"[]", b"\n}"
    return (head + "[\n").encode(), listed, b"\n  ]\n}"


def info_text(buf: ztoc.ZtocBuffer, size: int) -> str:
    """:func:`info_parts` as one str."""
    return b"".join(info_parts(buf, size)).decode("ascii")


__all__ = ["info_parts", "info_text", "span_size", "span_starts"]
