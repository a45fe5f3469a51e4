"""The database's tables, the statements that migrate an older database, and how rows are read back."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from textft.service.layout import dumps  # noqa: F401 (how the store writes a JSON column)

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
"""The webhook outbox: one row per state change of a job with a webhook, written with the change."""
DELIVERIES_INDEX = "CREATE INDEX deliveries_due ON deliveries(state, next_at)"
HISTORY = 20
"""Attempts a delivery keeps (the first and the latest)."""
SCHEMA_VERSION = 5
MIGRATIONS = {2: ("ALTER TABLE datasets ADD COLUMN task TEXT", "ALTER TABLE datasets ADD COLUMN text_pair_column TEXT"),
              3: ("ALTER TABLE keys ADD COLUMN webhook_secret TEXT", "ALTER TABLE jobs ADD COLUMN webhook_url TEXT",
                  DELIVERIES_TABLE, DELIVERIES_INDEX),
              4: ("ALTER TABLE keys ADD COLUMN hub_namespaces TEXT",),
              5: ("ALTER TABLE keys ADD COLUMN max_steps INTEGER", "ALTER TABLE keys ADD COLUMN max_job_seconds REAL",
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
    webhook_secret TEXT, hub_namespaces TEXT,
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
    event_seq INTEGER NOT NULL DEFAULT 0,
    webhook_url TEXT
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
{DELIVERIES_TABLE};
{DELIVERIES_INDEX};
"""

JSON_COLUMNS = {"history", "hub_namespaces", "labels", "preview", "overrides", "progress", "metrics", "tail", "data"}


def decode(row: sqlite3.Row | None) -> dict[str, Any] | None:
    """A row as a dict, JSON columns decoded."""
    if row is None:
        return None
    out = dict(row)
    for key in JSON_COLUMNS & out.keys():
        if isinstance(out[key], str):
            out[key] = json.loads(out[key])
    return out



OWNED = "(? IS NULL OR owner = ?)"
"""The rows a key may see: its own, or every row for an admin (owner None)."""
