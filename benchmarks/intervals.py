"""Cost of the evaluation statistics: 95% bootstrap intervals of a split's headline metrics and the paired
tests of ``textft compare``, on synthetic splits of each task.

    python benchmarks/intervals.py            # 10,000 examples per split (what the intervals must handle fast)
    python benchmarks/intervals.py --n 3080   # another size (Banking77's test split)
    python benchmarks/intervals.py --quick    # 500 examples, one repeat: the script still runs

Per split: the distinct outcomes the examples collapse into, then the best of ``--repeats`` wall times
of ``split_intervals`` (1,000 resamples, every headline metric of the task) and of one paired test
(2,000 resamples; McNemar's exact test where the metric is right-or-wrong). The best of several
repeats (after a warm-up call) is what the code costs when the machine lets it run, and the CPU
seconds of the process beside it are what it costs on idle cores: other work on a shared machine
stretches the wall time, not the CPU time. The load average is printed with them. The last line is machine-readable:

    max_interval_s=X.XXX max_paired_s=Y.YYY n=N
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from textft.intervals import split_intervals, statistics
from textft.significance import mcnemar_exact, paired_bootstrap
from textft.tasks import task_class


def splits(n: int, rng: np.random.Generator) -> list[tuple[str, str, str, np.ndarray, np.ndarray, np.ndarray]]:
    """(name, task, paired metric, truth, prediction of model A, of model B) of each synthetic split."""
    out = []
    for name, k, acc in (("single_label, 2 classes", 2, 0.88), ("single_label, 150 classes", 150, 0.85)):
        y = rng.integers(0, k, n)
        a = np.where(rng.random(n) < acc, y, rng.integers(0, k, n))
        b = np.where(rng.random(n) < acc - 0.02, y, rng.integers(0, k, n))
        out.append((name, "single_label", "macro_f1", y, a, b))
    truth = rng.random((n, 28)) < 0.06
    a, b = truth ^ (rng.random((n, 28)) < 0.03), truth ^ (rng.random((n, 28)) < 0.035)
    out.append(("multi_label, 28 labels", "multi_label", "macro_f1", truth, a, b))
    y = rng.integers(1, 11, n).astype(float)  # star ratings: many ties, as in a real regression split
    a, b = y + rng.normal(0, 1.5, n), y + rng.normal(0, 1.6, n)
    out.append(("regression (Spearman too)", "regression", "rmse", y, a, b))
    return out


def best_of(repeats: int, fn) -> tuple[float, float]:
    """(best wall seconds, best CPU seconds of this process) of ``repeats`` calls, after one warm-up call.
    On a shared machine the CPU time is the closer measure of what the code costs on idle cores."""
    fn()
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="examples per split")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="500 examples, one repeat")
    args = parser.parse_args()
    n, repeats = (500, 1) if args.quick else (args.n, args.repeats)
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, avx512_bf16="
          f"{'avx512_bf16' in flags}, numpy {np.__version__}; load average at start {os.getloadavg()[0]:.1f}")
    rng = np.random.default_rng(0)
    worst_interval = worst_paired = 0.0
    for name, task, metric, truth, a, b in splits(n, rng):
        values = task_class(task).resampled
        stats = statistics(values, truth, a)
        interval_s = best_of(repeats, lambda: split_intervals(statistics(values, truth, a)))
        paired_s = best_of(repeats, lambda: paired_bootstrap(values, metric, truth, a, b))
        right = (a == truth).all(1) if a.ndim == 2 else a == truth
        exact_s = best_of(repeats, lambda: mcnemar_exact(right, (b == truth).all(1) if b.ndim == 2 else b == truth))
        worst_interval, worst_paired = max(worst_interval, interval_s[0]), max(worst_paired, paired_s[0])
        print(f"{name:27s} n={n:,} outcomes={len(stats.counts):>6,}  intervals {interval_s[0]:.3f} s"
              f" (CPU {interval_s[1]:.3f} s)  paired bootstrap of {metric} {paired_s[0]:.3f} s (CPU {paired_s[1]:.3f} s)"
              f"  McNemar {exact_s[0] * 1000:.1f} ms")
    print(f"load average at end {os.getloadavg()[0]:.1f}")
    print(f"max_interval_s={worst_interval:.3f} max_paired_s={worst_paired:.3f} n={n}")


if __name__ == "__main__":
    main()
