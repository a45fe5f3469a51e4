"""``textft sweep``: a tiny study that finishes, resumes, prunes and recommends a config that trains."""

import json

import optuna
import pytest
import yaml

from textft.cli import main as cli
from textft.config import load_config
from textft.sweep import EpochReporter
from textft.sweep_space import override


def sweep_config(path, tiny_model_dir, toy_files, space=None, **sweep):
    cfg = {"data": {"train_file": str(toy_files["train"]), "validation_file": str(toy_files["validation"]),
                    "test_file": str(toy_files["test"]), "max_length": 32},
           "model": {"name_or_path": str(tiny_model_dir)},
           "train": {"epochs": 1, "batch_size": 16, "lr": 2e-3, "mixed_precision": "fp32", "logging_steps": 5},
           "output": {"dir": str(path.parent / "unused")},
           "sweep": {"metric": "macro_f1", "startup_trials": 2,
                     "space": space if space is not None else {
                         "train.lr": {"type": "log_uniform", "low": 1e-3, "high": 5e-3},
                         "train.batch_size": {"type": "categorical", "choices": [16, 32]},
                         "train.warmup_ratio": {"type": "uniform", "low": 0.0, "high": 0.2}},
                     **sweep}}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def trials_of(out):
    return optuna.load_study(study_name="textft-sweep", storage=f"sqlite:///{out / 'study.db'}").trials


def test_sweep_finishes_resumes_and_writes_a_trainable_best_config(tiny_model_dir, toy_files, tmp_path, capsys):
    config = sweep_config(tmp_path / "sweep.yaml", tiny_model_dir, toy_files)
    out = tmp_path / "sweep"
    assert cli(["sweep", "--config", str(config), "--trials", "2", "--output", str(out)]) == 0
    first = trials_of(out)
    assert [t.state.name for t in first] == ["COMPLETE", "COMPLETE"]
    capsys.readouterr()

    # A session killed in the middle of a trial leaves it marked running in the study.
    study = optuna.load_study(study_name="textft-sweep", storage=f"sqlite:///{out / 'study.db'}")
    study.ask()
    assert cli(["sweep", "--config", str(config), "--trials", "3", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "2 finished trial(s) found, 1 to run" in printed
    trials = trials_of(out)
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE"]
    assert [t.params for t in trials[:2]] == [t.params for t in first]  # earlier trials untouched
    assert trials[3].params != trials[0].params  # the resumed sampler does not replay the first draws
    for t in trials:
        if t.state.name == "COMPLETE":
            assert 1e-3 <= t.params["train.lr"] <= 5e-3 and t.params["train.batch_size"] in (16, 32)
            run = out / "trials" / f"trial-{t.number}"
            report = json.loads((run / "report.json").read_text())
            assert report["splits"]["validation"]["macro_f1"] == pytest.approx(t.value)

    summary = printed[printed.index("# Sweep: validation macro_f1 (maximize), 4 trial(s)"):]
    table = [line for line in summary.splitlines() if line.startswith("| ")]
    assert table[0] == ("| trial | state | macro_f1 | train.lr | train.batch_size | train.warmup_ratio |"
                        " test_macro_f1 | seconds |")
    assert len(table) == 5 and sum("**" in line for line in table) == 1
    best = max((t for t in trials if t.value is not None), key=lambda t: t.value)
    assert f"best: trial {best.number}, validation macro_f1 {best.value:.4f}" in printed

    cfg = load_config(out / "best_config.yaml")  # ready for textft train --config
    assert cfg.train.lr == pytest.approx(best.params["train.lr"])
    assert cfg.train.batch_size == best.params["train.batch_size"]
    assert cfg.output.dir == str(out / "best") and cfg.data.max_length == 32
    summary_md = (out / "summary.md").read_text()
    assert sum(line.startswith("|") for line in summary_md.splitlines()) == 6 and summary_md.count("\n") == 8
    # whether the best trial is separable from the runner-up, from their validation predictions
    second = sorted((t for t in trials if t.value is not None), key=lambda t: (-t.value, t.number))[1]
    line = summary_md.splitlines()[-1]
    assert line.startswith(f"best trial {best.number} vs runner-up trial {second.number}: validation macro_f1"
                           f" {best.value:.4f} vs {second.value:.4f} on the same 80 examples, p ")
    assert "(paired bootstrap): " in line and ("not separable at 5%" in line or "separable at 5%" in line)
    assert line in printed

    # Asking for no more than the study holds runs nothing, and the trials compare side by side.
    assert cli(["sweep", "--config", str(config), "--trials", "2", "--output", str(out)]) == 0
    assert len(trials_of(out)) == 4
    done = [str(out / "trials" / f"trial-{t.number}") for t in trials if t.state.name == "COMPLETE"]
    capsys.readouterr()
    assert cli(["compare", *done]) == 0
    assert sum(line.startswith("| trial-") for line in capsys.readouterr().out.splitlines()) == 3


def test_a_trial_below_the_median_after_an_epoch_is_pruned(tiny_model_dir, toy_files, tmp_path, capsys):
    config = sweep_config(tmp_path / "sweep.yaml", tiny_model_dir, toy_files, prune_startup_trials=1,
                          prune_warmup_epochs=0,
                          space={"train.weight_decay": {"type": "uniform", "low": 0.0, "high": 0.1}})
    out = tmp_path / "sweep"
    # At a constant 3e-3 with batches of 8 the toy task is learnt within the first epoch.
    common = ["sweep", "--config", str(config), "--output", str(out), "train.epochs=2", "train.batch_size=8",
              "train.scheduler=constant", "train.warmup_ratio=0"]
    assert cli([*common, "--trials", "1", "train.lr=3e-3"]) == 0
    # The same study, continued with a learning rate too small to learn anything.
    assert cli([*common, "--trials", "2", "train.lr=1e-9"]) == 0
    good, bad = trials_of(out)
    assert good.state.name == "COMPLETE" and sorted(good.intermediate_values) == [1, 2]
    assert bad.state.name == "PRUNED" and list(bad.intermediate_values) == [1]
    assert bad.intermediate_values[1] < good.intermediate_values[1]
    assert not (out / "trials" / "trial-1" / "model.safetensors").exists()  # stopped before saving
    assert "| 1 | pruned (epoch 1) |" in capsys.readouterr().out


def test_epoch_reporter_reports_whole_epochs_and_prunes_below_the_median():
    study = optuna.create_study(direction="maximize",
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0))
    for value in (0.9, 0.8):
        trial = study.ask()
        EpochReporter(trial, "macro_f1")(20, 1.0, {"macro_f1": value})
        study.tell(trial, value)
    trial = study.ask()
    reporter = EpochReporter(trial, "macro_f1")
    reporter(10, 0.5, {"macro_f1": 0.1})  # mid-epoch: not comparable across batch sizes, ignored
    assert reporter.reported == {}
    with pytest.raises(optuna.TrialPruned):
        reporter(20, 1.0, {"macro_f1": 0.3})
    assert reporter.reported == {1: 0.3}


@pytest.mark.parametrize("value", ["no", "1e-3", "top_k", 1e-05, 3, None, True, 0.1])
def test_override_reads_back_as_the_same_value(value):
    from omegaconf import OmegaConf

    key, _ = override("train.x", value).split("=", 1)
    parsed = OmegaConf.to_container(OmegaConf.from_dotlist([override("train.x", value)]))
    assert key == "train.x" and parsed["train"]["x"] == value and type(parsed["train"]["x"]) is type(value)


def run_bad(capsys, tmp_path, tiny_model_dir, toy_files, space=None, extra_args=(), **sweep):
    config = sweep_config(tmp_path / "sweep.yaml", tiny_model_dir, toy_files, space=space, **sweep)
    rc = cli(["sweep", "--config", str(config), "--trials", "3", "--output", str(tmp_path / "out"), *extra_args])
    assert not (tmp_path / "out").exists()  # nothing is created for a sweep that cannot start
    return rc, capsys.readouterr().err.strip().splitlines()


def test_empty_search_space(tiny_model_dir, toy_files, tmp_path, capsys):
    rc, err = run_bad(capsys, tmp_path, tiny_model_dir, toy_files, space={})
    assert rc == 2 and err == ["error: the sweep space is empty: declare at least one key under sweep.space, e.g."
                               " train.lr: {type: log_uniform, low: 1.0e-5, high: 1.0e-3}"]


def test_every_problem_of_the_space_at_once(tiny_model_dir, toy_files, tmp_path, capsys):
    space = {"train.learning_rate": {"type": "log_uniform", "low": 1e-5, "high": 1e-3},
             "train.batch_size": {"type": "categoric", "choices": [16, 32]},
             "train.warmup_ratio": {"type": "uniform", "low": 0.5, "high": 0.1},
             "model.transfer": {"type": "categorical", "choices": ["full", "top-k"]},
             "train.weight_decay": {"type": "uniform", "low": 0, "hi": 0.1}}
    rc, err = run_bad(capsys, tmp_path, tiny_model_dir, toy_files, space=space, metric="macro-f1",
                      extra_args=["--trials", "0"])
    assert rc == 2
    assert err == [
        "error: '--trials' must be >= 1, got 0",
        "error: 'sweep.metric': unknown metric 'macro-f1' (did you mean 'macro_f1'?); choose from auto,"
        " accuracy, macro_f1, weighted_f1, micro_f1, samples_f1, subset_accuracy, hamming_loss, mae, rmse, r2,"
        " pearson, spearman, loss",
        "error: unknown key 'train.learning_rate' in the sweep space (did you mean 'train.lr'?); keys look like"
        " train.lr, model.transfer",
        "error: sweep space 'train.batch_size': unknown type 'categoric' (did you mean 'categorical'?); types:"
        " uniform, log_uniform, int, categorical",
        "error: sweep space 'train.warmup_ratio': 'low' (0.5) must be below 'high' (0.1)",
        "error: sweep space 'train.weight_decay': unknown field 'hi' for type uniform (did you mean 'high'?);"
        " fields: high, low, step",
        "error: sweep space 'train.weight_decay' (uniform) needs 'high'"]


def test_values_outside_what_the_config_accepts(tiny_model_dir, toy_files, tmp_path, capsys):
    space = {"model.transfer": {"type": "categorical", "choices": ["full", "top-k"]},
             "train.warmup_ratio": {"type": "uniform", "low": 0.0, "high": 1.5}}
    rc, err = run_bad(capsys, tmp_path, tiny_model_dir, toy_files, space=space)
    assert rc == 2 and len(err) == 2
    assert err[0].startswith("error: sweep space 'model.transfer' value 'top-k': 'model.transfer' must be")
    assert err[0].endswith("got 'top-k' (did you mean 'top_k'?)")
    assert err[1] == ("error: sweep space 'train.warmup_ratio' value 1.5: 'train.warmup_ratio' must be in [0, 1),"
                      " got 1.5")


def test_no_sweep_section(tiny_model_dir, toy_files, tmp_path, capsys):
    config = sweep_config(tmp_path / "c.yaml", tiny_model_dir, toy_files)
    raw = yaml.safe_load(config.read_text())
    del raw["sweep"]
    config.write_text(yaml.safe_dump(raw))
    assert cli(["sweep", "--config", str(config), "--trials", "2", "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: no search space: '{config}' has no 'sweep' section")
    # The same space from a separate file is accepted up to the first check of the values.
    (tmp_path / "s.yaml").write_text("sweep:\n  space:\n    train.lr: {type: log_uniform, low: 1e-5, high: -1}\n")
    assert cli(["sweep", "--config", str(config), "--sweep", str(tmp_path / "s.yaml"), "--trials", "2",
                "--output", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == ("error: sweep space 'train.lr': 'low' (1e-05) must be below"
                                               " 'high' (-1)")
