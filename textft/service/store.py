"""The service's state: one SQLite database (``DATA_DIR/textft.db``) in WAL mode, and every SQL
statement of the service (no other module writes SQL).

Every state change is one ``BEGIN IMMEDIATE`` transaction, so a service killed at any moment
leaves either the old or the new state, and the key commands (another process) can write while
the service runs. Large things (uploads, runs, logs) live in files; rows point at them. Reads that
depend on who asks take ``owner``: a key's id, or None for an admin key (every row).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

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

    # -- keys -----------------------------------------------------------------------------------

    def key(self, key_id: str) -> dict | None:
        return self.row("SELECT * FROM keys WHERE id = ?", key_id)

    def keys(self) -> list[dict]:
        return self.rows("SELECT * FROM keys ORDER BY created_at")

    def key_names(self) -> dict[str, str]:
        """Key id → name."""
        return {r["id"]: r["name"] for r in self.rows("SELECT id, name FROM keys")}

    def insert_key(self, key_id: str, name: str, salt: bytes, hashed: bytes, admin: bool,
                   limits: dict[str, Any]) -> bool:
        """False when a key of that name exists; ``limits``: the key's own limits (columns of keys)."""
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM keys WHERE name = ?", (name,)).fetchone():
                return False
            columns = "".join(f", {column}" for column in limits)
            db.execute(f"INSERT INTO keys (id, name, salt, hash, admin, created_at{columns})"
                       f" VALUES (?, ?, ?, ?, ?, ?{', ?' * len(limits)})",
                       (key_id, name, salt, hashed, int(admin), time.time(), *limits.values()))
        return True

    def revoke_key(self, id_or_name: str) -> dict | None:
        """The key (revoked now, or earlier), None when no key has that id or name."""
        with self.transaction() as db:
            row = db.execute("SELECT id, revoked_at FROM keys WHERE id = ? OR name = ?", (id_or_name, id_or_name)).fetchone()
            if row is None:
                return None
            if row["revoked_at"] is None:
                db.execute("UPDATE keys SET revoked_at = ? WHERE id = ?", (time.time(), row["id"]))
        return self.key(row["id"])

    # -- datasets -------------------------------------------------------------------------------

    def dataset(self, dataset_id: str) -> dict | None:
        return self.row("SELECT * FROM datasets WHERE id = ?", dataset_id)

    def datasets(self, owner: str | None) -> list[dict]:
        return self.rows(f"SELECT * FROM datasets WHERE {_OWNED} ORDER BY created_at", owner, owner)

    def dataset_ids(self) -> set[str]:
        return {r["id"] for r in self.rows("SELECT id FROM datasets")}

    def insert_dataset(self, record: dict, check: Callable[[sqlite3.Connection], None] | None = None) -> None:
        """A checked upload: ``record`` holds every column of the datasets table. ``check(db)`` runs in
        the same transaction first and may refuse (raise): a quota checked and spent at once."""
        names = ", ".join(record)
        with self.transaction() as db:
            if check is not None:
                check(db)
            db.execute(f"INSERT INTO datasets ({names}) VALUES ({', '.join('?' * len(record))})",
                       tuple(dumps(v) if k in JSON_COLUMNS else v for k, v in record.items()))

    def set_dataset_task(self, dataset_id: str, task: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE datasets SET task = ? WHERE id = ? AND task IS NULL", (task, dataset_id))

    def delete_dataset(self, dataset_id: str) -> list[str]:
        """Deleted unless queued or running jobs use it; returns those jobs (nothing deleted then)."""
        with self.transaction() as db:
            users = [r[0] for r in db.execute(
                f"SELECT id FROM jobs WHERE state IN {ACTIVE} AND ? IN (dataset, validation_dataset, test_dataset)",
                (dataset_id,)).fetchall()]
            if not users:
                db.execute("DELETE FROM datasets WHERE id = ?", (dataset_id,))
        return users

    # -- jobs -----------------------------------------------------------------------------------

    def job(self, job_id: str) -> dict | None:
        return self.row("SELECT * FROM jobs WHERE id = ?", job_id)

    def jobs(self, owner: str | None, state: str | None = None) -> list[dict]:
        """Jobs in the order they were created; ``state`` filters."""
        return self.rows(f"SELECT * FROM jobs WHERE {_OWNED} AND (? IS NULL OR state = ?) ORDER BY seq",
                         owner, owner, state, state)

    def models(self, owner: str | None) -> list[dict]:
        """The jobs that succeeded, in the order they finished."""
        return self.rows(f"SELECT * FROM jobs WHERE state = 'succeeded' AND {_OWNED} ORDER BY finished_at",
                         owner, owner)

    def job_ids(self) -> set[str]:
        return {r["id"] for r in self.rows("SELECT id FROM jobs")}

    def active_jobs(self) -> list[dict]:
        return self.rows(f"SELECT * FROM jobs WHERE state IN {ACTIVE} ORDER BY seq")

    def queued_jobs(self) -> list[dict]:
        return self.rows("SELECT id, attempt, priority FROM jobs WHERE state = 'queued' ORDER BY seq")

    def usage(self, owner: str, db: sqlite3.Connection | None = None) -> tuple[int, list[tuple[str, str]]]:
        """Bytes of ``owner``'s datasets, and the id and state of each of its jobs; ``db``: read inside
        the caller's transaction."""
        db = db or self.connection()
        datasets = db.execute("SELECT COALESCE(SUM(size_bytes), 0) FROM datasets WHERE owner = ?", (owner,)).fetchone()[0]
        jobs = [(r[0], r[1]) for r in db.execute("SELECT id, state FROM jobs WHERE owner = ?", (owner,)).fetchall()]
        return int(datasets), jobs

    def queued_count(self, owner: str) -> int:
        return self.row("SELECT COUNT(*) AS n FROM jobs WHERE owner = ? AND state = 'queued'", owner)["n"]

    def queue_position(self, job: dict) -> int:
        """1 for the queued job that runs next."""
        return self.row("SELECT COUNT(*) AS n FROM jobs WHERE state = 'queued' AND (priority > ? OR priority = ?"
                        " AND seq < ?)", job["priority"], job["priority"], job["seq"])["n"] + 1

    def insert_job(self, job_id: str, owner: str, config: str, overrides: dict, accelerate_config: str | None,
                   dataset: str, validation_dataset: str | None, test_dataset: str | None,
                   max_queued: int | None = None) -> int | None:
        """A queued job, with its first event; or, when ``owner`` has ``max_queued`` queued jobs already,
        nothing and that count. The count and the insert are one transaction, so that concurrent
        requests cannot all pass the check."""
        with self.transaction() as db:
            if max_queued is not None:
                queued = db.execute("SELECT COUNT(*) FROM jobs WHERE owner = ? AND state = 'queued'",
                                    (owner,)).fetchone()[0]
                if queued >= max_queued:
                    return queued
            db.execute("INSERT INTO jobs (id, owner, state, config, overrides, accelerate_config, dataset,"
                       " validation_dataset, test_dataset, created_at) VALUES (?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?)",
                       (job_id, owner, config, dumps(overrides), accelerate_config, dataset, validation_dataset,
                        test_dataset, time.time()))
            add_event(db, job_id, "state", {"state": "queued", "attempt": 1})
        return None

    def cancel_job(self, job_id: str) -> None:
        """A queued job is cancelled at once; a running one is marked, and its monitor ends it."""
        with self.transaction() as db:
            state = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
            if state == "queued":
                db.execute("UPDATE jobs SET state = 'cancelled', cancel_requested = 1, finished_at = ?,"
                           " stop_reason = 'cancelled' WHERE id = ?", (time.time(), job_id))
                add_event(db, job_id, "state", {"state": "cancelled", "stop_reason": "cancelled"})
            elif state == "running":
                db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
                add_event(db, job_id, "state", {"state": "running", "cancel_requested": True})

    def delete_job(self, job_id: str) -> str | None:
        """A finished job and its events; returns the state of an active one instead (nothing deleted)."""
        with self.transaction() as db:
            state = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
            if state in ACTIVE:
                return state
            db.execute("DELETE FROM events WHERE job_id = ?", (job_id,))
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        return None

    def events_after(self, job_id: str, last: int, limit: int = 500) -> list[dict]:
        return self.rows("SELECT id, type, data FROM events WHERE job_id = ? AND id > ? ORDER BY id LIMIT ?",
                         job_id, last, limit)

    # -- job progress (the monitor) -------------------------------------------------------------

    def start_job(self, job_id: str, attempt: int, claimed_at: float, worker: str) -> bool:
        """Queued → running (False when it was cancelled meanwhile)."""
        with self.transaction() as db:
            started = db.execute("UPDATE jobs SET state = 'running', started_at = COALESCE(started_at, ?),"
                                 " worker = ? WHERE id = ? AND state = 'queued'",
                                 (claimed_at, worker, job_id)).rowcount
            if started:
                add_event(db, job_id, "state", {"state": "running", "attempt": attempt, "worker": worker})
        return bool(started)

    def record_progress(self, job_id: str, progress: dict, tail: dict, events: list[tuple[str, dict]]) -> None:
        with self.transaction() as db:
            db.execute("UPDATE jobs SET progress = ?, tail = ? WHERE id = ?", (dumps(progress), dumps(tail), job_id))
            for kind, data in events:
                add_event(db, job_id, kind, data)

    def end_job(self, job_id: str, state: str, error: str | None, metrics: dict | None,
                stop_reason: str | None) -> bool:
        """An active job finished (False when it had already ended)."""
        with self.transaction() as db:
            ended = db.execute(f"UPDATE jobs SET state = ?, finished_at = ?, error = ?, metrics = ?, stop_reason = ?"
                               f" WHERE id = ? AND state IN {ACTIVE}",
                               (state, time.time(), error, dumps(metrics) if metrics else None, stop_reason,
                                job_id)).rowcount
            if ended:
                add_event(db, job_id, "state", {"state": state, "error": error, "stop_reason": stop_reason,
                                                "metrics": metrics})
        return bool(ended)

    def requeue_job(self, job_id: str, attempt: int, priority: int, interrupted: bool, why: str) -> bool:
        """An active job queued again as ``attempt`` (False when it had already ended)."""
        with self.transaction() as db:
            requeued = db.execute(f"UPDATE jobs SET state = 'queued', attempt = ?, priority = ?,"
                                  f" interruptions = interruptions + ? WHERE id = ? AND state IN {ACTIVE}",
                                  (attempt, priority, int(interrupted), job_id)).rowcount
            if requeued:
                add_event(db, job_id, "state", {"state": "queued", "attempt": attempt, "reason": why})
        return bool(requeued)


_OWNED = "(? IS NULL OR owner = ?)"
"""The rows a key may see: its own, or every row for an admin (owner None)."""


def add_event(db: sqlite3.Connection, job_id: str, kind: str, data: dict) -> int:
    """Append an event to a job's stream inside the caller's transaction; returns its id."""
    seq = db.execute("UPDATE jobs SET event_seq = event_seq + 1 WHERE id = ? RETURNING event_seq",
                     (job_id,)).fetchone()[0]
    db.execute("INSERT INTO events (job_id, id, type, data, time) VALUES (?, ?, ?, ?, ?)",
               (job_id, seq, kind, json.dumps(data), time.time()))
    return seq


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))
