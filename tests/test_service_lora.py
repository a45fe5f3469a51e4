"""LoRA jobs in a real ``textft service``: the model is stored as its adapter, both download formats
load (the merged directory in a plain pipeline, the adapter in peft), and two LoRA models of one
base, predicted interleaved and concurrently, each answer with their own labels; a push sends the merged
model."""

from __future__ import annotations

import io
import json
import tarfile
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

import textft
from conftest import toy_rows, write_jsonl
from service_support import ServiceProcess, create_key, upload, wait_state
from test_hostile_tenant_access import FakeHub
from test_lora import encoder_dir  # noqa: F401  (the tiny pretrained encoder, a fixture)

pytest.importorskip("peft")

TEXTS = [r["text"] for r in toy_rows(24, 11)]


@pytest.fixture(scope="module")
def service(tmp_path_factory, encoder_dir):  # noqa: F811
    root = tmp_path_factory.mktemp("lora-service")
    hub = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)  # a Hub that records who asks and refuses all
    threading.Thread(target=hub.serve_forever, daemon=True).start()
    # one loaded model with its own weights: the two adapters must share their base to stay loaded
    svc = ServiceProcess(root / "data", ["--local-models", str(encoder_dir), "--save-every-steps", "0",
                                         "--max-loaded-models", "1"],
                         env={"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{hub.server_address[1]}"}).start()
    yield svc
    assert svc.stop() in (0, -15), svc.tail()
    hub.shutdown()


@pytest.fixture(scope="module")
def lora_models(service, encoder_dir, tmp_path_factory):  # noqa: F811
    """Two LoRA jobs on the tiny encoder: one says neg/pos, the other bad/good/meh (three labels)."""
    http = service.client(create_key(service.data_dir, "bob"))
    root = tmp_path_factory.mktemp("lora-sets")
    sets = {"posneg": toy_rows(200, 1),
            "goodbad": toy_rows(200, 2, pos_name="good", neg_name="bad")
            + [{"text": f"meh so so {i}", "label": "meh"} for i in range(40)]}
    jobs = {}
    for name, rows in sets.items():
        ds = upload(http, write_jsonl(root / f"{name}.jsonl", rows))
        assert ds.status_code == 201, ds.text
        resp = http.post("/v1/jobs", json={"dataset": ds.json()["id"], "config": "tiny", "overrides": {
            "model.name_or_path": str(encoder_dir), "model.random_init": False, "model.transfer": "lora",
            "data.max_length": 32, "train.epochs": 4, "train.batch_size": 16, "train.mixed_precision": "no"}})
        assert resp.status_code == 201, resp.text
        jobs[name] = resp.json()["id"]
    for name, job_id in jobs.items():
        done = wait_state(http, job_id, ("succeeded", "failed"), timeout=600)
        assert done["state"] == "succeeded", (done, http.get(f"/v1/jobs/{job_id}/log").text)
    return http, jobs


def download(http, model_id: str, dst: Path, fmt: str | None = None) -> Path:
    params = {"format": fmt} if fmt else {}
    with http.stream("GET", f"/v1/models/{model_id}/download", params=params) as resp:
        assert resp.status_code == 200, resp.read()
        blob = b"".join(resp.iter_bytes())
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        roots = {n.split("/")[0] for n in tar.getnames()}
        tar.extractall(dst, filter="data")
    (root,) = roots
    return dst / root


def test_a_lora_job_stores_only_its_adapter_and_both_downloads_load(service, lora_models, tmp_path):
    from peft import AutoPeftModelForSequenceClassification
    from transformers import pipeline

    http, jobs = lora_models
    job_id = jobs["goodbad"]
    run = service.data_dir / "jobs" / job_id / "run"
    assert not (run / "model.safetensors").exists() and (run / "adapter" / "adapter_model.safetensors").is_file()
    model = http.get(f"/v1/models/{job_id}").json()
    assert model["stored_as"] == "adapter" and model["adapter"]["rank"] == 8 and set(model["downloads"]) == {
        "model", "adapter"}
    assert model["size_bytes"] == sum(p.stat().st_size for p in run.rglob("*") if p.is_file())
    assert model["adapter"]["size_bytes"] < model["size_bytes"]

    merged = download(http, job_id, tmp_path / "merged")
    assert merged.name == job_id and (merged / "model.safetensors").is_file() and (merged / "adapter").is_dir()
    expected = [r["label"] for r in pipeline("text-classification", model=str(merged), device="cpu")(TEXTS)]
    assert set(expected) <= {"good", "bad", "meh"} and len(set(expected)) > 1
    assert not list((service.data_dir / "cache").glob(f".{job_id}-merged-*"))  # the built directory is gone

    adapter = download(http, job_id, tmp_path / "adapter", "adapter")
    assert adapter.name == f"{job_id}-adapter" and not (adapter / "model.safetensors").exists()
    record = json.loads((adapter / "textft_adapter.json").read_text())["classifier_config"]
    peft_model = AutoPeftModelForSequenceClassification.from_pretrained(
        adapter, num_labels=len(record["id2label"]), id2label={int(k): v for k, v in record["id2label"].items()},
        label2id=record["label2id"])
    assert peft_model.config.id2label[0] in {"good", "bad", "meh"}
    assert [p["label"] for p in textft.load(adapter, precision="fp32").predict(TEXTS)] == expected

    served = http.post(f"/v1/models/{job_id}/predict", json={"inputs": TEXTS}).json()["predictions"]
    assert [p["label"] for p in served] == expected


def test_two_lora_models_of_one_base_interleaved_and_concurrent_each_give_their_own_labels(
        service, lora_models, tmp_path):
    http, jobs = lora_models
    expected = {name: [p["label"] for p in textft.load(download(http, job_id, tmp_path / name),
                                                          precision="fp32").predict(TEXTS)]
                for name, job_id in jobs.items()}
    assert set(expected["posneg"]) <= {"pos", "neg"} and set(expected["goodbad"]) <= {"good", "bad", "meh"}

    def ask(name: str, texts: list[str]) -> list[str]:
        resp = http.post(f"/v1/models/{jobs[name]}/predict", json={"inputs": texts})
        assert resp.status_code == 200, resp.text
        return [p["label"] for p in resp.json()["predictions"]]

    for _ in range(3):  # one after the other: each request switches the base to the other adapter
        for name in jobs:
            assert ask(name, TEXTS) == expected[name]
    # many clients at once, the two models mixed, each request a slice of the texts
    calls = [(name, i) for i in range(0, len(TEXTS), 3) for name in jobs] * 3
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda c: ask(c[0], TEXTS[c[1]:c[1] + 3]), calls))
    for (name, i), got in zip(calls, answers):
        assert got == expected[name][i:i + 3], name
    log = service.log.read_text()
    assert "Traceback" not in log, log[-3000:]


def test_a_lora_model_stored_as_its_adapter_is_pushed_as_its_merged_model(service, lora_models):
    http, jobs = lora_models
    job_id = jobs["goodbad"]
    FakeHub.seen.clear()
    resp = http.post(f"/v1/models/{job_id}/push", json={"repo_id": "bob/goodbad", "token": "hf_bob0token0only"})
    # the test Hub refuses every request: the push got as far as the Hub, with the merged model it built
    assert resp.status_code == 502, resp.text
    assert ("POST", "/api/repos/create", "Bearer hf_bob0token0only") in FakeHub.seen
    assert {auth for _, _, auth in FakeHub.seen if auth} == {"Bearer hf_bob0token0only"}
    assert "hf_bob0token0only" not in resp.text and str(service.data_dir) not in resp.text
    assert not list((service.data_dir / "cache").glob(f".{job_id}-merged-*"))  # the built directory is gone


def test_the_adapter_format_of_a_model_without_one_is_404_and_a_bad_format_422(service, lora_models):
    http, jobs = lora_models
    assert http.get(f"/v1/models/{jobs['posneg']}/download", params={"format": "onnx"}).status_code == 422
    options = http.get("/v1/transfer-options").json()
    assert "lora" in options["transfers"] and {o["key"] for o in options["lora"]} >= {
        "model.lora_rank", "model.lora_alpha", "model.lora_dropout", "model.lora_target_modules"}
