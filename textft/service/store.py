"""The service's state: one SQLite database (``DATA_DIR/textft.db``) in WAL mode.

Every state change is one ``BEGIN IMMEDIATE`` transaction, so a service killed at any moment
leaves either the old or the new state, and the key commands (another process) can write while
the service runs. Large things (uploads, runs, logs) live in files; rows point at them.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from textft.service.textft_api import UserError, __version__

SCHEMA_VERSION = 3
MIGRATIONS = {2: ("ALTER TABLE datasets ADD COLUMN task TEXT", "ALTER TABLE datasets ADD COLUMN text_pair_column TEXT"),
              3: ("ALTER TABLE keys ADD COLUMN max_steps INTEGER", "ALTER TABLE keys ADD COLUMN max_job_seconds REAL",
                  "ALTER TABLE keys ADD COLUMN max_storage_bytes INTEGER")}
"""Statements that bring a database written with schema N-1 to schema N (older rows keep NULL)."""

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
ACTIVE = ("queued", "running")
FINISHED = ("succeeded", "failed", "cancelled")

SCHEMA = f"""
CREATE TABLE keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    salt BLOB NOT NULL,
    hash BLOB NOT NULL,
    admin INTEGER NOT NULL DEFAULT 0,
    max_queued INTEGER,
    max_upload_bytes INTEGER,
    created_at REAL NOT NULL,
    revoked_at REAL,
    max_steps INTEGER,
    max_job_seconds REAL,
    max_storage_bytes INTEGER
);
CREATE TABLE datasets (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL REFERENCES keys(id),
    name TEXT NOT NULL,
    filename TEXT NOT NULL,
    path TEXT NOT NULL,
    format TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    rows INTEGER NOT NULL,
    text_column TEXT NOT NULL,
    label_column TEXT NOT NULL,
    drop_empty INTEGER NOT NULL DEFAULT 0,
    labels TEXT NOT NULL,
    preview TEXT NOT NULL,
    created_at REAL NOT NULL,
    task TEXT,
    text_pair_column TEXT
);
CREATE TABLE jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL REFERENCES keys(id),
    state TEXT NOT NULL CHECK (state IN ({", ".join(repr(s) for s in STATES)})),
    config TEXT NOT NULL,
    overrides TEXT NOT NULL,
    accelerate_config TEXT,
    dataset TEXT NOT NULL,
    validation_dataset TEXT,
    test_dataset TEXT,
    attempt INTEGER NOT NULL DEFAULT 1,
    interruptions INTEGER NOT NULL DEFAULT 0,
    priority INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    worker TEXT,
    error TEXT,
    stop_reason TEXT,
    progress TEXT NOT NULL DEFAULT '{{}}',
    metrics TEXT,
    tail TEXT NOT NULL DEFAULT '{{}}',
    event_seq INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX jobs_by_owner ON jobs(owner, seq);
CREATE INDEX jobs_by_state ON jobs(state, seq);
CREATE TABLE events (
    job_id TEXT NOT NULL,
    id INTEGER NOT NULL,
    type TEXT NOT NULL,
    data TEXT NOT NULL,
    time REAL NOT NULL,
    PRIMARY KEY (job_id, id)
);
"""

JSON_COLUMNS = {"labels", "preview", "overrides", "progress", "metrics", "tail", "data"}


def decode(row: sqlite3.Row | None) -> dict[str, Any] | None:
    """A row as a dict, JSON columns decoded."""
    if row is None:
        return None
    out = dict(row)
    for key in JSON_COLUMNS & out.keys():
        if isinstance(out[key], str):
            out[key] = json.loads(out[key])
    return out


class Store:
    """SQLite access with one connection per thread."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._local = threading.local()
        with self.transaction() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version < SCHEMA_VERSION:
                for step in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in MIGRATIONS[step]:
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version > SCHEMA_VERSION:
                raise UserError(f"'{self.path}' was written by a newer textft (database schema {version}); this"
                                f" textft {__version__} reads schema {SCHEMA_VERSION} and leaves it as it is: upgrade"
                                " textft, or restore the backup taken before the upgrade")

    def connection(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # a state change survives a power cut, not only a crash
            db.execute("PRAGMA foreign_keys=ON")
            self._local.db = db
        return db

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: taken at once (no upgrade deadlocks), committed or rolled back whole."""
        db = self.connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def rows(self, sql: str, *args) -> list[dict[str, Any]]:
        return [decode(r) for r in self.connection().execute(sql, args).fetchall()]

    def row(self, sql: str, *args) -> dict[str, Any] | None:
        return decode(self.connection().execute(sql, args).fetchone())

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


def add_event(db: sqlite3.Connection, job_id: str, kind: str, data: dict) -> int:
    """Append an event to a job's stream inside the caller's transaction; returns its id."""
    seq = db.execute("UPDATE jobs SET event_seq = event_seq + 1 WHERE id = ? RETURNING event_seq",
                     (job_id,)).fetchone()[0]
    db.execute("INSERT INTO events (job_id, id, type, data, time) VALUES (?, ?, ?, ?, ?)",
               (job_id, seq, kind, json.dumps(data), time.time()))
    return seq


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))
