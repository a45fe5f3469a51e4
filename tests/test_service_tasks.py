"""``textft service`` with every kind of task: sentence-pair uploads, jobs and models, and what
/v1/recipe says for regression and multi-label data. A real service on loopback, tiny models."""

from __future__ import annotations

import json
import sqlite3

import pytest

from conftest import pair_rows
from service_support import upload, wait_state
from test_service import tiny_job


# The service and its two trained task jobs (conftest.py) are shared with test_web_tasks: one worker runs both.
@pytest.fixture(scope="module")
def service(task_service):
    return task_service


@pytest.fixture(scope="module")
def http(task_http):
    return task_http


@pytest.fixture(scope="module")
def pair_sets(http, task_files):
    """The pair task's train/validation/test files uploaded with their second text column."""
    out = {}
    for split, path in task_files["pairs"].items():
        resp = upload(http, path, text_pair_column="text_pair")
        assert resp.status_code == 201, resp.text
        out[split] = resp.json()
    return out


def recipe(http, dataset: str, tiny_model_dir, **overrides) -> dict:
    resp = http.post("/v1/recipe", json={"dataset": dataset, "config": "tiny", "overrides": {
        "model.name_or_path": str(tiny_model_dir), "model.random_init": False, "train.epochs": "auto",
        "train.lr": "auto", **overrides}})
    assert resp.status_code == 200, resp.text
    return resp.json()


# --- the recipe -------------------------------------------------------------------------------


def test_recipe_picks_the_metric_and_reasons_of_a_regression_upload(http, task_files, tiny_model_dir):
    ds = upload(http, task_files["regression"]["train"], label_column="score").json()
    assert ds["task"] == "regression" and ds["pairs"] is False
    out = recipe(http, ds["id"], tiny_model_dir)
    assert out["facts"]["task"] == "regression" and out["facts"]["default_metric"] == "rmse"
    assert out["facts"]["num_labels"] == 1 and out["facts"]["pairs"] is False
    best = out["auto"]["train.metric_for_best"]
    assert best == {"value": "rmse", "reason": "the regression default (lower is better)"}
    assert out["settings"]["train.metric_for_best"] == "rmse"
    assert not any("macro" in str(v["value"]) or "macro" in v["reason"] for v in out["auto"].values())


def test_recipe_picks_the_metric_of_a_multi_label_upload_and_an_explicit_task(http, task_files, tiny_model_dir):
    ds = upload(http, task_files["multi_label"]["train"], label_column="labels").json()
    assert ds["task"] == "multi_label"
    out = recipe(http, ds["id"], tiny_model_dir)
    assert out["facts"]["task"] == "multi_label" and out["facts"]["num_labels"] == 3
    assert out["auto"]["train.metric_for_best"] == {"value": "macro_f1",
                                                    "reason": "the multi_label default (higher is better)"}
    # a job that names the task trains that task, whatever the upload guessed
    single = upload(http, task_files["pairs"]["train"]).json()
    assert single["task"] == "single_label"
    forced = recipe(http, single["id"], tiny_model_dir, **{"data.task": "single_label"})
    assert forced["facts"]["task"] == "single_label" and forced["auto"]["train.metric_for_best"]["value"] == "macro_f1"


def test_recipe_of_a_dataset_stored_before_tasks_were_recorded_reads_the_file_once(service, http, task_files,
                                                                                   tiny_model_dir):
    ds = upload(http, task_files["regression"]["validation"], label_column="score").json()
    with sqlite3.connect(service.data_dir / "textft.db") as db:  # as a schema-1 database left it
        db.execute("UPDATE datasets SET task = NULL WHERE id = ?", (ds["id"],))
    assert http.get(f"/v1/datasets/{ds['id']}").json()["task"] is None
    assert recipe(http, ds["id"], tiny_model_dir)["facts"]["default_metric"] == "rmse"
    assert http.get(f"/v1/datasets/{ds['id']}").json()["task"] == "regression"


def test_a_schema_1_database_gains_the_new_columns_and_keeps_its_rows(tmp_path):
    from textft.service.store import DELIVERIES_INDEX, DELIVERIES_TABLE, SCHEMA, SCHEMA_VERSION, Store

    old = SCHEMA.replace(",\n    task TEXT,\n    text_pair_column TEXT\n", "\n")
    # without what schema 5 added: the keys' own limits
    old = old.replace(",\n    max_steps INTEGER,\n    max_job_seconds REAL,\n    max_storage_bytes INTEGER\n", "\n")
    # and without what schemas 3 and 4 added: the keys' webhook secrets, the jobs' webhooks and their
    # deliveries; the keys' Hub namespaces
    old = old.replace(", hub_namespaces TEXT", "").replace(",\n    webhook_secret TEXT\n", "\n").replace(",\n    webhook_url TEXT\n", "\n")
    old = old.replace(DELIVERIES_TABLE + ";", "").replace(DELIVERIES_INDEX + ";", "")
    assert "text_pair_column" not in old and "webhook" not in old and "deliveries" not in old and "hub_" not in old
    assert "max_storage_bytes" not in old and "max_steps" not in old
    with sqlite3.connect(tmp_path / "old.db") as db:
        db.executescript(old + "PRAGMA user_version = 1;")
        db.execute("INSERT INTO keys (id, name, salt, hash, created_at) VALUES ('k', 'k', x'00', x'00', 0)")
        db.execute("INSERT INTO datasets (id, owner, name, filename, path, format, size_bytes, rows, text_column,"
                   " label_column, labels, preview, created_at) VALUES ('d', 'k', 'n', 'f', 'p', 'csv', 1, 1, 'text',"
                   " 'label', '{}', '[]', 0)")
    store = Store(tmp_path / "old.db")
    row = store.row("SELECT * FROM datasets WHERE id = 'd'")
    assert row["task"] is None and row["text_pair_column"] is None and row["text_column"] == "text"
    assert store.row("PRAGMA user_version")["user_version"] == SCHEMA_VERSION == 5
    assert store.key_by_id_or_name("k")["webhook_secret"] is None and store.key("k")["hub_namespaces"] is None and store.delivery_counts()["pending"] == 0
    key = store.row("SELECT * FROM keys WHERE id = 'k'")
    assert key["max_storage_bytes"] is None and key["max_steps"] is None and key["max_job_seconds"] is None
    store.close()


def test_a_schema_3_database_keeps_its_webhooks_and_gains_the_hub_namespaces_and_the_keys_limits(tmp_path):
    """Schemas 3 (webhooks) and 4 (Hub namespaces) are in deployed databases: schema 5 adds the keys' own
    limits on top of them."""
    from textft.service.store import SCHEMA, Store

    old = SCHEMA.replace(",\n    max_steps INTEGER,\n    max_job_seconds REAL,\n    max_storage_bytes INTEGER\n", "\n")
    old = old.replace(", hub_namespaces TEXT", "")
    assert "max_steps" not in old and "hub_namespaces" not in old and "webhook_secret" in old
    with sqlite3.connect(tmp_path / "old.db") as db:
        db.executescript(old + "PRAGMA user_version = 3;")
        db.execute("INSERT INTO keys (id, name, salt, hash, created_at, webhook_secret, max_queued)"
                   " VALUES ('k', 'k', x'00', x'00', 0, 's3cret', 2)")
    store = Store(tmp_path / "old.db")
    key = store.key("k")
    assert store.row("PRAGMA user_version")["user_version"] == 5
    assert key["webhook_secret"] == "s3cret" and key["max_queued"] == 2 and key["hub_namespaces"] is None
    assert key["max_steps"] is None and key["max_job_seconds"] is None and key["max_storage_bytes"] is None
    store.close()


# --- sentence pairs ---------------------------------------------------------------------------


def test_pair_uploads_are_checked_by_the_loader_and_preview_both_texts(service, http, task_files, pair_sets):
    ds = pair_sets["train"]
    assert ds["pairs"] is True and ds["text_pair_column"] == "text_pair" and ds["task"] == "single_label"
    rows = [json.loads(line) for line in task_files["pairs"]["train"].read_text().splitlines()]
    # rows of the training part (the loader carves validation out of this file), each with its pair
    assert len(ds["preview"]) == 5 and all(p in rows for p in ds["preview"])
    assert http.get(f"/v1/datasets/{ds['id']}").json() == ds

    before = http.get("/v1/datasets").json()
    missing = upload(http, task_files["pairs"]["train"], text_pair_column="text_pairr")
    assert missing.status_code == 422
    problem = missing.json()["problems"][0]
    assert problem["field"] == "text_pair_column"
    assert "column 'text_pairr' not found" in problem["message"] and "did you mean 'text_pair'" in problem["message"]
    assert "data." not in problem["message"] and str(service.data_dir) not in problem["message"]
    same = upload(http, task_files["pairs"]["train"], text_pair_column="text")
    assert same.status_code == 422 and same.json()["problems"][0]["field"] == "text_pair_column"
    typo = upload(http, task_files["pairs"]["train"], text_pair="text_pair")
    assert typo.status_code == 422 and "did you mean 'text_pair_column'" in typo.json()["error"]
    assert http.get("/v1/datasets").json() == before  # nothing of the refused uploads is kept

    peek = http.post("/v1/datasets/columns", files={"file": ("p.jsonl", task_files["pairs"]["train"].read_bytes())})
    assert peek.json()["suggested"] == {"text_column": "text", "label_column": "label", "text_pair_column": "text_pair"}


def test_a_validation_dataset_must_read_the_same_pairs(http, task_files, pair_sets):
    single = upload(http, task_files["pairs"]["validation"]).json()
    resp = http.post("/v1/jobs", json={"dataset": pair_sets["train"]["id"], "validation_dataset": single["id"],
                                       "config": "tiny"})
    assert resp.status_code == 422
    problem = resp.json()["problems"][0]
    assert problem["field"] == "validation_dataset" and "upload it with text_pair_column=text_pair" in problem["message"]
    resp = http.post("/v1/jobs", json={"dataset": single["id"], "test_dataset": pair_sets["test"]["id"],
                                       "config": "tiny"})
    assert resp.status_code == 422 and resp.json()["problems"][0]["field"] == "test_dataset"
    assert "upload it without text_pair_column" in resp.json()["error"]
    resp = http.post("/v1/jobs", json={"dataset": pair_sets["train"]["id"], "config": "tiny",
                                       "overrides": {"data.text_pair_column": "text"}})
    assert resp.status_code == 422 and "chosen when the dataset was uploaded" in resp.json()["error"]


def test_a_pair_job_trains_and_its_model_predicts_pairs(service, http, pair_sets, tiny_model_dir):
    out = recipe(http, pair_sets["train"]["id"], tiny_model_dir)
    assert out["facts"]["pairs"] is True and out["settings"]["data.text_pair_column"] == "text_pair"
    resp = http.post("/v1/jobs", json={"dataset": pair_sets["train"]["id"], "validation_dataset": pair_sets["validation"]["id"],
                                       "test_dataset": pair_sets["test"]["id"], "config": "tiny",
                                       "overrides": tiny_job(tiny_model_dir)})
    assert resp.status_code == 201, resp.text
    job = wait_state(http, resp.json()["id"], ("succeeded", "failed"))
    assert job["state"] == "succeeded", http.get(f"/v1/jobs/{job['id']}/log").text
    # the answer is in the second text only (conftest.pair_rows): a high score means both were read
    assert job["metrics"]["splits"]["test"]["accuracy"] >= 0.9
    assert job["metrics"]["task"] == "single_label" and job["metrics"]["headline"] == HEADLINES["single_label"]

    model = http.get(f"/v1/models/{job['id']}").json()
    assert model["pairs"] is True and model["text_pair_column"] == "text_pair" and model["task"] == "single_label"
    assert next(m for m in http.get("/v1/models").json() if m["id"] == job["id"])["pairs"] is True
    rows = pair_rows(16, 21)
    inputs = [{"text": r["text"], "text_pair": r["text_pair"]} for r in rows]
    resp = http.post(f"/v1/models/{job['id']}/predict", params={"explain": "true"}, json={"inputs": inputs})
    assert resp.status_code == 200, resp.text
    preds = resp.json()["predictions"]
    assert sum(p["label"] == r["label"] for p, r in zip(preds, rows)) >= 14
    assert all(p["input"]["mode"] == "longest_first" for p in preds)
    single = http.post(f"/v1/models/{job['id']}/predict", json={"inputs": [rows[0]["text"]]})
    assert single.status_code == 422 and "reads text pairs" in single.json()["error"]


# --- multi-label and regression models --------------------------------------------------------

HEADLINES = {"single_label": ["accuracy", "macro_f1", "weighted_f1", "loss"],
             "multi_label": ["macro_f1", "micro_f1", "samples_f1", "subset_accuracy", "hamming_loss", "loss"],
             "regression": ["mae", "rmse", "r2", "pearson", "spearman", "loss"]}
LOWER = {"single_label": ["loss"], "multi_label": ["hamming_loss", "loss"], "regression": ["mae", "rmse", "loss"]}


def assert_task_metrics(metrics: dict, task: str) -> None:
    """Headline numbers of the task's own metrics on every split, which of them are lower-is-better."""
    assert metrics["task"] == task
    assert metrics["headline"] == HEADLINES[task] and metrics["lower_is_better"] == LOWER[task]
    assert set(metrics["splits"]) == {"validation", "test"}
    for m in metrics["splits"].values():
        assert set(m) == {*HEADLINES[task], "num_examples", "intervals"} and m["num_examples"] == 80
        assert all(isinstance(m[k], float) for k in HEADLINES[task]), m
        # each headline metric's 95% interval (the loss has none: it needs the model's scores)
        assert set(m["intervals"]) == set(HEADLINES[task]) - {"loss"}
        assert all(low <= high for low, high in m["intervals"].values()), m


@pytest.mark.parametrize("task", ["multi_label", "regression"])
def test_a_job_and_its_model_show_the_metrics_of_their_own_task(http, task_jobs, task):
    job = task_jobs[task]
    assert_task_metrics(job["metrics"], task)
    metric = {"multi_label": "macro_f1", "regression": "rmse"}[task]
    for best in (job["metrics"]["best"], job["progress"]["best"]):
        assert best["metric"] == metric and best["lower_is_better"] is (task == "regression"), best
    listed = next(j for j in http.get("/v1/jobs").json() if j["id"] == job["id"])
    assert listed["metrics"] == job["metrics"]

    model = http.get(f"/v1/models/{job['id']}").json()
    assert model["task"] == task and model["metrics"] == job["metrics"]["splits"]
    assert model["headline"] == HEADLINES[task] and model["lower_is_better"] == LOWER[task]
    assert next(m for m in http.get("/v1/models").json() if m["id"] == job["id"]) == model
    test = model["metrics"]["test"]
    if task == "regression":  # scores 1 to 8.5 from the count of positive words: a tiny model learns most of it
        assert test["r2"] > 0.5 and test["spearman"] > 0.7 and test["rmse"] < 2
        assert model["thresholds"] is None
    else:
        assert test["micro_f1"] > 0.7 and 0 <= test["hamming_loss"] < 0.2
        # chosen on validation for each label (macro-F1), shown with the model as predict applies them
        assert set(model["thresholds"]["values"]) == set(model["labels"]) == {"acting", "music", "ending"}
        assert model["thresholds"]["tuning"] == "per_label" and all(0 < t < 1 for t in model["thresholds"]["values"].values())


def test_multi_label_and_regression_models_answer_in_their_own_shape(http, task_jobs):
    multi = task_jobs["multi_label"]["id"]
    resp = http.post(f"/v1/models/{multi}/predict", params={"explain": "true"},
                     json={"inputs": ["the acting and the music", "the film was really a story"], "top_k": 3})
    assert resp.status_code == 200, resp.text
    both, plain = resp.json()["predictions"]
    assert [x["label"] for x in both["top_k"]][:2] in (["acting", "music"], ["music", "acting"])
    assert {x["label"] for x in both["labels"]} >= {"acting"} and all(0 <= x["score"] <= 1 for x in both["labels"])
    assert "label" not in both and plain["input"]["tokens"] > 2 and len(plain["top_k"]) == 3

    value = task_jobs["regression"]["id"]
    resp = http.post(f"/v1/models/{value}/predict", json={"inputs": ["a great and superb film", "the film was really a story"]})
    assert resp.status_code == 200, resp.text
    preds = resp.json()["predictions"]
    assert set(preds[0]) == {"value"} and preds[0]["value"] > preds[1]["value"]
    refused = http.post(f"/v1/models/{value}/predict", json={"inputs": ["a good film"], "top_k": 3})
    assert refused.status_code == 422 and "regression model answers one value" in refused.json()["error"]
