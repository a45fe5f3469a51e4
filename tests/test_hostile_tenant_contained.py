"""A tenant of ``textft service`` whose jobs and uploads ask for more than they may: a job past its
memory or time, a service killed under a job, uploads that take minutes or gigabytes to check, a
client that gives up mid-check, a full disk. Each is contained: it fails saying which limit, is not
run again, and leaves the service, other tenants and the disk as they were.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import httpx
import pytest

from conftest import toy_rows, write_jsonl
from service_support import SERVICE_CAP, ServiceProcess, create_key, rss, tiny_overrides as tiny, upload


# --- jobs run contained ----------------------------------------------------------------------------


def long_rows(n: int, words: int = 150) -> list[dict]:
    """Texts long enough that a big batch of them needs gigabytes of activations."""
    import random

    from conftest import FILLER, NEG, POS

    rng = random.Random(0)
    rows = []
    for i in range(n):
        text = rng.choices(FILLER, k=words)
        text.insert(5, rng.choice(POS if i % 2 else NEG))
        rows.append({"text": " ".join(text), "label": "pos" if i % 2 else "neg"})
    return rows


LIMIT_S = 8
"""A job's time limit here: seconds past a training's start-up, far short of its 400 epochs."""
CHECK_S = 5
"""An upload check's time limit here: seconds past a small file's check, far short of reading slow_file."""


@pytest.fixture(scope="module")
def runner(tmp_path_factory, tiny_model_dir):
    """A service that runs two jobs at once, each under a 1.6 GB memory limit."""
    root = tmp_path_factory.mktemp("contained")
    svc = ServiceProcess(root / "data", ["--local-models", str(tiny_model_dir), "--workers", "2",
                                         "--job-memory-gb", "1.6", "--save-every-steps", "0", "--grace", "5"],
                         memory_cap=SERVICE_CAP).start()
    yield svc
    svc.stop()


def test_a_job_past_its_memory_limit_fails_with_that_reason_while_the_service_and_another_job_keep_running(
        runner, toy_files, tiny_model_dir, tmp_path):
    http = runner.client(create_key(runner.data_dir, "greedy"))
    toy = upload(http, toy_files["train"]).json()
    long = upload(http, write_jsonl(tmp_path / "long.jsonl", long_rows(3000))).json()
    calm = http.post("/v1/jobs", json={"dataset": toy["id"], "config": "tiny",
                                       "overrides": tiny(tiny_model_dir, **{"train.epochs": 3})})
    hog = http.post("/v1/jobs", json={"dataset": long["id"], "config": "tiny", "overrides": tiny(
        tiny_model_dir, **{"data.max_length": 128, "train.batch_size": 1024, "train.epochs": 1})})
    assert calm.status_code == 201 and hog.status_code == 201, (calm.text, hog.text)
    service_rss = rss(runner.proc.pid)
    hog_job = _wait_job(http, hog.json()["id"], ("failed", "succeeded"))
    assert hog_job["state"] == "failed", hog_job
    assert "memory" in hog_job["error"] and "limit of 1.60 GB" in hog_job["error"], hog_job["error"]
    assert hog_job["attempt"] == 1  # a job stopped by its limit would only hit it again
    time.sleep(2)
    assert http.get(f"/v1/jobs/{hog_job['id']}").json()["state"] == "failed"
    assert "--- attempt 2" not in http.get(f"/v1/jobs/{hog_job['id']}/log").text
    assert http.get("/health").status_code == 200
    calm_job = _wait_job(http, calm.json()["id"], ("failed", "succeeded"))
    assert calm_job["state"] == "succeeded", (calm_job, http.get(f"/v1/jobs/{calm_job['id']}/log").text[-3000:])
    assert rss(runner.proc.pid) < service_rss + (300 << 20)  # the service kept its own memory


def test_a_job_past_its_time_limit_is_stopped_and_fails_saying_so(runner, toy_files, tiny_model_dir):
    http = runner.client(create_key(runner.data_dir, "slow", max_job_seconds=LIMIT_S))
    toy = upload(http, toy_files["train"]).json()
    refused = http.post("/v1/jobs", json={"dataset": toy["id"], "config": "tiny", "overrides": tiny(
        tiny_model_dir, **{"train.time_budget_s": 60})})
    assert refused.status_code == 422 and f"job time limit of {LIMIT_S} s" in refused.text, refused.text
    resp = http.post("/v1/jobs", json={"dataset": toy["id"], "config": "tiny",
                                       "overrides": tiny(tiny_model_dir, **{"train.epochs": 400})})
    assert resp.status_code == 201, resp.text
    job = _wait_job(http, resp.json()["id"], ("failed", "succeeded"))
    assert job["state"] == "failed" and f"time limit of {LIMIT_S} s" in job["error"] and job["attempt"] == 1, job
    assert not runner.data_dir.joinpath("jobs", job["id"], "attempt-2.json").exists()


def _wait_job(http, job_id: str, states: tuple[str, ...], timeout: float = 300) -> dict:
    from service_support import wait_for

    return wait_for(lambda: (j := http.get(f"/v1/jobs/{job_id}").json())["state"] in states and j, timeout,
                    f"job {job_id} to reach {states}", interval=0.2)


def test_a_job_whose_executor_is_killed_counts_it_as_a_retry(tmp_path, toy_files, tiny_model_dir):
    """A job that takes the service down with it (the machine out of memory) must not run again at
    every start: orphaned attempts count toward --max-retries."""
    import signal

    from service_support import training_pid, wait_for

    data = tmp_path / "data"
    args = ["--local-models", str(tiny_model_dir), "--workers", "1", "--max-retries", "1", "--grace", "5"]
    key = create_key(data, "crasher")
    job_id = None
    for attempt in (1, 2):
        svc = ServiceProcess(data, args, memory_cap=SERVICE_CAP).start()
        http = svc.client(key)
        if job_id is None:
            ds = upload(http, toy_files["train"]).json()
            job_id = http.post("/v1/jobs", json={"dataset": ds["id"], "config": "tiny", "overrides": tiny(
                tiny_model_dir, **{"train.epochs": 200})}).json()["id"]
        wait_for(lambda: http.get(f"/v1/jobs/{job_id}").json()["attempt"] == attempt
                 and training_pid(data / "jobs" / job_id), 120, f"attempt {attempt} to train")
        svc.stop(signal.SIGKILL)
    svc = ServiceProcess(data, args, memory_cap=SERVICE_CAP).start()
    try:
        job = _wait_job(svc.client(key), job_id, ("failed", "succeeded", "running"), timeout=60)
        assert job["state"] == "failed" and "executor stopped" in job["error"] and "(2 times)" in job["error"], job
    finally:
        svc.stop()


# --- upload checks run contained, in turns by key -----------------------------------------------------


@pytest.fixture(scope="module")
def checker_service(tmp_path_factory):
    """Two checking processes, each check under CHECK_S seconds and 0.5 GB."""
    root = tmp_path_factory.mktemp("checks")
    svc = ServiceProcess(root / "data", ["--workers", "0", "--check-workers", "2", "--check-seconds", str(CHECK_S),
                                         "--check-memory-gb", "0.5"], memory_cap=SERVICE_CAP).start()
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def slow_file(tmp_path_factory):
    """A million one-line records: light to hold, seconds to read."""
    path = tmp_path_factory.mktemp("slow") / "slow.jsonl"
    with open(path, "w") as f:
        for i in range(100_000):
            f.write('{"text": "good film", "label": "pos"}\n{"text": "bad film", "label": "neg"}\n' * 5)
    return path


def _left_behind(svc) -> list[Path]:
    data = svc.data_dir
    ids = {d["id"] for d in svc.client(create_key(data, f"admin-{time.monotonic_ns()}", admin=True))
           .get("/v1/datasets").json()}
    stray = [p for p in (data / "datasets").iterdir() if p.name not in ids]
    return stray + [p for p in (data / "cache" / "uploads").glob("worker-*/*")]


def test_an_upload_check_past_its_time_or_memory_answers_413_and_leaves_nothing(checker_service, slow_file, tmp_path):
    http = checker_service.client(create_key(checker_service.data_dir, "bulky"))
    started = time.monotonic()
    resp = upload(http, slow_file)
    assert resp.status_code == 413, resp.text
    assert f"limit of {CHECK_S} s" in resp.json()["error"] and "nothing was stored" in resp.json()["error"]
    assert time.monotonic() - started < 90  # the check stopped at its limit (the file alone takes minutes)
    strings = tmp_path / "strings.json"
    strings.write_text("[" + ",".join(['"ab"'] * 9_000_000) + "]")  # 45 MB: ten times that as Python strings
    resp = upload(http, strings)
    assert resp.status_code == 413, resp.text
    assert "memory" in resp.json()["error"] and "0.50 GB" in resp.json()["error"]
    time.sleep(1)
    assert _left_behind(checker_service) == []
    small = upload(http, write_jsonl(tmp_path / "ok.jsonl", toy_rows(40, 3)))
    assert small.status_code == 201, small.text  # the next check runs in a fresh process


def test_uploads_of_two_keys_do_not_wait_behind_each_other(checker_service, slow_file, tmp_path):
    big = checker_service.client(create_key(checker_service.data_dir, "big-uploader"))
    small = checker_service.client(create_key(checker_service.data_dir, "small-uploader"))
    path = write_jsonl(tmp_path / "small.jsonl", toy_rows(40, 4))
    assert upload(small, path).status_code == 201  # both checking processes are warm
    finished = {}

    def send(name, http, file):
        resp = upload(http, file)
        finished[name] = (time.monotonic(), resp.status_code, resp.text)

    threads = [threading.Thread(target=send, args=("big", big, slow_file)) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(1.0)  # the big key's first check runs; its second waits for its turn
    send("small", small, path)
    assert finished["small"][1] == 201, finished["small"]
    assert "big" not in finished  # answered while the big key's checks still run (each until its time limit)
    for t in threads:
        t.join()
    assert finished["big"][1] == 413


def test_a_client_that_gives_up_while_its_upload_is_checked_gets_no_dataset(checker_service, slow_file):
    key = create_key(checker_service.data_dir, "impatient")
    with checker_service.client(key, timeout=httpx.Timeout(60, read=1.0)) as http:
        with pytest.raises(httpx.ReadTimeout):
            upload(http, slow_file)
    from service_support import wait_for

    wait_for(lambda: _left_behind(checker_service) == [], 30, "the abandoned upload to be removed")
    time.sleep(CHECK_S + 2)  # past the check's time limit: had the check gone on, its dataset would exist by now
    with checker_service.client(key) as http:
        assert http.get("/v1/datasets").json() == []
    assert _left_behind(checker_service) == []


# --- a full disk ------------------------------------------------------------------------------------


def _mount_tmpfs(path: Path, size: str) -> None:
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]).returncode != 0:
        pytest.skip("this machine may not mount a tmpfs")


def _fill(path: Path) -> Path:
    filler = path / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 16))
                f.flush()
        except OSError:
            pass
    return filler


def test_a_full_disk_during_the_check_or_on_job_create_is_507_with_nothing_kept(tmp_path, toy_files, tiny_model_dir):
    import subprocess

    data = tmp_path / "data"
    _mount_tmpfs(data / "cache", "3m")
    try:
        _mount_tmpfs(data / "jobs", "1m")
    except BaseException:
        subprocess.run(["umount", str(data / "cache")])
        raise
    svc = ServiceProcess(data, ["--workers", "0", "--local-models", str(tiny_model_dir)], memory_cap=SERVICE_CAP)
    try:
        svc.start()
        http = svc.client(create_key(data, "disk"))
        rows = write_jsonl(tmp_path / "rows.jsonl", toy_rows(40_000, 9))  # its Arrow copy does not fit in cache/
        resp = upload(http, rows)
        assert resp.status_code == 507, resp.text
        assert "disk is full" in resp.json()["error"] and str(data) not in resp.text
        assert list((data / "datasets").iterdir()) == [] and not list((data / "cache" / "uploads").glob("worker-*/*"))
        assert not _deleted_but_open(svc.proc.pid, data)
        ds = upload(http, toy_files["train"])
        assert ds.status_code == 201, ds.text
        filler = _fill(data / "jobs")
        job = http.post("/v1/jobs", json={"dataset": ds.json()["id"], "config": "tiny", "overrides": tiny(tiny_model_dir)})
        assert job.status_code == 507, job.text
        assert "disk is full" in job.json()["error"] and str(data) not in job.text and "/" not in job.json()["error"]
        assert [p.name for p in (data / "jobs").iterdir()] == ["filler"]
        filler.unlink()
        job = http.post("/v1/jobs", json={"dataset": ds.json()["id"], "config": "tiny", "overrides": tiny(tiny_model_dir)})
        assert job.status_code == 201, job.text
    finally:
        svc.stop()
        subprocess.run(["umount", str(data / "jobs")])
        subprocess.run(["umount", str(data / "cache")])


def _deleted_but_open(pid: int, under: Path) -> list[str]:
    """Files under ``under`` that the service or a process it started holds open after deleting them."""
    from service_support import children

    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        todo += children(p)
        try:
            fds = list(Path(f"/proc/{p}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith(str(under)) and target.endswith("(deleted)"):
                found.append(target)
    return found
