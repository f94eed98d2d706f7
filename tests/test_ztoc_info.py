"""`ztoc info`'s fast formatter (soci_native/ztoc_info.py) against the plain formulation:
json.dumps(indent=2) of the reference's keys, spans from span_range once per file."""

from __future__ import annotations

import dataclasses
import json
import re

import fb_oracle
import layers as L
import pytest
from test_ztoc import SUPPORTED, TOOL, built

from soci_native import tarzinfo, ztoc
from soci_native.layer import span_range
from soci_native.ztoc_info import info_text


def plain_info(raw: bytes, size: int) -> str:
    z = ztoc.from_bytes(raw)
    files, multi = [], 0
    for f in ztoc.sorted_files(z):
        start, end = (span_range(z.checkpoints, off, 0, z.compressed_archive_size)[0]
                      for off in (f.uncompressed_offset,
                                  f.uncompressed_offset + f.uncompressed_size))
        multi += start != end
        files.append({"filename": f.name, "offset": f.uncompressed_offset,
                      "size": f.uncompressed_size, "type": f.type, "start_span": start,
                      "end_span": end})
    span = (int.from_bytes(z.checkpoints[4:12], "little", signed=True)
            if z.compression_algorithm == "gzip" else tarzinfo.decode(z.checkpoints).span_size)
    return json.dumps({"version": z.version, "build_tool": z.build_tool_identifier,
                       "size": size, "span_size": span, "num_spans": z.num_spans,
                       "num_files": len(z.files), "num_multi_span_files": multi,
                       "files": files}, indent=2)


@pytest.mark.parametrize("name", SUPPORTED)
def test_info_is_the_plain_json(catalog, name):
    layer = L.need(catalog, name)
    for span in sorted({layer.spans[0], 4096, 1 << 16}):
        _, ix = built(catalog, name, span)
        assert ix.ztoc is not None
        got = info_text(ix.ztoc, len(ix.ztoc))
        assert got == plain_info(ix.ztoc, len(ix.ztoc))
        doc = json.loads(got)
        assert doc["num_files"] == len(ix.entries)


def overlapping_ztoc(catalog: L.Catalog) -> tuple[bytes, str]:
    """A zTOC of edge-pax.gz whose second large file starts inside the first one's data,
    and that file's name."""
    _, ix = built(catalog, "edge-pax.gz")
    regs = [i for i, e in enumerate(ix.entries) if e.type == "reg" and e.size > 600]
    a, b = regs[0], regs[1]
    entries = list(ix.entries)
    entries[b] = entries[b]._replace(offset=entries[a].offset + 512)
    return fb_oracle.ztoc_bytes(dataclasses.replace(ix, entries=entries), TOOL), entries[b].name


def test_info_refuses_overlapping_entries(catalog):
    """A crafted zTOC whose second file starts inside the first one's data fails as
    sorted_files does (the reference's TOC check), with the entry's name."""
    raw, name = overlapping_ztoc(catalog)
    with pytest.raises(ztoc.ZtocError, match="overlaps"):
        plain_info(raw, len(raw))
    with pytest.raises(ztoc.ZtocError, match=f"{re.escape(repr(name))}: overlaps"):
        info_text(raw, len(raw))


# names the C formatter must escape exactly as json does after a surrogateescape decode:
# control bytes, quotes, non-ASCII in and beyond the BMP, and bytes that are not UTF-8
# (overlong forms, encoded surrogates, past U+10FFFF, cut short, stray continuations)
ODD_NAMES = [b'a"b\\c', b"tab\there\nnl\r\x00\x01\x1f\x7f\b\f", "é/ß/中文/😀".encode(),
             b"\xc0\x80", b"\xc1\xbf", b"\xe0\x80\x80", b"\xed\xa0\x80x", b"\xf4\x90\x80\x80",
             b"\xf5\x80", b"cut\xe2\x82", b"cut\xf0\x9f\x98", b"\x80\xbfz", b"\xff\xfe",
             b"\xe2\x82\xac\xe2\x82", b"\xf0\x9f\x98\x80\xed\x9f\xbf\xee\x80\x80"]


def test_odd_names_escaped_as_json_does(catalog):
    import random

    _, ix = built(catalog, "edge-pax.gz")
    rng = random.Random(7)
    names = ODD_NAMES + [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 12)))
                         for _ in range(200)]
    entries = [e._replace(name=names[i % len(names)].decode("utf-8", "surrogateescape"))
               for i, e in enumerate(ix.entries)]
    assert len(entries) >= len(ODD_NAMES)
    raw = fb_oracle.ztoc_bytes(dataclasses.replace(ix, entries=entries), TOOL)
    assert info_text(raw, len(raw)) == plain_info(raw, len(raw))


def test_info_overlap_error_names_the_entry(catalog):
    _, ix = built(catalog, "edge-pax.gz")
    regs = [i for i, e in enumerate(ix.entries) if e.type == "reg" and e.size > 600]
    a, b = regs[0], regs[1]
    entries = list(ix.entries)
    entries[b] = entries[b]._replace(offset=entries[a].offset + 512)
    raw = fb_oracle.ztoc_bytes(dataclasses.replace(ix, entries=entries), TOOL)
    with pytest.raises(ztoc.ZtocError, match="overlaps") as fast:
        info_text(raw, len(raw))
    with pytest.raises(ztoc.ZtocError, match="overlaps") as plain:
        plain_info(raw, len(raw))
    assert str(fast.value) == str(plain.value)
