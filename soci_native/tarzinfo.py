"""The `TarZinfo` FlatBuffer of uncompressed (plain tar) layers, soci-format 1.5.

Namespace `zinfo`, no file identifier; slot 0 `version: int32` (always 2), slot 1
`span_size: int64`, slot 2 `size: int64`. Spans are fixed `span_size` slices of the tar.
The C core writes it (csrc/ztoc_write.c); this module reads it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

TAR_ZINFO_VERSION = 2


@dataclass(frozen=True)
class TarZinfo:
    version: int
    span_size: int
    size: int

    @property
    def num_spans(self) -> int:
        return -(-self.size // self.span_size) if self.span_size > 0 else 0


def decode(buf: bytes) -> TarZinfo:
    """Parses a TarZinfo with bounds checks; raises ValueError on anything malformed."""
    try:
        (root,) = struct.unpack_from("<I", buf, 0)
        (vt_rel,) = struct.unpack_from("<i", buf, root)
        vt = root - vt_rel
        vt_len, _obj_len = struct.unpack_from("<HH", buf, vt)
        if vt_len < 4 or vt_len % 2 or vt + vt_len > len(buf):
            raise ValueError("bad vtable")

        def field(slot: int, fmt: str) -> int:
            if 4 + 2 * slot >= vt_len:
                return 0
            (off,) = struct.unpack_from("<H", buf, vt + 4 + 2 * slot)
            return struct.unpack_from(fmt, buf, root + off)[0] if off else 0

        z = TarZinfo(field(0, "<i"), field(1, "<q"), field(2, "<q"))
    except struct.error as e:
        raise ValueError(f"TarZinfo FlatBuffer truncated or malformed: {e}") from None
    if z.span_size <= 0 or z.size < 0:
        raise ValueError(f"TarZinfo has invalid span_size {z.span_size} or size {z.size}")
    return z
