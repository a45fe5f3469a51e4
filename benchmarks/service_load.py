"""Load on ``textft service`` while it trains: many API clients, and what they cost the training job.

    python benchmarks/service_load.py                  # MiniLM on Banking77, 64 clients, 5,000 requests
    python benchmarks/service_load.py --think-ms 0     # the same clients without pauses (a stress test)
    python benchmarks/service_load.py --quick          # tiny random BERT, 8 clients, 300 requests: proves it runs

1. A ``textft service`` subprocess on loopback, one executor; a key; the training data uploaded.
2. A model to predict with: a short job trained through the service (MiniLM, or the tiny BERT with --quick).
3. ``textft train`` alone (service idle) with the very config the service builds for the measured job:
   the reference samples/s.
4. The same run as a service job; once it trains, ``--clients`` threads, each with its own keep-alive
   connection, send ``--requests`` requests in all, in turn GET /v1/jobs/{id} (the training job),
   GET /v1/jobs and POST /v1/models/{id}/predict (one short text), pausing ``--think-ms`` between two
   requests as a dashboard would. Every answer must be a 200.
5. ``textft train`` alone again: the machine may be shared, so the reference is taken before and after
   (before only with --quick).

samples/s of a run is the median of its train_log.jsonl entries over the steps the load covered
(evaluation excluded, checkpoints included: the service job and the reference both write one every
``--save-every-steps``). The last line is machine-readable:

    requests=N errors=E p50_ms=X p99_ms=Y train_ratio=R
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from service_support import OFFLINE, ServiceProcess, create_key, upload, wait_for, wait_state  # noqa: E402

QUESTIONS = ["I am still waiting on my card?", "How do I top up by card?", "My transfer has not arrived yet",
             "Why was I charged a fee?", "Can I change my PIN?", "The exchange rate seems wrong",
             "I lost my phone, what should I do?", "How long does a refund take?"]


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def log_sps(run: Path, steps: tuple[int, int] | None) -> float:
    """Median samples/s of the training-log entries whose step lies in ``steps`` (all but the first if None)."""
    entries = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    train = [e for e in entries if "samples_per_s" in e]
    chosen = [e for e in train if steps is None or steps[0] < e["step"] <= steps[1]] or train[1:] or train
    return statistics.median(e["samples_per_s"] for e in chosen)


def reference(args, work: Path, name: str) -> Path:
    """``textft train`` alone, with the overrides the service gives the measured job."""
    out = work / name
    cmd = [sys.executable, "-m", "textft", "train", "--config", str(ROOT / "configs" / f"{args.config}.yaml"),
           "data.dataset=null", f"data.train_file={args.data}", f"output.dir={out}",
           f"train.save_every_steps={args.save_every_steps}", *[f"{k}={json.dumps(v)}" for k, v in args.overrides.items()]]
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **OFFLINE})
    if proc.returncode != 0:
        raise SystemExit(f"reference run failed:\n{proc.stderr[-3000:]}")
    print(f"{name}: textft train alone, {time.monotonic() - started:.0f} s wall", flush=True)
    return out


def load(url: str, key: str, job_id: str, model_id: str, clients: int, requests: int, think_s: float) -> dict:
    counter, lock = iter(range(requests)), threading.Lock()
    latencies: dict[str, list[float]] = {"status": [], "list": [], "predict": []}
    errors: list[str] = []
    barrier = threading.Barrier(clients + 1)

    def client(c: int) -> None:
        rng = random.Random(c)
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as http:
            barrier.wait()
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                kind = ("status", "list", "predict")[(i + c) % 3]
                started = time.perf_counter()
                try:
                    if kind == "status":
                        resp = http.get(f"/v1/jobs/{job_id}")
                    elif kind == "list":
                        resp = http.get("/v1/jobs")
                    else:
                        resp = http.post(f"/v1/models/{model_id}/predict", json={"inputs": rng.choice(QUESTIONS)})
                    ok, detail = resp.status_code == 200, f"{kind} {resp.status_code} {resp.text[:200]}"
                except httpx.HTTPError as e:
                    ok, detail = False, f"{kind} {e!r}"
                elapsed = time.perf_counter() - started
                with lock:
                    latencies[kind].append(elapsed)
                    if not ok:
                        errors.append(detail)
                if think_s:
                    time.sleep(rng.uniform(0.5, 1.5) * think_s)

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    return {"latencies": latencies, "errors": errors, "seconds": time.perf_counter() - started}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, 8 clients, 300 requests")
    parser.add_argument("--data", default="/work/shared/data/banking77/train.jsonl")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--think-ms", type=float, default=500, help="mean pause of a client between two requests")
    parser.add_argument("--max-steps", type=int, default=300, help="length of the measured training job")
    parser.add_argument("--save-every-steps", type=int, default=100)
    args = parser.parse_args()
    if args.quick:
        args.data = str(ROOT / "textft/assets/quickstart/train.jsonl")
        args.clients, args.requests, args.think_ms, args.max_steps = 8, 300, 0, 80
        args.config = "tiny"
        args.overrides = {"train.max_steps": args.max_steps, "train.logging_steps": 5}
        predict_overrides = {"train.max_steps": 10}
    else:
        args.config = "banking77-minilm"
        args.overrides = {"train.max_steps": args.max_steps, "train.logging_steps": 10}
        predict_overrides = {"train.max_steps": 30}
    work = Path(tempfile.mkdtemp(prefix="textft-service-load-"))
    svc = ServiceProcess(work / "data", ["--workers", "1", "--save-every-steps", str(args.save_every_steps)]).start()
    try:
        key = create_key(work / "data", "bench")
        http = svc.client(key, timeout=120)
        dataset = upload(http, Path(args.data))
        assert dataset.status_code == 201, dataset.text
        ds = dataset.json()
        print(f"data: {ds['rows']:,} rows, {len(ds['labels'])} labels ({args.data}); config {args.config}", flush=True)
        started = time.monotonic()
        model = http.post("/v1/jobs", json={"dataset": ds["id"], "config": args.config, "overrides": predict_overrides})
        model = wait_state(http, model.json()["id"], ("succeeded", "failed"), timeout=3600)
        assert model["state"] == "succeeded", model["error"]
        print(f"model to predict with: {model['id']} ({time.monotonic() - started:.0f} s through the service)", flush=True)
        started = time.monotonic()
        warm = http.post(f"/v1/models/{model['id']}/predict", json={"inputs": QUESTIONS[0]})
        assert warm.status_code == 200, warm.text
        print(f"first prediction (loads the model): {time.monotonic() - started:.1f} s", flush=True)

        before = reference(args, work, "reference-before")
        job = http.post("/v1/jobs", json={"dataset": ds["id"], "config": args.config, "overrides": args.overrides}).json()
        step_of = lambda: http.get(f"/v1/jobs/{job['id']}").json()["progress"].get("step") or 0  # noqa: E731
        wait_for(lambda: step_of() >= 2 * args.overrides["train.logging_steps"], 3600, "the job to train", interval=0.5)
        first = step_of()
        result = load(svc.url, key, job["id"], model["id"], args.clients, args.requests, args.think_ms / 1000)
        last = step_of()
        done = wait_state(http, job["id"], ("succeeded", "failed"), timeout=3600)
        assert done["state"] == "succeeded", done["error"]
        after = reference(args, work, "reference-after") if not args.quick else None
    finally:
        svc.stop()

    run = work / "data" / "jobs" / job["id"] / "run"
    steps = (first, last) if last - first >= 2 * args.overrides["train.logging_steps"] else None
    service_sps = log_sps(run, steps)
    ref = [log_sps(run, steps) for run in (before, after) if run is not None]
    lat = result["latencies"]
    everything = [x for v in lat.values() for x in v]
    n = len(everything)
    print(f"load: {args.clients} clients, {n} requests in {result['seconds']:.1f} s ({n / result['seconds']:.0f} req/s),"
          f" think time {args.think_ms:g} ms; errors {len(result['errors'])}")
    for kind, values in lat.items():
        print(f"  {kind:<8} {len(values):>5}  p50 {1000 * percentile(values, 50):7.1f} ms"
              f"  p99 {1000 * percentile(values, 99):7.1f} ms  max {1000 * max(values):7.1f} ms")
    for e in result["errors"][:5]:
        print(f"  error: {e}")
    covered = f"steps {first}..{last}" if steps else "all steps"
    print(f"training samples/s ({covered}): service job under load {service_sps:.1f}; textft train alone"
          f" {' and '.join(f'{r:.1f}' for r in ref)} ({'before and after' if len(ref) > 1 else 'before'});"
          f" ratio {service_sps / statistics.mean(ref):.3f}")
    print(f"requests={n} errors={len(result['errors'])} p50_ms={1000 * percentile(everything, 50):.1f}"
          f" p99_ms={1000 * percentile(everything, 99):.1f} train_ratio={service_sps / statistics.mean(ref):.3f}")
    return 0 if not result["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
