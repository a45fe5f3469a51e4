"""Evaluation on small data: macro averages over the classes present, bootstrap intervals that cover
the truth as often as they claim, McNemar's textbook p-value, compare's verdicts and the warning of a
thin validation split."""

import csv
import io
import json
import logging
from math import comb
from pathlib import Path

import numpy as np
import pytest
from conftest import toy_rows, write_jsonl
from run_dirs import write_run
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, hamming_loss, mean_absolute_error, r2_score

from textft.cli import main as cli
from textft.metric_modules import compute_metrics, load_metric
from textft.files import read_jsonl
from textft.intervals import distinct, split_intervals
from textft.significance import mcnemar_exact, paired_test
from textft.tasks import task_class
from textft.tasks.multi_label import grid_score
from textft.training import thin_validation


def single_label_split(seed=0, n=90):
    """A 12-class task whose split covers only 5 classes, with a prediction of a sixth."""
    rng = np.random.default_rng(seed)
    y = rng.choice([0, 3, 4, 7, 9], n)
    pred = np.where(rng.random(n) < 0.7, y, rng.choice([0, 3, 4, 7, 9, 11], n))
    return y, pred, [f"c{i}" for i in range(12)]


def test_single_label_macro_metrics_are_scikit_learns_defaults_on_a_split_missing_classes():
    y, pred, names = single_label_split()
    m = compute_metrics(y, pred, names)
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["weighted_f1"] == pytest.approx(f1_score(y, pred, average="weighted"))
    assert m["macro_f1"] > f1_score(y, pred, labels=range(12), average="macro", zero_division=0)  # the old number
    # every class keeps its row; six have no example, one of them (c11) was predicted and so averaged
    assert list(m["per_class"]) == names and m["macro_classes"] == 6
    assert m["classes_without_examples"] == ["c1", "c2", "c5", "c6", "c8", "c10", "c11"]
    assert m["per_class"]["c11"]["in_macro"] and m["per_class"]["c11"]["predicted"] > 0
    assert not m["per_class"]["c1"]["in_macro"] and m["per_class"]["c1"]["predicted"] == 0
    # the resampled metrics agree with the reported ones on the split itself
    point = task_class("single_label").statistics(y, pred).point()
    assert point == pytest.approx({k: m[k] for k in ("accuracy", "macro_f1", "weighted_f1")})


def test_multi_label_macro_metrics_average_the_labels_present():
    rng = np.random.default_rng(1)
    truth = rng.random((120, 6)) < 0.3
    truth[:, [1, 5]] = False  # two labels no text carries
    pred = truth ^ (rng.random((120, 6)) < 0.1)
    pred[:, 1] = False  # ... one of them never predicted either
    m = load_metric("multi_label").compute(predictions=pred.astype(int).tolist(), references=truth.astype(int).tolist(),
                                           label_names=list("abcdef"))
    present = [0, 2, 3, 4, 5]
    assert m["macro_f1"] == pytest.approx(f1_score(truth, pred, labels=present, average="macro", zero_division=0))
    assert m["macro_classes"] == 5 and m["classes_without_examples"] == ["b", "f"]
    assert grid_score(pred, truth, "macro_f1") == pytest.approx(m["macro_f1"])  # threshold tuning agrees
    point = task_class("multi_label").statistics(truth, pred).point()
    assert point["macro_f1"] == pytest.approx(m["macro_f1"]) and point["micro_f1"] == pytest.approx(m["micro_f1"])
    assert point["samples_f1"] == pytest.approx(m["samples_f1"])
    assert point["hamming_loss"] == pytest.approx(hamming_loss(truth, pred))
    assert point["subset_accuracy"] == pytest.approx(accuracy_score(truth, pred))


def test_a_resample_scores_exactly_like_the_metrics_on_the_resampled_examples():
    """One bootstrap resample given as counts of distinct outcomes equals scikit-learn / scipy on the
    examples it draws, ties and all."""
    rng = np.random.default_rng(2)
    y = rng.integers(1, 6, 300).astype(float)  # ratings: many ties
    pred = (y + rng.normal(0, 1, 300)).round(1)
    idx = rng.integers(0, 300, 300)
    first, _ = distinct(y, pred)
    cell = {(y[i], pred[i]): j for j, i in enumerate(first)}
    w = np.zeros((1, len(first)))
    for i in idx:
        w[0, cell[(y[i], pred[i])]] += 1
    got = {k: v[0] for k, v in task_class("regression").statistics(y, pred).values(w).items()}
    a, b = y[idx], pred[idx]
    assert got == pytest.approx({"mae": mean_absolute_error(a, b), "rmse": np.sqrt(np.mean((a - b) ** 2)),
                                 "r2": r2_score(a, b), "pearson": pearsonr(b, a)[0], "spearman": spearmanr(b, a)[0]})


def test_the_95_percent_interval_covers_a_known_accuracy_in_about_95_percent_of_draws():
    rng = np.random.default_rng(123)
    accuracy, n, draws = 0.8, 200, 400
    covered = 0
    for _ in range(draws):
        y = rng.integers(0, 3, n)
        pred = np.where(rng.random(n) < accuracy, y, (y + 1) % 3)
        low, high = split_intervals(task_class("single_label").statistics(y, pred))["accuracy"]
        covered += low <= accuracy <= high
    assert 0.92 <= covered / draws <= 0.98, covered / draws


def test_the_intervals_agree_with_scipys_percentile_bootstrap():
    """Resampling counts of distinct outcomes is the classic bootstrap: scipy.stats.bootstrap over the
    examples themselves gives the same percentile intervals, up to resampling noise."""
    from scipy.stats import bootstrap

    y, pred, _ = single_label_split(seed=5, n=300)
    ours = split_intervals(task_class("single_label").statistics(y, pred))
    theirs = {"accuracy": bootstrap(((y == pred).astype(float),), np.mean, method="percentile", n_resamples=4000,
                                    random_state=1).confidence_interval,
              "macro_f1": bootstrap((y, pred), lambda a, b: f1_score(a, b, average="macro"), paired=True,
                                    vectorized=False, method="percentile", n_resamples=1000,
                                    random_state=1).confidence_interval}
    for key, ci in theirs.items():
        assert ours[key] == pytest.approx([ci.low, ci.high], abs=0.015), key


def test_intervals_are_seeded_and_a_small_split_is_flagged():
    y, pred, _ = single_label_split(n=60)
    stats = task_class("single_label").statistics(y, pred)
    first, again = split_intervals(stats), split_intervals(stats)
    assert first == again and first["accuracy"][0] < stats.point()["accuracy"] < first["accuracy"][1]
    m = {"num_examples": 60, "intervals": first}
    line = task_class("single_label").wide_interval("test", m)
    assert line.startswith("test: 60 examples give accuracy a 95% interval") and "\n" not in line
    big_y = np.tile(y, 100)
    big_stats = task_class("single_label").statistics(big_y, np.tile(pred, 100))
    big = {"num_examples": 6000, "intervals": split_intervals(big_stats)}
    assert task_class("single_label").wide_interval("test", big) is None


def write_predictions_file(path, right):
    """Prediction records of a binary task, right where ``right`` is True."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"text": f"review {i}", "label": "pos", "pred": "pos" if ok else "neg", "confidence": 0.9}
            for i, ok in enumerate(right)]
    write_jsonl(path, rows)
    return path


def test_mcnemar_on_a_constructed_pair_of_prediction_files_gives_the_textbook_p_value(tmp_path):
    # 100 reviews: both right on 70, both wrong on 18, only A right on 10, only B right on 2
    right_a = [True] * 70 + [False] * 18 + [True] * 10 + [False] * 2
    right_b = [True] * 70 + [False] * 18 + [False] * 10 + [True] * 2
    rows_a = read_jsonl(write_predictions_file(tmp_path / "a" / "test.jsonl", right_a))
    rows_b = read_jsonl(write_predictions_file(tmp_path / "b" / "test.jsonl", right_b))
    # exact McNemar: the 12 discordant reviews split 10 / 2 under a fair coin, two-sided
    textbook = 2 * sum(comb(12, k) for k in range(3)) / 2 ** 12
    assert textbook == pytest.approx(0.0386, abs=1e-4)
    assert mcnemar_exact(np.array(right_a), np.array(right_b)) == (10, 2, pytest.approx(textbook))
    result = paired_test(task_class("single_label"), "accuracy", rows_a, rows_b[::-1])  # order does not matter
    assert result.test == "McNemar exact" and result.p_value == pytest.approx(textbook, abs=1e-6)
    assert result.difference == pytest.approx(-0.08) and result.significant and result.examples == 100
    # one discordant pair fewer on A's side: 9 / 2 is not significant at 5%
    right_b[88] = True
    result = paired_test(task_class("single_label"), "accuracy", rows_a,
                       read_jsonl(write_predictions_file(tmp_path / "c" / "test.jsonl", right_b)))
    assert result.p_value == pytest.approx(2 * sum(comb(11, k) for k in range(3)) / 2 ** 11, abs=1e-6)
    assert not result.significant


def three_runs(root, n=200):
    """best (92% right), clearly worse (70%: significant) and nearly as good (90%: not), on the same
    examples and the same texts."""
    rng = np.random.default_rng(7)
    y = rng.integers(0, 3, n)
    texts = [f"message number {i} about topic {y[i]}" for i in range(n)]
    order = rng.permutation(n)

    def predicted(share_right):
        right = np.zeros(n, dtype=bool)
        right[order[:round(share_right * n)]] = True
        return np.where(right, y, (y + 1) % 3)
    for name, share in (("best", 0.92), ("worse", 0.70), ("close", 0.90)):
        write_run(root / name, k=3, texts=texts, outcomes={"validation": (y, predicted(share)),
                                                           "test": (y, predicted(share))})
    return [str(root / name) for name in ("best", "worse", "close")]


def test_compare_marks_a_significant_and_a_non_significant_difference(tmp_path, capsys):
    runs = three_runs(tmp_path)
    assert cli(["compare", *runs, "--output", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    lines = {line.split(" | ")[0][2:]: line for line in out.splitlines() if line.startswith("| ")}
    assert "macro-F1 vs best" in lines["run"] and "accuracy vs best" in lines["run"]
    assert lines["best"].count("best") >= 3  # its own test cells
    assert "-0.2200 (p<0.001) *" in lines["worse"]  # accuracy, McNemar
    assert " * |" not in lines["close"] and "-0.0200 (p " in lines["close"]
    assert "McNemar's exact test for accuracy" in out and "paired bootstrap (2,000 resamples) for macro-F1" in out
    assert "[0." in lines["best"]  # the ranking metric's interval
    rows = list(csv.DictReader(io.StringIO((tmp_path / "cmp" / "comparison.csv").read_text())))
    by_run = {r["run"]: r for r in rows}
    assert by_run["worse"]["accuracy_vs_best_significant"] == "True"
    assert by_run["close"]["accuracy_vs_best_significant"] == "False"
    assert by_run["worse"]["macro_f1_vs_best_test"] == "paired bootstrap"
    p_values = {run: float(by_run[run]["macro_f1_vs_best_p_value"]) for run in ("worse", "close")}
    assert p_values["worse"] < 0.05 < p_values["close"]
    assert by_run["best"]["accuracy_vs_best_p_value"] == ""
    assert "significant at 5%" in (tmp_path / "cmp" / "comparison.html").read_text()


def test_runs_scored_on_different_rows_are_compared_without_the_test(tmp_path, capsys):
    write_run(tmp_path / "a", k=3, n=100, seed=1, accuracy=0.9)
    write_run(tmp_path / "b", k=3, n=80, seed=2, accuracy=0.6)
    write_run(tmp_path / "c", k=3, n=100, seed=3, accuracy=0.6, predictions=False)
    assert cli(["compare", str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "b: not tested against a: scored on different rows (100 vs 80 examples)." in out
    assert "c: not tested against a: no saved predictions for this split." in out
    assert "| not tested |" in out and "significant at 5%" not in out


def test_a_validation_split_missing_classes_is_named_before_training(tiny_args, toy_files, tmp_path, caplog):
    from textft.train import main as train_main

    tiny = write_jsonl(tmp_path / "validation.jsonl", [r for r in toy_rows(20, 5) if r["label"] == "pos"][:3])
    args = [a for a in tiny_args if not a.startswith("data.validation_file")]
    with caplog.at_level(logging.WARNING, logger="textft"):
        assert train_main([*args, f"data.validation_file={tiny}", "train.max_steps=2"]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.getMessage().startswith("validation split:")]
    assert warnings == ["validation split: 3 examples for 2 classes (1 with no example, 1 with fewer than 2):"
                        " validation macro_f1 rests on one or two examples per class and leaves out the 1 it has"
                        " none of, so the choice of the best model follows noise as much as the model; more"
                        " validation examples per class (a larger data.validation_split, or a data.validation_file)"
                        " make it reliable"]
    report = json.loads((tmp_path / "run" / "eval_report.json").read_text())
    test = report["splits"]["test"]
    assert set(test["intervals"]) == {"accuracy", "macro_f1", "weighted_f1"}
    assert test["interval_method"]["resamples"] == 1000 and test["interval_method"]["confidence"] == 0.95
    assert test["intervals"]["accuracy"][0] <= test["accuracy"] <= test["intervals"]["accuracy"][1]


def test_a_thin_validation_split_of_many_classes_and_of_labels():
    single = task_class("single_label")([f"c{i}" for i in range(10)])
    labels = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]  # every class, but 8 of 10 only once
    line = thin_validation(single, labels, "accuracy", early_stopping=True)
    assert line.startswith("validation split: 12 examples for 10 classes (8 with fewer than 2): validation"
                           " accuracy rests on") and "early stopping and the choice of the best model follow" in line
    assert thin_validation(single, labels * 2, "macro_f1", True) is None
    multi = task_class("multi_label")(["a", "b", "c"])
    assert "3 labels (1 with no example" in thin_validation(multi, [[1, 0, 0], [0, 1, 0], [1, 1, 0]] * 3,
                                                            "macro_f1", False)
    assert thin_validation(task_class("regression")(["score"]), [1.0, 2.0], "rmse", True) is None


def test_reports_show_intervals_and_the_classes_a_split_lacks(tmp_path):
    from run_dirs import parse_page

    from textft.report import write_run_report

    rng = np.random.default_rng(3)
    y = rng.choice([0, 1, 2, 4, 6], 70)  # 8 classes, three never in the test split
    pred = np.where(rng.random(70) < 0.75, y, rng.choice([0, 1, 2, 4, 6, 7], 70))  # ... one of them predicted
    run = tmp_path / "run"
    write_run(run, k=8, outcomes={"test": (y, pred)})  # an eval_report.json without intervals: an older run
    write_run_report(run)
    report = json.loads((run / "report.json").read_text())
    test = report["splits"]["test"]
    # the intervals come from the saved predictions, the same way training computes them
    assert test["intervals"] == split_intervals(task_class("single_label").statistics(y, pred))
    assert test["interval_method"]["method"] == "percentile bootstrap over examples"
    assert test["macro_classes"] == 6 and len(test["classes_without_examples"]) == 3
    assert report["warnings"][0].startswith("test: 70 examples give accuracy a 95% interval")
    md = (run / "report.md").read_text()
    low, high = test["intervals"]["accuracy"]
    assert f"| test | 70 | {test['accuracy']:.4f} [{low:.2f}, {high:.2f}] |" in md
    assert md.count("| - | - | no examples | 0 |") == 2 and "(no examples, predicted" in md
    assert "3 of 8 classes have no example here (1 of them predicted, wrongly); macro averages cover the 6" in md
    page = parse_page(run / "report.html")
    text = " ".join(page.text)
    assert f"95%: [{low:.2f}, {high:.2f}]" in text and "no examples" in text and "95% bootstrap interval" in text


def test_an_older_run_is_rescored_from_its_predictions_so_value_and_interval_agree(tmp_path):
    """A run from before macro averages left out absent classes stored a macro-F1 that counts them as
    zero; its report recomputes the headline metrics from the saved predictions, with their intervals."""
    from textft.report import write_run_report

    y, pred, _ = single_label_split(seed=4, n=80)
    run = tmp_path / "old"
    write_run(run, k=12, outcomes={"test": (y, pred)})
    ev = json.loads((run / "eval_report.json").read_text())
    old = ev["splits"]["test"]
    old["macro_f1"] = float(f1_score(y, pred, labels=list(range(12)), average="macro", zero_division=0))
    for key in ("macro_classes", "classes_without_examples", "intervals", "interval_method"):
        old.pop(key, None)
    for c in old["per_class"].values():
        c.pop("in_macro"), c.pop("predicted")
    (run / "eval_report.json").write_text(json.dumps(ev))
    write_run_report(run)
    test = json.loads((run / "report.json").read_text())["splits"]["test"]
    assert test["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro")) and test["macro_f1"] > old["macro_f1"] + 0.2
    assert test["intervals"]["macro_f1"][0] <= test["macro_f1"] <= test["intervals"]["macro_f1"][1]
    assert test["macro_classes"] == 6 and len(test["classes_without_examples"]) == 7  # 5 true + 1 only predicted
    names = list(test["per_class"])
    assert test["per_class"][names[11]] == {**test["per_class"][names[11]], "support": 0, "in_macro": True}
    assert test["per_class"][names[1]]["in_macro"] is False and names[1] in test["classes_without_examples"]
    assert test["rescored_from_predictions"] is True


def test_the_service_lists_how_models_on_one_test_set_compare_with_the_best(tmp_path):
    from textft.service.models import tests_on_shared_test_sets
    from textft.service.textft_api import test_set_key

    runs = [Path(r) for r in three_runs(tmp_path)]  # best, worse, close: the same test examples
    write_run(tmp_path / "other", k=3, n=50, seed=9)  # a test set of its own
    runs.append(tmp_path / "other")
    models = []
    for i, run in enumerate(runs):
        test = json.loads((run / "eval_report.json").read_text())["splits"]["test"]
        models.append({"id": run.name, "task": "single_label", "created_at": f"2026-12-0{i + 1}",
                       "metrics": {"test": {k: test[k] for k in ("accuracy", "macro_f1")}},
                       "test_set": test_set_key(run)})
    assert len({m["test_set"] for m in models}) == 2
    tests_on_shared_test_sets(models, lambda job: tmp_path / job)
    by_id = {m["id"]: m["vs_best"] for m in models}
    assert by_id["best"] == {"metric": "macro_f1", "best": True, "models": 3}
    assert by_id["worse"]["model"] == "best" and by_id["worse"]["significant"] and by_id["worse"]["p_value"] < 0.05
    assert by_id["close"]["significant"] is False and by_id["close"]["test"] == "paired bootstrap"
    assert by_id["close"]["examples"] == 200 and by_id["close"]["difference"] < 0
    assert by_id["other"] is None  # alone on its test set


def test_prediction_records_of_another_shape_are_not_tested_and_say_why():
    rows = [{"text": f"t{i}", "label": 1.5 * i, "pred": 1.5 * i + 0.1} for i in range(20)]
    broken = [{**r, "pred": None} for r in rows]
    result = paired_test(task_class("regression"), "rmse", rows, broken)
    assert result.p_value is None and result.reason == "the saved predictions are not regression records"
    ok = paired_test(task_class("regression"), "rmse", rows, [{**r, "pred": r["pred"] + 0.05} for r in rows])
    assert ok.test == "paired bootstrap" and ok.difference == pytest.approx(0.05)


def test_a_split_answered_all_right_gets_the_exact_binomial_interval_not_zero_width():
    y = np.array([0, 1] * 20)
    m = task_class("single_label")(["neg", "pos"]).evaluate(np.eye(2)[y] * 5, y, intervals=True)
    low, high = m["intervals"]["accuracy"]
    assert m["accuracy"] == 1.0 and high == 1.0 and low == pytest.approx(0.025 ** (1 / 40), abs=1e-6)  # 0.912
    assert m["intervals"]["macro_f1"] == [1.0, 1.0]  # the bootstrap's, whose limit the method states
    assert "Clopper-Pearson" in m["interval_method"]["all_right_or_all_wrong"]
