"""``textft service`` as a real subprocess on loopback: keys, uploads, jobs, events, models.

One service (one executor) is shared by the tests of this module; each test uses its own keys.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import httpx
import pytest

import textft
from textft.presets import presets
from conftest import toy_rows, write_jsonl
from service_support import (ServiceProcess, create_key, read_events, upload, wait_for, wait_state)

TOKEN = "hf_service0secret0token0value42"


def tiny_job(tiny_model_dir, **overrides) -> dict:
    """Overrides that make the `tiny` preset train the tiny test BERT on the toy task in seconds."""
    return {"model.name_or_path": str(tiny_model_dir), "model.random_init": False, "data.max_length": 32,
            "train.epochs": 6, "train.lr": 3e-3, "train.batch_size": 16, "train.mixed_precision": "no",
            "train.logging_steps": 5, **overrides}


@pytest.fixture(scope="module")
def service(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("service")
    team = root / "team-configs"  # a team's own presets, beside the packaged ones
    (team / "accelerate").mkdir(parents=True)
    (team / "team-tiny.yaml").write_text("# The team's debugging preset.\n" + presets()["tiny"].path.read_text())
    (team / "accelerate" / "team_cpu.yaml").write_text(presets()["accelerate/cpu_2proc"].path.read_text())
    svc = ServiceProcess(root / "data", ["--local-models", str(tiny_model_dir), "--save-every-steps", "0",
                                         "--grace", "10", "--configs", str(team)], env={"HF_TOKEN": TOKEN}).start()
    yield svc
    assert svc.stop() in (0, -15), svc.tail()  # uvicorn ends a graceful stop by re-raising the signal


@pytest.fixture(scope="module")
def alice(service):
    return service.client(create_key(service.data_dir, "alice", hub_namespaces=["textft-tests"]))


@pytest.fixture(scope="module")
def toy_sets(alice, toy_files):
    """The toy train/validation/test files uploaded by alice: {split: dataset record}."""
    out = {}
    for split, path in toy_files.items():
        resp = upload(alice, path)
        assert resp.status_code == 201, resp.text
        out[split] = resp.json()
    return out


@pytest.fixture(scope="module")
def finished_job(alice, toy_sets, tiny_model_dir):
    """A job that trained the tiny model on the toy task, with the events read while it ran."""
    resp = alice.post("/v1/jobs", json={"dataset": toy_sets["train"]["id"], "validation_dataset": toy_sets["validation"]["id"],
                                        "test_dataset": toy_sets["test"]["id"], "config": "tiny",
                                        "overrides": tiny_job(tiny_model_dir)})
    assert resp.status_code == 201, resp.text
    job = resp.json()
    # A client that reads a few events, drops the connection, and comes back with Last-Event-ID.
    first = read_events(alice, job["id"], limit=3)
    rest = read_events(alice, job["id"], last_id=first[-1]["id"])
    done = wait_state(alice, job["id"], ("succeeded", "failed"))
    assert done["state"] == "succeeded", (done, alice.get(f"/v1/jobs/{job['id']}/log").text)
    return {"job": done, "events": first + rest}


# --- keys and auth ----------------------------------------------------------------------------


def test_keys_command_prints_the_key_once_and_stores_only_a_hash(tmp_path):
    data = tmp_path / "keys"
    run = lambda *a: subprocess.run([sys.executable, "-m", "textft", "service", "keys", *a, "--data-dir", str(data)],
                                    capture_output=True, text=True, timeout=60)
    made = run("create", "--name", "ci-bot", "--admin", "--max-queued", "3")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("tft_") and len(key) > 50 and "shown only this once" in made.stderr
    listed = run("list")
    assert "ci-bot" in listed.stdout and key not in listed.stdout and key.split("_")[-1] not in listed.stdout
    db = (data / "textft.db").read_bytes()
    assert key.split("_")[-1].encode() not in db  # the secret never reaches the database
    assert run("create", "--name", "ci-bot").returncode == 2  # names are unique
    bad = run("revoke", "ci-bto")
    assert bad.returncode == 2 and "did you mean 'ci-bot'" in bad.stderr
    assert run("revoke", "ci-bot").returncode == 0
    (record,) = json.loads(run("list", "--json").stdout)
    assert record["name"] == "ci-bot" and record["admin"] and record["max_queued"] == 3 and record["revoked_at"]


def test_auth_matrix(service, alice, toy_sets, finished_job):
    bob = service.client(create_key(service.data_dir, "bob"))
    admin = service.client(create_key(service.data_dir, "root", admin=True))
    revoked_key = create_key(service.data_dir, "mallory")
    revoked = service.client(revoked_key)
    assert revoked.get("/v1/me").status_code == 200
    assert subprocess.run([sys.executable, "-m", "textft", "service", "keys", "revoke", "mallory", "--data-dir",
                           str(service.data_dir)], capture_output=True, timeout=60).returncode == 0
    job_id, ds_id = finished_job["job"]["id"], toy_sets["train"]["id"]
    paths = [f"/v1/jobs/{job_id}", f"/v1/datasets/{ds_id}", f"/v1/models/{job_id}", f"/v1/jobs/{job_id}/log",
             f"/v1/jobs/{job_id}/report"]
    anonymous = service.client(None)
    wrong = service.client("tft_0123456789ab_" + "x" * 43)
    garbage = httpx.Client(base_url=service.url, headers={"Authorization": "Basic YWxpY2U6c2VjcmV0"})
    assert anonymous.get("/health").status_code == 200
    for path in paths:
        for client, status, message in ((anonymous, 401, "missing API key"), (wrong, 401, "invalid API key"),
                                        (garbage, 401, "Bearer KEY"), (revoked, 401, "'mallory' was revoked"),
                                        (bob, 404, "no "), (admin, 200, None), (alice, 200, None)):
            resp = client.get(path)
            assert resp.status_code == status, (path, resp.text)
            if message:
                assert message in resp.json()["error"], resp.text
            if status == 401:
                assert resp.headers["www-authenticate"] == "Bearer"
    assert [j["id"] for j in bob.get("/v1/jobs").json()] == []
    assert job_id in [j["id"] for j in admin.get("/v1/jobs").json()]
    assert bob.get("/v1/models").json() == [] and admin.get("/v1/models").json()[0]["owner"] == "alice"
    assert bob.post(f"/v1/jobs/{job_id}/cancel").status_code == 404
    assert bob.delete(f"/v1/datasets/{ds_id}").status_code == 404
    # another key's dataset is unknown to bob's jobs too
    resp = bob.post("/v1/jobs", json={"dataset": ds_id, "config": "tiny"})
    assert resp.status_code == 422 and f"no dataset '{ds_id}'" in resp.json()["error"]


# --- uploads ----------------------------------------------------------------------------------


def _csv(rows: list[tuple[str, str]], header="text,label") -> bytes:
    return (header + "\n" + "".join(f"{t},{y}\n" for t, y in rows)).encode()


GOOD_ROWS = [(r["text"], r["label"]) for r in toy_rows(40, 7)]

BAD_UPLOADS = [
    ("wrong extension", "reviews.txt", _csv(GOOD_ROWS), {}, 422, "unsupported extension '.txt' of 'reviews.txt'"),
    ("missing column", "reviews.csv", _csv(GOOD_ROWS, "review,label"), {}, 422,
     "'text_column': column 'text' not found in the train split; columns found: review, label"),
    ("misspelt label column", "reviews.csv", _csv(GOOD_ROWS), {"label_column": "lable"}, 422, "did you mean 'label'?"),
    ("empty file", "reviews.csv", b"", {}, 422, "'reviews.csv' is empty"),
    ("header only", "reviews.csv", b"text,label\n", {}, 422, "'reviews.csv' is empty"),
    ("one class", "reviews.csv", _csv([(t, "pos") for t, _ in GOOD_ROWS]), {}, 422, "only one class ('pos'"),
    ("not UTF-8", "reviews.csv", "text,label\ncaf\xe9 was good,pos\nbad,neg\n".encode("latin-1"), {}, 422,
     "is not UTF-8 text (byte 0xe9 on line 2)"),
    ("broken JSON lines", "reviews.jsonl", b'{"text": "good", "label": "pos"}\n{"text": "bad", \n', {}, 422,
     "could not read 'reviews.jsonl' as json"),
    ("CSV bomb: 10^6 empty rows", "bomb.csv", b"text,label\n" + b",\n" * 10**6, {}, 422,
     "1000000 empty or missing text(s) in column 'text' at rows 1, 2, 3, 4, 5 and 999995 more"),
    ("unknown form field", "reviews.csv", _csv(GOOD_ROWS), {"text_colum": "text"}, 422, "'text_colum': unknown form field"),
]


@pytest.mark.parametrize("name,filename,content,fields,status,message", BAD_UPLOADS, ids=[b[0] for b in BAD_UPLOADS])
def test_bad_uploads_are_refused_clearly_and_nothing_is_stored(service, name, filename, content, fields, status,
                                                               message):
    http = service.client(create_key(service.data_dir, "up-" + re.sub(r"\W", "-", name)[:40]))
    pid = service.proc.pid
    rss = lambda: int(next(l for l in Path(f"/proc/{pid}/status").read_text().splitlines()
                           if l.startswith("VmRSS")).split()[1]) * 1024
    before, started = rss(), time.monotonic()
    before_dirs = set((service.data_dir / "datasets").iterdir())
    resp = http.post("/v1/datasets", files={"file": (filename, content)}, data=fields)
    took = time.monotonic() - started
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert message in body["error"], body
    assert body["problems"] and all(p["message"] for p in body["problems"])
    assert http.get("/v1/datasets").json() == []
    assert set((service.data_dir / "datasets").iterdir()) == before_dirs
    assert not list((service.data_dir / "cache" / "uploads").glob("*/*"))  # the checkers kept no scratch file
    assert rss() - before < 100e6, "the upload grew the service's memory"
    print(f"{name}: {resp.status_code} in {took:.1f} s")


def test_uploads_over_the_limit_are_413_declared_or_streamed(service):
    http = service.client(create_key(service.data_dir, "small", max_upload_bytes=100_000))
    before_dirs = set((service.data_dir / "datasets").iterdir())  # other tests' datasets
    big = _csv(GOOD_ROWS * 200)
    assert len(big) > 300_000
    resp = http.post("/v1/datasets", files={"file": ("big.csv", big)})
    assert resp.status_code == 413 and "upload limit of 0.1 MB" in resp.json()["error"]
    boundary = "textftboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.csv\"\r\n"
            "Content-Type: text/csv\r\n\r\n").encode()

    def chunked():  # no Content-Length: the limit is enforced on the bytes as they arrive
        yield head
        for i in range(0, len(big), 16384):
            yield big[i:i + 16384]
        yield f"\r\n--{boundary}--\r\n".encode()

    try:
        resp = http.post("/v1/datasets", content=chunked(),
                         headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        assert resp.status_code == 413 and "upload limit" in resp.json()["error"]
    except httpx.HTTPError:
        pass  # the service answered and closed the connection while the client was still sending
    assert http.get("/v1/datasets").json() == []
    # nothing of either refused upload is left: no dataset directory, nothing of it being checked
    assert set((service.data_dir / "datasets").iterdir()) == before_dirs
    uploads = service.data_dir / "cache" / "uploads"  # the checkers' scratch directories, with no file in them
    assert not uploads.exists() or [p for p in uploads.rglob("*") if not p.is_dir()] == []
    assert http.get("/v1/me").json()["limits"]["max_upload_bytes"] == 100_000


def test_upload_formats_columns_and_stats(service, tmp_path):
    import csv

    import pyarrow as pa
    import pyarrow.parquet as pq

    http = service.client(create_key(service.data_dir, "formats"))
    rows = [{"review": r["text"], "stars": r["label"]} for r in toy_rows(60, 9)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "reviews.parquet")
    with open(tmp_path / "reviews.tsv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ["review", "stars"], delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    for name in ("reviews.parquet", "reviews.tsv"):
        peek = http.post("/v1/datasets/columns", files={"file": (name, (tmp_path / name).read_bytes())})
        assert peek.status_code == 200, peek.text
        assert peek.json()["columns"] == ["review", "stars"]
        assert peek.json()["suggested"] == {"text_column": "review", "label_column": "stars"}
        resp = upload(http, tmp_path / name, text_column="review", label_column="stars", name="my reviews")
        assert resp.status_code == 201, resp.text
        ds = resp.json()
        assert ds["rows"] == 60 and ds["labels"] == {"neg": 30, "pos": 30} and ds["name"] == "my reviews"
        assert len(ds["preview"]) == 5 and set(ds["preview"][0]) == {"text", "label"}
        assert http.get(f"/v1/datasets/{ds['id']}").json() == ds
    assert not any((service.data_dir / "cache" / "peek").iterdir())


@pytest.mark.skipif(not Path("/bin/mount").exists(), reason="needs mount(8)")
def test_disk_full_while_uploading_is_507_and_nothing_is_kept(tmp_path):
    import os

    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    data = tmp_path / "data"
    (data / "datasets").mkdir(parents=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(data / "datasets")]).returncode != 0:
        pytest.skip("this container may not mount a tmpfs")
    svc = ServiceProcess(data, ["--workers", "0"])
    try:
        svc.start()
        try:
            http = svc.client(create_key(data, "disk"))
            resp = http.post("/v1/datasets", files={"file": ("big.csv", _csv(GOOD_ROWS * 300))})
            assert resp.status_code == 507, resp.text
            assert "disk is full; nothing was stored" in resp.json()["error"]
            assert list((data / "datasets").iterdir()) == []
            assert http.get("/v1/datasets").json() == []
            small = http.post("/v1/datasets", files={"file": ("ok.csv", _csv(GOOD_ROWS))})
            assert small.status_code == 201, small.text  # the service keeps serving once there is room
        finally:
            svc.stop()
    finally:
        subprocess.run(["umount", str(data / "datasets")])


# --- jobs -------------------------------------------------------------------------------------


def test_job_requests_are_checked_by_the_config_loader(service, alice, toy_sets):
    ds = toy_sets["train"]["id"]
    resp = alice.post("/v1/jobs", json={"dataset": ds, "config": "tiny", "overrides": {
        "train.lr": -1, "model.transfer": "topk", "trian.epochs": 2, "output.dir": "/etc",
        "data.source_name": "someone else's data", "model.trust_remote_code": True, "model.name_or_path": "/etc"}})
    assert resp.status_code == 422
    problems = {p["field"]: p["message"] for p in resp.json()["problems"]}
    assert "did you mean 'top_k'" in problems["overrides.model.transfer"]
    assert "'train.lr' must be > 0" in problems["overrides.train.lr"]
    assert "cannot be set on a job" in problems["overrides.output.dir"]
    assert "the name and id of the uploaded 'dataset'" in problems["overrides.data.source_name"]
    assert "never runs on the service" in problems["overrides.model.trust_remote_code"]
    assert "not under a directory the service allows" in problems["overrides.model.name_or_path"]
    assert any("unknown section 'trian' (did you mean 'train'?)" in m for m in problems.values())
    resp = alice.post("/v1/jobs", json={"dataset": ds + "x", "config": "tinyy", "accelerate_config": "multi_node",
                                        "validation_dataset": toy_sets["test"]["id"]})
    fields = {p["field"]: p["message"] for p in resp.json()["problems"]}
    assert resp.status_code == 422 and "did you mean 'tiny'" in fields["config"]
    assert f"did you mean '{ds}'" in fields["dataset"]
    assert "spans 2 machines" in fields["accelerate_config"]
    assert alice.post("/v1/jobs", json={"dataset": ds, "confg": "tiny"}).status_code == 422  # misspelt field
    assert alice.post("/v1/jobs", content=b"{", headers={"content-type": "application/json"}).status_code == 400


def test_validation_dataset_must_match_the_training_labels(service, alice, toy_sets, tmp_path):
    other = write_jsonl(tmp_path / "val.jsonl", toy_rows(20, 4, pos_name="positive", neg_name="neg"))
    val = upload(alice, other).json()
    resp = alice.post("/v1/jobs", json={"dataset": toy_sets["train"]["id"], "validation_dataset": val["id"],
                                        "config": "tiny"})
    assert resp.status_code == 422
    assert "never seen in training: positive (did you mean 'pos'?)" in resp.json()["problems"][0]["message"]


def test_oversized_json_bodies_are_413_before_they_are_read(service, alice, toy_sets):
    huge = {"dataset": toy_sets["train"]["id"], "config": "tiny", "overrides": {"data.label_names": ["x" * 100] * 100_000}}
    resp = alice.post("/v1/jobs", json=huge)
    assert resp.status_code == 413 and "request body larger than" in resp.json()["error"]

    def chunked():  # no Content-Length: counted as it arrives
        yield b'{"dataset": "x", "overrides": {"a.b": "'
        for _ in range(200):
            yield b"y" * 65536
        yield b'"}}'

    try:
        resp = alice.post("/v1/jobs", content=chunked(), headers={"content-type": "application/json"})
        assert resp.status_code == 413
    except httpx.HTTPError:
        pass  # answered and closed while the client was still sending
    assert alice.get("/health").status_code == 200


def test_queued_job_limit_is_429(service, toy_sets):
    http = service.client(create_key(service.data_dir, "limited", max_queued=0))
    ds = upload(http, Path(__file__).parent.parent / "textft/assets/quickstart/train.jsonl").json()
    resp = http.post("/v1/jobs", json={"dataset": ds["id"], "config": "tiny"})
    assert resp.status_code == 429 and "its limit" in resp.json()["error"]


def test_a_job_trains_reports_events_and_its_model_downloads_and_predicts(service, alice, finished_job, tmp_path,
                                                                         toy_files, toy_sets):
    job, events = finished_job["job"], finished_job["events"]
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))  # the reconnect missed nothing
    assert events == read_events(alice, job["id"])  # and saw what a client reading all at once sees
    states = [e["data"]["state"] for e in events if e["event"] == "state"]
    assert states == ["queued", "running", "succeeded"]
    records = [json.loads(line) for line in (service.data_dir / "jobs" / job["id"] / "run" / "train_log.jsonl")
               .read_text().splitlines()]
    as_event = {"plan": "plan", "train": "log", "eval": "log", "best": "best", "end": "end"}
    followed = [(e["event"], e["data"]) for e in events if e["event"] in ("plan", "log", "best", "end")]
    assert followed == [(as_event[r["event"]], r) for r in records]  # every train_log.jsonl record, once, in order
    plan = next(e["data"] for e in events if e["event"] == "plan")
    p = job["progress"]
    assert p["step"] == p["total_steps"] == plan["total_steps"] == 150 and p["epoch"] == 6.0
    assert p["best"]["metric"] == "macro_f1" and p["samples_per_s"] > 0 and p["eta_s"] == 0
    # the best the job shows is the loop's own decision: the step whose weights were exported
    best = [r for r in records if r["event"] == "best"][-1]
    assert p["best"]["step"] == best["step"] == job["metrics"]["best"]["step"] and records[-1]["event"] == "end"
    assert job["metrics"]["splits"]["test"]["accuracy"] > 0.8 and job["stop_reason"] == "completed"
    report = alice.get(f"/v1/jobs/{job['id']}/report")
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
    assert "<html" in report.text and "http://" not in report.text.split("<body", 1)[1][:2000]
    log = alice.get(f"/v1/jobs/{job['id']}/log", params={"lines": 5}).text.splitlines()
    assert len(log) == 5 and log[-1].startswith("model saved to run")

    # download: a streamed tar.gz of a save_pretrained directory that plain transformers loads
    with alice.stream("GET", f"/v1/models/{job['id']}/download") as resp:
        assert resp.status_code == 200 and resp.headers["content-type"] == "application/gzip"
        assert "content-length" not in resp.headers  # streamed, not buffered
        blob = b"".join(resp.iter_bytes())
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        names = tar.getnames()
        tar.extractall(tmp_path, filter="data")
    assert all(n.startswith(job["id"] + "/") for n in names) and not any("checkpoints" in n for n in names)
    # the reports' titles and data lines name the upload, not where the service keeps it (their
    # configuration section still quotes the job's settings as they were)
    upload_name = f"{toy_sets['train']['name']} ({toy_sets['train']['id']})"
    summary = json.loads((tmp_path / job["id"] / "report.json").read_text())
    assert summary["data_source"] == upload_name and summary["title"].endswith(f" on {upload_name}")
    assert f" on {upload_name}</title>" in report.text
    for name in ("report.md", "eval_report.md"):
        title = (tmp_path / job["id"] / name).read_text().splitlines()[0]
        assert title.startswith("# ") and title.endswith(f" on {upload_name}") and "datasets/" not in title, title
    from transformers import pipeline

    texts = [r["text"] for r in toy_rows(16, 11)]
    pipe = pipeline("text-classification", model=str(tmp_path / job["id"]), device="cpu")
    expected = [r["label"] for r in pipe(texts)]

    resp = alice.post(f"/v1/models/{job['id']}/predict", json={"inputs": texts, "top_k": 2})
    assert resp.status_code == 200, resp.text
    preds = resp.json()["predictions"]
    assert [p["label"] for p in preds] == expected and len(preds[0]["top_k"]) == 2
    local = textft.load(tmp_path / job["id"], precision="fp32").predict(texts)
    # the service predicts in textft serve's default precision (auto: bf16 on this kind of CPU)
    assert [p["score"] for p in preds] == pytest.approx([p["score"] for p in local], abs=5e-3)
    single = alice.post(f"/v1/models/{job['id']}/predict", json={"inputs": "a superb film"}).json()
    assert single["predictions"][0]["label"] == "pos"
    for body, status in (({"inputs": []}, 422), ({"inputs": "x" * 20_001}, 413), ({"input": "x"}, 422),
                         ({"inputs": ["ok"] * 65}, 413), ({"inputs": "  "}, 422)):
        assert alice.post(f"/v1/models/{job['id']}/predict", json=body).status_code == status

    models = alice.get("/v1/models").json()
    model = next(m for m in models if m["id"] == job["id"])
    assert model["labels"] == ["neg", "pos"] and model["metrics"]["test"]["accuracy"] == job["metrics"]["splits"]["test"]["accuracy"]
    assert model["max_length"] == 32 and model["truncation"] == "head" and model["base_model"] == "tiny-bert0"  # no server path
    assert model["size_bytes"] == sum(f.stat().st_size for f in (tmp_path / job["id"]).rglob("*") if f.is_file())


def test_recipe_endpoint_shows_auto_values_with_reasons(service, alice, toy_sets, tiny_model_dir):
    body = {"dataset": toy_sets["train"]["id"], "validation_dataset": toy_sets["validation"]["id"], "config": "tiny",
            "overrides": {"model.name_or_path": str(tiny_model_dir), "model.random_init": False,
                          "train.epochs": "auto", "train.lr": "auto"}}
    resp = alice.post("/v1/recipe", json=body)
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert set(out["auto"]) >= {"train.lr", "train.head_lr", "train.epochs", "train.eval_every_steps"}
    assert all(v["reason"] for v in out["auto"].values())
    assert out["facts"]["n_train"] == 400 and out["facts"]["n_validation"] == 80 and out["facts"]["num_labels"] == 2
    assert out["plan"]["steps_per_epoch"] == 25 and out["plan"]["total_steps"] == 150  # max(150, 8 x 2) steps
    assert out["auto"]["train.epochs"]["value"] == 6.0
    assert out["settings"]["train.batch_size"] == 16 and "output.dir" not in out["settings"]
    bad = alice.post("/v1/recipe", json={**body, "overrides": {"train.lr": "fast"}})
    assert bad.status_code == 422 and "'train.lr' must be" in bad.json()["error"]
    # Which recipe an upload gets, and why: full for 200 examples per class, few-shot for 8.
    assert out["auto"]["model.transfer"] == {"value": "full", "reason": "200 training examples per class (median) > 16:"
                                                                      " enough for ordinary fine-tuning"}
    assert out["settings"]["model.transfer"] == "full"


def test_recipe_endpoint_says_an_upload_with_few_examples_per_class_gets_the_few_shot_recipe(
        service, alice, toy_sets, tiny_model_dir, tmp_path):
    few = upload(alice, write_jsonl(tmp_path / "few.jsonl", toy_rows(18, 5)))
    assert few.status_code == 201, few.text
    body = {"dataset": few.json()["id"], "config": "tiny",
            "overrides": {"model.name_or_path": str(tiny_model_dir), "model.random_init": False}}
    out = alice.post("/v1/recipe", json=body).json()
    # 9 per class; 2 of the 18 rows carved for validation leave 16 to train on: 8 per class
    assert out["facts"]["examples_per_class"] == 8.0
    assert out["auto"]["model.transfer"]["value"] == "few_shot"
    assert out["auto"]["model.transfer"]["reason"].startswith("8 training examples per class (median) <= 16")
    forced = alice.post("/v1/recipe", json={**body, "overrides": {**body["overrides"], "data.task": "multi_label",
                                                                 "model.transfer": "few_shot"}})
    assert forced.status_code == 422
    assert forced.json()["problems"][0]["field"] == "overrides.model.transfer"
    assert "few_shot cannot train this data" in forced.json()["error"]


def test_presets_accelerate_configs_and_openapi(service, alice):
    listed = {p["name"]: p for p in alice.get("/v1/presets").json()}
    assert set(listed) == {*presets("train"), "team-tiny"}  # the packaged presets and the team's own
    assert listed["quickstart"]["model"] == "builtin:minilm" and listed["quickstart"]["description"]
    assert listed["quickstart"]["summary"] == presets()["quickstart"].summary
    assert listed["team-tiny"]["summary"] == "The team's debugging preset."
    accel = {a["name"]: a for a in alice.get("/v1/accelerate-configs").json()}
    assert set(accel) == {p.path.stem for p in presets("accelerate").values()} | {"team_cpu"}
    assert accel["cpu_2proc"]["gpus"] == 0 and accel["cpu_2proc"]["num_processes"] == 2
    assert accel["team_cpu"]["num_processes"] == 2
    assert accel["multi_node"]["num_machines"] == 2
    spec = httpx.get(service.url + "/openapi.json").json()
    assert {"/v1/jobs", "/v1/datasets", "/v1/models/{model_id}/predict", "/v1/jobs/{job_id}/events"} <= set(spec["paths"])
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"  # /docs can send a key
    assert spec["paths"]["/v1/jobs"]["post"]["security"] == [{"HTTPBearer": []}]
    docs = httpx.get(service.url + "/docs")
    assert docs.status_code == 200 and "/docs/assets/swagger-ui-bundle.js" in docs.text  # no CDN
    assert "cdn" not in docs.text.lower()
    assert httpx.get(service.url + "/docs/assets/swagger-ui-bundle.js").status_code == 200


def test_tasks_endpoint_serves_every_tasks_metrics_as_the_task_classes_define_them(service, alice):
    from textft.tasks import METRIC_NAMES, TASKS

    assert httpx.get(service.url + "/v1/tasks").status_code == 401
    answer = alice.get("/v1/tasks")
    assert answer.status_code == 200
    served = {t["name"]: t for t in answer.json()}
    assert list(served) == list(TASKS)
    for name, cls in TASKS.items():
        t = served[name]
        assert (t["headline"], t["curves"], t["default_metric"]) == (list(cls.headline), list(cls.curves), cls.default_metric)
        metrics = {m["name"]: m for m in t["metrics"]}
        assert set(metrics) == set(cls.headline) | set(cls.metrics)
        assert all(m["display_name"] == METRIC_NAMES[k] and m["lower_is_better"] == cls.lower_is_better(k)
                   and m["selectable"] == (k in cls.metrics) for k, m in metrics.items())
    assert {m["name"] for m in served["regression"]["metrics"] if m["lower_is_better"]} == {"mae", "rmse", "loss"}
    assert served["multi_label"]["answer_fields"][0] == "labels" and served["regression"]["answer_fields"] == ["value"]
    spec = httpx.get(service.url + "/openapi.json").json()
    schema = spec["paths"]["/v1/tasks"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema["type"] == "array" and schema["items"]["$ref"].endswith("/TaskInfo")


def test_cancel_queued_and_running_jobs(service, alice, toy_sets, tiny_model_dir):
    long = {"dataset": toy_sets["train"]["id"], "config": "tiny",
            "overrides": tiny_job(tiny_model_dir, **{"train.epochs": 500})}
    running = alice.post("/v1/jobs", json=long).json()
    queued = alice.post("/v1/jobs", json=long).json()
    assert queued["state"] == "queued" and queued["queue_position"] >= 1
    resp = alice.post(f"/v1/jobs/{queued['id']}/cancel")
    assert resp.status_code == 200 and resp.json()["state"] == "cancelled"
    wait_for(lambda: alice.get(f"/v1/jobs/{running['id']}").json()["progress"].get("step"), 240,
             "the first logged step")
    resp = alice.post(f"/v1/jobs/{running['id']}/cancel")
    assert resp.status_code == 202 and resp.json()["cancel_requested"] is True
    done = wait_state(alice, running["id"], ("cancelled", "succeeded", "failed"), timeout=60)
    assert done["state"] == "cancelled" and done["progress"]["step"] < done["progress"]["total_steps"]
    assert wait_for(lambda: not _job_processes(service, running["id"]), 30, "the job's processes to exit")
    assert alice.post(f"/v1/jobs/{running['id']}/cancel").status_code == 409
    assert not (service.data_dir / "jobs" / queued["id"] / "run").exists()  # it never started


def _job_processes(service, job_id):
    from service_support import job_processes

    return job_processes(service.data_dir / "jobs" / job_id)


def test_a_failing_job_is_failed_with_the_cli_reason_and_the_service_keeps_serving(service, alice, toy_sets):
    resp = alice.post("/v1/jobs", json={"dataset": toy_sets["train"]["id"], "config": "tiny", "overrides": {
        "model.name_or_path": "textft-tests/no-such-model", "train.epochs": 1}})
    assert resp.status_code == 201, resp.text
    done = wait_state(alice, resp.json()["id"], ("failed", "succeeded"))
    assert done["state"] == "failed"
    assert done["error"].startswith("'model.name_or_path': could not load the tokenizer of 'textft-tests/no-such-model'")
    assert "\n" not in done["error"] and alice.get("/health").status_code == 200


def test_deleting_datasets_and_jobs(service, alice, tiny_model_dir, toy_files):
    ds = upload(alice, toy_files["validation"]).json()
    job = alice.post("/v1/jobs", json={"dataset": ds["id"], "config": "tiny",
                                       "overrides": tiny_job(tiny_model_dir, **{"train.epochs": 1})}).json()
    refused = alice.delete(f"/v1/datasets/{ds['id']}")
    if alice.get(f"/v1/jobs/{job['id']}").json()["state"] in ("queued", "running"):
        assert refused.status_code == 409 and job["id"] in refused.json()["error"]
        assert alice.delete(f"/v1/jobs/{job['id']}").status_code == 409
    done = wait_state(alice, job["id"], ("succeeded", "failed"))
    assert done["state"] == "succeeded", done
    assert alice.delete(f"/v1/jobs/{job['id']}").status_code == 204
    assert alice.get(f"/v1/jobs/{job['id']}").status_code == 404
    assert not (service.data_dir / "jobs" / job["id"]).exists()
    assert alice.get(f"/v1/models/{job['id']}/download").status_code == 404
    assert alice.delete(f"/v1/datasets/{ds['id']}").status_code == 204
    assert not (service.data_dir / "datasets" / ds["id"]).exists()


def test_push_uses_the_service_token_and_never_echoes_it(service, alice, finished_job):
    job_id = finished_job["job"]["id"]
    resp = alice.post(f"/v1/models/{job_id}/push", json={"repo_id": "bad repo"})
    assert resp.status_code == 422 and "owner/name" in resp.json()["error"]
    resp = alice.post(f"/v1/models/{job_id}/push", json={"repo_id": "textft-tests/tiny"})
    assert resp.status_code == 502, resp.text  # offline: the Hub cannot be reached
    assert TOKEN not in resp.text and TOKEN[3:] not in resp.text
    assert TOKEN not in alice.get(f"/v1/jobs/{job_id}/log", params={"lines": 5000}).text
