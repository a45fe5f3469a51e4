"""Where things live under the data directory, and the small JSON files jobs and executors exchange.

```
DATA_DIR/
  textft.db                 the store (SQLite, WAL)
  queue.db                  the embedded queue (SqliteHuey) when no --broker is given
  datasets/ID/data.EXT      uploaded files, validated
  jobs/ID/job.yaml          the training config, as `textft train --config` reads it
  jobs/ID/job.json          what an executor needs to launch the job (attempt, processes, GPUs)
  jobs/ID/job.log           stdout and stderr of every attempt
  jobs/ID/attempt-N.json    claim of attempt N by an executor (host, pid); created exclusively
  jobs/ID/heartbeat-N       rewritten by that executor every few seconds
  jobs/ID/proc-N.json       the process group of attempt N (written by its supervisor)
  jobs/ID/exit-N.json       how attempt N ended (exit status, who stopped it)
  jobs/ID/cancel            present once a cancel was requested
  jobs/ID/run/              output.dir of the training: checkpoints, then the model and reports
  cache/                    the datasets library's cache, shared by uploads checks and jobs
  workers/HOST-PID.json     heartbeat of each process that runs jobs (service executors, textft worker)
  quarantine/STAMP/         directories the database had no row for at a start, kept aside (never deleted)
```
Paths inside job.yaml are relative to the job's directory (the training runs there), so a worker
on another machine may mount the data directory anywhere.

Everything here is private to the service's user: the directories are 0700 and the processes that
write into them (the service, its jobs, ``textft worker``, the key commands) run under umask 077,
so files are 0600 whatever umask the operator's shell had.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
from pathlib import Path
from typing import Any

from textft.service.textft_api import set_umask


PRIVATE_UMASK = 0o077


def private_files() -> None:
    """Files and directories this process (and the jobs it starts) creates are its user's alone."""
    set_umask(PRIVATE_UMASK)


def dumps(value: Any) -> str:
    """Compact JSON, as the database's JSON columns hold it."""
    return json.dumps(value, separators=(",", ":"))


def unreadable_database(path: Path, why) -> str:
    """One line: the damaged database, and what the operator can do (nothing was changed)."""
    return (f"{path} is not a readable textft database ({' '.join(str(why).split())[:200]}); nothing was changed."
            f" Restore it from a backup (sqlite3's .recover may save its rows), or move it aside and start textft"
            f" service with --adopt-orphans to begin a new one (the datasets and jobs it knew are then kept aside in"
            f" quarantine/, never deleted)")


class DataDir:
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.db = self.root / "textft.db"
        self.queue_db = self.root / "queue.db"
        self.datasets = self.root / "datasets"
        self.jobs = self.root / "jobs"
        self.cache = self.root / "cache"
        self.quarantine = self.root / "quarantine"

    def create(self) -> "DataDir":
        """The directories, 0700; the databases of an older data directory made 0600."""
        for path in (self.root, self.datasets, self.jobs, self.cache):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            path.chmod(0o700)  # also when it existed, or was made under another umask
        for db in (self.db, self.queue_db):
            for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
                if path.is_file():
                    path.chmod(0o600)
        return self

    def tenant_dirs(self) -> list[Path]:
        """Every entry under datasets/ and jobs/: what the database must account for."""
        return sorted(p for top in (self.datasets, self.jobs) if top.is_dir() for p in top.iterdir())

    def job(self, job_id: str) -> Path:
        return self.jobs / job_id

    def dataset(self, dataset_id: str) -> Path:
        return self.datasets / dataset_id


def write_json(path: Path, data: Any) -> None:
    """Written to a temporary sibling and renamed: a reader sees the old or the new file, never half."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def create_exclusively(path: Path, data: Any) -> bool:
    """Write ``path`` only if it does not exist yet (O_EXCL, atomic also on NFS v3+); False if it did."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    return True


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


HOST = {"host": socket.gethostname(), "boot_id": _boot_id()}
"""This machine, as claims record it: the same host name and boot make a process id meaningful."""


def process_start(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot (/proc/PID/stat field 22), or None if it is gone.

    Together with the pid it names one process for good: a reused pid has another start time.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] == "Z":  # a zombie has finished; only its exit status remains
        return None
    return int(fields[19])


def this_process() -> dict:
    pid = os.getpid()
    return {**HOST, "pid": pid, "pid_start": process_start(pid)}


def is_local(record: dict) -> bool:
    return record.get("host") == HOST["host"] and record.get("boot_id") == HOST["boot_id"]


def process_alive(record: dict) -> bool:
    """Whether the process a claim names still runs (only answerable on its own machine)."""
    return process_start(record["pid"]) == record.get("pid_start")
