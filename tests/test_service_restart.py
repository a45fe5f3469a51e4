"""Restart safety and scale-out: SIGTERM, kill -9 of the service, kill -9 of a job, Redis workers.

Each test runs its own ``textft service`` (and ``redis-server``, ``textft worker``) subprocesses.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from service_support import (OFFLINE, RedisServer, ServiceProcess, alive, children, create_key, job_processes,
                             read_events, training_pid, upload, wait_for, wait_state)
from test_service import tiny_job

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")


def long_job(tiny_model_dir, **extra) -> dict:
    """About 400 steps with a checkpoint every 25: long enough to be interrupted several times."""
    return tiny_job(tiny_model_dir, **{"train.epochs": 16, "train.save_every_steps": 25, "train.logging_steps": 1,
                                       **extra})


def checkpoint_steps(job_dir: Path) -> list[int]:
    root = job_dir / "run" / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(int(p.name.split("-")[1]) for p in root.glob("step-*") if (p / "textft_checkpoint.json").is_file())


def db_rows(data_dir: Path, sql: str, *args) -> list[tuple]:
    db = sqlite3.connect(data_dir / "textft.db")
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def reference_run(job_dir: Path, out: Path) -> subprocess.Popen:
    """The job's own config (job.yaml) through plain `textft train`, with the paths made absolute."""
    import yaml

    cfg = yaml.safe_load((job_dir / "job.yaml").read_text())
    for key in ("train_file", "validation_file", "test_file"):
        cfg["data"][key] = str((job_dir / cfg["data"][key]).resolve())
    cfg["output"]["dir"] = str(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    (out.parent / "reference.yaml").write_text(yaml.safe_dump(cfg))
    return subprocess.Popen([sys.executable, "-m", "textft", "train", "--config", str(out.parent / "reference.yaml")],
                            stdout=subprocess.DEVNULL, stderr=open(out.parent / "reference.log", "w"),
                            env={**os.environ, **OFFLINE})


@pytest.fixture
def services():
    """Starts services and stops whatever still runs when the test ends, passed or not."""
    started = []

    def start(data: Path, args: list[str]) -> ServiceProcess:
        started.append(ServiceProcess(data, args).start())
        return started[-1]

    yield start
    for svc in started:
        svc.stop(signal.SIGKILL)


def test_sigterm_kill9_and_a_killed_job_all_resume_to_the_metrics_of_an_uninterrupted_run(tmp_path, tiny_model_dir,
                                                                                          toy_files, services, request):
    data = tmp_path / "data"
    args = ["--local-models", str(tiny_model_dir), "--grace", "10"]
    svc = services(data, args)
    key = create_key(data, "alice")
    http = svc.client(key)
    sets = {split: upload(http, path).json()["id"] for split, path in toy_files.items()}
    body = {"dataset": sets["train"], "validation_dataset": sets["validation"], "test_dataset": sets["test"],
            "config": "tiny", "overrides": long_job(tiny_model_dir)}
    job = http.post("/v1/jobs", json=body).json()
    short = {**body, "overrides": tiny_job(tiny_model_dir, **{"train.epochs": 1})}
    later = [http.post("/v1/jobs", json=short).json()["id"] for _ in range(2)]
    job_dir = data / "jobs" / job["id"]
    reference = reference_run(job_dir, tmp_path / "reference" / "run")
    request.addfinalizer(lambda: reference.poll() is None and reference.kill())

    # 1. SIGTERM to the service while the job trains: it stops, the job stays queued for the next start.
    wait_for(lambda: checkpoint_steps(job_dir), 120, "a first checkpoint")
    assert svc.stop(signal.SIGTERM) in (0, -15), svc.tail()
    assert job_processes(job_dir) == []
    states = dict(db_rows(data, "SELECT id, state FROM jobs"))
    assert states[job["id"]] == "queued" and all(states[j] == "queued" for j in later)
    assert db_rows(data, "SELECT attempt FROM jobs WHERE id = ?", job["id"]) == [(2,)]

    # 2. kill -9 of the service while the resumed job trains: its process group goes too, and a
    # restart finds the orphaned attempt and queues it again.
    svc = services(data, args)
    http = svc.client(key)
    first = checkpoint_steps(job_dir)[-1]
    wait_for(lambda: http.get(f"/v1/jobs/{job['id']}").json()["attempt"] == 2 and
             checkpoint_steps(job_dir) and checkpoint_steps(job_dir)[-1] > first, 120, "a checkpoint of attempt 2")
    assert http.get(f"/v1/jobs/{job['id']}").json()["state"] == "running"
    helpers = children(svc.proc.pid)  # the job's supervisor, the upload checker
    assert helpers
    svc.stop(signal.SIGKILL)
    wait_for(lambda: not job_processes(job_dir), 30, "the orphaned job's processes to stop")
    wait_for(lambda: not any(alive(p) for p in helpers), 30, "the killed service's helper processes to exit")
    assert db_rows(data, "PRAGMA integrity_check") == [("ok",)]

    # 3. kill -9 of the training process alone: the job is re-queued and resumes.
    svc = services(data, args)
    http = svc.client(key)
    wait_for(lambda: http.get(f"/v1/jobs/{job['id']}").json()["attempt"] == 3, 60, "attempt 3")
    pid = wait_for(lambda: training_pid(job_dir), 120, "the training process of attempt 3")
    second = checkpoint_steps(job_dir)[-1]
    wait_for(lambda: checkpoint_steps(job_dir)[-1] > second, 120, "a checkpoint of attempt 3")
    os.kill(pid, signal.SIGKILL)
    done = wait_state(http, job["id"], ("succeeded", "failed"))
    assert done["state"] == "succeeded", http.get(f"/v1/jobs/{job['id']}/log").text
    assert done["attempt"] == 4

    # The jobs queued behind it kept their order and start only now.
    running = wait_state(http, later[0], ("running", "succeeded"))
    assert running["started_at"] >= done["finished_at"]
    assert http.get(f"/v1/jobs/{later[1]}").json()["state"] == "queued"
    for j in later:
        http.post(f"/v1/jobs/{j}/cancel")

    # Same final model as the uninterrupted run, every step logged once.
    assert reference.wait(300) == 0, (tmp_path / "reference" / "reference.log").read_text()[-3000:]
    ours = json.loads((job_dir / "run" / "eval_report.json").read_text())
    theirs = json.loads((tmp_path / "reference" / "run" / "eval_report.json").read_text())
    assert ours["splits"] == theirs["splits"] and ours["optimizer_steps"] == theirs["optimizer_steps"] == 400
    assert ours["resumed_from"].endswith(f"step-{ours['resumed_from'].rsplit('-', 1)[1]}")
    steps = [json.loads(line)["step"] for line in (job_dir / "run" / "train_log.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == list(range(1, 401))
    events = read_events(http, job["id"])
    logged = [(e["data"]["step"], "eval" in e["data"]) for e in events if e["event"] == "log"]
    assert logged == sorted(set(logged)) and [s for s, ev in logged if not ev] == list(range(1, 401))
    reasons = [e["data"].get("reason", "") for e in events if e["event"] == "state" and e["data"]["state"] == "queued"]
    assert "the service stopped" in reasons[1] and "executor stopped" in reasons[2] and "SIGKILL" in reasons[3]
    log = http.get(f"/v1/jobs/{job['id']}/log", params={"lines": 5000}).text
    assert log.count("resuming from the latest checkpoint") == 3 and "resumed from" in log
    wait_for(lambda: all(http.get(f"/v1/jobs/{j}").json()["state"] == "cancelled" for j in later), 60, "cancels")
    assert svc.stop() in (0, -15)
    assert db_rows(data, "PRAGMA integrity_check") == [("ok",)]


@pytest.mark.skipif(shutil.which("redis-server") is None,
                    reason="redis-server is not installed (apt-get install -y redis-server)")
def test_workers_on_a_shared_redis_queue_run_jobs_and_take_over_from_a_stopped_worker(tmp_path, tiny_model_dir,
                                                                                     toy_files):
    redis = RedisServer(tmp_path).start()
    data = tmp_path / "data"
    workers, svc = [], None
    try:
        svc = ServiceProcess(data, ["--broker", redis.url, "--workers", "0", "--local-models", str(tiny_model_dir)]).start()
        for i in range(2):
            log = open(tmp_path / f"worker-{i}.log", "w")
            workers.append(subprocess.Popen(
                [sys.executable, "-m", "textft", "worker", "--broker", redis.url, "--data-dir", str(data),
                 "--grace", "10"], stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **OFFLINE}))
        http = svc.client(create_key(data, "alice"))
        ds = upload(http, toy_files["train"]).json()["id"]
        body = {"dataset": ds, "config": "tiny", "overrides": tiny_job(tiny_model_dir, **{"train.epochs": 2})}
        short = http.post("/v1/jobs", json=body).json()["id"]
        job = http.post("/v1/jobs", json={**body, "overrides": long_job(tiny_model_dir)}).json()["id"]

        def worker_of(record: dict) -> int:  # "host:pid" of the worker that ran (or runs) it
            return int(record["worker"].rsplit(":", 1)[1])

        # Both jobs start at once, one on each worker.
        running = wait_state(http, job, ("running",))
        owner = next(w for w in workers if w.pid == worker_of(running))
        other = wait_state(http, short, ("running", "succeeded", "failed"))
        assert {worker_of(other), owner.pid} == {w.pid for w in workers}  # each worker runs one of them

        # A worker stopped (SIGTERM) in the middle of a job hands it back; the other finishes it after its own.
        wait_for(lambda: checkpoint_steps(data / "jobs" / job), 120, "a first checkpoint")
        owner.send_signal(signal.SIGTERM)
        assert owner.wait(60) == 0
        assert wait_state(http, short, ("succeeded", "failed"))["state"] == "succeeded"
        done = wait_state(http, job, ("succeeded", "failed"))
        assert done["state"] == "succeeded" and done["attempt"] == 2, done["error"]
        assert worker_of(done) == worker_of(other) != owner.pid
    finally:
        for w in workers:
            if w.poll() is None:
                w.terminate()
                w.wait(60)
        if svc is not None:
            svc.stop()
        redis.stop()
