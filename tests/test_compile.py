"""torch.compile: the compiled model trains like the eager one (its own module, so that the slow
compilation runs beside the other tests rather than after them)."""

import json

import pytest

from textft.train import main

SHORT = "train.max_steps=5"


def test_compiled_training_matches_eager(tiny_args, tmp_path, caplog):
    out = tmp_path / "compiled"
    # dropout 0: compiled kernels draw dropout masks differently from eager ones
    assert main([*tiny_args[:-1], SHORT, "train.compile=true", "model.dropout=0", f"output.dir={out}"]) == 0
    assert "torch.compile: OptimizedModule" in caplog.text
    eager = tmp_path / "eager"
    assert main([*tiny_args[:-1], SHORT, "model.dropout=0", f"output.dir={eager}"]) == 0
    c = json.loads((out / "eval_report.json").read_text())["splits"]["test"]
    e = json.loads((eager / "eval_report.json").read_text())["splits"]["test"]
    assert c["loss"] == pytest.approx(e["loss"], abs=1e-3)
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertForSequenceClassification"]
