"""A read-only look at a local store (artifacts.db and its blobs) for the CLI's fast paths,
importing only sqlite3, hashlib and mmap: no Store, dataclasses, json or click.

It answers only where soci_native.store.Store would give the same answer, and raises
:class:`Unsure` everywhere else: a store Store would create, migrate or refuse, a row or a
SOCI index manifest it would reject or read otherwise. The caller then runs the full CLI,
which gives the canonical answer or error. Its checks are a stricter subset of Store's (a
test compares the two on the same stores).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3

from soci_native import quick_json

TYPE_CHECKING = False  # not typing's: see pathwalk.py
if TYPE_CHECKING:
    import mmap
    from typing import Any

SCHEMA_VERSION = 2  # store.SCHEMA_VERSION
ARTIFACT_TYPES = ("soci_index", "soci_layer", "soci_prefetch")
COLUMNS = ("digest", "size", "type", "media_type", "artifact_type", "original_digest",
           "image_digest", "image_ref", "platform", "span_size", "manifest_version", "created")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX_TYPES = ("application/vnd.amazon.soci.index.v1+json",
               "application/vnd.amazon.soci.index.v2+json")
BUSY_TIMEOUT_MS = 60_000  # store.BUSY_TIMEOUT_MS: wait for a writer as Store does
_HEX = frozenset("0123456789abcdef")


class Unsure(Exception):
    """The store might answer otherwise than this module would: ask it (the full CLI)."""


def is_digest(v: object) -> bool:
    """``sha256:`` and 64 lowercase hex digits (store._check_digest's rule)."""
    return (isinstance(v, str) and len(v) == 71 and v.startswith("sha256:")
            and _HEX.issuperset(v[7:]))


def canonical_time(v: object) -> bool:
    """The RFC 3339 form Store writes (2024-01-31T12:00:00.000000Z), a real instant."""
    if not (isinstance(v, str) and len(v) == 27 and v.endswith("Z") and v[10] == "T"):
        return False
    from datetime import datetime  # loaded with sqlite3 already

    digits = v[:4] + v[5:7] + v[8:10] + v[11:13] + v[14:16] + v[17:19] + v[20:26]
    if not digits.isascii() or not digits.isdigit() or v[4] + v[7] + v[13] + v[16] + v[19] \
            != "--::.":
        return False
    try:
        datetime.fromisoformat(v[:-1])
    except ValueError:
        return False
    return True


class Record:
    """One artifacts.db row (in COLUMNS order) that ArtifactRecord would accept unchanged."""

    __slots__ = ("digest", "size", "type", "original_digest", "image_ref")

    def __init__(self, row: tuple[Any, ...]) -> None:
        (digest, size, kind, _media_type, _artifact_type, original, image_digest, image_ref,
         _platform, span, version, created) = row
        if not (is_digest(digest) and kind in ARTIFACT_TYPES and type(size) is int
                and size >= 0 and (span is None or (type(span) is int and span > 0))
                and version in (None, "v1", "v2")
                and all(v is None or is_digest(v) for v in (original, image_digest))
                and canonical_time(created)):
            raise Unsure(f"row {digest!r}")
        self.digest: str = digest
        self.size: int = size
        self.type: str = kind
        self.original_digest: str | None = original
        self.image_ref: object = image_ref  # any SQLite value: the caller checks it


class Catalog:
    """An existing store at ``root`` that Store would open as it is (no directory, layout
    file or schema to create, WAL already on). Reads only."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.blobs = os.path.join(root, "content", "blobs", "sha256")
        db = os.path.join(root, "artifacts.db")
        for p in (os.path.join(root, "lock"), os.path.join(root, "content", "oci-layout"),
                  os.path.join(root, "content", "index.json"), db):
            if not os.path.exists(p):
                raise Unsure(p)
        if not os.path.isdir(self.blobs):
            raise Unsure(self.blobs)
        self.conn = self._open(db)

    def _open(self, db: str) -> sqlite3.Connection:
        import fcntl

        # Store opens the database under the store lock, and read-write
        try:
            os.close(os.open(db, os.O_RDWR | os.O_CLOEXEC))
            fd = os.open(os.path.join(self.root, "lock"), os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            raise Unsure(db) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            conn = sqlite3.connect(db, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                   check_same_thread=False)
            try:
                conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if str(mode).lower() != "wal" or version != SCHEMA_VERSION:
                    raise Unsure(f"{db}: journal mode {mode}, schema {version}")
            except BaseException:
                conn.close()
                raise
        except sqlite3.Error:
            raise Unsure(db) from None
        finally:
            os.close(fd)
        return conn

    def close(self) -> None:
        self.conn.close()

    def _rows(self, where: str, params: tuple[str, ...]) -> list[Record]:
        try:
            rows = self.conn.execute(f"SELECT {', '.join(COLUMNS)} FROM artifacts WHERE {where}"
                                     " ORDER BY created, digest", params).fetchall()
        except sqlite3.Error:
            raise Unsure("query") from None
        return [Record(r) for r in rows]

    def get(self, digest: str) -> Record | None:
        if not is_digest(digest):
            raise Unsure(digest)
        rows = self._rows("digest = ?", (digest,))
        return rows[0] if rows else None

    def of_type(self, kind: str) -> list[Record]:
        """Rows of one type, as Store.list_artifacts(type=kind) orders them."""
        return self._rows("type = ?", (kind,))

    def _verified(self, digest: str, data: bytes | mmap.mmap) -> None:
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise Unsure(f"blob {digest} is corrupt")

    def read(self, digest: str) -> bytes:
        """Store.read_blob(digest): the blob's bytes, verified."""
        try:
            with open(os.path.join(self.blobs, digest[7:]), "rb") as f:
                data = f.read()
        except OSError:
            raise Unsure(digest) from None
        self._verified(digest, data)
        return data

    def map(self, digest: str) -> bytes | mmap.mmap:
        """Store.map_blob(digest): the blob mapped, verified. (Hashing on a thread while the
        caller went on made get-file slower on a busy machine, not faster.)"""
        import mmap

        try:
            with open(os.path.join(self.blobs, digest[7:]), "rb") as f:
                data: bytes | mmap.mmap = b""
                if os.fstat(f.fileno()).st_size:
                    data = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        except OSError:
            raise Unsure(digest) from None
        self._verified(digest, data)
        return data

    def index_layers(self, digest: str) -> list[str]:
        """The layer digests of SOCI index manifest ``digest`` if store.parse_soci_index
        would accept it (and more strictly: no subject that is not a descriptor, etc.)."""
        try:
            doc = quick_json.loads(self.read(digest))
        except (UnicodeDecodeError, ValueError):
            raise Unsure(digest) from None
        if not isinstance(doc, dict) or doc.get("mediaType", OCI_MANIFEST) != OCI_MANIFEST:
            raise Unsure(digest)
        config, subject = doc.get("config"), doc.get("subject")
        layers, ann = doc.get("layers", []), doc.get("annotations") or {}
        if not (isinstance(config, dict) and config.get("mediaType") in INDEX_TYPES
                and is_digest(config.get("digest"))
                and (isinstance(subject, dict) and is_digest(subject.get("digest"))
                     or subject is None and config["mediaType"] == INDEX_TYPES[1])
                and isinstance(layers, list) and all(_descriptor(d) for d in layers)
                and isinstance(ann, dict)):
            raise Unsure(digest)
        return [d["digest"] for d in layers]

    def ztocs_of_index(self, digest: str) -> list[Record]:
        """Store.ztocs_for_index(digest): the rows of the artifacts it lists, in its order."""
        out = []
        for d in self.index_layers(digest):
            rec = self.get(d)
            if rec is not None:
                out.append(rec)
        return out


def _descriptor(d: object) -> bool:
    """A layer descriptor as store.parse_soci_index checks them."""
    if not isinstance(d, dict):
        return False
    size = d.get("size")
    return (is_digest(d.get("digest")) and type(size) is int and size >= 0
            and isinstance(d.get("mediaType"), str) and isinstance(d.get("annotations", {}), dict))
