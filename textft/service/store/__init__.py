"""The service's state: one SQLite database (``DATA_DIR/textft.db``) in WAL mode, and every SQL
statement of the service (no other module writes SQL).

Every state change is one ``BEGIN IMMEDIATE`` transaction, so a service killed at any moment
leaves either the old or the new state, and the key commands (another process) can write while
the service runs. Large things (uploads, runs, logs) live in files; rows point at them. Reads that
depend on who asks take ``owner``: a key's id, or None for an admin key (every row).
"""

from textft.service.store.connection import Database, database_contents, inspect, snapshot_database
from textft.service.store.jobs import JobRows
from textft.service.store.keys import KeyRows
from textft.service.store.outbox import Outbox, add_event, queue_delivery
from textft.service.store.schema import (ACTIVE, DELIVERIES_INDEX, DELIVERIES_TABLE, FINISHED, HISTORY, JSON_COLUMNS,
                                         MIGRATIONS, OWNED, SCHEMA, SCHEMA_VERSION, STATES, decode, dumps)

__all__ = ["ACTIVE", "DELIVERIES_INDEX", "DELIVERIES_TABLE", "FINISHED", "HISTORY", "JSON_COLUMNS", "MIGRATIONS", "OWNED",
           "SCHEMA", "SCHEMA_VERSION", "STATES", "Database", "Store", "add_event", "database_contents", "decode",
           "dumps", "inspect", "queue_delivery", "snapshot_database"]


class Store(KeyRows, JobRows, Outbox):
    """The service's database: keys and datasets, jobs and their events, the webhook outbox."""
