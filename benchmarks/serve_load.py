"""Load test for ``textft serve``: concurrent clients on loopback, some of them hostile.

    python benchmarks/serve_load.py --model runs/quickstart                  # starts textft serve itself
    python benchmarks/serve_load.py --url http://127.0.0.1:8000 --pid PID    # a server already running
    python benchmarks/serve_load.py --quick       # trains the tiny preset first (10 steps); 8 clients, 100 requests

``--clients`` threads, each with its own keep-alive connection, send ``--requests`` POST /predict
calls in all (one text each, round-robin from ``--data``), one after another. Every
``1 / --invalid``-th request carries an invalid text instead (a lone surrogate, control
characters only, zero-width characters only, whitespace only), sent as raw JSON as a hostile
client would. A warm-up round at the same concurrency comes first (``--requests`` / 10 requests, at
least 200, or 50 with ``--quick``); the server's resident memory is read after it and at the end.
``--quick`` sends 100 requests from 8 clients, every 25th invalid: 4 invalid ones, as in a full run.

The run passes when no valid request fails, every invalid one is answered 4xx, and the RSS at
the end is within 10% of the RSS after warm-up. It prints requests/s, latency percentiles, the
answers by status, the memory, and a last ``result:`` line with every number.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "imdb" / "train.jsonl"
BUNDLED_DATA = ROOT / "textft" / "assets" / "quickstart" / "train.jsonl"
# Raw JSON bodies: an encoder refuses lone surrogates, a hostile client does not.
INVALID_BODIES = [b'{"inputs": "a fine film \\ud800 indeed"}', b'{"inputs": "\\udfff"}',
                  b'{"inputs": "\\u0000\\u0007\\u001b"}', b'{"inputs": "\\u200b\\u2060\\ufeff"}',
                  b'{"inputs": " \\t\\n\\u3000 "}']
MEMORY_TOLERANCE = 0.10


def read_texts(path: Path, limit: int) -> list[str]:
    texts = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                texts.append(json.loads(line)["text"] if path.suffix == ".jsonl" else line.rstrip("\n"))
            if len(texts) == limit:
                break
    return texts


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (Linux /proc)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def started_server(model: Path, serve_args: list[str], log: Path):
    """``textft serve`` on a free loopback port; yields (url, pid)."""
    port = free_port()
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "textft", "serve", "--model", str(model), "--port", str(port),
                                 *serve_args], stdout=f, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"textft serve exited:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit(f"textft serve did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.25)
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def run(url: str, texts: list[str], clients: int, total: int, invalid_every: int, timeout: float = 120.0) -> dict:
    """``total`` requests over ``clients`` connections; request r is invalid when r % invalid_every == 0."""
    per_client = [list(range(c, total, clients)) for c in range(clients)]
    latencies: list[list[float]] = [[] for _ in range(clients)]
    outcomes: list[list[tuple[bool, int, str]]] = [[] for _ in range(clients)]  # (valid?, status, detail)
    answers: list[dict[int, str]] = [{} for _ in range(clients)]
    barrier = threading.Barrier(clients + 1)

    def client(c: int) -> None:
        with httpx.Client(base_url=url, timeout=timeout) as http:
            barrier.wait()
            for r in per_client[c]:
                invalid = invalid_every > 0 and r % invalid_every == 0
                start = time.perf_counter()
                try:
                    if invalid:
                        body = INVALID_BODIES[(r // invalid_every) % len(INVALID_BODIES)]
                        resp = http.post("/predict", content=body, headers={"content-type": "application/json"})
                    else:
                        resp = http.post("/predict", json={"inputs": texts[r % len(texts)]})
                    status, detail = resp.status_code, resp.text[:200]
                except httpx.HTTPError as e:
                    status, detail = 0, repr(e)
                latencies[c].append(time.perf_counter() - start)
                outcomes[c].append((not invalid, status, detail))
                if status == 200 and not invalid:
                    answers[c][r % len(texts)] = resp.json()["predictions"][0]["label"]

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    lat = np.array([x for per in latencies for x in per]) * 1000
    flat = [o for per in outcomes for o in per]
    valid_status = collections.Counter(s for v, s, _ in flat if v)
    invalid_status = collections.Counter(s for v, s, _ in flat if not v)
    labels: dict[int, str] = {}
    for per in answers:
        labels.update(per)
    return {"requests": len(flat), "seconds": seconds, "requests_per_s": len(flat) / seconds,
            "p50_ms": float(np.percentile(lat, 50)), "p90_ms": float(np.percentile(lat, 90)),
            "p99_ms": float(np.percentile(lat, 99)), "max_ms": float(lat.max()),
            "valid": sum(valid_status.values()), "valid_failures": sum(n for s, n in valid_status.items() if s != 200),
            "invalid": sum(invalid_status.values()),
            "invalid_not_4xx": sum(n for s, n in invalid_status.items() if not 400 <= s < 500),
            "valid_status": dict(valid_status), "invalid_status": dict(invalid_status),
            "first_failures": [d for v, s, d in flat if (v and s != 200) or (not v and not 400 <= s < 500)][:3],
            "labels": labels}


def train_tiny(workdir: Path) -> Path:
    """A random 2-layer BERT trained for seconds on the bundled reviews: a real textft run to serve."""
    from textft.config import load_config
    from textft.train import train

    out = workdir / "tiny-run"
    with contextlib.redirect_stdout(sys.stderr):
        train(load_config("tiny", [f"output.dir={out}", "train.max_steps=10"]))
    return out


def measure(url: str, pid: int | None, texts: list[str], args) -> int:
    meta = httpx.get(url + "/metadata", timeout=30).json()
    print(f"model: {meta.get('base_model')}, {len(meta['labels'])} labels, precision {meta['precision']}, device"
          f" {meta['device']}, max_length {meta['max_length']}; server max_batch_size"
          f" {meta['limits']['max_batch_size']}, max_wait_ms {meta['limits']['max_wait_ms']}")
    warm = run(url, texts, args.clients, max(args.clients * 4, args.requests // 10, 50 if args.quick else 200),
               args.invalid_every)
    rss_warm = rss_bytes(pid) if pid else None
    result = run(url, texts, args.clients, args.requests, args.invalid_every)
    rss_end = rss_bytes(pid) if pid else None
    labels = result.pop("labels")
    print(f"warm-up: {warm['requests']} requests at {warm['requests_per_s']:.1f} requests/s")
    print(f"load: {args.clients} clients, {result['requests']} requests ({result['invalid']} invalid) in"
          f" {result['seconds']:.1f} s = {result['requests_per_s']:.1f} requests/s; latency p50 {result['p50_ms']:.1f} ms,"
          f" p90 {result['p90_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, max {result['max_ms']:.1f} ms")
    print(f"valid: {result['valid']} requests, status {result['valid_status']}, failures {result['valid_failures']};"
          f" invalid: {result['invalid']} requests, status {result['invalid_status']}, not 4xx"
          f" {result['invalid_not_4xx']}")
    change = None
    if rss_warm:
        change = (rss_end - rss_warm) / rss_warm
        print(f"memory: server RSS {rss_warm / 2**20:.1f} MiB after warm-up, {rss_end / 2**20:.1f} MiB at the end"
              f" ({100 * change:+.1f}%; limit {100 * MEMORY_TOLERANCE:.0f}%)")
    served = httpx.get(url + "/metadata", timeout=30).json()["served"]
    print(f"server: {served['texts']} texts in {served['batches']} forward passes"
          f" ({served['texts'] / max(served['batches'], 1):.1f} texts per batch on average); {served}")
    if args.expect:
        with open(args.expect, encoding="utf-8") as f:
            expected = [json.loads(line)["label"] for line in f]
        differ = sum(expected[i] != label for i, label in labels.items())
        print(f"labels differing from {args.expect}: {differ} of {len(labels)} distinct texts")
    for failure in result["first_failures"]:
        print(f"failure: {failure}", file=sys.stderr)
    ok = result["valid_failures"] == 0 and result["invalid_not_4xx"] == 0 and (
        change is None or abs(change) <= MEMORY_TOLERANCE)
    print(f"result: requests_per_s={result['requests_per_s']:.1f} p50_ms={result['p50_ms']:.1f}"
          f" p99_ms={result['p99_ms']:.1f} valid_failures={result['valid_failures']}"
          f" invalid_not_4xx={result['invalid_not_4xx']} rss_change_pct="
          + ("n/a" if change is None else f"{100 * change:+.1f}") + f" pass={'yes' if ok else 'no'}")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--model", help="model directory: the script starts textft serve on a free loopback port")
    where.add_argument("--url", help="a running textft serve (RSS is read only with --pid)")
    parser.add_argument("--pid", type=int, help="process id of the server at --url, to read its memory")
    parser.add_argument("--serve-args", default="", help="extra textft serve options, e.g. '--precision fp32'")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help=".jsonl with a 'text' field, or plain text")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--requests", type=int, default=5000, help="requests in all")
    parser.add_argument("--invalid-every", type=int, help="every Nth request is invalid (0: none; default 100,"
                                                              " 25 with --quick)")
    parser.add_argument("--texts", type=int, default=2000, help="distinct texts read from --data")
    parser.add_argument("--expect", help="jsonl of textft predict on the same --data (rows in order): count"
                                         " answers whose label differs")
    parser.add_argument("--quick", action="store_true",
                        help="without --model/--url, train the tiny preset first; 8 clients, 100 requests")
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.requests = min(args.clients, 8), min(args.requests, 100)
    if args.invalid_every is None:
        args.invalid_every = 25 if args.quick else 100
    if not (args.model or args.url or args.quick):
        parser.error("give --model, --url, or --quick")
    data = Path(args.data)
    if not data.is_file():
        if not args.quick:
            parser.error(f"--data: {data} does not exist")
        data = BUNDLED_DATA  # CI without ../shared/data still proves the script runs
    texts = read_texts(data, args.texts)
    if args.url:
        return measure(args.url, args.pid, texts, args)
    with tempfile.TemporaryDirectory(prefix="textft-serve-load-") as tmp:
        model = Path(args.model) if args.model else train_tiny(Path(tmp))
        with started_server(model, args.serve_args.split(), Path(tmp) / "server.log") as (url, pid):
            return measure(url, pid, texts, args)


if __name__ == "__main__":
    sys.exit(main())
