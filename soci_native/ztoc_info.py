"""``soci-native ztoc info``: a zTOC's summary and file list as the reference prints it (JSON,
two-space indent, files by offset with their first and last span).

Written for 10^5-entry zTOCs: the file list comes straight from the C parser's tuples (no
:class:`~soci_native.ztoc.FileMetadata` per entry), span ids from one checkpoint table and a
binary search, and the list is formatted by hand: ``json.dumps(indent=2)`` runs the pure
Python encoder, which was most of the command's time. The output is byte for byte what
``json.dumps(doc, indent=2)`` gives (tests/test_ztoc.py compares them).
"""

from __future__ import annotations

import bisect
import itertools
import json
import operator
from json.encoder import encode_basestring_ascii as _enc
from typing import Any

from soci_native import _core, tarzinfo
from soci_native.ztoc import ZtocError


def span_starts(checkpoints: bytes) -> list[int]:
    """Each span's first uncompressed offset in a gzip checkpoint blob (what
    ``span_range`` searches)."""
    return [int(out) for _in, out, _bits in _core.checkpoint_table(checkpoints)]


def span_size(checkpoints: bytes, algorithm: str) -> int:
    if algorithm == "gzip":
        return int.from_bytes(checkpoints[4:12], "little", signed=True)
    return tarzinfo.decode(checkpoints).span_size


_FILE = ('    {\n      "filename": %s,\n      "offset": %d,\n      "size": %d,\n'
         '      "type": %s,\n      "start_span": %d,\n      "end_span": %d\n    }')


def check_entries(names: list[str], offs: list[int], sizes: list[int]) -> list[int]:
    """What :func:`~soci_native.ztoc.sorted_files` checks, for columns of entries already
    by offset: each starts at or after the previous one's data padded to 512 (for offsets
    >= 0, roundup512(end) > next ⟺ end > next rounded down to 512). Returns the ends."""
    ends = list(map(operator.add, offs, sizes))
    floors = map(operator.and_, offs[1:], itertools.repeat(~511))
    bad = [i for i, x in enumerate(map(operator.gt, ends, floors)) if x]
    if bad:
        raise ZtocError(f"invalid TOC entry {names[bad[0] + 1]!r}: overlaps the previous entry")
    return ends


def _files_json(files: list[tuple[Any, ...]], starts: list[int], step: int
                ) -> tuple[list[str], int]:
    """Each file's JSON and the number spanning more than one span, for ``files`` by offset.
    Column-wise with ``map`` so the per-file work runs in C (a Python loop over 65k files was
    most of the time). ``step`` > 0: spans of a plain tar layer, every ``step`` bytes;
    else ``starts`` holds each span's first offset."""
    if not files:
        return [], 0
    names, types, offs, sizes = (list(map(operator.itemgetter(k), files)) for k in range(4))
    ends = check_entries(names, offs, sizes)
    if step:
        first = list(map(operator.floordiv, offs, itertools.repeat(step)))
        last = list(map(operator.floordiv, ends, itertools.repeat(step)))
    else:  # span i holds [starts[i], starts[i+1]): bisect_right(starts, off) - 1
        if not starts or starts[0] > offs[0]:
            raise ZtocError(f"no checkpoint at or before uncompressed offset {offs[0]}")
        first, last = ([i - 1 for i in map(bisect.bisect_right, itertools.repeat(starts), xs)]
                       for xs in (offs, ends))
    multi = sum(map(operator.ne, first, last))
    enc_types = {t: _enc(t) for t in set(types)}
    rows = zip(map(_enc, names), offs, sizes, map(enc_types.__getitem__, types), first, last,
               strict=True)
    return list(map(_FILE.__mod__, rows)), multi


def info_text(buf: bytes, size: int) -> str:
    """The JSON text (no trailing newline) of ``ztoc info`` for the zTOC bytes ``buf``,
    whose stored blob is ``size`` bytes. Raises ZtocError for a malformed zTOC."""
    try:
        r = _core.ztoc_parse(buf, True)
    except ValueError as e:
        raise ZtocError(str(e)) from None
    files = sorted(r["files"], key=operator.itemgetter(2))
    gz = r["algorithm"] == "gzip"
    step = 0 if gz else tarzinfo.decode(r["checkpoints"]).span_size
    parts, multi = _files_json(files, span_starts(r["checkpoints"]) if gz else [], step)
    head = json.dumps({"version": r["version"], "build_tool": r["build_tool"], "size": size,
                       "span_size": span_size(r["checkpoints"], r["algorithm"]),
                       "num_spans": r["max_span_id"] + 1, "num_files": len(files),
                       "num_multi_span_files": multi, "files": []}, indent=2)
    tail = '  "files": []\n}'
    assert head.endswith(tail)
    listed = "[\n" + ",\n".join(parts) + "\n  ]" if parts else "[]"
    return head[:-len(tail)] + '  "files": ' + listed + "\n}"


__all__ = ["info_text", "span_size", "span_starts"]
