"""How index results leave the C core: entries as a sequence made on access (checked against
tarfile), checkpoints and zTOC moved out once, one finish per Indexer."""

from __future__ import annotations

import io
import tarfile

import layers as L
import pytest

import soci_native as sn
from soci_native import _core
from soci_native.layer import Entries, span_range


def test_entries_are_a_lazy_sequence_equal_to_tarfile(catalog) -> None:  # type: ignore[no-untyped-def]
    layer = L.need(catalog, "stdlib-pax.gz6")
    ix = sn.index_layer(io.BytesIO(layer.blob), 1 << 20)
    assert isinstance(ix.entries, Entries)
    with tarfile.open(fileobj=io.BytesIO(layer.tar)) as tf:
        members = tf.getmembers()
    names = [m.name for m in members]
    assert len(ix.entries) == ix.num_entries == len(members)
    assert [e.name.rstrip("/") for e in ix.entries] == names  # tarfile strips dirs' "/"
    assert ix.entries[-1] == ix.entries[len(ix.entries) - 1]
    assert ix.entries[1:4] == [ix.entries[1], ix.entries[2], ix.entries[3]]
    assert ix.entries[::-1][0] == ix.entries[-1]
    with pytest.raises(IndexError):
        ix.entries[len(ix.entries)]
    # equal to a list of the same entries, to another index's, not to a different list
    as_list = list(ix.entries)
    assert ix.entries == as_list and as_list == list(ix.entries)
    again = sn.index_layer(io.BytesIO(layer.blob), 1 << 20)
    assert ix == again and ix.entries == again.entries
    assert ix.entries != as_list[:-1] and ix.entries != as_list[::-1]
    assert sn.index_layer(io.BytesIO(layer.blob), 1 << 20, entries=False).entries == []
    # entries outlive everything else of the index
    e0 = ix.entries[0]
    del ix, again
    assert e0.name == names[0] or e0.name.rstrip("/") == names[0]


def test_indexer_finishes_once(catalog) -> None:  # type: ignore[no-untyped-def]
    layer = L.need(catalog, "ustar.gz")
    ind = _core.Indexer(64 << 10)
    ind.feed(layer.blob)
    first = ind.finish("t")
    assert first["ztoc"] is not None and len(first["checkpoints"]) > 12
    with pytest.raises(ValueError, match="already finished"):
        ind.finish("t")


def test_span_range_refuses_a_wrapping_range(catalog) -> None:  # type: ignore[no-untyped-def]
    layer = L.need(catalog, "ustar.gz")
    ix = sn.index_layer(io.BytesIO(layer.blob), 64 << 10)
    with pytest.raises(ValueError, match="overflows"):
        _core.span_range(ix.checkpoints, 2**64 - 10, 100, len(layer.blob))
    assert span_range(ix.checkpoints, 0, 10, len(layer.blob))[0] == 0


def test_both_sha256_paths_give_hashlib_digests(catalog, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # the interleaved SHA-extension loop (when the CPU has it) and the OpenSSL fallback
    # (SOCI_NATIVE_SHA=openssl) against hashlib, on a multi-member layer with many spans
    import hashlib
    import json
    import os
    import subprocess
    import sys

    layer = L.need(catalog, "stdlib-pax.multi")
    path = tmp_path / "layer.gz"
    path.write_bytes(layer.blob)
    code = ("import json, sys, soci_native as sn\n"
            "ix = sn.index_layer(sys.argv[1], 32 << 10, entries=False)\n"
            "print(json.dumps([ix.blob_digest, ix.span_digests, list(ix.checkpoints[:16])]))")
    got = {}
    for mode in ("", "openssl"):
        env = dict(os.environ, SOCI_NATIVE_SHA=mode)
        out = subprocess.run([sys.executable, "-c", code, str(path)], env=env, check=True,
                             capture_output=True, text=True).stdout
        got[mode] = json.loads(out)
    assert got[""] == got["openssl"]
    blob_digest, spans, _ = got[""]
    assert blob_digest == "sha256:" + hashlib.sha256(layer.blob).hexdigest()
    ix = sn.index_layer(str(path), 32 << 10, entries=False)
    table = sn.layer.checkpoint_table(ix.checkpoints)
    assert len(spans) == len(table) > 10
    for i, (cin, _, bits) in enumerate(table):
        start = cin - (1 if bits else 0)
        end = table[i + 1][0] if i + 1 < len(table) else len(layer.blob)
        assert spans[i] == "sha256:" + hashlib.sha256(layer.blob[start:end]).hexdigest()


def test_streamed_feeding_holds_buffers_until_hashed(catalog) -> None:  # type: ignore[no-untyped-def]
    # index_layer over a file object turns over four buffers that the C hasher holds until it
    # is done with them: a reader that first scribbles over the whole buffer it is handed
    # would change a digest if the hasher were still reading that buffer
    import hashlib

    layer = L.need(catalog, "stdlib-pax.gz1")
    ref = sn.index_layer(io.BytesIO(layer.blob), 64 << 10, entries=False)
    assert ref.blob_digest == "sha256:" + hashlib.sha256(layer.blob).hexdigest()

    class Short(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self.f, self.n = io.BytesIO(data), 0

        def readable(self) -> bool:
            return True

        def readinto(self, b) -> int:  # type: ignore[no-untyped-def, override]
            self.n += 1
            b[:] = b"\xaa" * len(b)
            want = 1 + (self.n * 7919) % len(b)  # short reads of varying size
            data = self.f.read(want)
            b[:len(data)] = data
            return len(data)

    for chunk in (64, 4096, 1 << 20, 4 << 20):
        got = sn.index_layer(Short(layer.blob), 64 << 10, chunk_size=chunk, entries=False)
        assert (got.span_digests, got.blob_digest, got.checkpoints) == (
            ref.span_digests, ref.blob_digest, ref.checkpoints), chunk
