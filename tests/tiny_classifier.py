"""One tiny classifier trained on the toy task, shared by the inference, serving and hub tests.

Training runs once per test session (a few seconds); tests that change a model directory work
on a copy (``copy_run``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from textft.train import main as train_main

_RUNS: dict[str, Path] = {}


def trained_run(tiny_model_dir: Path, toy_files: dict, tmp_path_factory) -> Path:
    key = str(tiny_model_dir)
    if key not in _RUNS:
        out = tmp_path_factory.mktemp("tiny-classifier") / "run"
        rc = train_main([f"model.name_or_path={tiny_model_dir}", f"data.train_file={toy_files['train']}",
                         f"data.validation_file={toy_files['validation']}", f"data.test_file={toy_files['test']}",
                         "data.max_length=32", "train.epochs=6", "train.batch_size=16", "train.lr=3e-3",
                         "train.mixed_precision=fp32", f"output.dir={out}"])
        assert rc == 0
        _RUNS[key] = out
    return _RUNS[key]


def copy_run(run: Path, dst: Path) -> Path:
    shutil.copytree(run, dst, ignore=shutil.ignore_patterns("checkpoints"))
    return dst
