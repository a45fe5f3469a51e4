"""End-to-end runs of the tiny model on the learnable toy task, through the real entry points."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from textft.train import main
from tiny_classifier import trained_run

ROOT = Path(__file__).resolve().parent.parent
SHORT = "train.max_steps=5"
"""Enough steps to change every trained weight: for tests about what a run writes, not what it learns."""


@pytest.fixture(scope="module")
def trained(tiny_model_dir, toy_files, tmp_path_factory):
    return trained_run(tiny_model_dir, toy_files, tmp_path_factory)


def test_tiny_run_learns_the_toy_task(trained):
    report = json.loads((trained / "eval_report.json").read_text())
    assert report["splits"]["validation"]["accuracy"] > 0.9
    assert report["splits"]["test"]["accuracy"] > 0.9
    test = report["splits"]["test"]
    assert sum(map(sum, test["confusion_matrix"])) == 80 == test["num_examples"]
    assert set(test["per_class"]) == {"neg", "pos"}
    assert report["parameters"]["trainable"] == report["parameters"]["total"]
    assert "| test |" in (trained / "eval_report.md").read_text()


def test_run_directory_layout(trained):
    names = {p.name for p in trained.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "textft_config.yaml", "eval_report.json",
            "eval_report.md", "train_log.jsonl"} <= names
    assert not any(n.endswith(".bin") for n in names)
    assert not list(trained.parent.glob(".run.tmp-*"))  # the staging directory is gone
    log = [json.loads(line) for line in (trained / "train_log.jsonl").read_text().splitlines()]
    assert any("loss" in e and "lr" in e and e["samples_per_s"] > 0 for e in log)
    evals = [e for e in log if "eval" in e]
    assert len(evals) == 6  # one per epoch
    assert evals[-1]["eval"]["accuracy"] > evals[0]["eval"]["accuracy"] or evals[0]["eval"]["accuracy"] > 0.9


def test_run_directory_has_the_permissions_of_any_new_file(trained):
    umask = os.umask(0o022)
    os.umask(umask)
    # mkdtemp would leave the directory 0700, safetensors its weights 0600
    modes = {str(p.relative_to(trained.parent)): stat.S_IMODE(p.stat().st_mode) for p in [trained, *trained.rglob("*")]}
    wanted = {p: (0o777 if (trained.parent / p).is_dir() else 0o666) & ~umask for p in modes}
    assert modes == wanted and modes["run/model.safetensors"] == 0o666 & ~umask


def test_checkpoint_loads_in_plain_pipeline_with_label_names(trained):
    code = ("import sys; from transformers import pipeline; "
            f"p = pipeline('text-classification', model={str(trained)!r}); "
            "print(p(['the film was excellent and superb', 'the acting was awful and boring']))")
    # A fresh interpreter that never imports textft, as a downstream app would.
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"}).stdout
    assert "'label': 'pos'" in out and "'label': 'neg'" in out and "LABEL_" not in out


def test_same_seed_same_model(tiny_args):
    from safetensors.torch import load_file

    a, b = Path(tiny_args[-1].split("=", 1)[1]), Path(str(tiny_args[-1].split("=", 1)[1]) + "-again")
    assert main([*tiny_args, SHORT]) == 0
    assert main([*tiny_args[:-1], SHORT, f"output.dir={b}"]) == 0
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert all((wa[k] == wb[k]).all() for k in wa)


def test_evaluate_command_reproduces_training_metrics(trained, toy_files, tmp_path, capsys):
    from textft.cli import main as cli

    assert cli(["evaluate", "--model", str(trained), "--data", str(toy_files["test"]),
                "--output", str(tmp_path / "ev")]) == 0
    assert "evaluation: accuracy" in capsys.readouterr().out
    ev = json.loads((tmp_path / "ev" / "eval_report.json").read_text())["splits"]["evaluation"]
    train_report = json.loads((trained / "eval_report.json").read_text())["splits"]["test"]
    assert ev["accuracy"] == pytest.approx(train_report["accuracy"])
    assert ev["confusion_matrix"] == train_report["confusion_matrix"]


def test_transfer_modes_train_what_they_say(tiny_args, tmp_path):
    from safetensors.torch import load_file

    base = load_file(Path(tiny_args[0].split("=", 1)[1]) / "model.safetensors")
    out = tmp_path / "fe"
    assert main([*tiny_args[:-1], SHORT, "model.transfer=feature_extraction", f"output.dir={out}"]) == 0
    after = load_file(out / "model.safetensors")
    assert (after["bert.encoder.layer.0.attention.self.query.weight"]
            == base["bert.encoder.layer.0.attention.self.query.weight"]).all()
    assert not (after["classifier.weight"] == base["classifier.weight"]).all()
    report = json.loads((out / "eval_report.json").read_text())
    assert report["parameters"]["trainable"] < report["parameters"]["total"] / 5


def test_output_dir_not_empty_is_refused_then_overwritten(tiny_args, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert main(tiny_args) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert main([*tiny_args, "output.overwrite=true"]) == 2  # not textft's directory: never deleted
    assert "not a directory textft train created" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    (out / "keep.txt").unlink()
    assert main([*tiny_args, SHORT]) == 0
    (out / "stale.txt").write_text("left by the earlier run")
    assert main([*tiny_args, SHORT, "output.overwrite=true"]) == 0  # a textft run: replaced
    assert (out / "model.safetensors").exists() and not (out / "stale.txt").exists()


def test_accelerate_launch_runs_the_installed_module(tiny_args, tmp_path):
    # `-m textft.train`: what works without a checkout (test_distributed launches the script path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_CPU": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "textft.train", *tiny_args, SHORT]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "model saved to" in proc.stdout
    assert (tmp_path / "run" / "model.safetensors").exists()


def test_activation_checkpointing_changes_memory_not_the_result(tiny_args, tmp_path, caplog):
    from safetensors.torch import load_file

    plain = tmp_path / "plain"
    assert main([*tiny_args[:-1], SHORT, f"output.dir={plain}"]) == 0
    caplog.clear()
    ckpt = tmp_path / "ckpt"
    # top_k freezes the embeddings, the case where reentrant checkpointing would drop gradients
    for extra, out in (([], ckpt), (["model.transfer=top_k", "model.unfreeze_top_k=1"], tmp_path / "ckpt-top1")):
        assert main([*tiny_args[:-1], SHORT, *extra, "train.gradient_checkpointing=true", f"output.dir={out}"]) == 0
    assert "activation checkpointing: 2 layers recompute" in caplog.text
    a, b = load_file(plain / "model.safetensors"), load_file(ckpt / "model.safetensors")
    # recomputation replays the same dropout masks, so the trained weights are the same up to float noise
    assert all(torch_allclose(a[k], b[k]) for k in a)
    top1 = load_file(tmp_path / "ckpt-top1" / "model.safetensors")
    assert not torch_allclose(top1["bert.encoder.layer.1.output.dense.weight"], a["bert.encoder.layer.1.output.dense.weight"])
    base = load_file(Path(tiny_args[0].split("=", 1)[1]) / "model.safetensors")
    assert (top1["bert.encoder.layer.0.output.dense.weight"] == base["bert.encoder.layer.0.output.dense.weight"]).all()


def torch_allclose(x, y) -> bool:
    import torch

    return bool(torch.allclose(x.float(), y.float(), atol=1e-5))
