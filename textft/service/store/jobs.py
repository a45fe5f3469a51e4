"""The jobs' rows and their event streams: every state change of a job is one transaction with its event
(and the webhook delivery of that event, see ``outbox``)."""

from __future__ import annotations

import sqlite3
import time

from textft.service.store.connection import Database
from textft.service.store.outbox import add_event
from textft.service.store.schema import ACTIVE, OWNED, dumps


class JobRows(Database):
    """Jobs: created queued, claimed, ended or queued again, cancelled, deleted."""

    # -- jobs -----------------------------------------------------------------------------------

    def job(self, job_id: str) -> dict | None:
        return self.row("SELECT * FROM jobs WHERE id = ?", job_id)

    def jobs(self, owner: str | None, state: str | None = None) -> list[dict]:
        """Jobs in the order they were created; ``state`` filters."""
        return self.rows(f"SELECT * FROM jobs WHERE {OWNED} AND (? IS NULL OR state = ?) ORDER BY seq",
                         owner, owner, state, state)

    def models(self, owner: str | None) -> list[dict]:
        """The jobs that succeeded, in the order they finished."""
        return self.rows(f"SELECT * FROM jobs WHERE state = 'succeeded' AND {OWNED} ORDER BY finished_at",
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
