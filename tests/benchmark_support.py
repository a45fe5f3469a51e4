"""Runs a benchmark script as a user does, in a fresh process, for the benchmark tests."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_script(script: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``benchmarks/SCRIPT ARGS`` from the repository root. One torch thread unless the environment
    says otherwise, as under the suite's pytest-xdist workers (conftest.py): speed is never asserted,
    and on cores another process holds, a second thread spins on a tiny model's every step instead
    of helping it."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def run_quick(script: str, *extra: str) -> list[str]:
    """The lines ``benchmarks/SCRIPT --quick EXTRA...`` prints (it must exit 0)."""
    proc = run_script(script, "--quick", *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()
