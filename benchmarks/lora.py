"""LoRA against full fine-tuning, each at its auto recipe, on one dataset per invocation.

    python benchmarks/lora.py banking77      # train.jsonl (10% carved for validation), official test 3,080
    python benchmarks/lora.py imdb           # 2,000 stratified train / 1,000 validation / 2,000 test reviews
    python benchmarks/lora.py imdb --modes lora --set train.lr=1e-3    # one side, with overrides (grids)
    python benchmarks/lora.py --quick        # the bundled reviews and tiny lengths: proves the script runs

Each side is one ``textft train`` in a fresh process (so that its peak RSS is its own; ``--quick`` runs
both in this process, so its peak RSS is the largest so far), with the
shipped MiniLM config of the dataset (the ``banking77-minilm`` and ``imdb-minilm`` presets)
and nothing else set but ``model.transfer``: the learning rates, length, evaluation cadence and early
stopping are the auto recipe's. Per side: test accuracy and macro-F1, trainable parameters, training
samples/s (from the training log's windows, evaluation excluded), peak RSS, and
bytes on disk of the run directory's merged model (model.safetensors) and of the adapter directory.
The IMDB splits are drawn from ``imdb/train.jsonl`` (stratified, seeded, disjoint) into a temporary
directory. The last line is machine-readable:

    lora_minus_full_pts=X.X lora_within_1pt=yes|no speedup=Y.YY adapter_mb=Z.ZZ
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = ("full", "lora")


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps({"text": r["text"], "label": r["label"]}) + "\n" for r in rows))
    return path


def stratified(rows: list[dict], sizes: list[int], seed: int) -> list[list[dict]]:
    """Disjoint samples of the given sizes, each with the label shares of ``rows``."""
    rng = random.Random(seed)
    by_label: dict[str, list[dict]] = {}
    for r in rows:
        by_label.setdefault(r["label"], []).append(r)
    for group in by_label.values():
        rng.shuffle(group)
    out, taken = [], {label: 0 for label in by_label}
    for size in sizes:
        part = []
        for label, group in sorted(by_label.items()):
            n = round(size * len(group) / len(rows))
            part += group[taken[label]:taken[label] + n]
            taken[label] += n
        rng.shuffle(part)
        out.append(part)
    return out


def dataset_args(args, work: Path) -> tuple[list[str], str]:
    """The ``textft train`` arguments that choose the data, and a description of the splits."""
    data = Path(args.data_dir)
    if args.quick:
        quick = ROOT / "textft/assets/quickstart"
        return (["--config", "quickstart", "data.dataset=null", "data.max_length=32",
                 "train.max_steps=6", "train.eval_every_steps=3",
                 *(f"data.{split}_file={quick / f'{split}.jsonl'}" for split in ("train", "validation", "test"))],
                "quick: the bundled reviews, 6 steps")
    if args.dataset == "banking77":
        return (["--config", "banking77-minilm", "data.dataset=null",
                 f"data.train_file={data / 'banking77/train.jsonl'}", f"data.test_file={data / 'banking77/test.jsonl'}"],
                "Banking77: 10,003 train (1,000 carved as validation), official test 3,080, max_length 64")
    train, validation, test = stratified(read_jsonl(data / "imdb/train.jsonl"), [2000, 1000, 2000], args.seed)
    files = {name: write_jsonl(work / f"imdb-{name}.jsonl", rows)
             for name, rows in (("train", train), ("validation", validation), ("test", test))}
    return (["--config", "imdb-minilm", "data.dataset=null", "data.max_train_samples=null",
             "data.max_eval_samples=null", *(f"data.{k}_file={v}" for k, v in files.items())],
            f"IMDB-2,000: 2,000 train / 1,000 validation / 2,000 test reviews of imdb/train.jsonl (stratified,"
            f" seed {args.seed}), max_length 256, head+tail")


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def samples_per_s(logged: list[dict], batch: int) -> float:
    """Training samples per second over the whole run, evaluation excluded: each logged window's steps
    x the global batch, over the time its own rate implies."""
    samples, seconds, step = 0.0, 0.0, 0
    for entry in (e for e in logged if "samples_per_s" in e):
        window = (entry["step"] - step) * batch
        samples, seconds, step = samples + window, seconds + window / entry["samples_per_s"], entry["step"]
    return samples / seconds


def train_here(argv: list[str], mode: str) -> float:
    """``textft train ARGV`` in this process (--quick: the process start is most of a 6-step run's
    time), its output on stderr; the peak RSS of this process so far, in MB."""
    from textft.cli import main as textft_main

    with contextlib.redirect_stdout(sys.stderr):
        code = textft_main(["train", *argv])
    if code != 0:
        sys.exit(f"{mode} failed (exit {code}; its output is above)")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_side(mode: str, data_args: list[str], out: Path, extra: list[str], in_process: bool = False) -> dict:
    """One training run in its own process (``in_process``: in this one); its report, peak RSS and files."""
    argv = [*data_args, f"model.transfer={mode}", f"output.dir={out}", "output.overwrite=true", *extra]
    log = out.with_suffix(".log")
    start = time.perf_counter()
    if in_process:
        peak_rss_mb = train_here(argv, mode)
    else:
        with open(log, "w") as f:
            proc = subprocess.Popen([sys.executable, "-m", "textft", "train", *argv], stdout=f,
                                    stderr=subprocess.STDOUT, cwd=ROOT)
            _, status, usage = os.wait4(proc.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"{mode} failed (log: {log}):\n" + log.read_text()[-3000:])
        peak_rss_mb = usage.ru_maxrss / 1024
    wall = time.perf_counter() - start
    report = json.loads((out / "eval_report.json").read_text())
    logged = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    test = report["splits"].get("test") or report["splits"]["validation"]
    cfg = report["config"]
    steps, seconds = report["optimizer_steps"], report["train_seconds"]
    batch = cfg["train"]["batch_size"] * cfg["train"]["grad_accum_steps"] * report["num_processes"]
    return {"mode": mode, "accuracy": test["accuracy"], "macro_f1": test["macro_f1"],
            "validation_accuracy": report["splits"]["validation"]["accuracy"],
            "trainable": report["parameters"]["trainable"], "total": report["parameters"]["total"],
            "samples_per_s": samples_per_s(logged, batch), "train_seconds": seconds, "wall_seconds": round(wall, 1),
            "steps": steps, "stop_reason": report["stop_reason"], "peak_rss_mb": peak_rss_mb,
            "lr": cfg["train"]["lr"], "head_lr": cfg["train"]["head_lr"], "epochs": cfg["train"]["epochs"],
            "merged_bytes": (out / "model.safetensors").stat().st_size,
            "adapter_bytes": dir_bytes(out / "adapter"),
            "adapter_weights_bytes": (out / "adapter/adapter_model.safetensors").stat().st_size
            if (out / "adapter").is_dir() else 0,
            "overrides": extra}


def table(results: list[dict]) -> str:
    lines = ["| side | test accuracy | macro-F1 | trainable | samples/s | train s | peak RSS | merged model | adapter |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        adapter = f"{r['adapter_bytes'] / 1e6:.2f} MB ({r['adapter_weights_bytes'] / 1e6:.2f} MB weights)" \
            if r["adapter_bytes"] else "-"
        lines.append(f"| {r['mode']} (lr {r['lr']:g}, head {r['head_lr']:g}, {r['steps']} steps) | {r['accuracy']:.4f}"
                     f" | {r['macro_f1']:.4f} | {r['trainable'] / 1e6:.3f}M of {r['total'] / 1e6:.1f}M"
                     f" | {r['samples_per_s']:.1f} | {r['train_seconds']:.0f} | {r['peak_rss_mb']:.0f} MB"
                     f" | {r['merged_bytes'] / 1e6:.1f} MB | {adapter} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", nargs="?", choices=("banking77", "imdb"), default="banking77")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated: full, lora")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override for every side (repeatable), e.g. train.lr=1e-3")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--out", help="keep the runs here (default: a temporary directory)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the IMDB splits")
    parser.add_argument("--quick", action="store_true", help="the bundled reviews, 6 steps at max_length 32, both"
                        " sides in this process: checks that the script runs")
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    with tempfile.TemporaryDirectory(prefix="textft-lora-") as tmp:
        work = Path(args.out or tmp)
        work.mkdir(parents=True, exist_ok=True)
        data_args, described = dataset_args(args, work)
        flags = sorted({f for f in open("/proc/cpuinfo").read().split() if f in ("avx512_bf16", "amx_bf16")}) \
            if Path("/proc/cpuinfo").exists() else []
        print(f"{described}; {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
              f" ({', '.join(flags) or 'no bf16 flags'}); load average before: {os.getloadavg()[0]:.1f}", flush=True)
        results = []
        for mode in modes:
            r = run_side(mode, data_args, work / mode, args.set, in_process=args.quick)
            results.append(r)
            print(f"{mode}: accuracy {r['accuracy']:.4f} macro-F1 {r['macro_f1']:.4f} (validation"
                  f" {r['validation_accuracy']:.4f}), {r['trainable']:,} trainable, {r['samples_per_s']:.1f} samples/s,"
                  f" {r['train_seconds']:.0f} s training ({r['wall_seconds']:.0f} s wall), peak RSS"
                  f" {r['peak_rss_mb']:.0f} MB; load average {os.getloadavg()[0]:.1f}", flush=True)
        (work / "lora_results.json").write_text(json.dumps(results, indent=1))
        print(table(results))
        by = {r["mode"]: r for r in results}
        if {"full", "lora"} <= set(by):
            gap = 100 * (by["lora"]["accuracy"] - by["full"]["accuracy"])
            print(f"lora_minus_full_pts={gap:.1f} lora_within_1pt={'yes' if gap >= -1 else 'no'}"
                  f" speedup={by['lora']['samples_per_s'] / by['full']['samples_per_s']:.2f}"
                  f" adapter_mb={by['lora']['adapter_bytes'] / 1e6:.2f}")
    return 0


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    sys.exit(main())
