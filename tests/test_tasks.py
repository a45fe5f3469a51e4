"""Multi-label, text pairs and regression end to end on learnable toy data: train → textft.load →
textft predict → textft serve (a real server on loopback) → a plain transformers pipeline with the
post-processing the saved config.json asks for."""

import contextlib
import csv
import json
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

import textft
from conftest import multi_label_rows, pair_rows, regression_rows, write_jsonl
from textft.cli import main as cli
from textft.errors import UserError
from textft.train import main as train_main


def train_run(out: Path, tiny_model_dir: Path, files: dict, *overrides: str) -> Path:
    rc = train_main([f"model.name_or_path={tiny_model_dir}", f"data.train_file={files['train']}",
                     f"data.validation_file={files['validation']}", f"data.test_file={files['test']}",
                     "data.max_length=32", "train.epochs=6", "train.batch_size=16", "train.lr=3e-3",
                     "train.mixed_precision=fp32", f"output.dir={out}", *overrides])
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def multi_label_run(tiny_model_dir, task_files, tmp_path_factory):
    return train_run(tmp_path_factory.mktemp("ml") / "run", tiny_model_dir, task_files["multi_label"],
                     "data.label_column=labels")


@pytest.fixture(scope="module")
def pair_run(tiny_model_dir, task_files, tmp_path_factory):
    return train_run(tmp_path_factory.mktemp("pair") / "run", tiny_model_dir, task_files["pairs"],
                     "data.text_pair_column=text_pair")


@pytest.fixture(scope="module")
def regression_run(tiny_model_dir, task_files, tmp_path_factory):
    # data.task stays auto: the scores are not whole numbers, so this is regression
    return train_run(tmp_path_factory.mktemp("reg") / "run", tiny_model_dir, task_files["regression"],
                     "data.label_column=score")


def report(run: Path) -> dict:
    return json.loads((run / "report.json").read_text())


def config(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())


def pipe(run: Path, **kwargs):
    from transformers import pipeline

    return pipeline("text-classification", model=str(run), device="cpu", **kwargs)


@contextlib.contextmanager
def serving(run: Path, **limits):
    """``textft serve``'s app in a uvicorn server on a free loopback port, for the length of the block."""
    import uvicorn

    from textft.serving import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(textft.load(run, precision="fp32"), max_wait_ms=2, **limits)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(timeout=30)


# --- multi-label ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_multi_label_learns_and_saves_its_thresholds(multi_label_run):
    cfg, rep = config(multi_label_run), report(multi_label_run)
    assert cfg["problem_type"] == "multi_label_classification" and cfg["id2label"] == {"0": "acting", "1": "ending",
                                                                                        "2": "music"}
    saved = cfg["textft_thresholds"]
    assert saved["tuning"] == "per_label" and saved["metric"] == "macro_f1" and set(saved["values"]) == {
        "acting", "ending", "music"} and all(0 < t < 1 for t in saved["values"].values())
    assert rep["task"] == "multi_label" and rep["best"]["metric"] == "macro_f1"
    test = rep["splits"]["test"]
    assert test["macro_f1"] > 0.8 and test["micro_f1"] > 0.8  # chance is about 0.5
    assert test["thresholds"] == saved["values"] and test["threshold_tuning"]["source"] == "chosen on the validation split"
    assert set(test["at_0.5"]) >= {"macro_f1", "micro_f1", "samples_f1", "subset_accuracy", "hamming_loss"}
    assert 0 <= test["hamming_loss"] < 0.2 and test["num_examples"] == 80
    assert np.array(test["cooccurrence"]).shape == (3, 3)
    assert test["cooccurrence"][0][0] == test["per_class"]["acting"]["support"]
    rows = [json.loads(x) for x in (multi_label_run / "predictions" / "test.jsonl").read_text().splitlines()]
    assert {"text", "labels", "pred", "scores", "errors"} <= set(rows[0]) and any(r["labels"] == [] for r in rows)


def test_multi_label_report_shows_both_thresholds_and_the_label_plots(multi_label_run):
    md = (multi_label_run / "report.md").read_text()
    assert "### Scores at the chosen thresholds and at 0.5" in md and "| 0.5 |" in md and "F1 at 0.5" in md
    html = (multi_label_run / "report.html").read_text()
    for alt in ("test F1 per label", "test co-occurrence", "validation co-occurrence", "learning curves"):
        assert f'alt="{alt}"' in html
    assert "Hamming loss" in html and "samples-F1" in html
    eval_md = (multi_label_run / "eval_report.md").read_text()
    assert "| label | threshold | precision | recall | F1 | F1 at 0.5 | support |" in eval_md


def test_multi_label_predictions_list_every_label_above_its_threshold(multi_label_run):
    texts = ["the acting and the music", "the plot and the story", "ending acting music scenes"]
    got = textft.load(multi_label_run, precision="fp32").predict(texts, return_all_scores=True)
    thresholds = config(multi_label_run)["textft_thresholds"]["values"]
    for g in got:
        above = sorted(((s, n) for n, s in g["scores"].items() if s >= thresholds[n]), reverse=True)
        assert [x["label"] for x in g["labels"]] == [n for _, n in above]
    assert {x["label"] for x in got[0]["labels"]} >= {"acting", "music"} and got[1]["labels"] == []
    # a plain pipeline applies the sigmoid by itself (problem_type) and reads the same thresholds
    plain = pipe(multi_label_run, top_k=None)(texts, truncation=True)
    for g, p in zip(got, plain):
        scores = {x["label"]: x["score"] for x in p}
        assert scores == pytest.approx(g["scores"], abs=1e-5)
        kept = {n for n, s in scores.items() if s >= pipe_thresholds(multi_label_run)[n]}
        assert kept == {x["label"] for x in g["labels"]}


def pipe_thresholds(run):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(run).textft_thresholds["values"]


@pytest.mark.slow
def test_multi_label_predict_serve_and_evaluate(multi_label_run, tmp_path, capsys):
    rows = multi_label_rows(30, 9)
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    assert cli(["predict", "--model", str(multi_label_run), "--input", str(src), "--output", str(tmp_path / "o.jsonl"),
                "--label-column", "labels", "--precision", "fp32", "--no-progress"]) == 0
    out = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert all(isinstance(o["labels"], list) and o["true_label"] == r["labels"] for o, r in zip(out, rows))
    assert "exact match" in capsys.readouterr().err
    with serving(multi_label_run) as http:
        r = http.post("/predict", json={"inputs": [rows[0]["text"], rows[1]["text"]], "top_k": 2})
        assert r.status_code == 200
        preds = r.json()["predictions"]
        assert [[x["label"] for x in p["labels"]] for p in preds] == [[x["label"] for x in o["labels"]] for o in out[:2]]
        assert len(preds[0]["top_k"]) == 2 and "label" not in preds[0]
        meta = http.get("/metadata").json()
        assert meta["task"] == "multi_label" and meta["decision"]["textft_thresholds"]["tuning"] == "per_label"
        assert set(meta["metrics"]["test"]) >= {"macro_f1", "micro_f1", "num_examples"}
    assert cli(["evaluate", "--model", str(multi_label_run), "--data", str(src), "--label-column", "labels",
                "--output", str(tmp_path / "eval")]) == 0
    printed = capsys.readouterr().out
    assert "evaluation: macro-F1" in printed and "stored with the model" in (tmp_path / "eval" / "report.html").read_text()


@pytest.mark.slow
def test_multi_label_from_a_csv_with_a_label_delimiter(tiny_model_dir, tmp_path):
    def csv_file(name, rows):
        with open(tmp_path / name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["comment", "tags"])
            w.writerows([[r["text"], " | ".join(r["labels"])] for r in rows])  # "" for none: an empty cell
        return tmp_path / name

    files = {"train": csv_file("train.csv", multi_label_rows(120, 1)), "validation": csv_file("v.csv", multi_label_rows(40, 2)),
             "test": csv_file("t.csv", multi_label_rows(40, 3))}
    out = train_run(tmp_path / "run", tiny_model_dir, files, "data.text_column=comment", "data.label_column=tags",
                    "data.label_delimiter='|'", "train.epochs=1", "train.threshold_tuning=global")
    rep = report(out)
    assert rep["task"] == "multi_label" and rep["label_names"] == ["acting", "ending", "music"]
    assert len(set(config(out)["textft_thresholds"]["values"].values())) == 1  # one threshold for all


def test_calibrate_chooses_multi_label_thresholds_again(multi_label_run, tmp_path, capsys):
    from tiny_classifier import copy_run

    model = copy_run(multi_label_run, tmp_path / "model")
    data = write_jsonl(tmp_path / "more.jsonl", multi_label_rows(60, 12))
    assert cli(["calibrate", "--model", str(model), "--data", str(data), "--label-column", "labels",
                "--thresholds", "global"]) == 0
    out = capsys.readouterr().out
    assert "stored thresholds (per_label)" in out and "thresholds chosen here (global)" in out
    saved = config(model)["textft_thresholds"]
    assert saved["tuning"] == "global" and saved["split"] == str(data)
    assert cli(["calibrate", "--model", str(model), "--data", str(data), "--label-column", "labels",
                "--target-precision", "0.9"]) == 2
    assert "out-of-scope options apply to single-label models" in capsys.readouterr().err


# --- text pairs ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_pairs_are_read_together(pair_run):
    rep = report(pair_run)
    # the answer is in the second text and the first holds the opposite word: only a model that reads
    # both, and tells them apart, gets above chance
    assert rep["splits"]["test"]["accuracy"] >= 0.9 and rep["text_pair"] is True
    mistake_rows = [json.loads(x) for x in (pair_run / "predictions" / "test.jsonl").read_text().splitlines()]
    assert all("text_pair" in r for r in mistake_rows)
    clf = textft.load(pair_run, precision="fp32")
    pairs = [{"text": r["text"], "text_pair": r["text_pair"]} for r in pair_rows(24, 5)]
    got = clf.predict(pairs)
    plain = pipe(pair_run)(pairs, truncation=True)
    assert [g["label"] for g in got] == [p["label"] for p in plain]
    assert [g["score"] for g in got] == pytest.approx([p["score"] for p in plain], abs=1e-5)
    with pytest.raises(UserError, match="trained on text pairs"):
        clf.predict(["a single text"])


@pytest.mark.slow
def test_pairs_through_predict_serve_and_evaluate(pair_run, tmp_path, capsys):
    rows = pair_rows(20, 6)
    src = tmp_path / "in.csv"
    with open(src, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["a", "b", "gold"])
        w.writeheader()
        w.writerows({"a": r["text"], "b": r["text_pair"], "gold": r["label"]} for r in rows)
    assert cli(["predict", "--model", str(pair_run), "--input", str(src), "--output", str(tmp_path / "o.jsonl"),
                "--text-column", "a", "--text-pair-column", "b", "--label-column", "gold", "--no-progress"]) == 0
    assert "accuracy" in capsys.readouterr().err
    assert cli(["predict", "--model", str(pair_run), "--input", str(src), "--output", str(tmp_path / "x.jsonl"),
                "--text-column", "a", "--no-progress"]) == 2
    assert "'--text-pair-column'" in capsys.readouterr().err and not (tmp_path / "x.jsonl").exists()
    out = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    with serving(pair_run, max_chars=200) as http:
        r = http.post("/predict", json={"inputs": [{"text": rows[0]["text"], "text_pair": rows[0]["text_pair"]}]})
        assert r.status_code == 200 and r.json()["predictions"][0]["label"] == out[0]["label"]
        one = http.post("/predict", json={"inputs": {"text": rows[1]["text"], "text_pair": rows[1]["text_pair"]}})
        assert one.json()["predictions"][0]["label"] == out[1]["label"]
        single = http.post("/predict", json={"inputs": "just one text"})
        assert single.status_code == 422 and "reads text pairs" in single.json()["error"]
        long = http.post("/predict", json={"inputs": [{"text": "a", "text_pair": "b " * 200}]})
        assert long.status_code == 413 and "inputs[0].text_pair" in long.json()["error"]
        extra = http.post("/predict", json={"inputs": [{"text": "a", "text_pair": "b", "third": "c"}]})
        assert extra.status_code == 422
    eval_file = write_jsonl(tmp_path / "e.jsonl", rows)
    assert cli(["evaluate", "--model", str(pair_run), "--data", str(eval_file), "--output", str(tmp_path / "ev")]) == 0
    assert "evaluation: accuracy" in capsys.readouterr().out
    evaluated = [json.loads(x) for x in (tmp_path / "ev" / "predictions" / "evaluation.jsonl").read_text().splitlines()]
    assert [(e["text"], e["text_pair"]) for e in evaluated] == [(r["text"], r["text_pair"]) for r in rows]


def test_report_examples_show_both_texts_of_a_pair():
    from textft.report_parts import example_markdown
    from textft.task_reports import single_label as single_label_report

    mistake = {"confidence": 0.9, "label": "pos", "pred": "neg", "text": "first <b>", "text_pair": "second & more"}
    html = "".join(single_label_report.html_split("test", {
        "per_class": {}, "top_confusions": [], "most_confident_mistakes": [mistake]}, {}))
    assert "first &lt;b&gt;<div class='pair'>&#8644; second &amp; more</div>" in html
    assert example_markdown(mistake) == "first \\<b> ‖ second \\& more"  # Markdown shows both as written


# --- regression ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_regression_learns_in_label_units(regression_run):
    cfg, rep = config(regression_run), report(regression_run)
    assert cfg["problem_type"] == "regression" and cfg["id2label"] == {"0": "score"}  # one output
    scale = cfg["textft_regression"]
    assert scale["standardised"] and 3 < scale["train_mean"] < 6 and 2 < scale["train_std"] < 4
    test = rep["splits"]["test"]
    assert rep["task"] == "regression" and rep["best"]["metric"] == "rmse"
    assert test["spearman"] > 0.8 and test["pearson"] > 0.8 and test["r2"] > 0.5 and test["mae"] < 1.5
    assert abs(test["mean_prediction"] - test["mean_reference"]) < 1.0  # the head answers in label units
    html = (regression_run / "report.html").read_text()
    assert 'alt="test predicted against true"' in html and 'alt="test residuals"' in html
    assert "Largest errors" in (regression_run / "report.md").read_text()


def test_regression_pipeline_and_textft_give_the_same_values(regression_run):
    texts = ["good great superb film", "the plot and the story", "lovely acting"]
    got = [g["value"] for g in textft.load(regression_run, precision="fp32").predict(texts)]
    assert got[0] > got[2] > got[1]  # three, one and no positive words
    for kwargs in ({}, {"function_to_apply": "none"}):
        plain = pipe(regression_run, **kwargs)(texts, truncation=True)
        assert [p["label"] for p in plain] == ["score"] * 3
        assert [p["score"] for p in plain] == pytest.approx(got, abs=1e-4)


def test_regression_predict_serve_and_calibrate(regression_run, tmp_path, capsys):
    rows = regression_rows(20, 8)
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    assert cli(["predict", "--model", str(regression_run), "--input", str(src), "--output", str(tmp_path / "o.csv"),
                "--label-column", "score", "--precision", "fp32", "--no-progress"]) == 0
    assert "MAE" in capsys.readouterr().err
    with open(tmp_path / "o.csv") as f:
        out = list(csv.DictReader(f))
    assert list(out[0]) == ["row", "value", "true_label"] and float(out[0]["true_label"]) == rows[0]["score"]
    with serving(regression_run) as http:
        r = http.post("/predict", json={"inputs": rows[0]["text"]})
        assert r.json()["predictions"][0]["value"] == pytest.approx(float(out[0]["value"]), abs=1e-3)
        ranked = http.post("/predict", json={"inputs": "good", "top_k": 2})
        assert ranked.status_code == 422 and "top_k" in ranked.json()["error"]
    assert cli(["calibrate", "--model", str(regression_run), "--data", str(src), "--label-column", "score"]) == 2
    assert "no threshold to calibrate" in capsys.readouterr().err


def test_regression_head_folding_is_exact():
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from textft.tasks.regression import Regression

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=32, num_labels=1)).eval()
    ids = torch.randint(5, 50, (4, 9))
    task = Regression(["y"], mean=6.5, std=2.5)
    before = task.values(model(input_ids=ids).logits.detach().numpy())
    task.export(model)
    after = model(input_ids=ids).logits.detach().numpy()[:, 0]
    assert task.folded and after == pytest.approx(before, abs=1e-5) and task.values(after[:, None]) == pytest.approx(
        before, abs=1e-5)


# --- the seam itself --------------------------------------------------------------------------------


def test_every_task_fact_has_one_owner():
    """What differs by task is read from the task classes: the config's vocabulary, the report sections,
    the answer schema and the recipe agree with them, and no other module names a task."""
    import ast

    from textft import task_reports
    from textft.config import METRICS, TASKS as CONFIG_TASKS
    from textft.recipe import Facts, min_passes
    from textft.serving import Prediction
    from textft.tasks import TASKS

    assert CONFIG_TASKS == ("auto", *TASKS)
    assert set(METRICS) == {m for cls in TASKS.values() for m in cls.metrics}
    assert set(task_reports.SECTIONS) == set(TASKS)
    assert set(Prediction.model_fields) == {f for cls in TASKS.values() for f in cls.answer_fields}
    facts = dict(non_embedding_params=1, fresh_head=True, pretrained_encoder=True, n_train=10, n_validation=5,
                 num_labels=2, global_batch=8, steps_per_epoch=2)
    assert [min_passes(Facts(**facts, task=name))[0] for name in TASKS] == [cls.min_epochs for cls in TASKS.values()]
    assert min_passes(Facts(**facts, task="multi_label", pairs=True))[1].startswith("3 passes: each label")
    # A task's name written out elsewhere is knowledge outside its owner (the config lists the names
    # data.task accepts, and the rule that only a multi-label task splits label strings).
    root = Path(__file__).resolve().parents[1] / "textft"
    allowed = {root / "config_schema.py", root / "config_checks.py"}
    named = [f"{path.relative_to(root)}:{node.lineno}" for path in sorted(root.rglob("*.py"))
             if path.parent != root / "tasks" and path not in allowed
             for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
             if isinstance(node, ast.Constant) and node.value in TASKS]
    assert named == []


def test_auto_detection_and_the_warning_that_names_the_choice(tmp_path, caplog):
    from textft.config import DataConfig
    from textft.data import load_splits

    lists = load_splits(DataConfig(train_file=str(write_jsonl(tmp_path / "m.jsonl", multi_label_rows(40, 1))),
                                   label_column="labels"))
    assert lists.task.name == "multi_label" and lists.label_names == ["acting", "ending", "music"]
    assert all(set(row["labels"]) <= {0.0, 1.0} and len(row["labels"]) == 3 for row in lists.splits["train"])
    with caplog.at_level("WARNING", logger="textft"):
        numbers = load_splits(DataConfig(train_file=str(write_jsonl(tmp_path / "r.jsonl", regression_rows(40, 1))),
                                         label_column="score"))
    assert numbers.task.name == "regression" and "so this is a regression task" in caplog.text
    whole = [{"text": r["text"], "score": int(r["score"])} for r in regression_rows(40, 1)]
    ints = load_splits(DataConfig(train_file=str(write_jsonl(tmp_path / "i.jsonl", whole)), label_column="score"))
    assert ints.task.name == "single_label"  # whole numbers stay class names unless data.task=regression


def test_threshold_tuning_per_label_and_global():
    from textft.tasks.multi_label import tune_thresholds

    rng = np.random.default_rng(0)
    truth = rng.random((400, 2)) < 0.3
    # label 0 is separable at 0.2, label 1 at 0.7
    probs = np.where(truth, [0.3, 0.8], [0.1, 0.6]) + rng.uniform(-0.05, 0.05, (400, 2))
    per_label = tune_thresholds(probs, truth, "per_label", "macro_f1")
    assert 0.15 <= per_label[0] <= 0.25 and 0.65 <= per_label[1] <= 0.75
    one = tune_thresholds(probs, truth, "global", "micro_f1")
    assert one[0] == one[1]
    assert list(tune_thresholds(probs, truth, "none", "macro_f1")) == [0.5, 0.5]


def test_compare_ranks_by_the_task_metric_and_refuses_mixed_tasks(regression_run, multi_label_run, tmp_path, capsys):
    assert cli(["compare", str(regression_run), str(regression_run), "--output", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    assert "best RMSE in bold" in out and "Spearman" in out and "accuracy" not in out
    assert cli(["compare", str(regression_run), str(multi_label_run)]) == 2
    assert "different tasks" in capsys.readouterr().err


def test_model_cards_show_the_task_specific_usage(regression_run, multi_label_run, pair_run):
    from textft.model_card import model_card

    reg = str(model_card(regression_run, repo_id="me/reg"))
    assert 'function_to_apply="none"' in reg and "type: mae" in reg and "It predicts `score`" in reg
    ml = str(model_card(multi_label_run, repo_id="me/ml"))
    assert "top_k=None" in ml and "textft_thresholds" in ml and "type: hamming_loss" in ml
    pair = str(model_card(pair_run, repo_id="me/pair"))
    assert '"text_pair": "The second text."' in pair and "It reads pairs of texts" in pair


def test_hub_style_multi_label_class_ids_keep_their_names(tmp_path):
    """A dataset whose labels are lists of ClassLabel ids (as go_emotions' simplified configuration)."""
    import datasets

    from textft.config import DataConfig
    from textft.data import load_splits

    names = ["acting", "ending", "music"]
    features = datasets.Features({"text": datasets.Value("string"),
                                  "labels": datasets.List(datasets.ClassLabel(names=names))})
    repo = tmp_path / "emotions"
    for split, seed in (("train", 1), ("validation", 2)):
        rows = multi_label_rows(40, seed)
        (repo / "data").mkdir(parents=True, exist_ok=True)
        datasets.Dataset.from_dict({"text": [r["text"] for r in rows],
                                    "labels": [[names.index(x) for x in r["labels"]] for r in rows]},
                                   features=features).to_parquet(repo / "data" / f"{split}.parquet")
    data = load_splits(DataConfig(dataset=str(repo), label_column="labels"))
    assert data.task.name == "multi_label" and data.label_names == names
    expected = {r["text"]: r["labels"] for r in multi_label_rows(40, 2)}
    for row in data.splits["validation"]:
        assert [names[i] for i, v in enumerate(row["labels"]) if v] == expected[row["text"]]


def test_only_second_keeps_the_first_text_whole_and_falls_back_when_it_cannot(tokenizer):
    from textft.tokenization import encode_pairs

    first, second = "good " * 10, "bad " * 10
    kept = encode_pairs([first], [second], tokenizer, 16, "only_second")["input_ids"][0]
    assert len(kept) == 16 and tokenizer.decode(kept).split().count("good") == 10
    longest = encode_pairs([first], [second], tokenizer, 16, "longest_first")["input_ids"][0]
    assert len(longest) == 16 and tokenizer.decode(longest).split().count("good") < 10
    # the first text alone is longer than the budget: that pair is cut longest-first, the others as asked
    out = encode_pairs(["good " * 30, first], ["bad", second], tokenizer, 16, "only_second")["input_ids"]
    assert [len(ids) for ids in out] == [16, 16] and tokenizer.decode(out[1]).split().count("good") == 10


def test_lower_is_better_metrics_select_and_stop():
    from textft.loop import BestModel, LoopState
    from textft.recipe import Plan

    plan = Plan(total_steps=10, steps_per_epoch=10, metric="rmse", patience=2)
    state, saved = LoopState(), []
    best = BestModel(plan, state, lambda info: saved.append(info["value"]))
    for step, value in enumerate([2.0, 1.5, 1.7, 1.4, 1.6, 1.8], 1):
        state.step = step
        best.update({"rmse": value}, step / 10)
    assert plan.lower_is_better and saved == [2.0, 1.5, 1.4] and state.stop_reason == "early_stopping"
    # an undefined score (a correlation of constant predictions) never counts as better
    state2 = LoopState()
    BestModel(Plan(total_steps=10, steps_per_epoch=10, metric="spearman"), state2, lambda i: None).update(
        {"spearman": None}, 0.1)
    assert state2.best_value is None


def test_a_sweep_of_a_regression_config_minimizes_rmse(tiny_model_dir, task_files, tmp_path):
    from textft.sweep import checked_inputs  # the checks a sweep runs before its first trial

    config = tmp_path / "reg.yaml"
    config.write_text(f"""
data: {{train_file: {task_files['regression']['train']}, label_column: score}}
model: {{name_or_path: {tiny_model_dir}}}
output: {{dir: {tmp_path / 'reg'}}}
sweep: {{space: {{train.lr: {{type: log_uniform, low: 1.0e-4, high: 1.0e-2}}}}}}
""")
    spec, *_ = checked_inputs(str(config), 2, None, None, [])
    assert (spec.metric, spec.direction) == ("rmse", "minimize")
    config.write_text(config.read_text().replace("sweep: {", "sweep: {metric: accuracy, "))
    with pytest.raises(UserError, match="accuracy is not a regression metric"):
        checked_inputs(str(config), 2, None, None, [])


@pytest.mark.slow
@pytest.mark.parametrize("fixture", ["multi_label_run", "pair_run", "regression_run"])
def test_onnx_backend_gives_torch_logits_and_answers_for_every_task(fixture, request, tmp_path):
    """One exported graph serves every head; pairs feed their token_type_ids; int8 is measured with
    the task's own notion of an equal answer (label sets; values for regression)."""
    pytest.importorskip("onnxruntime")
    import shutil

    run = tmp_path / "run"
    shutil.copytree(request.getfixturevalue(fixture), run, ignore=shutil.ignore_patterns("checkpoints"))
    rows = [json.loads(line) for line in (run / "predictions" / "validation.jsonl").read_text().splitlines()]
    texts = [r["text"] for r in rows]
    pairs = [r["text_pair"] for r in rows] if fixture == "pair_run" else None
    torch_clf = textft.load(run, precision="fp32", backend="torch")
    onnx_clf = textft.load(run, precision="fp32", backend="onnx")
    assert onnx_clf.backend == "onnx" and onnx_clf.task.name == torch_clf.task.name
    expected = torch_clf.logits(texts, batch_size=7, pairs=pairs)
    assert np.allclose(onnx_clf.logits(texts, batch_size=7, pairs=pairs), expected, atol=1e-4)
    inputs = texts if pairs is None else [{"text": t, "text_pair": p} for t, p in zip(texts, pairs)]
    a, b = torch_clf.predict(inputs), onnx_clf.predict(inputs)
    if fixture == "regression_run":
        assert np.allclose([x["value"] for x in a], [x["value"] for x in b], atol=1e-4)
    else:
        assert [x.get("label", x.get("labels") and [y["label"] for y in x["labels"]]) for x in a] == \
            [x.get("label", x.get("labels") and [y["label"] for y in x["labels"]]) for x in b]
    quality = textft.load(run, precision="int8", backend="onnx").describe()["onnx"]["quality"]
    assert quality["texts"] == len(texts)
    if fixture == "regression_run":
        assert quality["agreement"] is None and quality["max_abs_difference"] >= 0
    else:
        assert 0.8 <= quality["agreement"] <= 1.0
