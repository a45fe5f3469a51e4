"""The prediction and serving benchmark scripts still run end to end (in --quick mode); speed is never
asserted here."""

import importlib.util
import re

from benchmark_support import run_quick


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


def test_service_load_quick():
    lines = run_quick("service_load.py")
    assert any(line.strip().startswith("predict ") and "p99" in line for line in lines)
    assert re.fullmatch(r"requests=60 errors=0 p50_ms=\d+\.\d p99_ms=\d+\.\d load_vs_quiet=\d+\.\d{3}"
                        r" service_vs_train=\d+\.\d{3}", lines[-1])


def test_intervals_benchmark_quick():
    lines = run_quick("intervals.py")
    for split in ("single_label, 2 classes", "single_label, 150 classes", "multi_label, 28 labels", "regression"):
        assert any(line.startswith(split) and "intervals" in line and "paired bootstrap" in line for line in lines)
    assert re.fullmatch(r"max_interval_s=\d+\.\d{3} max_paired_s=\d+\.\d{3} n=500", lines[-1])
