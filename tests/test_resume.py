"""Crash safety: SIGKILL a real run after its first checkpoint, resume it, and get the very same model."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from safetensors.torch import load_file

from textft.checkpoint import MANIFEST, checkpoint_problem, latest_checkpoint
from textft.train import main

RESUME_ARGS = ["train.epochs=4", "train.save_every_steps=7", "train.keep_checkpoints=2", "train.logging_steps=1"]


def weights(run: Path) -> dict:
    return load_file(run / "model.safetensors")


def test_kill_and_resume_gives_identical_weights_and_metrics(tiny_args, tmp_path):
    reference = tmp_path / "reference"
    assert main([*tiny_args[:-1], *RESUME_ARGS, f"output.dir={reference}"]) == 0

    run = tmp_path / "killed"
    args = [*tiny_args[:-1], *RESUME_ARGS, f"output.dir={run}"]
    proc = subprocess.Popen([sys.executable, "-m", "textft", "train", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.time() + 240
    while latest_checkpoint(run / "checkpoints") is None and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = latest_checkpoint(run / "checkpoints")
    assert first is not None and not (run / "model.safetensors").exists(), "the run was not killed mid-way"

    assert main([*args, "train.resume_from=latest"]) == 0
    a, b = weights(reference), weights(run)
    assert a.keys() == b.keys()
    assert all((a[k] == b[k]).all() for k in a), "resumed weights differ from the uninterrupted run"
    ref_report = json.loads((reference / "eval_report.json").read_text())
    report = json.loads((run / "eval_report.json").read_text())
    assert report["splits"] == ref_report["splits"]
    assert report["resumed_from"].endswith(first.name)
    assert report["optimizer_steps"] == ref_report["optimizer_steps"] == 100
    steps = [e["step"] for e in map(json.loads, (run / "train_log.jsonl").read_text().splitlines()) if "loss" in e]
    assert steps == list(range(1, 101))  # every step logged exactly once across the kill
    assert len(list((run / "checkpoints").glob("step-*"))) <= 2  # keep_checkpoints


def test_partial_or_corrupt_checkpoints_are_skipped(tiny_args, tmp_path, caplog):
    run = tmp_path / "run"
    assert main([*tiny_args, "train.epochs=2", "train.save_every_steps=10", "train.keep_checkpoints=5"]) == 0
    root = run / "checkpoints"
    good = latest_checkpoint(root)
    assert good is not None and checkpoint_problem(good) is None
    # A newer checkpoint whose save was cut short (no manifest) and one with a truncated file.
    partial = root / "step-900"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"\0" * 10)
    truncated = root / "step-950"
    os.system(f"cp -r {good} {truncated}")
    weights_file = next(truncated.glob("model*.safetensors"))
    weights_file.write_bytes(weights_file.read_bytes()[:100])
    assert "no manifest" in checkpoint_problem(partial)
    assert "bytes, expected" in checkpoint_problem(truncated)
    assert latest_checkpoint(root) == good
    assert "skipping checkpoint" in caplog.text
    assert (good / MANIFEST).is_file()


def test_resume_from_a_bad_path_is_a_clear_error(tiny_args, tmp_path, capsys):
    assert main([*tiny_args, f"train.resume_from={tmp_path / 'nowhere'}"]) == 2
    assert "cannot be used: does not exist" in capsys.readouterr().err


def test_resume_latest_without_checkpoints_starts_fresh(tiny_args):
    assert main([*tiny_args, "train.resume_from=latest"]) == 0


def test_resuming_a_finished_run_from_an_old_checkpoint_exports_the_best_weights(tiny_args, tmp_path):
    # A min_delta no loss can beat keeps the first evaluation (step 2) as the best one for good.
    run = tmp_path / "run"
    args = [*tiny_args[:-1], "train.max_steps=13", "train.eval_every_steps=2", "train.metric_for_best=loss",
            "train.early_stopping_min_delta=100", "train.save_every_steps=4", "train.keep_checkpoints=5",
            f"output.dir={run}"]
    assert main(args) == 0
    first = json.loads((run / "eval_report.json").read_text())
    assert first["best"]["step"] == 2
    exported = weights(run)
    last = load_file(run / "checkpoints" / "step-12" / "model.safetensors")
    assert any((exported[k] != last[k]).any() for k in exported), "the best weights are the last ones"

    again = tmp_path / "again"
    os.system(f"cp -r {run} {again}")
    assert main([*args[:-1], f"output.dir={again}", f"train.resume_from={again / 'checkpoints' / 'step-8'}"]) == 0
    report = json.loads((again / "eval_report.json").read_text())
    assert report["best"] == first["best"]
    resumed = weights(again)
    assert all((resumed[k] == exported[k]).all() for k in exported), "the resumed run did not export the best weights"
    assert report["splits"] == first["splits"]
