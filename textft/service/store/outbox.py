"""The webhook outbox: a delivery row is written in the transaction of the state change it reports, and the
dispatcher reads the due ones back; and what operators read (metrics, estimates)."""

from __future__ import annotations

import json
import sqlite3
import time

from textft.service.store.connection import Database
from textft.service.store.schema import HISTORY, dumps


class Outbox(Database):
    """Webhook secrets and URLs, deliveries and their attempts; counts for metrics and estimates."""

    # -- webhooks: secrets, URLs, the delivery outbox --------------------------------------------

    def key_by_id_or_name(self, id_or_name: str) -> dict | None:
        return self.row("SELECT * FROM keys WHERE id = ? OR name = ?", id_or_name, id_or_name)

    def set_webhook_secret(self, key_id: str, secret: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE keys SET webhook_secret = ? WHERE id = ?", (secret, key_id))

    def set_webhook(self, job_id: str, url: str) -> None:
        """A job's webhook, with a delivery of each state change it already had (it was created queued
        before this, and may have started since)."""
        with self.transaction() as db:
            db.execute("UPDATE jobs SET webhook_url = ? WHERE id = ?", (url, job_id))
            for event_id, data in db.execute("SELECT id, data FROM events WHERE job_id = ? AND type = 'state'"
                                             " ORDER BY id", (job_id,)).fetchall():
                queue_delivery(db, job_id, event_id, json.loads(data))

    def due_deliveries(self, now: float, limit: int) -> list[dict]:
        """Pending deliveries due now, each the oldest pending one of its job (a receiver gets a job's
        changes in order), with the signing secret of the job's key (``secret``)."""
        return self.rows("SELECT d.*, k.webhook_secret AS secret FROM deliveries d JOIN jobs j ON j.id = d.job_id"
                         " JOIN keys k ON k.id = j.owner WHERE d.state = 'pending' AND d.next_at <= ? AND d.id ="
                         " (SELECT MIN(id) FROM deliveries p WHERE p.job_id = d.job_id AND p.state = 'pending')"
                         " ORDER BY d.next_at LIMIT ?", now, limit)

    def record_attempt(self, delivery_id: int, attempt: dict, state: str, next_at: float | None) -> None:
        """One attempt's outcome; ``state``: pending (tried again at ``next_at``), delivered or failed."""
        with self.transaction() as db:
            row = db.execute("SELECT history FROM deliveries WHERE id = ?", (delivery_id,)).fetchone()
            if row is None:
                return  # the job was deleted meanwhile
            history = json.loads(row[0]) + [attempt]
            history = history[:1] + history[1 - HISTORY:] if len(history) > HISTORY else history
            db.execute("UPDATE deliveries SET attempts = attempts + 1, state = ?, next_at = COALESCE(?, next_at),"
                       " last_status = ?, last_error = ?, history = ?, finished_at = ? WHERE id = ?",
                       (state, next_at, attempt.get("status"), attempt.get("error"), dumps(history),
                        None if state == "pending" else time.time(), delivery_id))

    def deliveries(self, job_id: str) -> list[dict]:
        return self.rows("SELECT * FROM deliveries WHERE job_id = ? ORDER BY id", job_id)

    def delivery_counts(self, job_id: str | None = None) -> dict[str, int]:
        """Deliveries by state, of one job or of all."""
        rows = self.rows("SELECT state, COUNT(*) AS n FROM deliveries WHERE ? IS NULL OR job_id = ? GROUP BY state",
                         job_id, job_id)
        return {"pending": 0, "delivered": 0, "failed": 0, **{r["state"]: r["n"] for r in rows}}

    # -- what operators read: metrics, estimates -------------------------------------------------

    def job_counts(self) -> dict[str, int]:
        return {r["state"]: r["n"] for r in self.rows("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")}

    def timed_jobs(self, limit: int = 200) -> list[dict]:
        """The latest jobs that succeeded at their first attempt: their times are one uninterrupted run."""
        return self.rows("SELECT id, started_at, finished_at, progress, metrics FROM jobs WHERE state = 'succeeded'"
                         " AND attempt = 1 AND started_at IS NOT NULL ORDER BY finished_at DESC LIMIT ?", limit)



def add_event(db: sqlite3.Connection, job_id: str, kind: str, data: dict) -> int:
    """Append an event to a job's stream inside the caller's transaction; returns its id."""
    seq = db.execute("UPDATE jobs SET event_seq = event_seq + 1 WHERE id = ? RETURNING event_seq",
                     (job_id,)).fetchone()[0]
    db.execute("INSERT INTO events (job_id, id, type, data, time) VALUES (?, ?, ?, ?, ?)",
               (job_id, seq, kind, json.dumps(data), time.time()))
    if kind == "state":  # in the same transaction: a state change and its webhook delivery commit together
        queue_delivery(db, job_id, seq, data)
    return seq


def queue_delivery(db: sqlite3.Connection, job_id: str, event_id: int, data: dict) -> None:
    """A delivery of a state event to the job's webhook, if it has one (inside the caller's transaction).
    Its body's ``id`` stays the same at every attempt, so a receiver can drop one it already processed."""
    row = db.execute("SELECT webhook_url FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if row is not None and row[0]:
        now = time.time()
        body = dumps({"id": f"{job_id}.{event_id}", "type": "job.state", "job_id": job_id, "event_id": event_id,
                      "state": data.get("state"), "time": now, "data": data})
        db.execute("INSERT INTO deliveries (job_id, event_id, url, body, next_at, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                   (job_id, event_id, row[0], body, now, now))
