"""Load on ``textft service`` while it trains: many API clients, and what they cost the training job.

    python benchmarks/service_load.py                  # MiniLM on Banking77, 64 clients, 5,000 requests
    python benchmarks/service_load.py --think-ms 0     # the same clients without pauses (a stress test)
    python benchmarks/service_load.py --mix status,list   # API calls only: what the service itself costs
    python benchmarks/service_load.py --quick          # tiny random BERT, 8 clients, 60 requests: proves it runs

1. A ``textft service`` subprocess on loopback, one executor; a key; the training data uploaded.
2. A model to predict with: a short job trained through the service (MiniLM, or the tiny BERT with --quick).
3. ``textft train`` alone (service idle) with the config the service builds for the measured job:
   the reference samples/s.
4. The same run as a service job. While it trains, quiet phases (only this script's progress polls)
   alternate with load phases: ``--clients`` threads, each with its own keep-alive connection, send
   in turn GET /v1/jobs/{id} (the training job), GET /v1/jobs and POST /v1/models/{id}/predict (one
   short text), pausing ``--think-ms`` between two requests as a dashboard would; ``--requests`` in
   all, split over ``--phases`` load phases. Every answer must be a 200.
5. ``textft train`` alone again (skipped with --quick).

``--quick`` uses the bundled reviews and the tiny preset: 8 clients without pauses, 60 requests in one
load phase between quiet phases of 5 steps, a 20-step reference run.

The machine may be shared with other work, so the comparison that matters is paired and interleaved:
the job's samples/s during load phases against its own samples/s during the quiet phases between
them (median of its per-step train_log.jsonl entries in each; evaluation time is excluded from those,
a checkpoint write is not). The ``textft train`` runs before and after give the same job's speed without
the service at all. The last line is machine-readable:

    requests=N errors=E p50_ms=X p99_ms=Y load_vs_quiet=R service_vs_train=S
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


def reference(args, work: Path, name: str, overrides: dict) -> Path:
    """``textft train`` alone, with the overrides the service gives the measured job."""
    out = work / name
    cmd = [sys.executable, "-m", "textft", "train", "--config", args.config,
           "data.dataset=null", f"data.train_file={args.data}", f"output.dir={out}",
           f"train.save_every_steps={args.save_every_steps}", *[f"{k}={json.dumps(v)}" for k, v in overrides.items()]]
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **OFFLINE})
    if proc.returncode != 0:
        raise SystemExit(f"reference run failed:\n{proc.stderr[-3000:]}")
    print(f"{name}: textft train alone, {time.monotonic() - started:.0f} s wall", flush=True)
    return out


def load(url: str, key: str, job_id: str, model_id: str, clients: int, requests: int, think_s: float,
         mix: tuple[str, ...] = ("status", "list", "predict")) -> dict:
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
                kind = mix[(i + c) % len(mix)]
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


def phase_sps(run: Path, ranges: list[tuple[int, int]]) -> float:
    """Median samples/s of the log entries whose window of steps lies inside one of ``ranges`` (or,
    for phases shorter than one window, overlaps one)."""
    entries = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    entries = [e for e in entries if "samples_per_s" in e]
    inside = [e["samples_per_s"] for e in entries
              if any(lo <= e["step"] - LOG_STEPS and e["step"] <= hi for lo, hi in ranges)]
    overlapping = [e["samples_per_s"] for e in entries
                   if any(e["step"] > lo and e["step"] - LOG_STEPS <= hi for lo, hi in ranges)]
    later = [e["samples_per_s"] for e in entries if e["step"] > ranges[0][0]][:1]
    return statistics.median(inside or overlapping or later)


LOG_STEPS = 1
"""The measured runs log every step: a load phase may last only a few steps on a slow or busy machine."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, 8 clients, 60 requests")
    parser.add_argument("--data", default="/work/shared/data/banking77/train.jsonl")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--phases", type=int, default=2, help="load phases, each between two quiet ones")
    parser.add_argument("--quiet-steps", type=int, default=20, help="optimizer steps of each quiet phase")
    parser.add_argument("--think-ms", type=float, default=500, help="mean pause of a client between two requests")
    parser.add_argument("--mix", default="status,list,predict",
                        help="request kinds the clients take turns at (status,list: the API alone, no model compute)")
    parser.add_argument("--max-steps", type=int, default=400, help="length of the measured service job")
    parser.add_argument("--reference-steps", type=int, default=60, help="length of each textft train reference")
    parser.add_argument("--save-every-steps", type=int, default=100)
    args = parser.parse_args()
    if args.quick:
        args.data = str(ROOT / "textft/assets/quickstart/train.jsonl")
        args.clients, args.requests, args.think_ms, args.phases, args.quiet_steps = 8, 60, 0, 1, 5
        args.max_steps, args.reference_steps = 3000, 20
        args.config, predict_steps = "tiny", 10
    else:
        args.config, predict_steps = "banking77-minilm", 10
    common = {"train.logging_steps": LOG_STEPS}
    work = Path(tempfile.mkdtemp(prefix="textft-service-load-"))
    # every simulated client connects from 127.0.0.1: the per-address connection cap would count them as one
    svc = ServiceProcess(work / "data", ["--workers", "1", "--save-every-steps", str(args.save_every_steps),
                                         "--max-connections-per-client", "0"]).start()
    refs, quiet, loaded, requests = [], [], [], []
    try:
        key = create_key(work / "data", "bench")
        http = svc.client(key, timeout=120)
        dataset = upload(http, Path(args.data))
        assert dataset.status_code == 201, dataset.text
        ds = dataset.json()
        print(f"data: {ds['rows']:,} rows, {len(ds['labels'])} labels ({args.data}); config {args.config}", flush=True)
        model = {"id": None}
        if "predict" in args.mix.split(","):
            started = time.monotonic()
            model = http.post("/v1/jobs", json={"dataset": ds["id"], "config": args.config,
                                                "overrides": {**common, "train.max_steps": predict_steps}})
            model = wait_state(http, model.json()["id"], ("succeeded", "failed"), timeout=3600)
            assert model["state"] == "succeeded", model["error"]
            print(f"model to predict with: {model['id']} ({time.monotonic() - started:.0f} s through the service)",
                  flush=True)
            started = time.monotonic()
            warm = http.post(f"/v1/models/{model['id']}/predict", json={"inputs": QUESTIONS[0]})
            assert warm.status_code == 200, warm.text
            print(f"first prediction (loads the model): {time.monotonic() - started:.1f} s", flush=True)

        ref_overrides = {**common, "train.max_steps": args.reference_steps}
        refs.append(reference(args, work, "reference-before", ref_overrides))
        job = http.post("/v1/jobs", json={"dataset": ds["id"], "config": args.config,
                                          "overrides": {**common, "train.max_steps": args.max_steps}}).json()
        step_of = lambda: http.get(f"/v1/jobs/{job['id']}").json()["progress"].get("step") or 0  # noqa: E731
        mark = wait_for(lambda: step_of() >= LOG_STEPS and step_of(), 3600, "the job to train", interval=0.5)
        per_phase = [args.requests // args.phases + (i < args.requests % args.phases) for i in range(args.phases)]
        for n in per_phase:
            end = wait_for(lambda: step_of() >= mark + args.quiet_steps and step_of(), 3600, "a quiet phase", 0.5)
            quiet.append((mark, end))
            result = load(svc.url, key, job["id"], model["id"], args.clients, n, args.think_ms / 1000,
                          tuple(args.mix.split(",")))
            mark = step_of()
            loaded.append((end, mark))
            requests.append(result)
            print(f"load phase: {n} requests over steps {end}..{mark}", flush=True)
        end = wait_for(lambda: step_of() >= mark + args.quiet_steps and step_of(), 3600, "a quiet phase", 0.5)
        quiet.append((mark, end))
        http.post(f"/v1/jobs/{job['id']}/cancel")  # the phases are measured: the rest of the run is not needed
        wait_state(http, job["id"], ("cancelled", "succeeded", "failed"), timeout=600)
        if not args.quick:
            refs.append(reference(args, work, "reference-after", ref_overrides))
    finally:
        svc.stop()

    run = work / "data" / "jobs" / job["id"] / "run"
    quiet_sps, load_sps = phase_sps(run, quiet), phase_sps(run, loaded)
    ref_sps = [phase_sps(r, [(LOG_STEPS, args.reference_steps)]) for r in refs]
    lat = {k: [x for r in requests for x in r["latencies"][k]] for k in args.mix.split(",")}
    errors = [e for r in requests for e in r["errors"]]
    seconds = sum(r["seconds"] for r in requests)
    everything = [x for v in lat.values() for x in v]
    n = len(everything)
    print(f"load: {args.clients} clients, {n} requests in {seconds:.1f} s of load ({n / seconds:.0f} req/s),"
          f" think time {args.think_ms:g} ms; errors {len(errors)}")
    for kind, values in lat.items():
        print(f"  {kind:<8} {len(values):>5}  p50 {1000 * percentile(values, 50):7.1f} ms"
              f"  p99 {1000 * percentile(values, 99):7.1f} ms  max {1000 * max(values):7.1f} ms")
    for e in errors[:5]:
        print(f"  error: {e}")
    print(f"training samples/s, service job: quiet phases {quiet_sps:.1f} (steps {quiet}), under load {load_sps:.1f}"
          f" (steps {loaded}); textft train alone: {', '.join(f'{r:.1f}' for r in ref_sps)}"
          f" ({'before, after' if len(ref_sps) > 1 else 'before'})")
    print(f"requests={n} errors={len(errors)} p50_ms={1000 * percentile(everything, 50):.1f}"
          f" p99_ms={1000 * percentile(everything, 99):.1f} load_vs_quiet={load_sps / quiet_sps:.3f}"
          f" service_vs_train={quiet_sps / statistics.mean(ref_sps):.3f}")
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
