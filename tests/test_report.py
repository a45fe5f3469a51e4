"""Run reports: numbers against scikit-learn, the HTML a person opens, and runs with pieces missing."""

import json

import numpy as np
import pytest
from run_dirs import decoded_images, parse_page, write_run
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from textft.cli import main as cli
from textft.report import write_run_report
from textft.report_data import build_report


def softmax(logits):
    z = np.exp(logits - logits.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def ece_by_hand(confidence, correct, bins=15):
    total = 0.0
    for i in range(bins):
        lo, hi = i / bins, (i + 1) / bins
        inside = [(c, ok) for c, ok in zip(confidence, correct) if (lo < c <= hi) or (i == 0 and c == 0)]
        if inside:
            acc = sum(ok for _, ok in inside) / len(inside)
            conf = sum(c for c, _ in inside) / len(inside)
            total += len(inside) / len(confidence) * abs(acc - conf)
    return total


def test_report_numbers_equal_scikit_learn(tmp_path):
    behind = write_run(tmp_path / "run", k=5, n=300, accuracy=0.7, seed=3)
    write_run_report(tmp_path / "run")
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    for split, (y, logits) in behind.items():
        pred = logits.argmax(-1)
        m = report["splits"][split]
        assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
        assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
        assert m["weighted_f1"] == pytest.approx(f1_score(y, pred, average="weighted"))
        p, r, f, s = precision_recall_fscore_support(y, pred, labels=range(5), zero_division=0)
        for i, name in enumerate(report["label_names"]):
            c = m["per_class"][name]
            assert (c["precision"], c["recall"], c["f1"], c["support"]) == pytest.approx((p[i], r[i], f[i], s[i]))
        assert np.allclose(m["confusion_matrix_normalized"], confusion_matrix(y, pred, normalize="true"), atol=1e-6)
        # Calibration from the rounded confidences the predictions file holds, as the report reads them.
        conf = softmax(logits).max(-1).round(6)
        assert m["ece"] == pytest.approx(ece_by_hand(conf, pred == y), abs=1e-9)
        assert sum(b["count"] for b in m["calibration"]["bins"]) == len(y)
        cm = confusion_matrix(y, pred)
        np.fill_diagonal(cm, 0)
        assert m["top_confusions"][0]["count"] == cm.max()
        assert len(m["top_confusions"]) == min(20, int((cm > 0).sum()))
        mistakes = m["most_confident_mistakes"]
        assert len(mistakes) == 10 and all(x["label"] != x["pred"] for x in mistakes)
        assert [x["confidence"] for x in mistakes] == sorted((x["confidence"] for x in mistakes), reverse=True)
        assert mistakes[0]["confidence"] == pytest.approx(conf[pred != y].max())
    # Each logged window covers 5 steps at samples_per_s = 100 + step: total steps over total time.
    steps = np.arange(5, 61, 5)
    assert report["throughput"]["samples_per_s"] == pytest.approx(60 / np.sum(5 / (100.0 + steps)), abs=1e-3)
    assert report["timings"]["seconds_per_step"] == pytest.approx(12.5 / 60, abs=1e-4)
    assert (report["train_seconds"], report["optimizer_steps"]) == (12.5, 60)  # as in eval_report.json
    evals = report["history"]["eval"]
    assert report["best"]["source"] == "train_log.jsonl"
    assert report["best"]["value"] == max(e["macro_f1"] for e in evals)
    assert list(report["splits"]) == ["test", "validation"]  # the held-out split leads


def test_best_and_stop_reason_from_the_run_are_shown(tmp_path):
    best = {"step": 40, "epoch": 2.0, "metric": "macro_f1", "value": 0.8125}
    write_run(tmp_path / "run", extra={"best": best, "stop_reason": "early_stopping"})
    write_run_report(tmp_path / "run")
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["best"] == {**best, "source": "eval_report.json"}
    assert report["stop_reason"] == "early_stopping"
    md = (tmp_path / "run" / "report.md").read_text()
    assert "macro-F1 0.8125 at step 40 (epoch 2.00)" in md and "stopped: early_stopping" in md
    assert "early_stopping" in "".join(parse_page(tmp_path / "run" / "report.html").text)


@pytest.mark.parametrize("k", [2, 77])
def test_html_is_self_contained_and_every_image_decodes(tmp_path, k):
    run = tmp_path / f"run{k}"
    long_text = "a very long customer message that goes on " * 20
    write_run(run, k=k, n=600 if k == 77 else 120, texts=[long_text] * 600)
    write_run_report(run)
    page = parse_page(run / "report.html")
    images = decoded_images(page)
    alts = [alt for alt, _, _ in images]
    assert alts == ["learning curves", "test confusion matrix", "test F1 per class", "test calibration",
                    "validation confusion matrix", "validation F1 per class", "validation calibration"]
    for alt, (w, h), shown in images:
        assert 400 <= w <= 5000 and 200 <= h <= 5000, (alt, w, h)
        assert shown == w // 2 and shown <= 1300  # drawn at twice the pixels it is shown at, fits the page
    sizes = dict((alt, size) for alt, size, _ in images)
    if k == 77:
        # 77 rows of tick labels need a tall matrix and a tall bar chart; 2 classes need neither.
        assert sizes["test confusion matrix"][1] > 2000 and sizes["test F1 per class"][1] > 2500
    else:
        assert sizes["test confusion matrix"][1] < 1400
    text = "".join(page.text)
    assert "Most confused pairs" in text if k == 77 else "Most confused pairs" not in text
    assert long_text not in text and "…" in text  # mistakes are shortened
    md = (run / "report.md").read_text()
    assert md.count("| test |") == 1 and "### Most confident mistakes" in md
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_run_without_test_split_predictions_or_more_than_one_evaluation(tmp_path):
    run = tmp_path / "run"
    write_run(run, splits=("validation",), predictions=False, evals=1)
    write_run_report(run)
    report = json.loads((run / "report.json").read_text())
    assert list(report["splits"]) == ["validation"] and report["primary_split"] == "validation"
    assert report["splits"]["validation"]["ece"] is None and len(report["history"]["eval"]) == 1
    page = parse_page(run / "report.html")
    assert [alt for alt, _, _ in decoded_images(page)] == ["learning curves", "validation confusion matrix",
                                                            "validation F1 per class"]
    assert "No predictions/validation.jsonl" in "".join(page.text)


def test_report_of_a_real_tiny_run_and_of_its_evaluation(tiny_model_dir, toy_files, tmp_path_factory, tmp_path,
                                                         capsys):
    from tiny_classifier import copy_run, trained_run

    run = copy_run(trained_run(tiny_model_dir, toy_files, tmp_path_factory), tmp_path / "run")
    if (run / "report.json").is_file():  # written by the run itself, inside its staging directory
        assert json.loads((run / "report.json").read_text())["run"] == "run"
    assert cli(["report", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"report written: {run / 'report.html'}" in out and "test: accuracy" in out
    report = json.loads((run / "report.json").read_text())
    ev = json.loads((run / "eval_report.json").read_text())
    assert report["splits"]["test"]["macro_f1"] == ev["splits"]["test"]["macro_f1"]
    assert report["config"]["data"]["max_length"] == 32
    assert report["throughput"]["samples_per_s"] > 0 and report["history"]["train"]
    assert report["splits"]["test"]["calibration"]["num_bins"] == 15

    out = tmp_path / "ev"
    assert cli(["evaluate", "--model", str(run), "--data", str(toy_files["test"]), "--output", str(out)]) == 0
    # evaluate renders the report itself: no train log or best step, but predictions, so calibration
    report = json.loads((out / "report.json").read_text())
    assert report["primary_split"] == "evaluation" and report["history"] == {"train": [], "eval": []}
    assert report["best"] is None and report["splits"]["evaluation"]["macro_f1"] == ev["splits"]["test"]["macro_f1"]
    assert report["splits"]["evaluation"]["calibration"]["num_bins"] == 15
    rows = [json.loads(line) for line in (out / "predictions" / "evaluation.jsonl").read_text().splitlines()]
    assert len(rows) == report["splits"]["evaluation"]["num_examples"]
    assert len(decoded_images(parse_page(out / "report.html"))) == 3  # confusion, F1 bars, reliability


def test_a_failed_render_leaves_the_previous_report_whole(tmp_path, monkeypatch):
    import textft.report as rep

    run = tmp_path / "run"
    write_run(run)
    write_run_report(run)
    before = {n: (run / n).read_bytes() for n in ("report.json", "report.md", "report.html")}

    def broken(*args, **kwargs):
        raise RuntimeError("disk full while drawing")

    monkeypatch.setattr(rep, "render_html", broken)
    (run / "train_log.jsonl").write_text("")  # the new report would differ
    with pytest.raises(RuntimeError):
        write_run_report(run)
    assert {n: (run / n).read_bytes() for n in before} == before
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []


def test_report_command_bad_input(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli(["report", str(tmp_path / "empty"), str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: '{tmp_path / 'empty'}' has no eval_report.json: not a finished textft run"
                   " (train or `textft evaluate --output` writes it)",
                   f"error: run directory '{tmp_path / 'missing'}' does not exist"]
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "eval_report.json").write_text("{not json")
    assert cli(["report", str(tmp_path / "broken")]) == 2
    assert "could not be read as JSON" in capsys.readouterr().err


def test_build_report_writes_nothing(tmp_path):
    write_run(tmp_path / "run")
    names = {p.name for p in (tmp_path / "run").iterdir()}
    build_report(tmp_path / "run")
    assert {p.name for p in (tmp_path / "run").iterdir()} == names
