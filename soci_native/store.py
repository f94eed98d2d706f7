"""The local artifact store: an OCI image layout for blobs plus an SQLite catalog.

Layout of a store root (``default_root()`` or ``--root``)::

    <root>/lock            flock(2) target serialising index.json updates, GC and schema setup
    <root>/artifacts.db    SQLite (WAL): one row per SOCI artifact (index, zTOC, prefetch)
    <root>/content/        an OCI image layout (oci-layout, index.json, blobs/sha256/<hex>)

Blobs are written to a temporary file next to their final name, fsync'd and renamed, so a
blob name always holds the complete, verified content. ``content/index.json`` lists the SOCI
index manifests held in the store (so skopeo/umoci can read ``content/``); it is rewritten
atomically under the lock. ``artifacts.db`` is derived data: :meth:`Store.rebuild_db` recreates
it from the blobs and ``index.json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, cast

from soci_native.rootopt import data_root, env_root

if TYPE_CHECKING:
    import mmap

__all__ = [
    "ARTIFACT_TYPES",
    "EMPTY_JSON_DIGEST",
    "INDEX_ARTIFACT_TYPE_V1",
    "INDEX_ARTIFACT_TYPE_V2",
    "MEDIA_TYPE_OCI_MANIFEST",
    "MEDIA_TYPE_PREFETCH",
    "MEDIA_TYPE_ZTOC",
    "SCHEMA_VERSION",
    "ArtifactKind",
    "ArtifactRecord",
    "BlobNotFoundError",
    "CorruptDatabaseError",
    "ManifestVersion",
    "SociIndexInfo",
    "Store",
    "StoreError",
    "default_root",
    "parse_soci_index",
    "utc_now",
]

# --- constants (soci-format.md §3.1) --------------------------------------------------------

MEDIA_TYPE_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX_ARTIFACT_TYPE_V1 = "application/vnd.amazon.soci.index.v1+json"
INDEX_ARTIFACT_TYPE_V2 = "application/vnd.amazon.soci.index.v2+json"
MEDIA_TYPE_ZTOC = "application/octet-stream"
MEDIA_TYPE_PREFETCH = "application/vnd.amazon.soci.prefetch.v1+json"
EMPTY_JSON = b"{}"
EMPTY_JSON_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"

ANN_LAYER_DIGEST = "com.amazon.soci.image-layer-digest"
ANN_SPAN_SIZE = "com.amazon.soci.span-size"
ANN_IMAGE_MANIFEST_DIGEST = "com.amazon.soci.image-manifest-digest"
ANN_CREATED = "org.opencontainers.image.created"
ANN_REF_NAME = "org.opencontainers.image.ref.name"
# Our own descriptor annotations in content/index.json, so rebuild_db can restore them.
ANN_IMAGE_REF = "dev.soci-native.image-ref"
ANN_IMAGE_DIGEST = "dev.soci-native.image-digest"

ArtifactKind = Literal["soci_index", "soci_layer", "soci_prefetch"]
ManifestVersion = Literal["v1", "v2"]
ARTIFACT_TYPES: tuple[ArtifactKind, ...] = ("soci_index", "soci_layer", "soci_prefetch")

SCHEMA_VERSION = 2
# Blobs at least this large are never SOCI index manifests (rebuild_db skips them unread).
MAX_MANIFEST_SIZE = 4 << 20
TEMP_PREFIX = ".tmp-"
BUSY_TIMEOUT_MS = 60_000
_CHUNK = 1 << 20

_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
_HEX_RE = re.compile(r"[0-9a-f]{64}")


class StoreError(Exception):
    """A store operation failed; the message says what and what to do about it."""


class CorruptDatabaseError(StoreError):
    """artifacts.db cannot be used; :meth:`Store.move_db_aside` then a rebuild recovers."""


class BlobNotFoundError(StoreError):
    """The requested blob is not in the content store."""


# --- helpers -------------------------------------------------------------------------------


def default_root() -> Path:
    """$SOCI_NATIVE_ROOT, else $XDG_DATA_HOME/soci-native, else ~/.local/share/soci-native."""
    env = env_root()
    if env:
        return Path(env).expanduser()
    return Path(data_root()).expanduser()  # no home to be found: RuntimeError, as Path.home()


def utc_now() -> str:
    """The current time as RFC 3339 UTC with microseconds (fixed width, sorts as text)."""
    return _format_time(datetime.now(timezone.utc))


def _format_time(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _normalize_time(value: str) -> str:
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    # Python 3.10's fromisoformat takes at most 6 fractional digits; RFC 3339 allows more.
    m = re.fullmatch(r"(.*T\d\d:\d\d:\d\d)(\.\d+)?([+-]\d\d:\d\d)", text)
    if m is None:
        raise StoreError(
            f"invalid RFC 3339 timestamp {value!r} (expected e.g. 2024-01-31T12:00:00Z)"
        )
    frac = (m.group(2) or "")[:7]
    try:
        t = datetime.fromisoformat(m.group(1) + frac + m.group(3))
    except ValueError as e:
        raise StoreError(f"invalid RFC 3339 timestamp {value!r}: {e}") from None
    return _format_time(t)


def _check_digest(digest: object, what: str = "digest") -> str:
    if not isinstance(digest, str) or _DIGEST_RE.fullmatch(digest) is None:
        raise StoreError(
            f"invalid {what} {digest!r}: expected 'sha256:' followed by 64 lowercase hex digits"
        )
    return digest


def _sha256_digest(data: bytes | mmap.mmap) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# The store holds private image content (zTOCs list every file, the span cache holds
# decompressed bytes): what it creates is for its owner only, whatever the umask.
DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dirs(path: Path, top: Path | None = None) -> None:
    """``mkdir -p path`` with every directory it creates 0700 (from ``top`` down, if given;
    existing directories are left as they are)."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        if p == top or p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir(mode=DIR_MODE)
            os.chmod(d, DIR_MODE)  # mkdir's mode is filtered by the umask


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot fsync directories; the rename is still atomic
    finally:
        os.close(fd)


def _switch_to_wal(conn: sqlite3.Connection) -> object:
    """``PRAGMA journal_mode = WAL``, retried while the database is locked. On a store just
    created by another process (still in rollback-journal mode) the switch needs an exclusive
    lock, and while a third holds a write transaction SQLite answers SQLITE_BUSY at once
    instead of waiting (its deadlock rule skips the busy handler), so the wait is ours."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    delay = 0.005
    while True:
        try:
            return conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def _temp_name(prefix: str = TEMP_PREFIX) -> str:
    return f"{prefix}{os.getpid()}-{os.urandom(8).hex()}"


def _write_file_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a fsync'd temp file in the same directory + rename."""
    tmp = path.parent / _temp_name()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _platform_to_oci(platform: str) -> dict[str, str]:
    parts = platform.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise StoreError(f"invalid platform {platform!r}: expected os/arch[/variant]")
    out = {"architecture": parts[1], "os": parts[0]}
    if len(parts) == 3:
        out["variant"] = parts[2]
    return out


def _platform_from_oci(value: object) -> str | None:
    if not isinstance(value, dict):
        return None
    os_, arch = value.get("os"), value.get("architecture")
    if not isinstance(os_, str) or not isinstance(arch, str) or not os_ or not arch:
        return None
    variant = value.get("variant")
    return f"{os_}/{arch}/{variant}" if isinstance(variant, str) and variant else f"{os_}/{arch}"


# --- records -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArtifactRecord:
    """One row of artifacts.db.

    ``original_digest`` is the image manifest digest for an index and the layer digest for a
    zTOC or prefetch artifact; ``image_digest`` is what the image reference resolved to (a
    manifest or an image index). ``created`` is RFC 3339 UTC, normalised on construction.
    """

    digest: str
    size: int
    type: ArtifactKind
    media_type: str
    artifact_type: str | None = None
    original_digest: str | None = None
    image_digest: str | None = None
    image_ref: str | None = None
    platform: str | None = None
    span_size: int | None = None
    manifest_version: ManifestVersion | None = None
    created: str = field(default_factory=utc_now)

    def __post_init__(self) -> None:
        _check_digest(self.digest)
        if self.type not in ARTIFACT_TYPES:
            raise StoreError(
                f"invalid artifact type {self.type!r}: expected one of {ARTIFACT_TYPES}"
            )
        if not isinstance(self.size, int) or self.size < 0:
            raise StoreError(f"invalid size {self.size!r} for {self.digest}")
        span = self.span_size
        if span is not None and (not isinstance(span, int) or span <= 0):
            raise StoreError(f"invalid span size {self.span_size!r} for {self.digest}")
        if self.manifest_version not in (None, "v1", "v2"):
            raise StoreError(f"invalid manifest version {self.manifest_version!r}")
        for name in ("original_digest", "image_digest"):
            value = getattr(self, name)
            if value is not None:
                _check_digest(value, name.replace("_", " "))
        object.__setattr__(self, "created", _normalize_time(self.created))


_COLUMNS = tuple(f.name for f in dataclasses.fields(ArtifactRecord))


def _row_to_record(row: sqlite3.Row | tuple[Any, ...]) -> ArtifactRecord:
    return ArtifactRecord(**dict(zip(_COLUMNS, tuple(row), strict=True)))


# --- SOCI index manifests ------------------------------------------------------------------


@dataclass(frozen=True)
class SociIndexInfo:
    """The parts of a SOCI index manifest the store needs."""

    version: ManifestVersion
    media_type: str
    artifact_type: str
    config_digest: str
    subject_digest: str | None
    layers: tuple[dict[str, Any], ...]
    annotations: dict[str, str]

    def layer_digests(self) -> list[str]:
        return [str(d["digest"]) for d in self.layers]


def parse_soci_index(data: bytes) -> SociIndexInfo:
    """Parse a SOCI index manifest (v1 or v2); StoreError if it is not one."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StoreError(f"not a SOCI index manifest: invalid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise StoreError("not a SOCI index manifest: JSON is not an object")
    media_type = doc.get("mediaType", MEDIA_TYPE_OCI_MANIFEST)
    if media_type != MEDIA_TYPE_OCI_MANIFEST:
        raise StoreError(f"not a SOCI index manifest: mediaType is {media_type!r}")
    config = doc.get("config")
    if not isinstance(config, dict):
        raise StoreError("not a SOCI index manifest: no config descriptor")
    artifact_type = config.get("mediaType")
    if artifact_type == INDEX_ARTIFACT_TYPE_V1:
        version: ManifestVersion = "v1"
    elif artifact_type == INDEX_ARTIFACT_TYPE_V2:
        version = "v2"
    else:
        raise StoreError(f"not a SOCI index manifest: config mediaType is {artifact_type!r}")
    config_digest = _check_digest(config.get("digest"), "config digest")
    subject = doc.get("subject")
    subject_digest: str | None = None
    if subject is not None:
        if not isinstance(subject, dict):
            raise StoreError("invalid SOCI index manifest: subject is not a descriptor")
        subject_digest = _check_digest(subject.get("digest"), "subject digest")
    if version == "v1" and subject_digest is None:
        raise StoreError("invalid SOCI index manifest: a v1 index must have a subject")
    layers = doc.get("layers", [])
    if not isinstance(layers, list):
        raise StoreError("invalid SOCI index manifest: layers is not a list")
    for d in layers:
        if not isinstance(d, dict):
            raise StoreError("invalid SOCI index manifest: a layer is not a descriptor")
        _check_digest(d.get("digest"), "layer descriptor digest")
        size = d.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise StoreError(f"invalid SOCI index manifest: bad size for {d.get('digest')}")
        if not isinstance(d.get("mediaType"), str):
            raise StoreError(f"invalid SOCI index manifest: no mediaType for {d.get('digest')}")
        ann = d.get("annotations", {})
        if not isinstance(ann, dict):
            raise StoreError(f"invalid SOCI index manifest: bad annotations on {d.get('digest')}")
    annotations = doc.get("annotations") or {}
    if not isinstance(annotations, dict):
        raise StoreError("invalid SOCI index manifest: annotations is not an object")
    return SociIndexInfo(
        version=version,
        media_type=str(media_type),
        artifact_type=str(artifact_type),
        config_digest=config_digest,
        subject_digest=subject_digest,
        layers=tuple(layers),
        annotations={str(k): str(v) for k, v in annotations.items()},
    )


def _index_record(
    digest: str,
    size: int,
    info: SociIndexInfo,
    original_digest: str | None,
    image_digest: str | None,
    image_ref: str | None,
    platform: str | None,
    created: str,
) -> ArtifactRecord:
    return ArtifactRecord(
        digest=digest,
        size=size,
        type="soci_index",
        media_type=info.media_type,
        artifact_type=info.artifact_type,
        original_digest=original_digest,
        image_digest=image_digest,
        image_ref=image_ref,
        platform=platform,
        manifest_version=info.version,
        created=created,
    )


def _layer_record(
    desc: Mapping[str, Any],
    *,
    image_ref: str | None,
    image_digest: str | None,
    platform: str | None,
    created: str,
) -> ArtifactRecord:
    ann = desc.get("annotations") or {}
    media_type = str(desc["mediaType"])
    kind: ArtifactKind = "soci_prefetch" if media_type == MEDIA_TYPE_PREFETCH else "soci_layer"
    layer_digest = ann.get(ANN_LAYER_DIGEST)
    if layer_digest is not None and _DIGEST_RE.fullmatch(str(layer_digest)) is None:
        layer_digest = None
    span_size: int | None = None
    raw_span = ann.get(ANN_SPAN_SIZE)
    if kind == "soci_layer" and isinstance(raw_span, str) and raw_span.isdigit():
        span_size = int(raw_span) or None
    return ArtifactRecord(
        digest=str(desc["digest"]),
        size=int(desc["size"]),
        type=kind,
        media_type=media_type,
        original_digest=layer_digest,
        image_digest=image_digest,
        image_ref=image_ref,
        platform=platform,
        span_size=span_size,
        created=created,
    )


# --- schema --------------------------------------------------------------------------------

# _MIGRATIONS[v] takes a database at user_version v to v + 1.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    0: (
        """CREATE TABLE IF NOT EXISTS artifacts (
            digest TEXT PRIMARY KEY NOT NULL,
            size INTEGER NOT NULL,
            type TEXT NOT NULL CHECK (type IN ('soci_index', 'soci_layer', 'soci_prefetch')),
            media_type TEXT NOT NULL,
            artifact_type TEXT,
            original_digest TEXT,
            image_digest TEXT,
            image_ref TEXT,
            platform TEXT,
            span_size INTEGER,
            manifest_version TEXT CHECK (manifest_version IN ('v1', 'v2')),
            created TEXT NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS artifacts_by_original"
        " ON artifacts (type, original_digest, span_size)",
        "CREATE INDEX IF NOT EXISTS artifacts_by_created ON artifacts (created, digest)",
    ),
    # every image reference an artifact was built or pulled for (artifacts.image_ref is the
    # latest one): an index built for several references is found by each
    1: (
        """CREATE TABLE IF NOT EXISTS artifact_refs (
            digest TEXT NOT NULL,
            image_ref TEXT NOT NULL,
            PRIMARY KEY (digest, image_ref)
        )""",
        "INSERT OR IGNORE INTO artifact_refs (digest, image_ref)"
        " SELECT digest, image_ref FROM artifacts WHERE image_ref IS NOT NULL",
    ),
}
assert sorted(_MIGRATIONS) == list(range(SCHEMA_VERSION))


# --- the store -----------------------------------------------------------------------------


class Store:
    """A local SOCI artifact store rooted at ``root`` (see the module docstring).

    One instance may be shared by threads; separate processes coordinate through flock(2)
    on ``<root>/lock`` and SQLite's own locking (with a busy timeout, so writers wait).
    """

    def __init__(self, root: Path | str | None = None, *, create: bool = True) -> None:
        self.root = Path(root) if root is not None else default_root()
        self.content_dir = self.root / "content"
        self.blobs_dir = self.content_dir / "blobs" / "sha256"
        self.index_json_path = self.content_dir / "index.json"
        self.db_path = self.root / "artifacts.db"
        self.lock_path = self.root / "lock"
        self._tlock = threading.RLock()
        self._lock_depth = 0
        self._lock_fd: int | None = None
        self._conn: sqlite3.Connection | None = None
        if not create and not self.db_path.exists():
            raise StoreError(
                f"no soci-native store at {self.root} (no artifacts.db); create an index first "
                "or pass the right --root / $SOCI_NATIVE_ROOT"
            )
        try:
            private_dirs(self.blobs_dir, self.root)
        except OSError as e:
            raise StoreError(f"cannot create store directory {self.root}: {e}") from None
        with self.lock():
            self._init_layout()
            self._conn = self._open_db()

    @classmethod
    def move_db_aside(cls, root: Path | str) -> Path:
        """Renames an unusable artifacts.db (and its WAL files) to artifacts.db.corrupt-<time>
        under the store lock, so a new Store starts an empty catalog that rebuild_db fills
        from the blobs. Returns the new name."""
        db = Path(root) / "artifacts.db"
        aside = db.with_name(f"artifacts.db.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-"
                             f"{os.urandom(3).hex()}")
        fd = os.open(Path(root) / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            for suffix in ("", "-wal", "-shm"):
                src = Path(f"{db}{suffix}")
                if src.exists():
                    os.replace(src, f"{aside}{suffix}")
        except OSError as e:
            raise StoreError(f"cannot move {db} aside: {e}") from None
        finally:
            os.close(fd)
        return aside

    # -- lifecycle

    def close(self) -> None:
        with self._tlock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the store-wide exclusive lock (reentrant within this instance).

        Taken for index.json updates, add_index, garbage collection and rebuild_db. Hold it
        only briefly: while it is held, other threads using this instance wait too. (A
        remove_index running between a find_ztoc() and the add_index() that reuses the zTOC
        makes add_index fail with a "rerun" message rather than store a dangling index.)
        """
        with self._tlock:
            if self._lock_depth == 0:
                try:
                    fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
                except OSError as e:
                    raise StoreError(f"cannot open lock file {self.lock_path}: {e}") from None
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                except BaseException:
                    os.close(fd)
                    raise
                self._lock_fd = fd
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
                if self._lock_depth == 0 and self._lock_fd is not None:
                    fd, self._lock_fd = self._lock_fd, None
                    fcntl.flock(fd, fcntl.LOCK_UN)
                    os.close(fd)

    def _init_layout(self) -> None:
        layout = self.content_dir / "oci-layout"
        if not layout.exists():
            _write_file_atomic(layout, b'{"imageLayoutVersion":"1.0.0"}')
        if not self.index_json_path.exists():
            self._write_index_json({"schemaVersion": 2, "manifests": []})

    # -- database

    def _open_db(self) -> sqlite3.Connection:
        try:
            # created here first so that it is private (SQLite would follow the umask); the
            # -wal and -shm files SQLite makes take this file's mode
            os.close(os.open(self.db_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE))
        except OSError as e:
            raise StoreError(f"cannot open {self.db_path}: {e}") from None
        try:
            conn = sqlite3.connect(
                self.db_path,
                timeout=BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as e:
            raise StoreError(f"cannot open {self.db_path}: {e}") from None
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = _switch_to_wal(conn)
            if str(mode).lower() != "wal":
                raise StoreError(
                    f"{self.db_path}: SQLite could not switch to WAL mode (got {mode!r}); "
                    "put the store on a local filesystem"
                )
            conn.execute("PRAGMA synchronous = NORMAL")
            self._migrate(conn)
        except sqlite3.DatabaseError as e:
            conn.close()
            raise CorruptDatabaseError(
                f"{self.db_path} is unusable ({e}); run `soci-native rebuild-db`, which moves "
                "it aside and recreates it from the content store"
            ) from None
        except BaseException:
            conn.close()
            raise
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.db_path} has schema version {version}, newer than this soci-native "
                f"supports ({SCHEMA_VERSION}); upgrade soci-native, or move the file aside and "
                "run `soci-native rebuild-db`"
            )
        if version == SCHEMA_VERSION:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            while version < SCHEMA_VERSION:
                for stmt in _MIGRATIONS[version]:
                    conn.execute(stmt)
                version += 1
                conn.execute(f"PRAGMA user_version = {version}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"store {self.root} is closed")
        return self._conn

    @contextlib.contextmanager
    def _write_txn(self) -> Iterator[sqlite3.Connection]:
        with self._tlock:
            conn = self._db
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as e:
                raise StoreError(
                    f"{self.db_path} is locked by another process ({e}); retry when it finishes"
                ) from None
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with self._tlock:
            return cast(list[tuple[Any, ...]], self._db.execute(sql, tuple(params)).fetchall())

    _UPSERT = (
        f"INSERT INTO artifacts ({', '.join(_COLUMNS)}) "
        f"VALUES ({', '.join('?' for _ in _COLUMNS)}) "
        "ON CONFLICT (digest) DO UPDATE SET "
        + ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS if c != "digest")
    )
    _INSERT_MISSING = (
        f"INSERT OR IGNORE INTO artifacts ({', '.join(_COLUMNS)}) "
        f"VALUES ({', '.join('?' for _ in _COLUMNS)})"
    )

    @staticmethod
    def _values(rec: ArtifactRecord) -> tuple[Any, ...]:
        return tuple(getattr(rec, c) for c in _COLUMNS)

    def add_artifact(self, rec: ArtifactRecord) -> None:
        """Insert or replace the row for ``rec.digest``."""
        with self._write_txn() as conn:
            conn.execute(self._UPSERT, self._values(rec))

    def add_artifacts(self, recs: Iterable[ArtifactRecord]) -> None:
        """add_artifact for many records in one transaction."""
        with self._write_txn() as conn:
            conn.executemany(self._UPSERT, [self._values(r) for r in recs])

    def get_artifact(self, digest: str) -> ArtifactRecord | None:
        _check_digest(digest)
        rows = self._query(
            f"SELECT {', '.join(_COLUMNS)} FROM artifacts WHERE digest = ?", [digest]
        )
        return _row_to_record(rows[0]) if rows else None

    def list_artifacts(
        self,
        type: ArtifactKind | None = None,
        image_ref: str | None = None,
        platform: str | None = None,
        original_digest: str | None = None,
    ) -> list[ArtifactRecord]:
        """Rows matching every given filter, ordered by created then digest."""
        where: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("type", type),
            ("platform", platform),
            ("original_digest", original_digest),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if image_ref is not None:  # any reference it was stored for, not only the latest
            from soci_native.imageref import normalize

            forms = sorted({image_ref, normalize(image_ref)})  # rows older than normalizing
            marks = ", ".join("?" for _ in forms)
            where.append(f"(image_ref IN ({marks}) OR digest IN "
                         f"(SELECT digest FROM artifact_refs WHERE image_ref IN ({marks})))")
            params += forms + forms
        sql = f"SELECT {', '.join(_COLUMNS)} FROM artifacts"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created, digest"
        return [_row_to_record(r) for r in self._query(sql, params)]

    def remove_artifact(self, digest: str) -> bool:
        """Delete the row for ``digest`` (not its blob); True if there was one."""
        _check_digest(digest)
        with self._write_txn() as conn:
            conn.execute("DELETE FROM artifact_refs WHERE digest = ?", (digest,))
            return conn.execute("DELETE FROM artifacts WHERE digest = ?", (digest,)).rowcount > 0

    def image_refs(self, digest: str) -> list[str]:
        """Every image reference ``digest`` was stored for, latest first."""
        _check_digest(digest)
        rec = self.get_artifact(digest)
        refs = [rec.image_ref] if rec is not None and rec.image_ref else []
        rows = self._query("SELECT image_ref FROM artifact_refs WHERE digest = ? "
                           "ORDER BY image_ref", [digest])
        return refs + [str(r[0]) for r in rows if r[0] not in refs]

    def find_ztoc(self, layer_digest: str, span_size: int) -> ArtifactRecord | None:
        """A stored zTOC for this layer and span size whose blob is present (newest first)."""
        _check_digest(layer_digest, "layer digest")
        rows = self._query(
            f"SELECT {', '.join(_COLUMNS)} FROM artifacts WHERE type = 'soci_layer' "
            "AND original_digest = ? AND span_size = ? ORDER BY created DESC, digest",
            [layer_digest, span_size],
        )
        for row in rows:
            rec = _row_to_record(row)
            if self.has_blob(rec.digest):
                return rec
        return None

    def integrity_check(self) -> list[str]:
        """SQLite's integrity_check result (["ok"] when healthy)."""
        return [str(r[0]) for r in self._query("PRAGMA integrity_check")]

    # -- blobs

    def blob_path(self, digest: str) -> Path:
        """Where the blob ``digest`` lives (validated; need not exist)."""
        _check_digest(digest)
        return self.blobs_dir / digest[len("sha256:") :]

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def put_blob(self, data: bytes) -> tuple[str, int]:
        """Store ``data``; returns (digest, size). Idempotent (rewriting repairs a damaged copy)."""
        return self.put_blob_stream([data])

    def put_blob_stream(
        self, chunks: Iterable[bytes], expected_digest: str | None = None
    ) -> tuple[str, int]:
        """Store the concatenation of ``chunks``; returns (digest, size).

        The bytes go to a temporary file in blobs/sha256/, are fsync'd and renamed to their
        digest, so a digest name never holds partial content. If ``expected_digest`` is given
        and the content differs, StoreError is raised and nothing is left behind.
        """
        if expected_digest is not None:
            _check_digest(expected_digest, "expected digest")
        tmp = self.blobs_dir / _temp_name()
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        except OSError as e:
            raise StoreError(f"cannot write to {self.blobs_dir}: {e}") from None
        try:
            h = hashlib.sha256()
            size = 0
            with os.fdopen(fd, "wb") as f:
                # Errors raised by the chunk source propagate unchanged; our own I/O errors
                # become StoreError.
                for chunk in chunks:
                    h.update(chunk)
                    size += len(chunk)
                    try:
                        f.write(chunk)
                    except OSError as e:
                        raise self._write_error(e) from None
                try:
                    f.flush()
                    os.fsync(f.fileno())
                except OSError as e:
                    raise self._write_error(e) from None
            digest = "sha256:" + h.hexdigest()
            if expected_digest is not None and digest != expected_digest:
                raise StoreError(
                    f"content does not match its digest: expected {expected_digest}, got {digest} "
                    f"({size} bytes); the source is corrupt or truncated — fetch it again"
                )
            # Replacing an existing blob is harmless (same content) and repairs a damaged one.
            try:
                os.replace(tmp, self.blob_path(digest))
            except OSError as e:
                raise self._write_error(e) from None
            _fsync_dir(self.blobs_dir)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return digest, size

    def _write_error(self, e: OSError) -> StoreError:
        return StoreError(
            f"cannot store blob in {self.blobs_dir}: {e.strerror or e}; check free space and "
            "permissions"
        )

    def open_blob(self, digest: str) -> BinaryIO:
        """Open a blob for reading (not verified; see verify_blob)."""
        path = self.blob_path(digest)
        try:
            return open(path, "rb")
        except FileNotFoundError:
            raise BlobNotFoundError(
                f"blob {digest} is not in the store ({self.blobs_dir})"
            ) from None

    def map_blob(self, digest: str) -> bytes | mmap.mmap:
        """The blob's bytes, verified like :meth:`read_blob`'s, but mapped, not read: a 16 MB
        zTOC costs no heap copy (read() paid ~20 ms of page faults and copying for it). The
        store never rewrites a blob in place (a new one is written aside, then renamed), so
        the mapping keeps the verified bytes. An empty blob is b""."""
        data = self._map(digest)
        actual = _sha256_digest(data)
        if actual != digest:
            raise StoreError(self._corrupt_message(digest, actual))
        return data

    def _map(self, digest: str) -> bytes | mmap.mmap:
        """The blob's file mapped read-only (unverified); b"" when it is empty (mmap refuses
        a length of 0)."""
        import mmap

        with self.open_blob(digest) as f:
            if os.fstat(f.fileno()).st_size == 0:
                return b""
            return mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)

    def map_verifying(self, digest: str) -> tuple[bytes | mmap.mmap, Callable[[], None]]:
        """The blob mapped as :meth:`map_blob` maps it, and a call that returns once its
        sha256 matched (else raises the StoreError :meth:`map_blob` would). The hash runs on
        a thread meanwhile (hashlib lets go of the GIL): a mount builds the tree from a 26 MB
        zTOC, with the GIL released too, while it is hashed. Until the call returns the bytes
        are to be read only as the C core reads hostile input."""
        import threading

        data = self._map(digest)
        got: list[str] = []
        hasher = threading.Thread(target=lambda: got.append(_sha256_digest(data)),
                                  name="soci-verify", daemon=True)
        hasher.start()

        def verified() -> None:
            hasher.join()
            if got != [digest]:
                raise StoreError(self._corrupt_message(digest, got[0] if got else "?"))
        return data, verified

    def read_blob(self, digest: str, verify: bool = True) -> bytes:
        """The blob's bytes; with ``verify`` (the default) their sha256 must match ``digest``."""
        with self.open_blob(digest) as f:
            data = f.read()
        if verify:
            actual = _sha256_digest(data)
            if actual != digest:
                raise StoreError(self._corrupt_message(digest, actual))
        return data

    def verify_blob(self, digest: str) -> bool:
        """True if the blob's content hashes to its name (streams; for large blobs)."""
        h = hashlib.sha256()
        with self.open_blob(digest) as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        return "sha256:" + h.hexdigest() == digest

    def _corrupt_message(self, digest: str, actual: str) -> str:
        return (
            f"blob {digest} is corrupt (its content hashes to {actual}): delete "
            f"{self.blob_path(digest)} and recreate or re-fetch it, then run "
            "`soci-native rebuild-db`"
        )

    def delete_blob(self, digest: str) -> bool:
        """Delete a blob; True if it existed. Does not touch rows or index.json."""
        path = self.blob_path(digest)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        except OSError as e:
            raise StoreError(f"cannot delete blob {digest}: {e}") from None
        return True

    def iter_blobs(self) -> Iterator[str]:
        """Digests of all blobs present (temporary files are skipped)."""
        try:
            names = sorted(os.listdir(self.blobs_dir))
        except FileNotFoundError:
            return
        for name in names:
            if _HEX_RE.fullmatch(name) is not None:
                yield "sha256:" + name

    def cleanup_temp(self, older_than: float = 3600.0) -> int:
        """Remove temporary files (left by killed writers) older than ``older_than`` seconds.

        Younger ones may belong to a writer still running and are kept. Returns the count.
        """
        now = time.time()
        removed = 0
        for d in (self.blobs_dir, self.content_dir):
            try:
                names = os.listdir(d)
            except FileNotFoundError:
                continue
            for name in names:
                if not name.startswith(TEMP_PREFIX):
                    continue
                p = d / name
                try:
                    if now - p.stat().st_mtime >= older_than:
                        p.unlink()
                        removed += 1
                except FileNotFoundError:
                    continue
        return removed

    def read_manifest(self, digest: str) -> dict[str, Any]:
        """A verified JSON manifest blob, parsed (for `index info`)."""
        data = self.read_blob(digest)
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise StoreError(f"blob {digest} is not a JSON manifest: {e}") from None
        if not isinstance(doc, dict):
            raise StoreError(f"blob {digest} is not a JSON manifest (not an object)")
        return doc

    # -- content/index.json

    def _read_index_json(self) -> dict[str, Any]:
        try:
            raw = self.index_json_path.read_bytes()
        except FileNotFoundError:
            return {"schemaVersion": 2, "manifests": []}
        try:
            doc = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise StoreError(
                f"{self.index_json_path} is not valid JSON ({e}); move it aside and run "
                "`soci-native rebuild-db` to recreate it"
            ) from None
        if not isinstance(doc, dict) or not isinstance(doc.get("manifests", []), list):
            raise StoreError(
                f"{self.index_json_path} is not an OCI image index; move it aside and run "
                "`soci-native rebuild-db`"
            )
        doc.setdefault("manifests", [])
        return doc

    def _write_index_json(self, doc: dict[str, Any]) -> None:
        data = json.dumps(doc, separators=(",", ":"), sort_keys=False).encode()
        _write_file_atomic(self.index_json_path, data)

    def index_entries(self) -> list[dict[str, Any]]:
        """The descriptors listed in content/index.json."""
        return [d for d in self._read_index_json()["manifests"] if isinstance(d, dict)]

    def add_index_entry(
        self,
        digest: str,
        size: int,
        *,
        artifact_type: str | None = None,
        annotations: Mapping[str, str] | None = None,
        platform: str | None = None,
        media_type: str = MEDIA_TYPE_OCI_MANIFEST,
    ) -> dict[str, Any]:
        """List a manifest in content/index.json (replacing an entry with the same digest)."""
        _check_digest(digest)
        desc: dict[str, Any] = {"mediaType": media_type, "digest": digest, "size": int(size)}
        if artifact_type:
            desc["artifactType"] = artifact_type
        if annotations:
            desc["annotations"] = {str(k): str(v) for k, v in annotations.items()}
        if platform:
            desc["platform"] = _platform_to_oci(platform)
        with self.lock():
            doc = self._read_index_json()
            doc["manifests"] = [*_without(doc["manifests"], digest), desc]
            self._write_index_json(doc)
        return desc

    def remove_index_entry(self, digest: str) -> bool:
        """Drop a manifest from content/index.json; True if it was listed."""
        _check_digest(digest)
        with self.lock():
            doc = self._read_index_json()
            kept = _without(doc["manifests"], digest)
            if len(kept) == len(doc["manifests"]):
                return False
            doc["manifests"] = kept
            self._write_index_json(doc)
            return True

    # -- SOCI indexes

    def add_index(
        self,
        manifest: bytes,
        *,
        image_ref: str | None = None,
        image_digest: str | None = None,
        original_digest: str | None = None,
        platform: str | None = None,
        created: str | None = None,
        annotations: Mapping[str, str] | None = None,
    ) -> ArtifactRecord:
        """Store a SOCI index manifest whose zTOC/prefetch blobs are already stored.

        Writes the manifest blob (and the ``{}`` config blob), upserts the index row, adds rows
        for its zTOC/prefetch layers that have none yet (from their descriptor annotations),
        and lists it in content/index.json. ``original_digest`` (the image manifest) defaults
        to the v1 subject. ``annotations`` are extra index.json descriptor annotations.
        """
        info = parse_soci_index(manifest)
        if original_digest is None:
            original_digest = info.subject_digest
        elif info.subject_digest is not None and original_digest != info.subject_digest:
            raise StoreError(
                f"original digest {original_digest} differs from the index subject "
                f"{info.subject_digest}"
            )
        created = _normalize_time(created) if created else utc_now()
        if platform is not None:
            _platform_to_oci(platform)
        if image_ref is not None:
            from soci_native.imageref import normalize

            image_ref = normalize(image_ref)  # absolute paths, full registry names
        with self.lock():
            missing = [d for d in info.layer_digests() if not self.has_blob(d)]
            if missing:
                raise StoreError(
                    f"cannot store SOCI index: {len(missing)} of its blobs are not in the store "
                    f"(first: {missing[0]}); store the zTOC/prefetch blobs first, or rerun "
                    "(a concurrent `index rm` may have collected a reused zTOC)"
                )
            if not self.has_blob(info.config_digest):
                if info.config_digest != EMPTY_JSON_DIGEST:
                    raise StoreError(f"config blob {info.config_digest} is not in the store")
                self.put_blob(EMPTY_JSON)
            digest, size = self.put_blob(manifest)
            rec = _index_record(digest, size, info, original_digest, image_digest, image_ref,
                                platform, created)
            layer_recs = [
                _layer_record(
                    d,
                    image_ref=image_ref,
                    image_digest=image_digest,
                    platform=platform,
                    created=created,
                )
                for d in info.layers
            ]
            with self._write_txn() as conn:
                conn.executemany(self._INSERT_MISSING, [self._values(r) for r in layer_recs])
                conn.execute(self._UPSERT, self._values(rec))
                if image_ref:
                    conn.execute("INSERT OR IGNORE INTO artifact_refs (digest, image_ref) "
                                 "VALUES (?, ?)", (digest, image_ref))
            self.add_index_entry(
                digest,
                size,
                artifact_type=info.artifact_type,
                annotations=self._entry_annotations(rec, annotations),
                platform=platform,
            )
        return rec

    @staticmethod
    def _entry_annotations(rec: ArtifactRecord, extra: Mapping[str, str] | None) -> dict[str, str]:
        ann: dict[str, str] = {ANN_CREATED: rec.created}
        if rec.original_digest:
            ann[ANN_IMAGE_MANIFEST_DIGEST] = rec.original_digest
        if rec.image_ref:
            ann[ANN_IMAGE_REF] = rec.image_ref
        if rec.image_digest:
            ann[ANN_IMAGE_DIGEST] = rec.image_digest
        ann.update(extra or {})
        return ann

    def _index_info(self, digest: str) -> SociIndexInfo | None:
        """The parsed index manifest, or None if its blob is missing, corrupt or not an index."""
        try:
            return parse_soci_index(self.read_blob(digest))
        except StoreError:
            return None

    def ztocs_for_index(self, digest: str) -> list[ArtifactRecord]:
        """Rows of the zTOC/prefetch artifacts an index references, in manifest order."""
        info = parse_soci_index(self.read_blob(digest))
        out = []
        for d in info.layer_digests():
            rec = self.get_artifact(d)
            if rec is not None:
                out.append(rec)
        return out

    def _referenced(self, exclude: str) -> set[str]:
        """Blob digests referenced by every stored index manifest other than ``exclude``."""
        indexes = {r.digest for r in self.list_artifacts(type="soci_index")}
        indexes.update(
            str(d["digest"])
            for d in self.index_entries()
            if _DIGEST_RE.fullmatch(str(d.get("digest"))) is not None
        )
        indexes.discard(exclude)
        refs: set[str] = set()
        for digest in indexes:
            info = self._index_info(digest)
            if info is not None:
                refs.update(info.layer_digests())
                refs.add(info.config_digest)
        return refs

    def remove_index(self, digest: str, delete_blobs: bool = True) -> list[str]:
        """Remove a SOCI index and the zTOC/prefetch artifacts no other stored index uses.

        Drops the index row, its content/index.json entry and (with ``delete_blobs``) its blob;
        then the rows (and blobs) of its zTOC/prefetch layers — and the config blob — that no
        remaining index manifest references. Returns the digests of the removed artifacts
        (the index first). Raises StoreError if there is no such index.
        """
        _check_digest(digest)
        with self.lock():
            rec = self.get_artifact(digest)
            if rec is not None and rec.type != "soci_index":
                raise StoreError(
                    f"{digest} is a {rec.type} artifact, not a SOCI index; list indexes with "
                    "`soci-native index list`"
                )
            listed = any(d.get("digest") == digest for d in self.index_entries())
            info = self._index_info(digest)
            if rec is None and not listed and info is None:
                raise StoreError(
                    f"no SOCI index {digest} in the store at {self.root}; list them with "
                    "`soci-native index list`"
                )
            removed: list[str] = [digest]
            self.remove_index_entry(digest)
            self.remove_artifact(digest)
            if info is not None:
                refs = self._referenced(exclude=digest)
                refs.add(digest)
                gone = [d for d in dict.fromkeys(info.layer_digests()) if d not in refs]
                with self._write_txn() as conn:
                    conn.executemany(
                        "DELETE FROM artifacts WHERE digest = ? AND type != 'soci_index'",
                        [(d,) for d in gone],
                    )
                    conn.executemany("DELETE FROM artifact_refs WHERE digest = ?",
                                     [(d,) for d in gone])
                if delete_blobs:
                    for d in gone:
                        self.delete_blob(d)
                    if info.config_digest not in refs:
                        self.delete_blob(info.config_digest)
                removed.extend(gone)
            if delete_blobs:
                self.delete_blob(digest)
        return removed

    # -- rebuild

    def rebuild_db(self) -> dict[str, int]:
        """Re-sync artifacts.db (and content/index.json) with the blobs.

        Removes rows and index.json entries whose blob is gone, then scans blobs for SOCI
        index manifests (v1 with subject, v2) and adds missing rows for them and their zTOC
        and prefetch layers. Image ref/digest, platform and creation time come from the
        index.json entry when there is one; otherwise created is the blob's mtime. Also
        removes temporary files older than an hour. Returns counts of what it did.
        """
        counts = dict.fromkeys(
            (
                "rows_removed",
                "entries_removed",
                "blobs_scanned",
                "corrupt_blobs",
                "indexes_added",
                "ztocs_added",
                "prefetches_added",
                "entries_added",
                "missing_layer_blobs",
                "temp_files_removed",
            ),
            0,
        )
        with self.lock():
            counts["temp_files_removed"] = self.cleanup_temp()
            # 1. rows and index.json entries whose blob is gone
            stale = [r.digest for r in self.list_artifacts() if not self.has_blob(r.digest)]
            if stale:
                with self._write_txn() as conn:
                    conn.executemany(
                        "DELETE FROM artifacts WHERE digest = ?", [(d,) for d in stale]
                    )
            counts["rows_removed"] = len(stale)
            doc = self._read_index_json()
            kept = []
            for d in doc["manifests"]:
                dg = d.get("digest") if isinstance(d, dict) else None
                if isinstance(dg, str) and _DIGEST_RE.fullmatch(dg) and not self.has_blob(dg):
                    counts["entries_removed"] += 1
                else:
                    kept.append(d)
            entries = {str(d["digest"]): d for d in kept if isinstance(d, dict) and "digest" in d}

            # 2. scan for SOCI index manifests
            found: list[tuple[str, str, int, SociIndexInfo]] = []  # (created, digest, size, info)
            for digest in self.iter_blobs():
                path = self.blob_path(digest)
                try:
                    st = path.stat()
                    if st.st_size >= MAX_MANIFEST_SIZE or st.st_size < 2:
                        continue
                    with open(path, "rb") as f:
                        if f.read(1) != b"{":
                            continue
                        data = b"{" + f.read()
                except OSError:
                    continue
                counts["blobs_scanned"] += 1
                if _sha256_digest(data) != digest:
                    counts["corrupt_blobs"] += 1
                    continue
                try:
                    info = parse_soci_index(data)
                except StoreError:
                    continue
                created = _format_time(datetime.fromtimestamp(st.st_mtime, timezone.utc))
                entry_created = _str_annotations(entries.get(digest)).get(ANN_CREATED)
                if entry_created is not None:
                    with contextlib.suppress(StoreError):
                        created = _normalize_time(entry_created)
                found.append((created, digest, len(data), info))
            found.sort()

            new_rows: list[ArtifactRecord] = []
            seen: set[str] = set()
            for created, digest, size, info in found:
                entry = entries.get(digest) or {}
                ann = _str_annotations(entry)
                platform = _platform_from_oci(entry.get("platform"))
                image_ref = ann.get(ANN_IMAGE_REF)
                image_digest = _valid_or_none(ann.get(ANN_IMAGE_DIGEST))
                original = info.subject_digest or _valid_or_none(
                    ann.get(ANN_IMAGE_MANIFEST_DIGEST)
                    or info.annotations.get(ANN_IMAGE_MANIFEST_DIGEST)
                )
                if self.get_artifact(digest) is None:
                    new_rows.append(_index_record(digest, size, info, original, image_digest,
                                                  image_ref, platform, created))
                    counts["indexes_added"] += 1
                for desc in info.layers:
                    ld = str(desc["digest"])
                    if ld in seen or self.get_artifact(ld) is not None:
                        continue
                    if not self.has_blob(ld):
                        counts["missing_layer_blobs"] += 1
                        continue
                    seen.add(ld)
                    lrec = _layer_record(
                        desc,
                        image_ref=image_ref,
                        image_digest=image_digest,
                        platform=platform,
                        created=_format_time(
                            datetime.fromtimestamp(self.blob_path(ld).stat().st_mtime, timezone.utc)
                        ),
                    )
                    new_rows.append(lrec)
                    key = "prefetches_added" if lrec.type == "soci_prefetch" else "ztocs_added"
                    counts[key] += 1
                if digest not in entries:
                    desc_new: dict[str, Any] = {
                        "mediaType": MEDIA_TYPE_OCI_MANIFEST,
                        "digest": digest,
                        "size": size,
                        "artifactType": info.artifact_type,
                        "annotations": {ANN_CREATED: created}
                        | ({ANN_IMAGE_MANIFEST_DIGEST: original} if original else {}),
                    }
                    kept.append(desc_new)
                    entries[digest] = desc_new
                    counts["entries_added"] += 1
            if new_rows:
                with self._write_txn() as conn:
                    conn.executemany(self._INSERT_MISSING, [self._values(r) for r in new_rows])
            if counts["entries_removed"] or counts["entries_added"]:
                doc["manifests"] = kept
                self._write_index_json(doc)
        return counts


def _str_annotations(desc: object) -> dict[str, str]:
    """A descriptor's string-valued annotations ({} if it has none or is not a dict)."""
    ann = desc.get("annotations") if isinstance(desc, dict) else None
    if not isinstance(ann, dict):
        return {}
    return {k: v for k, v in ann.items() if isinstance(k, str) and isinstance(v, str)}


def _without(manifests: list[Any], digest: str) -> list[Any]:
    return [d for d in manifests if not (isinstance(d, dict) and d.get("digest") == digest)]


def _valid_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and _DIGEST_RE.fullmatch(value) else None
