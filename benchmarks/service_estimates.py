"""How good are the time estimates of ``textft service``? Jobs of growing size, each estimated by
``POST /v1/recipe`` before it is queued, then run; the estimate against the job's actual time.

    python benchmarks/service_estimates.py                       # MiniLM on Banking77: 300, then 600, 1200, 2400 examples
    python benchmarks/service_estimates.py --config tiny --data textft/assets/quickstart/train.jsonl \
        --sizes 40,80,160,320 --epochs 4 --max-eval 60          # the random tiny BERT: minutes on busy cores
    python benchmarks/service_estimates.py --sizes 500,1000,4000 --epochs 2

1. A ``textft service`` subprocess on loopback, one executor; a key; the training data uploaded.
2. A first job (the smallest size) has nothing to be estimated from: it is the calibration.
3. Every further job: its estimate (seconds, method, the jobs it comes from), then the job run to
   the end; actual = started_at to finished_at as the service recorded them (what the estimate
   predicts: time in the queue is not part of it).

The machine may be shared with other work: the load average is printed with each job. The last line
is machine-readable: ``jobs=N median_abs_error_pct=E max_abs_error_pct=M``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from service_support import ServiceProcess, create_key, upload, wait_state  # noqa: E402


def seconds(job: dict) -> float:
    return (datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(job["started_at"])).total_seconds()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/banking77/train.jsonl"))
    parser.add_argument("--config", default="banking77-minilm")
    parser.add_argument("--sizes", default="300,600,1200,2400", help="training examples of each job, in order")
    parser.add_argument("--epochs", type=float, default=1)
    parser.add_argument("--max-eval", type=int, default=300, help="data.max_eval_samples of every job")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="textft-estimates-"))
    svc = ServiceProcess(work / "data", ["--workers", "1", "--save-every-steps", "0"]).start()
    rows = []
    try:
        http = svc.client(create_key(work / "data", "bench"), timeout=300)
        resp = upload(http, Path(args.data))
        assert resp.status_code == 201, resp.text
        ds = resp.json()
        print(f"data: {ds['rows']:,} rows ({args.data}); config {args.config}; {args.epochs:g} epoch(s)", flush=True)
        for n in (int(s) for s in args.sizes.split(",")):
            body = {"dataset": ds["id"], "config": args.config,
                    "overrides": {"data.max_train_samples": n, "data.max_eval_samples": args.max_eval,
                                  "train.epochs": args.epochs}}
            recipe = http.post("/v1/recipe", json=body)
            assert recipe.status_code == 200, recipe.text
            estimate, plan = recipe.json()["estimate"], recipe.json()["plan"]
            job = http.post("/v1/jobs", json=body)
            assert job.status_code == 201, job.text
            done = wait_state(http, job.json()["id"], ("succeeded", "failed"), timeout=7200)
            assert done["state"] == "succeeded", done["error"]
            actual = seconds(done)
            load = os.getloadavg()[0]
            rows.append((n, plan["total_steps"], estimate, actual, load))
            guess = "-" if estimate["seconds"] is None else f"{estimate['seconds']:.0f} s"
            print(f"{n:>6} examples {plan['total_steps']:>4} steps  estimate {guess:>7} ({estimate['method']},"
                  f" {len(estimate['jobs'])} job(s))  actual {actual:.0f} s  load {load:.1f}", flush=True)
    finally:
        svc.stop()
    errors = [abs(e["seconds"] - a) / a * 100 for _, _, e, a, _ in rows if e["seconds"] is not None]
    print("\n| examples | steps | estimate | method (jobs) | actual | error | load |\n|---|---|---|---|---|---|---|")
    for n, steps, e, a, load in rows:
        guess = "none (calibration)" if e["seconds"] is None else f"{e['seconds']:.0f} s"
        err = "" if e["seconds"] is None else f"{(e['seconds'] - a) / a * 100:+.0f}%"
        print(f"| {n:,} | {steps} | {guess} | {e['method']} ({len(e['jobs'])}) | {a:.0f} s | {err} | {load:.1f} |")
    if errors:
        print(f"jobs={len(errors)} median_abs_error_pct={statistics.median(errors):.1f}"
              f" max_abs_error_pct={max(errors):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
