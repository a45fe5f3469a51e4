"""Load test for ``textft serve``: concurrent clients on loopback, a bounded number of requests.

    textft serve --model DIR --port 8000 &
    python benchmarks/serve_load.py --url http://127.0.0.1:8000 --data FILE.jsonl --clients 32 --requests 200

Each client is a thread with its own keep-alive connection that sends ``--requests`` POST
/predict calls, one text each (taken round-robin from ``--data``), one after another. Prints
requests/s, latency percentiles, errors, and, when the file has labels and ``--expect`` names a
predictions file of the same texts, how many answers differ from it.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

import httpx
import numpy as np


def read_texts(path: str, limit: int) -> list[str]:
    texts = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                texts.append(json.loads(line)["text"] if path.endswith(".jsonl") else line.rstrip("\n"))
            if len(texts) == limit:
                break
    return texts


def run(url: str, texts: list[str], clients: int, requests: int, timeout: float = 60.0) -> dict:
    latencies = [[] for _ in range(clients)]
    answers: list[dict[int, str]] = [{} for _ in range(clients)]
    errors: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def client(c: int) -> None:
        with httpx.Client(base_url=url, timeout=timeout) as http:
            barrier.wait()
            for r in range(requests):
                i = (c * requests + r) % len(texts)
                start = time.perf_counter()
                try:
                    resp = http.post("/predict", json={"inputs": texts[i]})
                    ok = resp.status_code == 200
                    detail = resp.text[:200]
                except httpx.HTTPError as e:
                    ok, detail = False, repr(e)
                latencies[c].append(time.perf_counter() - start)
                if ok:
                    answers[c][i] = resp.json()["predictions"][0]["label"]
                else:
                    with lock:
                        errors.append(detail)

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    lat = np.array([x for per in latencies for x in per]) * 1000
    labels: dict[int, str] = {}
    for per in answers:
        labels.update(per)
    return {"requests": int(lat.size), "seconds": seconds, "requests_per_s": lat.size / seconds,
            "p50_ms": float(np.percentile(lat, 50)), "p90_ms": float(np.percentile(lat, 90)),
            "p99_ms": float(np.percentile(lat, 99)), "max_ms": float(lat.max()), "errors": len(errors),
            "first_errors": errors[:3], "labels": labels}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--data", required=True, help=".jsonl with a 'text' field, or plain text (one per line)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=200, help="requests per client")
    parser.add_argument("--texts", type=int, default=2000, help="distinct texts read from --data")
    parser.add_argument("--expect", help="jsonl of textft predict on the same --data (rows in order): count"
                                         " answers whose label differs")
    args = parser.parse_args(argv)
    texts = read_texts(args.data, args.texts)
    meta = httpx.get(args.url + "/metadata", timeout=30).json()
    result = run(args.url, texts, args.clients, args.requests)
    labels = result.pop("labels")
    print(f"model: {len(meta['labels'])} labels, precision {meta['precision']}, device {meta['device']},"
          f" max_batch_size {meta['limits']['max_batch_size']}, max_wait_ms {meta['limits']['max_wait_ms']}")
    print(f"{args.clients} clients x {args.requests} requests (1 text each, {len(texts)} distinct texts):"
          f" {result['requests']} requests in {result['seconds']:.1f} s = {result['requests_per_s']:.1f} requests/s;"
          f" latency p50 {result['p50_ms']:.1f} ms, p90 {result['p90_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms,"
          f" max {result['max_ms']:.1f} ms; errors {result['errors']}")
    served = httpx.get(args.url + "/metadata", timeout=30).json()["served"]
    print(f"server: {served['texts']} texts in {served['batches']} forward passes"
          f" ({served['texts'] / max(served['batches'], 1):.1f} texts per batch on average)")
    if args.expect:
        with open(args.expect, encoding="utf-8") as f:
            expected = [json.loads(line)["label"] for line in f]
        differ = sum(expected[i] != label for i, label in labels.items())
        print(f"labels differing from {args.expect}: {differ} of {len(labels)} distinct texts")
    for e in result["first_errors"]:
        print(f"error: {e}", file=sys.stderr)
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
