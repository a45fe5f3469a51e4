"""What the loop promises: accumulation, schedules, class weights, gradual unfreezing, best-model
export, early stopping, time budget and trackers, each checked on real tiny runs."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import write_jsonl
from textft.config import load_config
from textft.train import main, train

EXACT = ["model.dropout=0", "data.group_by_length=false", "train.weight_decay=0", "train.warmup_ratio=0"]


def run(tiny_args, out, *extra):
    return train(load_config(None, [*tiny_args[:-1], *extra, f"output.dir={out}"]))


def log_records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def test_accumulating_4x8_equals_one_batch_of_32(tiny_args, tmp_path):
    run(tiny_args, tmp_path / "acc", *EXACT, "train.max_steps=2", "train.batch_size=8", "train.grad_accum_steps=4")
    run(tiny_args, tmp_path / "big", *EXACT, "train.max_steps=2", "train.batch_size=32")
    a, b = load_file(tmp_path / "acc" / "model.safetensors"), load_file(tmp_path / "big" / "model.safetensors")
    base = load_file(Path(tiny_args[0].split("=", 1)[1]) / "model.safetensors")
    assert not torch.equal(a["classifier.weight"], base["classifier.weight"])  # it did train
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-5, rtol=1e-4, msg=k)


def test_evaluations_do_not_change_the_training(tiny_args, tmp_path):
    # Dropout is on: if an evaluation consumed global random numbers, the masks after it would
    # differ and so would every later loss.
    common = ["train.epochs=1", "train.logging_steps=1", "train.early_stopping_patience=0"]
    run(tiny_args, tmp_path / "rare", *common, "train.eval_every_steps=0")
    run(tiny_args, tmp_path / "often", *common, "train.eval_every_steps=3")

    def losses(out):
        return [r["loss"] for r in log_records(out) if "loss" in r]

    often = log_records(tmp_path / "often")
    assert sum("eval" in r for r in often) > sum("eval" in r for r in log_records(tmp_path / "rare")) + 5
    assert losses(tmp_path / "rare") == losses(tmp_path / "often") and len(losses(tmp_path / "rare")) == 25


def test_schedule_counts_optimizer_steps_not_batches(tiny_args, tmp_path):
    out = tmp_path / "sched"
    run(tiny_args, out, "train.batch_size=8", "train.grad_accum_steps=4", "train.epochs=2", "train.logging_steps=1",
        "train.warmup_ratio=0.25", "train.lr=1e-3")
    lrs = [r["lr"] for r in log_records(out) if "lr" in r]
    assert len(lrs) == 26  # 400 examples / 8 = 50 batches → 13 optimizer steps per epoch, 2 epochs
    warmup = round(0.25 * 26)
    assert lrs[warmup - 1] == pytest.approx(1e-3)  # the peak is reached exactly when warmup ends
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)  # and the decay ends exactly at the last step
    assert json.loads((out / "eval_report.json").read_text())["optimizer_steps"] == 26


def test_balanced_class_weights_raise_minority_recall(tiny_args, tmp_path):
    rows = [json.loads(line) for line in Path(tiny_args[1].split("=", 1)[1]).read_text().splitlines()]
    skewed = [r for r in rows if r["label"] == "pos"] + [r for r in rows if r["label"] == "neg"][:25]
    train_file = write_jsonl(tmp_path / "skewed.jsonl", skewed)
    recall = {}
    for weights in ("none", "balanced"):
        # The shipped random tiny BERT learns this skewed set slowly enough for the weights to matter.
        reports = run(tiny_args, tmp_path / weights, "model.name_or_path=builtin:tiny-bert", "model.random_init=true",
                      f"data.train_file={train_file}", "train.epochs=6",
                      "train.lr=3e-3", f"train.class_weights={weights}")
        recall[weights] = reports["validation"]["per_class"]["neg"]["recall"]
    assert recall["balanced"] > recall["none"] + 0.1, recall


def test_class_weight_mapping_with_unknown_label_is_an_error(tiny_args, capsys):
    assert main([*tiny_args, "train.class_weights={negg: 2.0}"]) == 2
    assert "did you mean 'neg'" in capsys.readouterr().err


def test_gradual_unfreezing_releases_one_layer_per_epoch(tiny_args, tmp_path):
    out = tmp_path / "gradual"
    # 112 examples: 7 steps an epoch
    run(tiny_args, out, "model.transfer=gradual", "train.epochs=4", "train.save_every_epoch=true",
        "train.keep_checkpoints=5", "data.max_train_samples=112")
    base = load_file(Path(tiny_args[0].split("=", 1)[1]) / "model.safetensors")

    def changed(weights, name):
        return not torch.equal(weights[name], base[name])

    top, bottom, emb = ("bert.encoder.layer.1.output.dense.weight", "bert.encoder.layer.0.output.dense.weight",
                        "bert.embeddings.word_embeddings.weight")
    epoch1, epoch2, epoch3 = (load_file(out / "checkpoints" / f"step-{s}" / "model.safetensors") for s in (7, 14, 21))
    assert changed(epoch1, "classifier.weight") and not changed(epoch1, top)
    assert changed(epoch2, top) and not changed(epoch2, bottom)
    assert changed(epoch3, bottom) and not changed(epoch3, emb)


def test_early_stopping_exports_the_best_model(tiny_args, tmp_path):
    out = tmp_path / "early"
    # No evaluation can beat the first by 10 in loss: the third one stops the run, and the weights
    # trained since the first must not be the ones exported. (When patience runs out: test_loop.py.)
    reports = run(tiny_args, out, "train.epochs=30", "train.lr=3e-3", "train.warmup_ratio=0", "train.eval_every_steps=3",
                  "train.early_stopping_patience=2", "train.early_stopping_min_delta=10", "train.metric_for_best=loss")
    report = json.loads((out / "eval_report.json").read_text())
    assert report["stop_reason"] == "early_stopping" and report["optimizer_steps"] == 9
    evals = [r for r in log_records(out) if "eval" in r]
    assert [r["step"] for r in evals] == [3, 6, 9] and report["best"]["step"] == 3
    # the log's best records name that step: the one whose weights are exported (checked below)
    log = log_records(out)
    assert [r["step"] for r in log if r.get("event") == "best"] == [3]
    assert [(r["stop_reason"], r["best_step"]) for r in log if r.get("event") == "end"] == [("early_stopping", 3)]
    # The exported weights are the best ones, not the last ones (which score differently).
    assert reports["validation"]["loss"] == pytest.approx(evals[0]["eval"]["loss"], rel=1e-5)
    assert evals[-1]["eval"]["loss"] != pytest.approx(evals[0]["eval"]["loss"], rel=1e-3)
    assert not (out / "checkpoints" / "best").exists()


def test_time_budget_stops_and_exports(tiny_args, tmp_path):
    out = tmp_path / "budget"
    run(tiny_args, out, "train.epochs=500", "train.time_budget_s=2")
    report = json.loads((out / "eval_report.json").read_text())
    assert report["stop_reason"] == "time_budget" and report["optimizer_steps"] < 500 * 25
    assert (out / "model.safetensors").exists()


def test_tensorboard_events_hold_loss_lr_and_metrics(tiny_args, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    run(tiny_args, out, "train.report_to=tensorboard", "train.max_steps=5")
    events = list((out / "logs").rglob("events.out.tfevents.*"))
    assert events
    tags = set()
    for e in events:
        acc = EventAccumulator(str(e.parent))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "eval/accuracy", "eval/macro_f1", "eval/loss"} <= tags
