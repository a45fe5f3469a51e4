"""A tenant of ``textft service`` who does not play nice, against a real service on loopback: settings
that try to read the server's environment, requests for more than the machine has, concurrent
requests racing a quota, and uploads built to stall the checker.

Every service here runs under an address-space cap, so that a bound that stops holding fails the
test (the service is killed) instead of taking the machine down.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from conftest import toy_rows, write_jsonl
from service_support import SERVICE_CAP, ServiceProcess, create_key, rss, tiny_overrides as tiny, upload

SECRET = "hf_hostile0probe0secret0value"


def problems_of(resp: httpx.Response) -> dict[str, str]:
    return {p["field"]: p["message"] for p in resp.json().get("problems", [])}


@pytest.fixture(scope="module")
def front(tmp_path_factory, tiny_model_dir):
    """A service that queues but runs no jobs: every probe here is answered at the door."""
    root = tmp_path_factory.mktemp("hostile")
    svc = ServiceProcess(root / "data", ["--local-models", str(tiny_model_dir), "--workers", "0",
                                         "--max-steps", "200000", "--job-hours", "2", "--max-upload-cells", "100000"],
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
    """Column and dataset names are the user's data: they are kept as written, never resolved, through
    the job's config and the ``textft train`` that reads it."""
    column = "${oc.env:TEXTFT_PROBE_SECRET}"
    rows = [{column: r["text"], "label": r["label"]} for r in toy_rows(60, 5)]
    resp = upload(mallory, write_jsonl(tmp_path / "odd.jsonl", rows), text_column=column, name=column)
    assert resp.status_code == 201, resp.text
    ds = resp.json()
    assert ds["text_column"] == column and ds["name"] == column
    recipe = mallory.post("/v1/recipe", json={"dataset": ds["id"], "config": "tiny", "overrides": tiny(tiny_model_dir)})
    assert recipe.status_code == 200, recipe.text
    settings = recipe.json()["settings"]
    assert settings["data.text_column"] == column and settings["data.source_name"] == f"{column} ({ds['id']})"
    assert SECRET not in recipe.text
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
    assert rss(front.proc.pid) < 2 << 30


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
    many = tmp_path / "many.csv"  # 4 columns x 30,000 rows: 120,000 cells, the service reads 100,000
    many.write_text("text,label,a,b\n" + "good film,pos,1,2\nbad film,neg,3,4\n" * 15_000)
    resp = upload(mallory, many)
    assert resp.status_code == 422, resp.text
    assert "25,001 rows x 4 columns is more than the 100,000 cells" in resp.text, resp.text
    rows = write_jsonl(tmp_path / "many.jsonl", [{"text": "good film", "label": "pos"}] * 60_000)
    resp = upload(mallory, rows)
    assert resp.status_code == 422 and "100,000 cells" in resp.text, resp.text
    assert set((front.data_dir / "datasets").iterdir()) == before
