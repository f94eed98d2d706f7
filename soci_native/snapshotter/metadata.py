"""The snapshotter's state: one SQLite row per snapshot, in ``<root>/metadata.db``.

A snapshot has a numeric id (its directory ``<root>/snapshots/<id>``), a key (containerd's
name for it, already namespaced as ``ns/N/name`` by containerd's metadata layer), an
optional parent key, a kind, labels, and for a lazily mounted layer the ``remote`` record
that lets a restarted snapshotter mount it again (image, layer, manifest, SOCI index).

Commit renames: the active snapshot's row gets the committed name and kind, and keeps its
id and directory, as containerd's overlayfs snapshotter does. Every change is one
transaction; the connection is shared by the gRPC threads behind one lock.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KIND_UNKNOWN, KIND_VIEW, KIND_ACTIVE, KIND_COMMITTED = 0, 1, 2, 3
KIND_NAMES = {KIND_VIEW: "view", KIND_ACTIVE: "active", KIND_COMMITTED: "committed"}

SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    parent TEXT NOT NULL DEFAULT '',
    kind INTEGER NOT NULL,
    created_ns INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL,
    labels TEXT NOT NULL DEFAULT '{}',
    size INTEGER NOT NULL DEFAULT 0,
    inodes INTEGER NOT NULL DEFAULT 0,
    remote TEXT
);
CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots(parent);
"""


class MetaError(Exception):
    """A request the state does not allow; ``code`` is the gRPC status name to answer."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Snapshot:
    id: int
    key: str
    parent: str
    kind: int
    created_ns: int
    updated_ns: int
    labels: dict[str, str] = field(default_factory=dict)
    size: int = 0
    inodes: int = 0
    remote: dict[str, Any] | None = None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Snapshot:
        return cls(row["id"], row["key"], row["parent"], row["kind"], row["created_ns"],
                   row["updated_ns"], json.loads(row["labels"]), row["size"], row["inodes"],
                   json.loads(row["remote"]) if row["remote"] else None)


class Metadata:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                   timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.RLock()

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (nested calls join the outer one)."""
        with self._lock:
            if self._db.in_transaction:
                yield self._db
                return
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def get(self, key: str) -> Snapshot | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM snapshots WHERE key = ?", (key,)).fetchone()
        return Snapshot.from_row(row) if row else None

    def need(self, key: str) -> Snapshot:
        s = self.get(key)
        if s is None:
            raise MetaError("NOT_FOUND", f"snapshot {key} does not exist")
        return s

    def all(self) -> list[Snapshot]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM snapshots ORDER BY id").fetchall()
        return [Snapshot.from_row(r) for r in rows]

    def chain(self, key: str) -> list[Snapshot]:
        """The snapshot's committed ancestors, nearest first."""
        out: list[Snapshot] = []
        while key:
            s = self.need(key)
            out.append(s)
            key = s.parent
            if len(out) > 10000:
                raise MetaError("INTERNAL", f"parent chain of {key} loops")
        return out

    def create(self, key: str, parent: str, kind: int, labels: dict[str, str],
               remote: dict[str, Any] | None = None) -> Snapshot:
        now = time.time_ns()
        with self.tx() as db:
            if self.get(key) is not None:
                raise MetaError("ALREADY_EXISTS", f"snapshot {key} already exists")
            if parent:
                p = self.get(parent)
                if p is None:
                    raise MetaError("NOT_FOUND", f"parent snapshot {parent} does not exist")
                if p.kind != KIND_COMMITTED:
                    raise MetaError("INVALID_ARGUMENT",
                                    f"parent {parent} is not a committed snapshot")
            cur = db.execute(
                "INSERT INTO snapshots (key, parent, kind, created_ns, updated_ns, labels, "
                "remote) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key, parent, kind, now, now, json.dumps(labels),
                 json.dumps(remote) if remote else None))
            sid = cur.lastrowid
        assert sid is not None
        return Snapshot(sid, key, parent, kind, now, now, dict(labels), remote=remote)

    def commit(self, name: str, key: str, labels: dict[str, str], size: int, inodes: int,
               remote: dict[str, Any] | None = None) -> Snapshot:
        with self.tx() as db:
            s = self.need(key)
            if s.kind != KIND_ACTIVE:
                raise MetaError("FAILED_PRECONDITION", f"snapshot {key} is not active")
            if self.get(name) is not None:
                raise MetaError("ALREADY_EXISTS", f"snapshot {name} already exists")
            now = time.time_ns()
            rem = remote if remote is not None else s.remote
            db.execute("UPDATE snapshots SET key = ?, kind = ?, labels = ?, updated_ns = ?, "
                       "size = ?, inodes = ?, remote = ? WHERE id = ?",
                       (name, KIND_COMMITTED, json.dumps(labels), now, size, inodes,
                        json.dumps(rem) if rem else None, s.id))
        return self.need(name)

    def has_children(self, key: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM snapshots WHERE parent = ? LIMIT 1",
                                    (key,)).fetchone() is not None

    def remove(self, key: str) -> Snapshot:
        with self.tx() as db:
            s = self.need(key)
            if self.has_children(key):
                raise MetaError("FAILED_PRECONDITION",
                                f"snapshot {key} has children: remove them first")
            db.execute("DELETE FROM snapshots WHERE id = ?", (s.id,))
        return s

    def set_labels(self, key: str, labels: dict[str, str]) -> Snapshot:
        with self.tx() as db:
            s = self.need(key)
            db.execute("UPDATE snapshots SET labels = ?, updated_ns = ? WHERE id = ?",
                       (json.dumps(labels), time.time_ns(), s.id))
        return self.need(key)

    def ids(self) -> set[int]:
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT id FROM snapshots")}
