"""The data directory under a careless operator and a hostile tenant: nothing is deleted that the
database cannot account for, a missing or corrupt database stops the start with one line, and every
file the service writes is private to its user whatever the umask.

Each test works on a data directory of its own (a copy of one populated once per module where it
needs a service's files) and runs its own ``textft service`` on loopback (``--workers 0`` where no job
needs to run).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

from service_support import OFFLINE, ServiceProcess, create_key, free_port, upload, wait_state

JOB = {"config": "tiny", "overrides": {"train.epochs": 1, "data.max_length": 32}}


def files(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative path → sha256): what a start must leave as it was."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def kept_aside(data: Path) -> tuple[dict[str, str], str]:
    """The files of the one quarantine folder (its README apart), and that README."""
    (kept,) = (data / "quarantine").iterdir()
    readme = (kept / "README.txt").read_text()
    return {k: v for k, v in files(kept).items() if k != "README.txt"}, readme


def tenant_files(data: Path) -> dict[str, str]:
    return {f"{top}/{k}": v for top in ("datasets", "jobs") if (data / top).is_dir() for k, v in files(data / top).items()}


def start_refused(data: Path, *args: str, command: tuple[str, ...] = ("service",)) -> subprocess.CompletedProcess:
    """A command over ``data`` that must refuse to start: it exits on its own, with status 2."""
    port = ["--port", str(free_port())] if command == ("service",) else []
    done = subprocess.run([sys.executable, "-m", "textft", *command, "--data-dir", str(data), *port, *args],
                          capture_output=True, text=True, timeout=60, env={**os.environ, **OFFLINE})
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr[-3000:])
    return done


@pytest.fixture(scope="module")
def populated_once(tmp_path_factory, toy_files) -> tuple[Path, dict]:
    """The data directory of a stopped service with one key, one dataset and one queued job (no
    executor: nothing trains), made once for the module."""
    data = tmp_path_factory.mktemp("populated") / "data"
    svc = ServiceProcess(data, ["--workers", "0"]).start()
    try:
        http = svc.client(create_key(data, "alice"))
        ds = upload(http, toy_files["train"]).json()
        job = http.post("/v1/jobs", json={"dataset": ds["id"], **JOB})
        assert job.status_code == 201, job.text
    finally:
        svc.stop()
    return data, {"key": http.headers["authorization"], "dataset": ds["id"], "job": job.json()["id"]}


@pytest.fixture
def populated(populated_once, tmp_path) -> tuple[Path, dict]:
    """A copy of that directory, for this test alone to damage (at ``tmp_path / "data"``)."""
    template, made = populated_once
    data = tmp_path / "data"
    shutil.copytree(template, data, symlinks=True)
    return data, made


def remove_database(data: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        (data / f"textft.db{suffix}").unlink(missing_ok=True)


def test_a_missing_database_refuses_to_start_and_deletes_nothing(populated):
    data, made = populated
    remove_database(data)
    before = tenant_files(data)
    assert len(before) >= 3

    refused = start_refused(data)
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith("error: ") and str(data / "textft.db") in line, line
    assert "1 dataset" in line and "1 job" in line and "restore" in line and "--adopt-orphans" in line, line
    assert "Traceback" not in refused.stderr
    assert not (data / "textft.db").exists() and tenant_files(data) == before
    # the key commands would create the new, empty database the service then starts on: refused too
    keys = start_refused(data, command=("service", "keys", "list"))
    assert "--adopt-orphans" in keys.stderr and not (data / "textft.db").exists() and tenant_files(data) == before

    # The operator chooses to start anew: every directory is kept aside, listed, and still whole.
    svc = ServiceProcess(data, ["--workers", "0", "--adopt-orphans"]).start()
    http = svc.client(create_key(data, "bob"))
    assert http.get("/v1/datasets").json() == [] and http.get("/v1/jobs").json() == []
    svc.stop()
    kept, readme = kept_aside(data)
    assert kept == before
    log = svc.tail(20000)
    for name in (f"datasets/{made['dataset']}", f"jobs/{made['job']}"):
        assert name in log and name in readme, log
    assert str(data / "quarantine") in log


def test_directories_without_rows_are_quarantined_at_start(populated, tmp_path, toy_files):
    """An older copy of the database put back: what was made since is kept aside, not deleted."""
    data, made = populated
    backup = tmp_path / "backup.db"
    with sqlite3.connect(data / "textft.db") as src, sqlite3.connect(backup) as dst:
        src.backup(dst)
    svc = ServiceProcess(data, ["--workers", "0"]).start()
    http = svc.client(made["key"].split()[-1])
    later = upload(http, toy_files["validation"]).json()
    job = http.post("/v1/jobs", json={"dataset": later["id"], **JOB}).json()
    svc.stop()
    newer = {k: v for k, v in tenant_files(data).items() if later["id"] in k or job["id"] in k}
    assert newer
    remove_database(data)
    shutil.copyfile(backup, data / "textft.db")

    svc = ServiceProcess(data, ["--workers", "0"]).start()
    http = svc.client(made["key"].split()[-1])
    assert [d["id"] for d in http.get("/v1/datasets").json()] == [made["dataset"]]
    assert http.get(f"/v1/jobs/{made['job']}").json()["state"] == "queued"
    svc.stop()
    kept, readme = kept_aside(data)
    assert kept == newer and f"datasets/{later['id']}" in readme
    assert not (data / "datasets" / later["id"]).exists() and (data / "datasets" / made["dataset"]).is_dir()
    log = svc.tail(20000)
    assert f"datasets/{later['id']}" in log and f"jobs/{job['id']}" in log, log


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "no tables"])
def test_a_corrupt_database_is_one_line_naming_the_file(populated, damage):
    data, _ = populated
    db = data / "textft.db"
    with closing(sqlite3.connect(db)) as whole:  # every row in the file itself, none left in its -wal
        whole.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for suffix in ("-wal", "-shm"):
        (data / f"textft.db{suffix}").unlink(missing_ok=True)
    assert db.stat().st_size > 8192
    if damage == "no tables":  # what is left of a database whose -wal was lost before a checkpoint
        db.unlink()
        with closing(sqlite3.connect(db)) as fresh:
            fresh.execute("CREATE TABLE t (x)")
            fresh.execute("DROP TABLE t")
    elif damage == "garbage":
        db.write_bytes(b"these are not the pages of a database\n" * 500)
    elif damage == "truncated":
        content = db.read_bytes()
        db.write_bytes(content[:len(content) // 2])
    else:
        db.write_bytes(b"")
    before, damaged = tenant_files(data), db.read_bytes()
    refused = start_refused(data)
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith("error: ") and str(db) in line and "Traceback" not in refused.stderr, refused.stderr
    assert ("backup" in line or "restore" in line) and "--adopt-orphans" in line, line
    assert db.read_bytes() == damaged and tenant_files(data) == before


def modes(root: Path) -> dict[str, str]:
    """Paths under ``root`` that its group or others may read, write or enter: {path: mode}."""
    out = {}
    for p in [root, *root.rglob("*")]:
        mode = p.lstat().st_mode
        if not stat.S_ISLNK(mode) and mode & 0o077:
            out[str(p.relative_to(root))] = oct(mode & 0o777)
    return out


def test_files_are_private_whatever_the_umask(tmp_path, toy_files):
    data = tmp_path / "data"
    svc = ServiceProcess(data, ["--grace", "10"], umask=0).start()
    try:
        http = svc.client(create_key(data, "alice"))
        ds = upload(http, toy_files["train"]).json()
        job = http.post("/v1/jobs", json={"dataset": ds["id"], "config": "tiny", "overrides": {
            **JOB["overrides"], "train.batch_size": 64}}).json()  # a few steps: the files are what counts here
        done = wait_state(http, job["id"], ("succeeded", "failed"))
        assert done["state"] == "succeeded", http.get(f"/v1/jobs/{job['id']}/log").text
        assert http.post("/v1/datasets/columns", files={"file": toy_files["test"].open("rb")}).status_code == 200
        open_to_others = modes(data)
    finally:
        svc.stop()
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert (data / "textft.db").is_file() and (data / "jobs" / job["id"] / "run" / "model.safetensors").is_file()
    assert open_to_others == {}, open_to_others
    assert modes(data) == {}  # also what the stop wrote
