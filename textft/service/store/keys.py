"""The keys' and the datasets' rows."""

from __future__ import annotations

import sqlite3
import time
from typing import Any, Callable

from textft.service.store.connection import Database
from textft.service.store.schema import ACTIVE, JSON_COLUMNS, OWNED, dumps


class KeyRows(Database):
    """Keys and the datasets they uploaded."""

    # -- keys -----------------------------------------------------------------------------------

    def key(self, key_id: str) -> dict | None:
        return self.row("SELECT * FROM keys WHERE id = ?", key_id)

    def keys(self) -> list[dict]:
        return self.rows("SELECT * FROM keys ORDER BY created_at")

    def key_names(self) -> dict[str, str]:
        """Key id → name."""
        return {r["id"]: r["name"] for r in self.rows("SELECT id, name FROM keys")}

    def insert_key(self, key_id: str, name: str, salt: bytes, hashed: bytes, admin: bool,
                   limits: dict[str, Any], hub_namespaces: list[str] = ()) -> bool:
        """False when a key of that name exists; ``limits``: the key's own limits (columns of keys)."""
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM keys WHERE name = ?", (name,)).fetchone():
                return False
            columns = "".join(f", {column}" for column in limits)
            db.execute(f"INSERT INTO keys (id, name, salt, hash, admin, created_at, hub_namespaces{columns})"
                       f" VALUES (?, ?, ?, ?, ?, ?, ?{', ?' * len(limits)})",
                       (key_id, name, salt, hashed, int(admin), time.time(), dumps(list(hub_namespaces)),
                        *limits.values()))
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
        return self.rows(f"SELECT * FROM datasets WHERE {OWNED} ORDER BY created_at", owner, owner)

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
