"""A tenant of ``textft service`` who does not play nice, against a real service on loopback: settings
that try to read the server's environment, requests for more than the machine has, concurrent
requests racing a quota, and uploads built to stall the checker.

Every service here runs under an address-space cap, so that a bound that stops holding fails the
test (the service is killed) instead of taking the machine down.
"""

from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from conftest import toy_rows, write_jsonl
from service_support import ServiceProcess, create_key, upload

SECRET = "hf_hostile0probe0secret0value"
SERVICE_CAP = 10 << 30
"""Address space the service (and whatever it starts) may map: far above what it needs, far below the machine."""


def tiny(tiny_model_dir, **overrides) -> dict:
    return {"model.name_or_path": str(tiny_model_dir), "model.random_init": False, "data.max_length": 32,
            "train.epochs": 2, "train.lr": 3e-3, "train.batch_size": 16, "train.mixed_precision": "fp32",
            "train.logging_steps": 5, **overrides}


def problems_of(resp: httpx.Response) -> dict[str, str]:
    return {p["field"]: p["message"] for p in resp.json().get("problems", [])}


@pytest.fixture(scope="module")
def front(tmp_path_factory, tiny_model_dir):
    """A service that queues but runs no jobs: every probe here is answered at the door."""
    root = tmp_path_factory.mktemp("hostile")
    svc = ServiceProcess(root / "data", ["--local-models", str(tiny_model_dir), "--workers", "0",
                                         "--max-steps", "200000", "--job-hours", "2"],
                         env={"HF_TOKEN": SECRET, "TEXTFT_PROBE_SECRET": SECRET}, memory_cap=SERVICE_CAP).start()
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def mallory(front):
    return front.client(create_key(front.data_dir, "mallory"))


@pytest.fixture(scope="module")
def toy(mallory, toy_files):
    resp = upload(mallory, toy_files["train"])
    assert resp.status_code == 201, resp.text
    return resp.json()


# --- no interpolation of user input ----------------------------------------------------------------


RESOLVERS = ["${oc.env:TEXTFT_PROBE_SECRET}", "${oc.env:HF_TOKEN,x}", "pre ${oc.env:HOME} post",
             "${oc.decode:'${oc.env:HF_TOKEN}'}", "${oc.create:{a: '${oc.env:HF_TOKEN}'}}", "${oc.select:train.lr}",
             "${train.lr}", "${oc.dict.keys:train}"]


@pytest.mark.parametrize("route", ["/v1/recipe", "/v1/jobs"])
@pytest.mark.parametrize("key,value", [("train.seed", v) for v in RESOLVERS] + [
    ("model.revision", "${oc.env:TEXTFT_PROBE_SECRET}"), ("data.label_names", ["a", "${oc.env:HF_TOKEN}"]),
    ("train.class_weights", {"pos": "${oc.env:HF_TOKEN}"}), ("train.class_weights", {"${oc.env:HF_TOKEN}": 2})])
def test_settings_are_never_interpolated_and_never_echo_the_environment(front, mallory, toy, tiny_model_dir, route,
                                                                        key, value):
    resp = mallory.post(route, json={"dataset": toy["id"], "config": "tiny",
                                     "overrides": tiny(tiny_model_dir, **{key: value})})
    assert resp.status_code == 422, resp.text
    assert SECRET not in resp.text and os.environ.get("HOME", "/root") not in resp.text
    message = problems_of(resp)[f"overrides.{key}"]
    assert "not interpolated" in message and "give the value itself" in message


def test_a_literal_column_named_like_an_interpolation_stays_literal_in_the_job(front, mallory, tiny_model_dir, tmp_path):
    """Column names are the user's data: they are kept as written, never resolved, through the job's
    config and the ``textft train`` that reads it."""
    column = "${oc.env:TEXTFT_PROBE_SECRET}"
    rows = [{column: r["text"], "label": r["label"]} for r in toy_rows(60, 5)]
    resp = upload(mallory, write_jsonl(tmp_path / "odd.jsonl", rows), text_column=column)
    assert resp.status_code == 201, resp.text
    ds = resp.json()
    assert ds["text_column"] == column
    recipe = mallory.post("/v1/recipe", json={"dataset": ds["id"], "config": "tiny", "overrides": tiny(tiny_model_dir)})
    assert recipe.status_code == 200, recipe.text
    assert recipe.json()["settings"]["data.text_column"] == column and SECRET not in recipe.text
    job = mallory.post("/v1/jobs", json={"dataset": ds["id"], "config": "tiny", "overrides": tiny(tiny_model_dir)})
    assert job.status_code == 201, job.text
    job_dir = front.data_dir / "jobs" / job.json()["id"]
    written = (job_dir / "job.yaml").read_text()
    assert column in written and SECRET not in written
    assert "--no-interpolation" in _launch_command(job_dir)


def _launch_command(job_dir: Path) -> list[str]:
    from textft.service.layout import read_json
    from textft.service.queue import launch_command

    return launch_command(job_dir, read_json(job_dir / "job.json"), [])


def test_textft_train_without_interpolation_keeps_values_as_written(tmp_path):
    from textft.config import load_config

    path = tmp_path / "job.yaml"
    path.write_text("data:\n  train_file: t.csv\n  text_column: ${oc.env:HOME}\nmodel:\n  revision: '${x}'\n")
    cfg = load_config(path, ["train.seed=7", "data.label_column=${oc.env:HOME}"], interpolate=False)
    assert cfg.data.text_column == "${oc.env:HOME}" and cfg.model.revision == "${x}"
    assert cfg.data.label_column == "${oc.env:HOME}" and cfg.train.seed == 7
    assert cfg.to_dict()["data"]["text_column"] == "${oc.env:HOME}"


# --- bounds on what a request may ask for -------------------------------------------------------------


BOUNDS = [
    ({"train.epochs": 1e9}, "overrides.train.epochs", ["1e+09 passes", "at most 1,000"]),
    ({"train.epochs": 1000, "train.batch_size": 1}, "overrides.train.epochs",
     ["360,000 optimizer steps (1000 passes of 360 steps)", "at most 200,000"]),
    ({"train.max_steps": 10 ** 9}, "overrides.train.max_steps", ["200,000", "optimizer steps"]),
    ({"train.max_steps": 1e300}, "overrides.train.max_steps", ["200,000"]),
    ({"train.epochs": "inf"}, "overrides.train.epochs", ["finite"]),
    ({"data.max_length": 10 ** 6}, "overrides.data.max_length", ["128 positions"]),
    ({"train.batch_size": 10 ** 9}, "overrides.train.batch_size", ["at most 1,024"]),
    ({"train.eval_batch_size": 10 ** 9}, "overrides.train.eval_batch_size", ["at most 1,024"]),
    ({"train.grad_accum_steps": 10 ** 9}, "overrides.train.grad_accum_steps", ["at most 1,024"]),
    ({"train.num_workers": 100_000}, "overrides.train.num_workers", ["CPU core"]),
    ({"train.keep_checkpoints": 10 ** 6}, "overrides.train.keep_checkpoints", ["at most 5"]),
    ({"train.max_steps": 90_000, "train.eval_every_steps": 1}, "overrides.train.eval_every_steps",
     ["90,000 evaluations", "at most 1,000"]),
    ({"train.max_steps": 150_000, "train.logging_steps": 1}, "overrides.train.logging_steps", ["150,000 log entries", "at most 100,000"]),
    ({"train.time_budget_s": 1e9}, "overrides.train.time_budget_s", ["2 h", "time limit"]),
]


@pytest.mark.parametrize("overrides,field,words", BOUNDS, ids=[next(iter(b[0])) + "-" + str(i) for i, b in enumerate(BOUNDS)])
def test_every_resource_a_job_asks_for_is_bounded_with_a_422_naming_the_limit(front, mallory, toy, tiny_model_dir,
                                                                               overrides, field, words):
    for route in ("/v1/recipe", "/v1/jobs"):
        started = time.monotonic()
        resp = mallory.post(route, json={"dataset": toy["id"], "config": "tiny",
                                         "overrides": tiny(tiny_model_dir, **overrides)})
        assert time.monotonic() - started < 10
        assert resp.status_code == 422, resp.text
        message = problems_of(resp).get(field, "")
        assert all(w in message for w in words), (field, resp.json())


def test_processes_beyond_the_machine_are_refused(front, mallory, toy, tiny_model_dir):
    cores = len(os.sched_getaffinity(0))
    for body in ({"num_processes": 100_000}, {"accelerate_config": "cpu_2proc", "num_processes": 100_000}):
        resp = mallory.post("/v1/jobs", json={"dataset": toy["id"], "config": "tiny", **body,
                                              "overrides": tiny(tiny_model_dir)})
        assert resp.status_code == 422, resp.text
        assert f"{cores} CPU core" in problems_of(resp)["num_processes"]


def test_a_recipe_for_a_billion_epochs_answers_at_once_and_health_stays_responsive(front, mallory, toy, tiny_model_dir):
    """The request that once built a set of a billion evaluation steps on the event loop."""
    results, stop = [], threading.Event()

    def probe_health():
        with httpx.Client(base_url=front.url, timeout=10) as http:
            while not stop.is_set() or len(results) < 3:
                started = time.monotonic()
                try:
                    code = http.get("/health").status_code
                except httpx.HTTPError as e:
                    code = repr(e)
                results.append((code, time.monotonic() - started))
                time.sleep(0.05)

    watcher = threading.Thread(target=probe_health)
    watcher.start()
    try:
        for overrides in ({"train.epochs": 1e9}, {"train.epochs": 1e9, "train.max_steps": None},
                          {"train.max_steps": 99_999, "train.eval_every_steps": 1}):
            started = time.monotonic()
            resp = mallory.post("/v1/recipe", json={"dataset": toy["id"], "config": "tiny",
                                                    "overrides": tiny(tiny_model_dir, **overrides)})
            assert resp.status_code == 422 and time.monotonic() - started < 5, resp.text
    finally:
        stop.set()
        watcher.join()
    assert all(code == 200 and seconds < 5.0 for code, seconds in results), results
    assert _rss(front.proc.pid) < 2 << 30


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


# --- quotas --------------------------------------------------------------------------------------------


def test_twenty_concurrent_job_requests_with_a_limit_of_three_queue_exactly_three(front, toy_files, tiny_model_dir):
    http = front.client(create_key(front.data_dir, "racer", max_queued=3))
    ds = upload(http, toy_files["train"]).json()
    body = {"dataset": ds["id"], "config": "tiny", "overrides": tiny(tiny_model_dir)}
    barrier = threading.Barrier(20)

    def submit(_):
        with httpx.Client(base_url=front.url, headers=http.headers, timeout=60) as client:
            barrier.wait()
            return client.post("/v1/jobs", json=body)

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(submit, range(20)))
    codes = sorted(r.status_code for r in answers)
    assert codes == [201] * 3 + [429] * 17, [r.text for r in answers if r.status_code not in (201, 429)]
    assert all("3 queued job(s), its limit" in r.json()["error"] for r in answers if r.status_code == 429)
    assert len(http.get("/v1/jobs", params={"state": "queued"}).json()) == 3
    assert len(list((front.data_dir / "jobs").iterdir())) >= 3  # refused requests left no directory
    owned = {j["id"] for j in http.get("/v1/jobs").json()}
    assert owned <= {p.name for p in (front.data_dir / "jobs").iterdir()}


def test_storage_per_key_is_bounded_with_a_507_saying_what_is_used(front, tmp_path, tiny_model_dir):
    http = front.client(create_key(front.data_dir, "hoarder", max_storage_bytes=60_000))
    path = write_jsonl(tmp_path / "rows.jsonl", toy_rows(500, 7))  # about 41 kB
    first = upload(http, path)
    assert first.status_code == 201, first.text
    second = upload(http, path)
    assert second.status_code == 507, second.text
    message = second.json()["error"]
    assert f"{first.json()['size_bytes'] / 1e6:.2f} MB" in message and "0.06 MB" in message
    assert len(http.get("/v1/datasets").json()) == 1
    assert not any(p.name != first.json()["id"] for p in _owned_dirs(front, http))
    me = http.get("/v1/me").json()
    assert me["limits"]["max_storage_bytes"] == 60_000 and me["storage_bytes"] == first.json()["size_bytes"]


def _owned_dirs(front, http) -> list[Path]:
    ids = {d["id"] for d in http.get("/v1/datasets").json()}
    return [p for p in (front.data_dir / "datasets").iterdir() if p.name in ids]


# --- uploads: shape bounds --------------------------------------------------------------------------------


def test_uploads_too_wide_too_long_a_row_or_too_many_cells_are_refused_cheaply(front, mallory, tmp_path):
    wide = tmp_path / "wide.csv"
    wide.write_text(",".join(f"c{i}" for i in range(20_000)) + "\n" + ",".join("x" * 20_000) + "\n")
    long_row = tmp_path / "long.csv"
    long_row.write_text("text,label\n" + "w " * 1_500_000 + ",pos\nok,neg\n")
    before = set((front.data_dir / "datasets").iterdir())
    for route in ("/v1/datasets", "/v1/datasets/columns"):
        resp = upload(mallory, wide) if route == "/v1/datasets" else \
            mallory.post(route, files={"file": ("wide.csv", wide.read_bytes())})
        assert resp.status_code == 422, resp.text
        assert "20,000 columns" in resp.text and "at most 1,000" in resp.text and len(resp.content) < 4096
    resp = upload(mallory, long_row)
    assert resp.status_code == 422 and "row" in resp.text and "1 MB" in resp.text, resp.text
    assert set((front.data_dir / "datasets").iterdir()) == before


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
    service_rss = _rss(runner.proc.pid)
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
    assert _rss(runner.proc.pid) < service_rss + (300 << 20)  # the service kept its own memory


def test_a_job_past_its_time_limit_is_stopped_and_fails_saying_so(runner, toy_files, tiny_model_dir):
    http = runner.client(create_key(runner.data_dir, "slow", max_job_seconds=30))
    toy = upload(http, toy_files["train"]).json()
    refused = http.post("/v1/jobs", json={"dataset": toy["id"], "config": "tiny", "overrides": tiny(
        tiny_model_dir, **{"train.time_budget_s": 60})})
    assert refused.status_code == 422 and "job time limit of 30 s" in refused.text, refused.text
    resp = http.post("/v1/jobs", json={"dataset": toy["id"], "config": "tiny",
                                       "overrides": tiny(tiny_model_dir, **{"train.epochs": 400})})
    assert resp.status_code == 201, resp.text
    job = _wait_job(http, resp.json()["id"], ("failed", "succeeded"))
    assert job["state"] == "failed" and "time limit of 30 s" in job["error"] and job["attempt"] == 1, job
    assert not runner.data_dir.joinpath("jobs", job["id"], "attempt-2.json").exists()


def _wait_job(http, job_id: str, states: tuple[str, ...], timeout: float = 300) -> dict:
    from service_support import wait_for

    return wait_for(lambda: (j := http.get(f"/v1/jobs/{job_id}").json())["state"] in states and j, timeout,
                    f"job {job_id} to reach {states}", interval=0.5)


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
    """Two checking processes, each check under 10 s and 0.5 GB."""
    root = tmp_path_factory.mktemp("checks")
    svc = ServiceProcess(root / "data", ["--workers", "0", "--check-workers", "2", "--check-seconds", "10",
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
    assert "limit of 10 s" in resp.json()["error"] and "nothing was stored" in resp.json()["error"]
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
    assert "big" not in finished  # answered while the big key's checks still run (each until its 10 s limit)
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
    time.sleep(12)  # past the check's time limit: had the check gone on, its dataset would exist by now
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
