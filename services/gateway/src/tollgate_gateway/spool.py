"""Durable local spool for usage events NATS could not take: one SQLite file (WAL, synchronous
FULL) per worker process in `spool_dir`, locked with flock while its owner lives. A drainer in any
worker re-sends its own file and adopts the files of workers that are gone (crashed or restarted)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import orjson

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    subject TEXT NOT NULL,
    msg_id TEXT NOT NULL,
    payload BLOB NOT NULL,
    headers BLOB NOT NULL,
    spooled_at REAL NOT NULL
)
"""


@dataclass(frozen=True, slots=True)
class SpooledEvent:
    subject: str
    msg_id: str
    payload: bytes
    headers: dict[str, str]


class SpoolFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_fd = os.open(str(path) + ".lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            raise
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute(_SCHEMA)

    def append(self, events: list[SpooledEvent]) -> None:
        now = time.time()
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany(
                "INSERT INTO spool (subject, msg_id, payload, headers, spooled_at) VALUES (?, ?, ?, ?, ?)",
                [(e.subject, e.msg_id, e.payload, orjson.dumps(e.headers), now) for e in events],
            )

    def head(self, limit: int) -> list[tuple[int, SpooledEvent]]:
        rows = self.db.execute(
            "SELECT id, subject, msg_id, payload, headers FROM spool ORDER BY id LIMIT ?", (limit,)
        ).fetchall()
        return [(r[0], SpooledEvent(r[1], r[2], bytes(r[3]), orjson.loads(r[4]))) for r in rows]

    def delete(self, row_ids: list[int]) -> None:
        if row_ids:
            with self.db:
                self.db.executemany("DELETE FROM spool WHERE id = ?", [(i,) for i in row_ids])

    def count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM spool").fetchone()[0])

    def close(self, remove_if_empty: bool = False) -> None:
        empty = remove_if_empty and self.count() == 0
        self.db.close()
        if empty:
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(str(self.path) + suffix)
        os.close(self._lock_fd)
        if empty:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(str(self.path) + ".lock")


class Spool:
    """Sync API: callers run it in a worker thread (fsync must never block the event loop)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.own = SpoolFile(directory / f"usage-{os.getpid()}-{uuid.uuid4().hex[:8]}.db")

    def append(self, events: list[SpooledEvent]) -> None:
        self.own.append(events)

    def orphans(self) -> list[SpoolFile]:
        """Spool files of workers that no longer hold their lock."""
        adopted = []
        for path in sorted(self.directory.glob("usage-*.db")):
            if path == self.own.path:
                continue
            try:
                adopted.append(SpoolFile(path))
            except OSError:
                continue  # a live worker owns it
        return adopted

    def pending(self) -> int:
        total = self.own.count()
        for orphan in self.orphans():
            total += orphan.count()
            orphan.close()
        return total

    def close(self) -> None:
        self.own.close(remove_if_empty=True)
