"""Many LoRA models of one base in the service, against as many full models under the same budget.

    python benchmarks/lora_service.py                 # 50 models of each kind, --max-loaded-models 2
    python benchmarks/lora_service.py --models 10 --requests 100    # smaller

Two jobs are trained through the service on the bundled quickstart reviews, on the bundled MiniLM
(``builtin:minilm``), a few steps each: one ``model.transfer=lora``, one ``full``. The other models
are copies made on disk while the service is stopped (job directory and database row): each LoRA
copy gets its own adapter (its LoRA matrices and head perturbed with seeded noise, so that no two
are alike), each full copy a hard link to the full model's weights (the cache loads each copy as a
model of its own). Then, each scenario in a fresh service process with the same
``--max-loaded-models``:

- one: every request to one full model (a single merged model: the latency reference, and the RSS
  of one full model loaded);
- lora: requests spread over all the LoRA models (one shared base, the adapters switched per batch);
- full: requests spread over all the full models (the cache evicts and reloads).

``--clients`` concurrent clients send one review per request, models picked at random (seeded).
Each scenario first sends one untimed request to each of its models (loading them), then the timed
requests. Per scenario: server RSS (the service process, sampled every 0.2 s: peak, after the
warm-up and at the end), p50/p99 latency of the timed requests, errors. The last line is machine-readable:

    lora_rss_vs_one=X.XX lora_p99_vs_one=Y.YY rss_target=yes|no p99_target=yes|no
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from service_support import ServiceProcess, create_key, upload, wait_state  # noqa: E402

QUICK = ROOT / "textft" / "assets" / "quickstart"


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its threads, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def train_templates(data: Path, steps: int) -> tuple[str, str]:
    """One LoRA job and one full job through the service: their ids."""
    svc = ServiceProcess(data).start()
    try:
        http = svc.client(create_key(data, "bench", admin=True), timeout=120)
        ds = upload(http, QUICK / "train.jsonl")
        assert ds.status_code == 201, ds.text
        ids = []
        for transfer in ("lora", "full"):
            resp = http.post("/v1/jobs", json={"dataset": ds.json()["id"], "config": "quickstart", "overrides": {
                "model.transfer": transfer, "train.max_steps": steps, "data.max_length": 64,
                "train.eval_every_steps": 0}})
            assert resp.status_code == 201, resp.text
            ids.append(resp.json()["id"])
        for job_id in ids:
            done = wait_state(http, job_id, ("succeeded", "failed"), timeout=3600)
            assert done["state"] == "succeeded", http.get(f"/v1/jobs/{job_id}/log").text[-3000:]
        return ids[0], ids[1]
    finally:
        svc.stop()


def perturb_adapter(adapter: Path, seed: int) -> None:
    """A distinct adapter: seeded noise on every tensor (LoRA matrices, head, pooler)."""
    import torch
    from safetensors.torch import load_file, save_file

    file = adapter / "adapter_model.safetensors"
    tensors = load_file(file)
    g = torch.Generator().manual_seed(seed)
    save_file({k: v + 0.02 * torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in tensors.items()}, file)


def clone(data: Path, job_id: str, n: int, lora: bool) -> list[str]:
    """``n - 1`` copies of a finished job: directory and database row. Returns all n ids."""
    ids = [job_id]
    db = sqlite3.connect(data / "textft.db")
    cols = [r[1] for r in db.execute("PRAGMA table_info(jobs)") if r[1] != "seq"]
    for i in range(1, n):
        new = f"{job_id}-{i:02d}"
        src, dst = data / "jobs" / job_id, data / "jobs" / new
        if lora:
            shutil.copytree(src, dst)
            perturb_adapter(dst / "run" / "adapter", i)
        else:
            shutil.copytree(src, dst, copy_function=os.link)
        db.execute(f"INSERT INTO jobs ({', '.join(cols)}) SELECT {', '.join('?' if c == 'id' else c for c in cols)}"
                   " FROM jobs WHERE id = ?", (new, job_id))
        ids.append(new)
    db.commit()
    db.close()
    return ids


def existing(data: Path) -> tuple[list[str], list[str]]:
    """The LoRA and full model ids a previous invocation left in ``data`` (trained job first)."""
    db = sqlite3.connect(data / "textft.db")
    ids = sorted(r[0] for r in db.execute("SELECT id FROM jobs WHERE state = 'succeeded'"))
    db.close()
    lora = [i for i in ids if (data / "jobs" / i / "run" / "adapter").is_dir()]
    return lora, [i for i in ids if i not in lora]


def scenario(data: Path, key: str, models: list[str], requests: int, clients: int, budget: int, seed: int) -> dict:
    svc = ServiceProcess(data, ["--max-loaded-models", str(budget), "--workers", "0"]).start()
    texts = [json.loads(line)["text"][:500] for line in (QUICK / "test.jsonl").read_text().splitlines()]
    peak, stop = [0.0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_mb(svc.proc.pid))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    counter, lock, latencies, errors = iter(range(requests)), threading.Lock(), [], []

    def client(c: int) -> None:
        rng = random.Random(seed * 1000 + c)
        with httpx.Client(base_url=svc.url, headers={"Authorization": f"Bearer {key}"}, timeout=300) as http:
            while next(counter, None) is not None:
                model = models[rng.randrange(len(models))]
                started = time.perf_counter()
                resp = http.post(f"/v1/models/{model}/predict", json={"inputs": rng.choice(texts)})
                with lock:
                    latencies.append(time.perf_counter() - started)
                    if resp.status_code != 200:
                        errors.append(f"{resp.status_code} {resp.text[:200]}")

    try:
        with httpx.Client(base_url=svc.url, headers={"Authorization": f"Bearer {key}"}, timeout=300) as http:
            started = time.perf_counter()
            for model in models:  # each model once, untimed: loading it is not a prediction's latency
                resp = http.post(f"/v1/models/{model}/predict", json={"inputs": texts[0]})
                assert resp.status_code == 200, resp.text
            warm_s, warm_rss = time.perf_counter() - started, rss_mb(svc.proc.pid)
        started = time.perf_counter()
        threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - started
        end_rss = rss_mb(svc.proc.pid)
    finally:
        stop.set()
        sampler.join()
        svc.stop()
    lat = sorted(latencies)
    return {"models": len(models), "requests": len(lat), "errors": len(errors), "first_error": errors[:1],
            "p50_ms": 1000 * statistics.median(lat), "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))],
            "rss_peak_mb": peak[0], "rss_after_warm_up_mb": warm_rss, "rss_end_mb": end_rss, "seconds": seconds,
            "warm_up_s": warm_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=int, default=50)
    parser.add_argument("--requests", type=int, default=300,
                        help="timed requests per scenario, after one untimed request to each model")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--max-loaded-models", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps of each trained job")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scenarios", default="one,lora,full", help="which scenarios to run, comma-separated")
    parser.add_argument("--work", help="directory to keep (default: a temporary one)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="textft-lora-service-"))
    data = work / "data"
    if (data / "jobs").is_dir():  # --work of an earlier invocation: its models again, scenarios only
        lora_ids, full_ids = existing(data)
        lora_id, full_id = lora_ids[0], full_ids[0]
    else:
        lora_id, full_id = train_templates(data, args.steps)
        lora_ids, full_ids = clone(data, lora_id, args.models, True), clone(data, full_id, args.models, False)
    key = create_key(data, f"load-{time.time_ns()}", admin=True)  # admin: the models belong to the trainer
    run = {"cpu": os.cpu_count(), "load_avg": os.getloadavg(), "torch_threads": 1, "args": vars(args)}
    results = {}
    chosen = args.scenarios.split(",")
    for name, ids in [(n, i) for n, i in (("one", [full_id]), ("lora", lora_ids), ("full", full_ids)) if n in chosen]:
        results[name] = scenario(data, key, ids, args.requests, args.clients, args.max_loaded_models, args.seed)
        print(name, json.dumps(results[name]), flush=True)
        if results[name]["errors"]:
            raise SystemExit(f"{name}: {results[name]['errors']} request(s) failed: {results[name]['first_error']}")
    run["load_avg_end"] = os.getloadavg()
    stored = {"lora_adapter_bytes": sum(p.stat().st_size for p in (data / "jobs" / lora_id / "run" / "adapter").rglob("*")
                                        if p.is_file()),
              "full_model_bytes": (data / "jobs" / full_id / "run" / "model.safetensors").stat().st_size}
    print(json.dumps({"run": run, "stored": stored}), flush=True)
    print("| scenario | models | requests | errors | server RSS peak | RSS at end | p50 | p99 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['models']} | {r['requests']} | {r['errors']} | {r['rss_peak_mb']:.0f} MB |"
              f" {r['rss_end_mb']:.0f} MB | {r['p50_ms']:.0f} ms | {r['p99_ms']:.0f} ms |")
    if {"one", "lora"} <= set(results):
        rss = results["lora"]["rss_peak_mb"] / results["one"]["rss_peak_mb"]
        p99 = results["lora"]["p99_ms"] / results["one"]["p99_ms"]
        print(f"lora_rss_vs_one={rss:.2f} lora_p99_vs_one={p99:.2f} rss_target={'yes' if rss <= 2 else 'no'}"
              f" p99_target={'yes' if p99 <= 2 else 'no'}")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
