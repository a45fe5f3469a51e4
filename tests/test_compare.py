"""``textft compare``: two real tiny runs side by side, and the bad input it must refuse."""

import csv
import io

import pytest
from PIL import Image
from run_dirs import decoded_images, parse_page, write_run

from textft.cli import main as cli


@pytest.fixture(scope="module")
def two_runs(tiny_model_dir, toy_files, tmp_path_factory):
    from textft.train import main as train_main

    root = tmp_path_factory.mktemp("compare")
    base = [f"model.name_or_path={tiny_model_dir}", f"data.train_file={toy_files['train']}",
            f"data.validation_file={toy_files['validation']}", f"data.test_file={toy_files['test']}",
            "data.max_length=32", "train.max_steps=5", "train.batch_size=16", "train.lr=2e-3",
            "train.mixed_precision=fp32", "train.logging_steps=5"]
    for name, transfer in (("full", "full"), ("frozen", "feature_extraction")):
        assert train_main([*base, f"model.transfer={transfer}", f"output.dir={root / name}"]) == 0
    return root / "full", root / "frozen"


@pytest.mark.slow
def test_compare_lists_both_runs(two_runs, tmp_path, capsys):
    full, frozen = two_runs
    assert cli(["compare", str(full), str(frozen), "--output", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| run | transfer | trainable | accuracy | macro-F1 |")
    assert table[1].startswith("| full | full |") and table[2].startswith("| frozen | feature_extraction |")
    assert "shared by all runs: model" in out and "lr 2.0e-03" in out  # settings both runs share
    assert out.count("**") == 2  # the best macro-F1, once

    rows = list(csv.DictReader(io.StringIO((tmp_path / "cmp" / "comparison.csv").read_text())))
    assert [r["run"] for r in rows] == ["full", "frozen"]
    assert [r["transfer"] for r in rows] == ["full", "feature_extraction"]
    assert int(rows[1]["trainable_params"]) < int(rows[0]["trainable_params"]) == int(rows[0]["total_params"])
    assert all(r["split"] == "test" and 0 <= float(r["macro_f1"]) <= 1 and float(r["train_seconds"]) > 0
               for r in rows)
    page = parse_page(tmp_path / "cmp" / "comparison.html")
    assert [alt for alt, _, _ in decoded_images(page)] == ["comparison plot"]
    assert "full" in "".join(page.text) and "frozen" in "".join(page.text)
    assert Image.open(tmp_path / "cmp" / "comparison.png").size[0] >= 1000
    assert (tmp_path / "cmp" / "comparison.md").read_text().count("| ") >= 4


def test_lower_is_better_metrics_and_same_named_runs(tmp_path, capsys):
    write_run(tmp_path / "a" / "run", k=3, accuracy=0.9, seed=1)
    write_run(tmp_path / "b" / "run", k=3, accuracy=0.5, seed=2)
    assert cli(["compare", str(tmp_path / "a" / "run"), str(tmp_path / "b" / "run"), "--metric", "loss",
                "--split", "validation"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| a/run") or line.startswith("| b/run")]
    assert len(rows) == 2 and "**" in rows[0] and "**" not in rows[1]  # the lower loss wins
    assert "validation split" in out


def test_bad_input_one_line_each_and_exit_2(two_runs, tmp_path, capsys):
    full, _ = two_runs
    (tmp_path / "not-a-run").mkdir()
    assert cli(["compare", str(full), str(tmp_path / "not-a-run"), "--metric", "macro-f1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: '{tmp_path / 'not-a-run'}' has no eval_report.json: not a finished textft run"
                   " (train or `textft evaluate --output` writes it)",
                   "error: unknown metric 'macro-f1' (did you mean 'macro_f1'?); choose from accuracy, macro_f1,"
                   " weighted_f1, loss, ece, micro_f1, samples_f1, subset_accuracy, hamming_loss, mae, rmse, r2,"
                   " pearson, spearman"]
    assert cli(["compare", str(full), "--split", "tset"]) == 2
    assert capsys.readouterr().err.strip() == ("error: run 'full' has no 'tset' split (did you mean 'test'?)"
                                               " (it has: test, validation)")
    assert not (tmp_path / "cmp").exists()
