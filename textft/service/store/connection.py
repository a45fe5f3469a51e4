"""The connection to the service's database: one per thread, write transactions taken at once, the schema
created or migrated on opening; and a consistent copy of a live database (backups)."""

from __future__ import annotations

import sqlite3
import threading
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, Iterator

from textft.service.layout import unreadable_database
from textft.service.store.schema import MIGRATIONS, SCHEMA, SCHEMA_VERSION, decode
from textft.service.textft_api import UserError, __version__


class Database:
    """SQLite access with one connection per thread; the database is created or migrated when opened."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._local = threading.local()
        if self.path.is_file() and self.path.stat().st_size:
            inspect(self.path)  # a damaged file is one line naming it, and nothing is written to it
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
        # The database holds the keys' webhook secrets (shared secrets, stored as they are to sign with):
        # only the service's user reads it; SQLite gives its -wal and -shm files the same mode.
        for path in (self.path, self.path.with_name(self.path.name + "-wal"), self.path.with_name(self.path.name + "-shm")):
            try:
                path.chmod(0o600)
            except OSError:  # absent, or another user's file (that user's umask applies)
                pass

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


def inspect(path: Path) -> int:
    """The schema version of the database at ``path`` (0: none yet), read-only; UserError (one line) if damaged."""
    try:
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            if (found := [r[0] for r in db.execute("PRAGMA quick_check(3)")]) == ["ok"]:
                return db.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.DatabaseError as e:
        found = [str(e)]
    raise UserError(unreadable_database(path, "; ".join(" ".join(f.split()) for f in found)))


def snapshot_database(source: Path, dest: Path) -> dict[str, Any]:
    """A consistent copy of a live database at ``dest`` (SQLite's online backup: one read transaction,
    however busy the writers), and what it names. The source is only read, never migrated."""
    src, out = sqlite3.connect(source, timeout=30), sqlite3.connect(dest)
    try:
        src.backup(out)
    finally:
        src.close()
        out.close()
    return database_contents(dest)


def database_contents(path: Path) -> dict[str, Any]:
    """What a database (a backup's snapshot) holds: its schema, keys, datasets (id, file), jobs, integrity."""
    db = sqlite3.connect(path)
    try:
        return {"schema": db.execute("PRAGMA user_version").fetchone()[0],
                "keys": db.execute("SELECT COUNT(*) FROM keys").fetchone()[0],
                "datasets": [{"id": i, "path": p} for i, p in db.execute("SELECT id, path FROM datasets ORDER BY id")],
                "jobs": [{"id": i, "state": s} for i, s in db.execute("SELECT id, state FROM jobs ORDER BY seq")],
                "integrity": db.execute("PRAGMA integrity_check").fetchone()[0]}
    finally:
        db.close()
