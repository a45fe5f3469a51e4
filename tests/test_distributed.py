"""Two real processes (gloo on CPU) against one: same global batch, same result, files written once."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from conftest import toy_rows, write_jsonl
from textft.train import main

ROOT = Path(__file__).resolve().parent.parent
SAME = ["model.dropout=0", "data.group_by_length=false", "train.epochs=1", "train.logging_steps=1",
        "train.warmup_ratio=0.1"]


ENV = {**os.environ, "ACCELERATE_USE_CPU": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def launch_two(args: list[str], port: int) -> subprocess.CompletedProcess:
    """``accelerate launch`` of textft/train.py on 2 CPU processes (gloo); it must exit 0."""
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
         str(ROOT / "textft" / "train.py"), *args], capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def runs(tiny_model_dir, toy_files, tmp_path_factory):
    """One run on 1 process (batch 16) and the same on 2 (batch 8 each), both checkpointing every 20
    of their 25 steps: the first test compares them, the second resumes the 2-process one."""
    root = tmp_path_factory.mktemp("distributed")
    # 75 validation examples: not a multiple of 2 ranks x 16, so padding must be dropped by gather_for_metrics.
    val = write_jsonl(root / "val.jsonl", toy_rows(75, 5))
    args = [f"model.name_or_path={tiny_model_dir}", f"data.train_file={toy_files['train']}",
            f"data.validation_file={val}", f"data.test_file={toy_files['test']}", "data.max_length=32",
            "train.lr=2e-3", "train.mixed_precision=fp32", *SAME, "train.save_every_steps=20",
            "train.keep_checkpoints=5"]
    one, two = root / "one", root / "two"
    assert main([*args, "train.batch_size=16", f"output.dir={one}"]) == 0
    proc = launch_two([*args, "train.batch_size=8", f"output.dir={two}"], 29533)
    return SimpleNamespace(args=args, one=one, two=two, stdout=proc.stdout)


def test_two_processes_match_one_with_the_same_global_batch(runs):
    one, two = runs.one, runs.two
    assert runs.stdout.count("model saved to") == 1  # only the main process reports and writes

    r1 = json.loads((one / "eval_report.json").read_text())
    r2 = json.loads((two / "eval_report.json").read_text())
    assert r2["num_processes"] == 2 and r1["num_processes"] == 1
    for split in ("validation", "test"):
        assert r2["splits"][split]["num_examples"] == r1["splits"][split]["num_examples"]
    assert r2["splits"]["validation"]["num_examples"] == 75  # every example exactly once
    assert abs(r2["splits"]["validation"]["accuracy"] - r1["splits"]["validation"]["accuracy"]) <= 1 / 75
    assert abs(r2["splits"]["validation"]["loss"] - r1["splits"]["validation"]["loss"]) < 1e-3

    # The schedule counts optimizer steps: identical step counts and learning rates on 1 and 2 processes.
    def lrs(run):
        return [(r["step"], r["lr"]) for r in map(json.loads, (run / "train_log.jsonl").read_text().splitlines())
                if "lr" in r]
    assert lrs(one) == lrs(two) and len(lrs(two)) == r1["optimizer_steps"] == 25  # no duplicate log lines

    w1, w2 = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], atol=1e-3, rtol=1e-3, msg=k)


def test_two_processes_resume_exactly_from_their_own_checkpoint(runs, tmp_path, capsys):
    """Both ranks write their RNG state; resuming a 2-process run from its step-20 checkpoint on 2
    processes gives the very weights of the uninterrupted run, and on 1 process is a clear error."""
    full = runs.two
    step = full / "checkpoints" / "step-20"
    assert sorted(p.name for p in step.glob("rng-*.json")) == ["rng-0.json", "rng-1.json"]

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    for name in ("textft_config.yaml", "train_log.jsonl", ".textft-run"):
        (resumed / name).write_bytes((full / name).read_bytes())
    launch_two([*runs.args, "train.batch_size=8", f"output.dir={resumed}", f"train.resume_from={step}"], 29534)
    a, b = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a), "a 2-process resume differs from the uninterrupted run"
    assert json.loads((resumed / "eval_report.json").read_text())["splits"] == \
        json.loads((full / "eval_report.json").read_text())["splits"]

    assert main([*runs.args, "train.batch_size=8", f"output.dir={resumed}", f"train.resume_from={step}"]) == 2
    assert "written by 2 process(es), this run has 1" in capsys.readouterr().err


def test_two_processes_train_the_same_lora_adapter_as_one(tiny_args, tmp_path):
    """DDP over a peft model: only the adapters and the head have gradients to synchronise, and the
    main process alone writes the merged model and the adapter."""
    pytest.importorskip("peft")
    args = [*[a for a in tiny_args[:-1] if not a.startswith("train.batch_size")], *SAME, "model.transfer=lora",
            "model.lora_dropout=0", "train.max_steps=12", "train.lr=1e-2"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*args, "train.batch_size=16", f"output.dir={one}"]) == 0
    proc = launch_two([*args, "train.batch_size=8", f"output.dir={two}"], 29535)
    assert proc.stdout.count("adapter saved to") == 1
    for name in ("model.safetensors", "adapter/adapter_model.safetensors"):
        w1, w2 = load_file(one / name), load_file(two / name)
        assert w1.keys() == w2.keys()
        for k in w1:
            torch.testing.assert_close(w1[k], w2[k], atol=1e-3, rtol=1e-3, msg=k)
    lora_b = [k for k in w2 if "lora_B" in k]
    assert lora_b and all(w2[k].abs().sum() > 0 for k in lora_b)  # the adapters trained on both ranks
