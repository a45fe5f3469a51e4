"""Nothing of a tenant's is lost because the database cannot account for it.

The database is the only record of who owns a dataset or a job. When it is missing (deleted, a
mount not there yet) or damaged, a start must not make a new one and carry on: the directories it
has no rows for would look like leftovers. So:

- ``open_store``: a missing or empty database over a data directory that holds datasets or jobs
  refuses the start with one line (what is wrong, how to restore it, or ``--adopt-orphans``); a
  database SQLite cannot read, or whose pages fail the integrity check, is one line naming the file
  and the remedy. Neither writes anything.
- ``keep_aside``: at every start, directories under ``datasets/`` and ``jobs/`` without a row (an
  older copy of the database put back, a crash between a directory and its row) are moved to
  ``quarantine/STAMP/`` and listed in the log and in a README there, never deleted.
"""

from __future__ import annotations

import logging
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

from textft.service.layout import DataDir
from textft.service.store import Store, inspect
from textft.service.textft_api import UserError

log = logging.getLogger("textft.service")

ADOPT = "--adopt-orphans"
LISTED_IN_LOG = 20


def _counted(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def missing_database(data: DataDir, strays: list[Path], how_to_start: str) -> str:
    datasets = sum(1 for p in strays if p.parent == data.datasets)
    state = ("is missing" if not data.db.exists() else "is empty" if data.db.stat().st_size == 0
             else "holds no textft tables")
    return (f"{data.db} {state} but {data.root} holds {_counted(datasets, 'dataset')} and"
            f" {_counted(len(strays) - datasets, 'job')} that only it knows the owners of; nothing was changed."
            f" Put the database back (restore textft.db from a backup, with its textft.db-wal if there is one),"
            f" or {how_to_start} {ADOPT} to begin a new database and keep them aside in {data.quarantine}")


def open_store(data: DataDir, adopt_orphans: bool = False, how_to_start: str = "start textft service with") -> Store:
    """The store of ``data``, refusing (UserError, one line) a missing, empty or damaged database over
    a data directory that has datasets or jobs. ``data`` must exist (``DataDir.create``)."""
    # Read-only first: a damaged file, or one without tables (its -wal lost), must not be written to.
    fresh = not data.db.exists() or data.db.stat().st_size == 0 or inspect(data.db) == 0
    strays = data.tenant_dirs()
    if fresh and strays and not adopt_orphans:
        raise UserError(missing_database(data, strays, how_to_start))
    return Store(data.db)


def keep_aside(data: DataDir, known_datasets: set[str], known_jobs: set[str]) -> Path | None:
    """Move what the database has no row for into ``quarantine/STAMP/``; returns that folder, if any."""
    known = {data.datasets: known_datasets, data.jobs: known_jobs}
    strays = [p for p in data.tenant_dirs() if p.name not in known[p.parent]]
    if not strays:
        return None
    now = datetime.now(timezone.utc)
    dest = data.quarantine / now.strftime("%Y%m%dT%H%M%SZ")
    while dest.exists():
        dest = dest.with_name(f"{dest.name}-{time.monotonic_ns() % 1000}")
    names = [f"{p.parent.name}/{p.name}" for p in strays]
    for path, name in zip(strays, names):
        (dest / path.parent.name).mkdir(mode=0o700, parents=True, exist_ok=True)
        shutil.move(str(path), str(dest / name))
    (dest / "README.txt").write_text(
        f"Kept aside by textft service at its start ({now.isoformat(timespec='seconds')}): the database"
        f" ({data.db.name}) had no row for these, so no key owned them. The service no longer uses them.\n"
        "Put back a database that knows them (stop the service, restore it, move these back to where they"
        " were), or delete this folder once nobody needs them.\n\n" + "".join(f"{n}\n" for n in names))
    shown = ", ".join(names[:LISTED_IN_LOG]) + (f" and {len(names) - LISTED_IN_LOG} more" if len(names) > LISTED_IN_LOG
                                                else "")
    log.warning("kept aside in %s (see its README.txt): %s the database has no row for: %s", dest,
                _counted(len(names), "directory").replace("directorys", "directories"), shown)
    return dest
