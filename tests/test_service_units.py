"""Pieces of the service that need no server: keys, queue messages, run records and failure reasons, log
tailing, uploads."""

from __future__ import annotations

import asyncio
import json
import pickle
import signal
import statistics
import time
from pathlib import Path

import pytest

from textft.errors import UserError
from textft.service.keys import AuthError, Verifier, create_key, revoke_key
from textft.service.layout import DataDir
from textft.service.queue import JobQueue, JsonSerializer
from textft import run_events
from textft.run_events import BestRecord, EndRecord, ErrorRecord, EvalRecord, PlanRecord, TrainRecord, to_line
from textft.service.scheduler import failure_reason, follow_record, read_new_lines, run_summary
from textft.service.store import Store


@pytest.fixture
def store(tmp_path):
    s = Store(DataDir(tmp_path).create().db)
    yield s
    s.close()


def test_keys_are_salted_scrypt_hashes_checked_on_every_request(store):
    key_a, rec = create_key(store, "alice")
    key_b, _ = create_key(store, "bob", admin=True, max_queued=2)
    rows = store.rows("SELECT * FROM keys")
    assert all(len(r["salt"]) == 16 and len(r["hash"]) == 32 for r in rows)
    assert rows[0]["salt"] != rows[1]["salt"]
    verifier = Verifier(store)
    assert verifier.principal(f"Bearer {key_a}").name == "alice"
    assert verifier.principal(f"bearer {key_a}").name == "alice"  # cached now, still checked
    bob = verifier.principal(f"Bearer {key_b}")
    assert bob.admin and bob.max_queued == 2
    tampered = key_a[:-1] + ("A" if key_a[-1] != "A" else "B")
    for header, message in ((None, "missing API key"), ("Bearer", "Bearer KEY"), (f"Token {key_a}", "Bearer KEY"),
                            (f"Bearer {tampered}", "invalid API key"), ("Bearer tft_zz_short", "invalid API key"),
                            (f"Bearer {key_a.replace(rec['id'], '0' * 12)}", "invalid API key")):
        with pytest.raises(AuthError, match=message):
            verifier.principal(header)
    revoke_key(store, "alice")
    with pytest.raises(AuthError, match="'alice' was revoked"):
        verifier.principal(f"Bearer {key_a}")


def test_an_unknown_key_id_takes_as_long_as_a_wrong_secret(store):
    """Timing must not tell which key ids exist: both run one scrypt (medians, interleaved, so that a
    loaded machine slows both alike)."""
    key, record = create_key(store, "alice")
    verifier = Verifier(store)
    guesses = {"unknown id": "tft_0123456789ab_" + "x" * 43, "wrong secret": f"tft_{record['id']}_" + "y" * 43}
    took = {what: [] for what in guesses}
    for i in range(15):
        for what in (list(guesses) if i % 2 else list(guesses)[::-1]):
            started = time.perf_counter()
            with pytest.raises(AuthError, match="invalid API key"):
                verifier.principal(f"Bearer {guesses[what]}")
            took[what].append(time.perf_counter() - started)
    median = {what: statistics.median(t) for what, t in took.items()}
    assert max(median.values()) < 2 * min(median.values()), median
    assert min(median.values()) > 0.005  # both pay for the hash (scrypt takes tens of ms)


def test_queue_messages_are_json_and_pickles_are_refused(tmp_path):
    queue = JobQueue(DataDir(tmp_path).create())
    queue.enqueue("job_a", 1)
    queue.enqueue("job_b", 1)
    queue.enqueue("job_c", 2, priority=1)
    assert queue.pending() == {("job_a", 1), ("job_b", 1), ("job_c", 2)}
    raw = queue.huey.storage.dequeue()
    assert json.loads(raw)["args"] == ["job_c", 2]  # the resumed job first, as plain JSON
    assert [queue.huey.dequeue().args for _ in range(2)] == [("job_a", 1), ("job_b", 1)]
    evil = pickle.dumps(("not", "json"))
    with pytest.raises(ValueError):
        JsonSerializer().deserialize(evil)


def log_of(tmp_path, *records) -> Path:
    path = tmp_path / "train_log.jsonl"
    path.write_text("".join(to_line(r) for r in records))
    return path


PLAN = PlanRecord(total_steps=40, steps_per_epoch=20, global_batch=16, task="single_label", metric="macro_f1",
                  lower_is_better=False, eval_every_steps=0)


@pytest.mark.parametrize("records,rc,reason,killed", [
    # problems the training process found, each recorded with its field: reported together, not resumed
    ([ErrorRecord("not_found", "'data.train_file': file 'x.csv' does not exist", "data.train_file"),
      ErrorRecord("invalid", "'train.lr' must be > 0", "train.lr")], 1,
     "'data.train_file': file 'x.csv' does not exist; 'train.lr' must be > 0", False),
    ([PLAN, TrainRecord(10, 0.5, 0.7, 1e-4), ErrorRecord("internal", "torch.OutOfMemoryError: CUDA out of memory."
                                                         " Tried to allocate 2.00 GiB", None, 10)], 1,
     "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", False),
    ([PLAN, ErrorRecord("interrupted", "stopped by SIGTERM after step 3; the checkpoints ...", None, 3)], 1,
     "stopped by SIGTERM after step 3; the checkpoints ...", True),  # a stop the service did not ask for
    # no record of why: killed by a signal the process cannot catch (the launcher exits 1 then)
    ([PLAN, TrainRecord(10, 0.5, 0.7, 1e-4)], 1,
     "the training process was killed by SIGKILL (out of memory?) or crashed before it could record why", True),
    ([], 1, "the training process was killed by SIGKILL (out of memory?) or crashed before it could record why", True),
    ([PLAN], 128 + signal.SIGTERM, "the training process was killed by SIGTERM", True),
    ([PLAN], 128 + signal.SIGKILL, "the training process was killed by SIGKILL (out of memory?)", True),
    ([PLAN, EndRecord(40, 2.0, "completed", 3.5)], 0, "training exited without writing its model or an error record",
     False),
])
def test_failure_reasons_are_the_error_records_of_the_run(tmp_path, records, rc, reason, killed):
    path = log_of(tmp_path, *records)
    assert failure_reason(run_summary(path), rc) == (reason, killed)


def test_a_log_of_a_newer_schema_is_refused_gracefully(tmp_path):
    path = tmp_path / "train_log.jsonl"
    path.write_text(json.dumps({**run_events.to_dict(PLAN), "schema": run_events.SCHEMA + 1}) + "\n"
                    + to_line(ErrorRecord("invalid", "'train.lr' must be > 0")))
    assert run_summary(path) is None
    reason, killed = failure_reason(None, 1)
    assert "newer textft" in reason and not killed


def test_the_monitor_follows_the_loops_records_never_recomputing_the_best(tmp_path):
    """The loop's best records (which honour early_stopping_min_delta) are what the job reports: an
    evaluation that scores higher without beating the best by min_delta is not the best."""
    progress, tail = {}, {}
    evals = [EvalRecord(20, 1.0, {"macro_f1": 0.80}), BestRecord(20, 1.0, "macro_f1", 0.80, False),
             EvalRecord(40, 2.0, {"macro_f1": 0.805})]  # higher, but within min_delta: no best record
    events = [e for r in (PLAN, TrainRecord(10, 0.5, 0.7, 1e-4, 32.0), *evals, EndRecord(40, 2.0, "completed", 9.0, 20))
              for e in follow_record(r, run_events.to_dict(r), progress, tail)]
    assert [kind for kind, _ in events] == ["plan", "log", "log", "best", "log", "end"]
    assert progress["best"] == {"metric": "macro_f1", "value": 0.80, "step": 20, "epoch": 1.0, "lower_is_better": False}
    assert (progress["total_steps"], progress["global_batch"], progress["metric"]) == (40, 16, "macro_f1")
    assert progress["step"] == 40 and progress["loss"] == 0.7 and progress["samples_per_s"] == 32.0
    # A resumed attempt rewrites its log from the checkpoint (step 20): nothing is reported twice, but
    # the best is the resumed loop's.
    replay = [PLAN, TrainRecord(10, 0.5, 0.7, 1e-4), BestRecord(10, 0.5, "macro_f1", 0.5, False)]
    again = [e for r in replay for e in follow_record(r, run_events.to_dict(r), progress, tail)]
    assert again == [] and progress["best"]["step"] == 10


def test_log_tailing_reads_whole_lines_and_restarts_on_a_shorter_file(tmp_path):
    path = tmp_path / "train_log.jsonl"
    assert read_new_lines(path, 0) == ([], 0)
    path.write_text('{"step": 1}\n{"step": 2}\n{"st')
    lines, offset = read_new_lines(path, 0)
    assert lines == ['{"step": 1}', '{"step": 2}'] and offset == 24
    with open(path, "a") as f:
        f.write('ep": 3}\n')
    assert read_new_lines(path, offset) == (['{"step": 3}'], 36)
    path.write_text('{"step": 1}\n')  # rewritten from a checkpoint on resume
    assert read_new_lines(path, 36) == (['{"step": 1}'], 12)


class _Request:
    """Enough of a Starlette request for the streaming receiver."""

    def __init__(self, body: bytes, boundary: str, chunk: int):
        self.headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
        self.body, self.chunk = body, chunk

    async def stream(self):
        for i in range(0, len(self.body), self.chunk):
            yield self.body[i:i + self.chunk]


def _multipart(boundary: str, content: bytes, filename="data.csv", fields=()) -> bytes:
    parts = [f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n\r\n".encode()
             + content + b"\r\n"]
    for name, value in fields:
        parts.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n".encode())
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_streamed_upload_keeps_multibyte_text_and_fields_after_the_file(tmp_path, chunk):
    from textft.service.datasets import receive

    content = "text,label\nle café était bon — très,pos\n日本語のレビュー,neg\n".encode()
    body = _multipart("b0undary", content, fields=[("text_column", "text"), ("label_column", "label")])
    upload = asyncio.run(receive(_Request(body, "b0undary", chunk), tmp_path / "ds", 10_000, (".csv",)))
    assert upload.path.read_bytes() == content and upload.size == len(content)
    assert upload.fields == {"text_column": "text", "label_column": "label"}


def test_streamed_upload_refuses_bad_bytes_and_excess_and_leaves_nothing(tmp_path):
    from textft.service.datasets import UploadError, receive

    bad = _multipart("bnd", b"text,label\nok,pos\n\xff\xfe,neg\n")
    with pytest.raises(UploadError, match=r"not UTF-8 text \(byte 0xff on line 3\)") as e:
        asyncio.run(receive(_Request(bad, "bnd", 5), tmp_path / "a", 10_000, (".csv",)))
    assert e.value.status == 422 and not (tmp_path / "a").exists()
    big = _multipart("bnd", b"x" * 5000)
    with pytest.raises(UploadError, match="upload limit") as e:
        asyncio.run(receive(_Request(big, "bnd", 1000), tmp_path / "b", 2000, (".csv",)))
    assert e.value.status == 413 and not (tmp_path / "b").exists()
    with pytest.raises(UploadError, match="did you mean '.csv'") as e:
        asyncio.run(receive(_Request(_multipart("bnd", b"a", filename="x.cvs"), "bnd", 50), tmp_path / "c", 10_000,
                            (".csv", ".jsonl")))
    assert not (tmp_path / "c").exists()


def test_launch_commands_and_gpu_allocation(tmp_path, monkeypatch):
    import threading

    from textft.service.queue import Devices, job_env, launch_command, launch_env

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    plain = {"mixed_precision": "no", "accelerate_config": None, "num_processes": 1, "resume": False}
    cmd = launch_command(tmp_path, plain, [], slots=2)
    # one process: the training module itself, with the settings accelerate launch would have given it
    assert cmd[1:] == ["-m", "textft.train", "--config", str(tmp_path / "job.yaml"), "--no-interpolation"]
    env = launch_env(plain, [], slots=2)
    assert env == {"ACCELERATE_MIXED_PRECISION": "no", "ACCELERATE_DYNAMO_BACKEND": "NO",
                   "OMP_NUM_THREADS": str(max(1, len(__import__("os").sched_getaffinity(0)) // 2))}
    resumed = launch_command(tmp_path, {**plain, "resume": True}, ["0"])
    assert resumed[-1] == "train.resume_from=latest" and "OMP_NUM_THREADS" not in launch_env(plain, ["0"])
    multi = launch_command(tmp_path, {**plain, "accelerate_config": "accelerate.yaml", "num_processes": 2}, ["2", "3"])
    assert multi[1:3] == ["-m", "accelerate.commands.launch"] and multi[-4:-1] == ["textft.train", "--config",
                                                                                 str(tmp_path / "job.yaml")]
    assert multi[multi.index("--config_file") + 1] == "accelerate.yaml" and multi[multi.index("--num_processes") + 1] == "2"
    assert "--main_process_port" in multi  # two jobs on one machine must not share a rendezvous port
    assert launch_env({**plain, "accelerate_config": "accelerate.yaml"}, ["2", "3"]) == {}
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    gpu = job_env(["2", "3"])
    assert gpu["CUDA_VISIBLE_DEVICES"] == "2,3" and "ACCELERATE_USE_CPU" not in gpu and "HF_TOKEN" not in gpu
    assert job_env([])["ACCELERATE_USE_CPU"] == "1"

    devices, never = Devices(["0", "1", "2"]), threading.Event()
    first = devices.acquire(2, never)
    assert first == ["0", "1"] and devices.acquire(1, never) == ["2"]
    gave_up = threading.Event()
    gave_up.set()
    assert devices.acquire(1, gave_up) is None  # all taken: a cancelled or stopping job stops waiting
    devices.release(first)
    assert sorted(devices.acquire(2, never)) == ["0", "1"]


def test_the_checking_process_outlives_the_thread_that_started_it(tmp_path):
    import threading
    import time

    from textft.service.checks import Checker

    checker = Checker(tmp_path / "scratch")
    try:
        starter = threading.Thread(target=lambda: checker.warm_up().result(timeout=300))
        starter.start()
        starter.join()
        time.sleep(1.0)
        path = tmp_path / "d.csv"
        path.write_text("text,label\ngood,pos\nbad,neg\n")
        assert asyncio.run(checker.peek(path, ".csv"))["columns"] == ["text", "label"]
    finally:
        checker.close()


def test_gpus_are_counted_by_torch_only_where_the_machine_has_a_gpu_driver(monkeypatch, tmp_path):
    import subprocess
    import sys

    from textft.service import queue

    driver_files = queue.GPU_DEVICE_FILES
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(queue, "GPU_DEVICE_FILES", (str(tmp_path / "no-such-device"),))
    assert queue.detect_gpus() == []
    monkeypatch.setattr(queue, "GPU_DEVICE_FILES", (str(tmp_path),))  # a driver's file: torch counts them
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert queue.detect_gpus() == ["0", "1"]
    if not any(Path(p).exists() for p in driver_files):
        # on a machine without one, a service's start does not import torch to count none
        code = ("import os, sys; os.environ.pop('CUDA_VISIBLE_DEVICES', None)\n"
                "from textft.service.queue import detect_gpus\n"
                "assert detect_gpus() == [] and 'torch' not in sys.modules, sorted(sys.modules)")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]


def test_closing_the_checker_does_not_wait_for_a_process_still_importing_the_loader(tmp_path):
    import time

    from textft.service.checks import Checker

    checker = Checker(tmp_path / "scratch", workers=2)
    warming = checker.warm_up()
    time.sleep(0.3)  # the processes are starting: importing the loader takes seconds
    started = time.monotonic()
    checker.close()
    assert time.monotonic() - started < 3
    assert all(slot.proc is None for slot in checker.slots) and not list((tmp_path / "scratch").glob("worker-*/*"))
    assert warming.exception(timeout=30) is not None  # the warm-up gave up: no process starts after the close


def test_uploads_of_every_task_count_their_labels_and_preview_them_readably(tmp_path):
    from conftest import multi_label_rows, regression_rows, write_jsonl
    from textft.service.datasets import inspect

    multi = multi_label_rows(60, 1)
    write_jsonl(tmp_path / "multi.jsonl", multi)
    got = inspect(str(tmp_path / "multi.jsonl"), "multi.jsonl", "text", "labels", False, str(tmp_path))
    assert got["task"] == "multi_label" and got["rows"] == 60
    for name, n in got["labels"].items():  # texts carrying each label, counted over the multi-hot rows
        assert n == sum(name in r["labels"] for r in multi)
    truth = {r["text"]: r["labels"] for r in multi}
    order = list(got["labels"]).index
    assert got["preview"] and all(p["label"] == ", ".join(sorted(truth[p["text"]], key=order)) for p in got["preview"])

    scores = regression_rows(50, 2)
    write_jsonl(tmp_path / "reg.jsonl", scores)
    got = inspect(str(tmp_path / "reg.jsonl"), "reg.jsonl", "text", "score", False, str(tmp_path))
    assert got["task"] == "regression" and got["rows"] == 50 and list(got["labels"].values()) == [50]
    assert isinstance(got["preview"][0]["label"], float)


def test_peeking_at_a_delimited_file_reads_its_header_and_first_rows_as_strings(tmp_path):
    from textft.service.datasets import peek

    def look(name, data):
        (tmp_path / name).write_bytes(data)
        return peek(str(tmp_path / name), (tmp_path / name).suffix, rows=2)

    out = look("a.csv", '\ufefftext,label\n\n"good, really",pos\n"two\nlines",neg\nthird,pos\n'.encode())
    assert out["columns"] == ["text", "label"]
    assert out["rows"] == [{"text": "good, really", "label": "pos"}, {"text": "two\nlines", "label": "neg"}]
    assert out["suggested"] == {"text_column": "text", "label_column": "label"}
    out = look("b.tsv", b"review\tstars\tstars\t\nnice, fine\t5\n")
    assert out["columns"] == ["review", "stars", "stars.1", "Unnamed: 3"]
    assert out["rows"] == [{"review": "nice, fine", "stars": "5", "stars.1": None, "Unnamed: 3": None}]
    assert look("c.csv", b'text,label\n"abc"def,pos\n')["rows"] == [{"text": "abcdef", "label": "pos"}]
    for name, data, reason in [("d.csv", "text,label\ncaf\xe9,pos\n".encode("latin-1"), "can't decode byte 0xe9"),
                               ("e.csv", b"", "the file is empty"),
                               ("f.csv", b'text,label\n"never closed,pos\n', "a quote that is never closed"),
                               ("g.csv", b"text,label\na,b\nc,d,e\n", "expected 2 fields in line 3, saw 3")]:
        (problem,) = look(name, data)["problems"]
        assert problem[0] == "file" and problem[1].startswith("'file': could not read it as csv: ")
        assert reason in problem[1] and "\n" not in problem[1]


# --- the API's shape --------------------------------------------------------------------------

OPERATIONS = {
    ("get", "/health"), ("get", "/v1/me"), ("get", "/v1/tasks"), ("get", "/v1/presets"),
    ("get", "/v1/accelerate-configs"), ("get", "/v1/transfer-options"), ("get", "/v1/datasets"), ("post", "/v1/datasets"),
    ("post", "/v1/datasets/columns"), ("get", "/v1/datasets/{dataset_id}"), ("delete", "/v1/datasets/{dataset_id}"),
    ("post", "/v1/jobs"), ("get", "/v1/jobs"), ("get", "/v1/jobs/{job_id}"), ("delete", "/v1/jobs/{job_id}"),
    ("get", "/v1/jobs/{job_id}/events"), ("get", "/v1/jobs/{job_id}/log"), ("post", "/v1/jobs/{job_id}/cancel"),
    ("get", "/v1/jobs/{job_id}/report"), ("post", "/v1/recipe"), ("get", "/v1/models"),
    ("get", "/v1/models/{model_id}"), ("get", "/v1/models/{model_id}/download"),
    ("post", "/v1/models/{model_id}/predict"), ("post", "/v1/models/{model_id}/push"),
    ("get", "/metrics"), ("get", "/v1/jobs/{job_id}/deliveries"), ("post", "/v1/me/webhook-secret")}
"""Every operation of the API, as clients (the page, scripts) call them."""


@pytest.fixture
def api(tmp_path, monkeypatch):
    """The service's app, not started (no executors, monitor or checking process), and a key."""
    from fastapi.testclient import TestClient

    from textft.service.app import create_app
    from textft.service.core import Options, Service

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))  # the service would set it for jobs
    service = Service(Options(data_dir=tmp_path / "data", workers=0))
    key, _ = create_key(service.store, "alice")
    yield TestClient(create_app(service), headers={"Authorization": f"Bearer {key}"})
    service.store.close()


def resolve(spec: dict, schema: dict) -> dict:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def test_openapi_describes_a_typed_answer_of_every_operation_and_one_error_shape(api):
    spec = api.get("/openapi.json").json()
    operations = {(method, path): op for path, ops in spec["paths"].items() for method, op in ops.items()}
    assert set(operations) == OPERATIONS  # no path lost, none added unnoticed
    untyped = []
    for (method, path), op in sorted(operations.items()):
        answers = {status: r for status, r in op["responses"].items() if status.startswith("2")}
        assert answers, (method, path)
        if method == "post" and not path.endswith(("/cancel", "/webhook-secret")):  # every body is declared (these take none)
            bodies = op["requestBody"]["content"]
            assert all(resolve(spec, c["schema"]).get("properties") for c in bodies.values()), (method, path)
        for status, answer in answers.items():
            if status == "204":
                assert "content" not in answer  # no content, by definition
                continue
            for media, content in answer["content"].items():
                schema = resolve(spec, content.get("schema") or {})
                typed = schema.get("properties") or schema.get("items") or schema.get("type") == "string"
                if not typed:
                    untyped.append(f"{method.upper()} {path} {status} {media}")
        for errors in ("4XX", "5XX"):
            assert op["responses"][errors]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/ErrorOut"}, (method, path)
    assert untyped == []
    job = resolve(spec, {"$ref": "#/components/schemas/JobOut"})
    progress = resolve(spec, job["properties"]["progress"])
    assert {"total_steps", "step", "best", "eta_s"} <= set(progress["properties"])


def test_errors_are_typed_problems_with_the_status_of_their_kind(api):
    from fastapi.testclient import TestClient

    anonymous = TestClient(api.app)
    refused = anonymous.get("/v1/me")
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    assert refused.json()["problems"] == [{"field": "authorization", "kind": "unauthorized",
                                           "message": refused.json()["error"]}]
    missing = api.get("/v1/jobs/job_nope")
    assert missing.status_code == 404 and missing.json() == {
        "error": "no job 'job_nope'", "problems": [{"field": None, "message": "no job 'job_nope'", "kind": "not_found"}]}
    body = {"dataset": "ds_nope", "config": "tiny", "overrides": {"train.lr": -1, "trian.epochs": 2,
                                                                   "model.transfer": "topk"}}
    invalid = api.post("/v1/jobs", json=body)
    fields = {p["field"]: p for p in invalid.json()["problems"]}
    assert invalid.status_code == 422 and {p["kind"] for p in fields.values()} == {"invalid"}
    assert "'train.lr' must be > 0" in fields["overrides.train.lr"]["message"]
    assert "did you mean 'top_k'" in fields["overrides.model.transfer"]["message"]
    assert "unknown section 'trian'" in fields["overrides.trian.epochs"]["message"]  # the override that named it
    assert "no dataset 'ds_nope'" in fields["dataset"]["message"]
    assert api.get("/v1/jobs", params={"state": "done"}).json()["problems"][0]["field"] == "state"
    malformed = api.post("/v1/jobs", content=b"{", headers={"content-type": "application/json"})
    assert malformed.status_code == 400 and malformed.json()["problems"][0]["kind"] == "malformed"
    unknown = api.get("/v1/nothing-here")
    assert unknown.status_code == 404 and unknown.json()["problems"][0]["kind"] == "not_found"
    not_multipart = api.post("/v1/datasets", content=b"text,label\n", headers={"content-type": "text/csv"})
    assert not_multipart.status_code == 415 and not_multipart.json()["problems"][0] == {
        "field": "file", "kind": "unsupported", "message": not_multipart.json()["error"]}


def test_every_problem_kind_has_its_status():
    from textft.errors import KINDS
    from textft.service.problems import STATUS

    assert set(STATUS) == set(KINDS)
    assert STATUS["invalid"] == 422 and STATUS["not_found"] == 404 and STATUS["quota"] == 429


def test_service_settings_come_from_flags_then_the_environment_then_defaults(monkeypatch, capsys):
    from textft.service.env_options import EnvParser, label

    def parser():
        p = EnvParser(prog="t")
        p.option("--data-dir", required=True, help="d")
        p.option("--port", type=int, default=8080, help="p")
        p.option("--configs", action="append", default=[], many=True, help="c")
        p.option("--log-level", default="info", choices=["info", "debug"], help="l")
        return p

    args, sources = parser().parse(["--data-dir", "d"])
    assert (args.port, args.configs, args.log_level, sources) == (8080, [], "info", {})
    monkeypatch.setenv("TEXTFT_PORT", "9000")
    monkeypatch.setenv("TEXTFT_CONFIGS", "/a:/b")
    monkeypatch.setenv("TEXTFT_DATA_DIR", "/srv/x")
    args, sources = parser().parse([])
    assert (args.data_dir, args.port, args.configs) == ("/srv/x", 9000, ["/a", "/b"])
    assert label("port", sources) == "TEXTFT_PORT" and label("log_level", sources) == "'--log-level'"
    args, sources = parser().parse(["--port", "1", "--configs", "/c", "--data-dir", "e"])  # flags win
    assert (args.port, args.configs, args.data_dir) == (1, ["/c"], "e") and sources == {}
    monkeypatch.setenv("TEXTFT_PORT", "eighty")
    monkeypatch.setenv("TEXTFT_LOG_LEVEL", "debgu")
    with pytest.raises(UserError) as e:  # every problem at once, each naming its variable
        parser().parse([], check=lambda args, sources: [f"checked port {args.port}"])
    assert e.value.problems == ["TEXTFT_PORT must be a whole number, got 'eighty'",
                                "TEXTFT_LOG_LEVEL must be one of info, debug, got 'debgu' (did you mean 'debug'?)",
                                "checked port 8080"]
    parser().print_help()
    out = capsys.readouterr().out
    assert "[env TEXTFT_PORT]" in out and "[env TEXTFT_DATA_DIR]" in out and "a flag wins over" in out


def test_broker_passwords_never_reach_logs_or_messages(tmp_path):
    from textft.service.queue import public_url

    assert public_url("redis://:s3cret@redis:6379/0") == "redis://:***@redis:6379/0"
    assert public_url("redis://user:s3cret@redis/0") == "redis://user:***@redis/0"
    assert public_url("redis://redis:6379/0") == "redis://redis:6379/0" and public_url(None) is None
    with pytest.raises(ValueError) as e:
        JobQueue(DataDir(tmp_path).create(), "http://:s3cret@host/0")
    assert "s3cret" not in str(e.value) and "***" in str(e.value)


def test_a_database_of_a_newer_textft_is_refused_in_one_line_and_left_untouched(tmp_path):
    import sqlite3
    import subprocess
    import sys

    db_path = DataDir(tmp_path).create().db
    db = sqlite3.connect(db_path)
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    with pytest.raises(UserError, match="newer textft .database schema 99.*upgrade textft"):
        Store(db_path)
    proc = subprocess.run([sys.executable, "-m", "textft", "service", "keys", "list", "--data-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    db = sqlite3.connect(db_path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 99  # not migrated down, nothing created
    assert db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
    db.close()
