"""The store's webhook records: each key's signing secret, each job's webhook URL, and the outbox of
deliveries (one row per job state change, written in the transaction that records the change, so a
delivery is never lost to a crash and a restarted service resumes the pending ones).

``Store`` inherits ``OpsRecords``; ``store.add_event`` calls ``queue_delivery``.
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

DELIVERIES_TABLE = """CREATE TABLE deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    event_id INTEGER NOT NULL,
    url TEXT NOT NULL,
    body TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    last_status INTEGER,
    last_error TEXT,
    history TEXT NOT NULL DEFAULT '[]',
    created_at REAL NOT NULL,
    finished_at REAL
)"""
DELIVERIES_INDEX = "CREATE INDEX deliveries_due ON deliveries(state, next_at)"
HISTORY = 20
"""Attempts kept per delivery (the first and the latest ones)."""
EVENT_TYPE = "job.state"


def delivery_body(job_id: str, event_id: int, data: dict, when: float) -> str:
    """The JSON a webhook receives: which job, which change (the state event's data), when. ``id``
    stays the same across retries, so a receiver can drop a delivery it has already processed."""
    return json.dumps({"id": f"{job_id}.{event_id}", "type": EVENT_TYPE, "job_id": job_id, "event_id": event_id,
                       "state": data.get("state"), "time": when, "data": data}, separators=(",", ":"))


def queue_delivery(db: sqlite3.Connection, job_id: str, event_id: int, data: dict) -> None:
    """A delivery of a state event to the job's webhook, if it has one (inside the caller's transaction)."""
    row = db.execute("SELECT webhook_url FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None or not row[0]:
        return
    now = time.time()
    db.execute("INSERT INTO deliveries (job_id, event_id, url, body, next_at, created_at) VALUES (?, ?, ?, ?, ?, ?)",
               (job_id, event_id, row[0], delivery_body(job_id, event_id, data, now), now, now))


def _decoded(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    if isinstance(out.get("history"), str):
        out["history"] = json.loads(out["history"])
    return out


class OpsRecords:
    """Webhook secrets, URLs and deliveries (mixed into ``Store``)."""

    def key_by_id_or_name(self, id_or_name: str) -> dict | None:
        return self.row("SELECT * FROM keys WHERE id = ? OR name = ?", id_or_name, id_or_name)

    def set_webhook_secret(self, key_id: str, secret: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE keys SET webhook_secret = ? WHERE id = ?", (secret, key_id))

    def webhook_secret(self, key_id: str) -> str | None:
        row = self.connection().execute("SELECT webhook_secret FROM keys WHERE id = ?", (key_id,)).fetchone()
        return row[0] if row else None

    def set_webhook(self, job_id: str, url: str) -> None:
        """Give a job its webhook, with a delivery of every state change it already had (a job is
        created queued before this, and may even have started since)."""
        with self.transaction() as db:
            db.execute("UPDATE jobs SET webhook_url = ? WHERE id = ?", (url, job_id))
            for event_id, data in db.execute("SELECT id, data FROM events WHERE job_id = ? AND type = 'state'"
                                             " ORDER BY id", (job_id,)).fetchall():
                queue_delivery(db, job_id, event_id, json.loads(data))

    def due_deliveries(self, now: float, limit: int) -> list[dict]:
        """Pending deliveries whose time has come, each the oldest pending one of its job (a receiver
        gets a job's changes in order), with the owner's signing secret."""
        rows = self.connection().execute(
            "SELECT d.*, k.webhook_secret AS secret FROM deliveries d JOIN jobs j ON j.id = d.job_id"
            " JOIN keys k ON k.id = j.owner WHERE d.state = 'pending' AND d.next_at <= ? AND d.id ="
            " (SELECT MIN(id) FROM deliveries p WHERE p.job_id = d.job_id AND p.state = 'pending')"
            " ORDER BY d.next_at LIMIT ?", (now, limit)).fetchall()
        return [_decoded(r) for r in rows]

    def record_attempt(self, delivery_id: int, attempt: dict, state: str, next_at: float | None) -> None:
        """One attempt's outcome; ``state`` pending (retried at ``next_at``), delivered or failed."""
        with self.transaction() as db:
            row = db.execute("SELECT history FROM deliveries WHERE id = ?", (delivery_id,)).fetchone()
            if row is None:
                return  # the job was deleted meanwhile
            history = json.loads(row[0]) + [attempt]
            if len(history) > HISTORY:
                history = history[:1] + history[-(HISTORY - 1):]
            db.execute("UPDATE deliveries SET attempts = attempts + 1, state = ?, next_at = COALESCE(?, next_at),"
                       " last_status = ?, last_error = ?, history = ?, finished_at = ? WHERE id = ?",
                       (state, next_at, attempt.get("status"), attempt.get("error"), json.dumps(history),
                        None if state == "pending" else time.time(), delivery_id))

    def deliveries(self, job_id: str) -> list[dict]:
        rows = self.connection().execute("SELECT * FROM deliveries WHERE job_id = ? ORDER BY id", (job_id,)).fetchall()
        return [_decoded(r) for r in rows]

    def delivery_counts(self, job_id: str | None = None) -> dict[str, int]:
        """Deliveries by state, of one job or of all."""
        rows = self.connection().execute(
            "SELECT state, COUNT(*) FROM deliveries WHERE ? IS NULL OR job_id = ? GROUP BY state",
            (job_id, job_id)).fetchall()
        counts = {"pending": 0, "delivered": 0, "failed": 0}
        counts.update({state: n for state, n in rows})
        return counts

    # -- what operators read: metrics, estimates ---------------------------------------------------

    def job_counts(self) -> dict[str, int]:
        """Jobs by state (every state named, 0 when none)."""
        rows = self.connection().execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return {state: n for state, n in rows}

    def timed_jobs(self, limit: int = 200) -> list[dict]:
        """The latest jobs that succeeded at their first attempt: their timings are one uninterrupted run."""
        return self.rows("SELECT id, started_at, finished_at, progress, metrics, worker FROM jobs"
                         " WHERE state = 'succeeded' AND attempt = 1 AND started_at IS NOT NULL"
                         " ORDER BY finished_at DESC LIMIT ?", limit)


def snapshot_contents(db: sqlite3.Connection) -> dict[str, Any]:
    """What a database snapshot (a backup) refers to: its schema, its keys, datasets (id, file) and jobs."""
    return {"schema": db.execute("PRAGMA user_version").fetchone()[0],
            "keys": db.execute("SELECT COUNT(*) FROM keys").fetchone()[0],
            "datasets": [{"id": i, "path": p} for i, p in db.execute("SELECT id, path FROM datasets ORDER BY id")],
            "jobs": [{"id": i, "state": s} for i, s in db.execute("SELECT id, state FROM jobs ORDER BY seq")],
            "integrity": db.execute("PRAGMA integrity_check").fetchone()[0]}
