"""`textft serve` as a real uvicorn process on loopback: concurrent load, bad requests, metadata."""

import json
import threading
from pathlib import Path

import httpx
import pytest

import textft
from conftest import toy_rows
from live_server import serve_process
from textft.cli import main as cli
from textft.calibration import OOS_KEY
from tiny_classifier import copy_run, trained_run

CLIENTS, REQUESTS = 32, 200


@pytest.fixture(scope="module")
def run(tiny_model_dir, toy_files, tmp_path_factory):
    return trained_run(tiny_model_dir, toy_files, tmp_path_factory)


@pytest.fixture(scope="module")
def server(run, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with serve_process(run, log, "--precision", "fp32", "--max-texts", "8", "--max-chars", "500",
                       "--max-batch-size", "16", "--max-wait-ms", "5") as url:
        yield url


@pytest.fixture(scope="module")
def texts_and_labels(run):
    texts = [r["text"] for r in toy_rows(64, 21)]
    return texts, [r["label"] for r in textft.load(run, precision="fp32").predict(texts)]


def test_concurrent_clients_get_correct_labels_without_errors(server, texts_and_labels):
    texts, expected = texts_and_labels
    failures, wrong, done = [], [], [0] * CLIENTS
    barrier = threading.Barrier(CLIENTS)

    def client(c):
        with httpx.Client(base_url=server, timeout=60) as http:
            barrier.wait()
            for r in range(REQUESTS):
                i = (c * 7 + r) % len(texts)
                # every tenth request sends a list, the others a single text
                batch = [i, (i + 1) % len(texts), (i + 2) % len(texts)] if r % 10 == 0 else [i]
                body = {"inputs": [texts[j] for j in batch]} if len(batch) > 1 else {"inputs": texts[i]}
                try:
                    resp = http.post("/predict", json=body)
                except httpx.HTTPError as e:
                    failures.append(repr(e))
                    continue
                if resp.status_code != 200:
                    failures.append(f"{resp.status_code} {resp.text[:200]}")
                    continue
                labels = [p["label"] for p in resp.json()["predictions"]]
                if labels != [expected[j] for j in batch]:
                    wrong.append((batch, labels))
                done[c] += 1

    threads = [threading.Thread(target=client, args=(c,)) for c in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads)
    assert failures == [] and wrong == []
    assert sum(done) == CLIENTS * REQUESTS
    served = httpx.get(server + "/metadata").json()["served"]
    assert served["batches"] < served["texts"]  # concurrent requests shared forward passes


BAD_REQUESTS = [
    ("malformed JSON", {"content": b'{"inputs": ', "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
    ("number instead of text", {"json": {"inputs": 42}}, 422, "inputs"),
    ("mixed list", {"json": {"inputs": ["good", 3]}}, 422, "valid string"),
    ("misspelt field", {"json": {"input": "good"}}, 422, "input: Extra inputs are not permitted"),
    ("bad top_k", {"json": {"inputs": "good", "top_k": 0}}, 422, "top_k"),
    ("empty list", {"json": {"inputs": []}}, 422, "at least one text"),
    ("empty text", {"json": {"inputs": " "}}, 422, "empty"),
    ("too many texts", {"json": {"inputs": ["good"] * 9}}, 413, "limit is 8"),
    ("too long text", {"json": {"inputs": "good " * 101}}, 413, "limit is 500"),
    ("10 MB body", {"content": b'{"inputs": "' + b"x" * 10_000_000 + b'"}',
                    "headers": {"content-type": "application/json"}}, 413, "request body larger"),
    ("not JSON at all", {"content": b"inputs=good", "headers": {"content-type": "text/plain"}}, 422, "body"),
]


@pytest.mark.parametrize("name,request_kwargs,status,message", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_requests_are_4xx_and_the_server_keeps_serving(server, name, request_kwargs, status, message):
    resp = httpx.post(server + "/predict", timeout=60, **request_kwargs)
    assert resp.status_code == status, resp.text
    assert message in resp.json()["error"]
    ok = httpx.post(server + "/predict", json={"inputs": "the film was excellent"}, timeout=60)
    assert ok.status_code == 200 and ok.json()["predictions"][0]["label"] == "pos"


def test_tasks_lists_every_task_with_its_metric_names_and_directions(server):
    from textft.tasks import describe_tasks

    assert httpx.get(server + "/tasks").json() == describe_tasks()
    assert "/tasks" in httpx.get(server + "/openapi.json").json()["paths"]


def test_options_health_and_metadata(server, run):
    resp = httpx.post(server + "/predict", json={"inputs": ["awful", "superb"], "top_k": 2, "return_all_scores": True})
    preds = resp.json()["predictions"]
    assert [p["label"] for p in preds] == ["neg", "pos"]
    assert len(preds[0]["top_k"]) == 2 and set(preds[0]["scores"]) == {"neg", "pos"}
    assert "out_of_scope" not in preds[0]  # no threshold calibrated
    assert httpx.get(server + "/health").json() == {"status": "ok"}
    meta = httpx.get(server + "/metadata").json()
    report = json.loads((Path(run) / "eval_report.json").read_text())
    assert meta["labels"] == ["neg", "pos"]
    # a local base model is named, not located: no server path reaches a client
    assert meta["base_model"] == Path(report["config"]["model"]["name_or_path"]).name
    assert str(Path(run).parent.parent) not in json.dumps(meta)
    assert meta["metrics"]["test"]["accuracy"] == pytest.approx(report["splits"]["test"]["accuracy"])
    assert meta["out_of_scope"] is None and meta["precision"] == "fp32"
    assert meta["limits"]["max_texts"] == 8 and meta["limits"]["max_chars"] == 500
    assert httpx.get(server + "/nope").status_code == 404


def test_calibrated_model_answers_out_of_scope(run, tmp_path):
    from fastapi.testclient import TestClient

    from textft.serving import create_app

    model = copy_run(run, tmp_path / "model")
    cfg = json.loads((model / "config.json").read_text())
    cfg[OOS_KEY] = {"method": "msp", "threshold": 0.999999, "label": "unknown", "target": {"rejection": 0.5}}
    (model / "config.json").write_text(json.dumps(cfg))
    clf = textft.load(model, precision="fp32")
    with TestClient(create_app(clf, max_wait_ms=1)) as client:
        pred = client.post("/predict", json={"inputs": "the plot was"}).json()["predictions"][0]
        assert pred["label"] == "unknown" and pred["out_of_scope"] is True and pred["model_label"] in ("neg", "pos")
        assert client.get("/metadata").json()["out_of_scope"]["threshold"] == 0.999999


def test_serve_bad_arguments_are_one_clear_error(tmp_path, run, capsys):
    assert cli(["serve", "--model", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli(["serve", "--model", str(run), "--max-texts", "0", "--port", "70000"]) == 2
    err = capsys.readouterr().err
    assert err.count("error: ") == 2 and "'--max-texts' must be >= 1" in err and "'--port'" in err
