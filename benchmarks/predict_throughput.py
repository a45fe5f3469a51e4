"""Prediction throughput: ``textft.load(...).predict`` against ``transformers.pipeline`` on one checkpoint.

    python benchmarks/predict_throughput.py --model DIR                  # 2,000 IMDB reviews, batch 32
    python benchmarks/predict_throughput.py --model DIR --data ../shared/data/imdb/train.jsonl  # see the end
    python benchmarks/predict_throughput.py --model DIR --data FILE.jsonl --n 500 --threads 2 --json-out r.json
    python benchmarks/predict_throughput.py --quick                      # trains the tiny preset, 32 texts

The first ``--n`` texts of ``--data`` (jsonl with "text" and, optionally, "label") after a seeded
shuffle are labelled, on the CPU, by every side, each after one small warm-up call; the texts are cut
into ``--rounds`` chunks and the sides take turns chunk by chunk (A B C, then C B A, ...), so that
load from other work on the machine falls on every side alike:

- ``pipeline_b1``: ``pipeline("text-classification")`` as users call it by default,
  ``pipe(texts, truncation=True, max_length=L)`` (one text per forward pass); on the first 300 texts
  only, outside ``--quick``, to keep the run short;
- ``pipeline``: the same pipeline with ``batch_size=B``, fp32: the anchor every other side is compared to;
- ``torch_fp32``, ``torch_bf16``, ``torch_int8`` (PyTorch dynamic quantisation), ``onnx_fp32``,
  ``onnx_int8`` (ONNX Runtime; int8 = dynamic quantisation) and ``default`` (textft's defaults:
  backend auto, precision auto): ``textft.load(DIR, backend=..., precision=..., max_length=L,
  long_text="truncate").predict(texts, batch_size=B)``. They keep the head of long texts like the
  pipeline, so that labels compare one to one;
- ``default_as_trained``: only for a run trained with head+tail truncation: the default side
  truncating as the run was trained (what a user gets), for its accuracy; same cost as ``default``.

The ONNX exports are made (and cached next to the model) before anything is timed. With
``--force-fp32`` the CPU is treated as one without native bf16 (auto precision never picks bf16;
the torch_bf16 side is skipped): what a CPU without AVX-512-BF16/AMX gets. int8 still uses this
CPU's VNNI instructions, as on the many CPUs that have VNNI but no bf16.

L is the max_length the model was trained with (as textft reads it from the run), or ``--max-length``.
Per side: texts/s, seconds, the share of labels equal to the fp32 pipeline's on the same texts, and
accuracy against the file's labels. Then the fp32 agreement of textft with the pipeline (a warning
when below 0.995), and a machine-readable last line:

    ratio_vs_pipeline=X.XX agreement=Y.YYYY backend=B precision=P

ratio: textft's default texts/s over the batched fp32 pipeline's; agreement: the share of
textft-default labels equal to the pipeline's; backend and precision: what the default chose.

When DIR is a textft run trained on a sample of the same ``--data`` file, the texts it trained on are
rebuilt (same seed and split) and left out, so that accuracy is measured on held-out texts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import cpu_flags  # noqa: E402
# IMDB's train split is the only one in ../shared/data; a textft run's own training texts are left out.
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "imdb" / "train.jsonl"
BUNDLED_DATA = ROOT / "textft" / "assets" / "quickstart" / "test.jsonl"
UNBATCHED_LIMIT = 300
TEXTFT_SIDES = {"torch_fp32": ("torch", "fp32"), "torch_bf16": ("torch", "bf16"), "torch_int8": ("torch", "int8"),
                "onnx_fp32": ("onnx", "fp32"), "onnx_int8": ("onnx", "int8"), "default": ("auto", "auto")}
AGREEMENT_FLOOR = 0.995


# --- data -------------------------------------------------------------------------------------


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and a.samefile(b)
    except OSError:
        return False


def trained_texts(model_dir: Path, data: Path) -> set[str] | None:
    """Texts of the training split of a textft run whose training file is ``data``, drawn again as
    ``textft.train`` drew them (validation carve-out and sub-sampling with the run's seed); None when
    the model was not trained on ``data`` or the run cannot be rebuilt."""
    saved = model_dir / "textft_config.yaml"
    if not saved.is_file():
        return None
    from textft.config import UserError, load_config
    from textft.data import data_files, load_splits

    try:
        cfg = load_config(saved)
        train_file = data_files(cfg.data).get("train")
    except UserError:
        return None
    if train_file is None:
        return None
    # A relative path is relative to where the run was started: the repository root as a rule.
    candidates = [train_file] if train_file.is_absolute() else [Path.cwd() / train_file, ROOT / train_file]
    if not any(same_file(c, data) for c in candidates):
        return None
    import datasets

    datasets.disable_progress_bars()
    try:
        cfg = load_config(saved, [f"data.train_file={data.resolve()}"])
        splits = load_splits(cfg.data, cfg.train.seed).splits
    except UserError as e:
        print(f"note: could not rebuild the training split of {model_dir} ({'; '.join(e.problems)[:300]}):"
              " accuracy may include texts the model trained on", file=sys.stderr)
        return None
    return set(splits["train"]["text"])


def gold_labels(rows: list[dict], names: list[str]) -> list[str | None]:
    """The file's labels as the model's label names; integer labels map through id2label unless they
    already are names (a model trained on labels such as "0", "1")."""
    out = []
    for row in rows:
        y = row.get("label")
        if isinstance(y, int) and not isinstance(y, bool) and str(y) not in names and 0 <= y < len(names):
            out.append(names[y])
        else:
            out.append(None if y is None else str(y))
    return out


# --- the sides --------------------------------------------------------------------------------


def timed(fn, texts: list[str]) -> tuple[list[str], float]:
    start = time.perf_counter()
    out = fn(texts)
    seconds = time.perf_counter() - start
    return [o["label"] for o in out], seconds


def train_tiny(workdir: Path) -> Path:
    """A random 2-layer BERT trained for seconds on the bundled reviews: a real textft run to load."""
    from textft.config import load_config
    from textft.train import train

    out = workdir / "tiny-run"
    # 40 steps: the script is what --quick checks, not how well the model learns
    cfg = load_config("tiny", [f"output.dir={out}", "train.max_steps=40"])
    with contextlib.redirect_stdout(sys.stderr):  # keeps the training report out of the benchmark's output
        train(cfg)
    return out


# --- reporting --------------------------------------------------------------------------------


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def share(a: list, b: list) -> float:
    return sum(x == y for x, y in zip(a, b)) / len(a) if a else float("nan")


def accuracy(pred: list[str], gold: list[str | None]) -> float | None:
    pairs = [(p, g) for p, g in zip(pred, gold) if g is not None]
    return sum(p == g for p, g in pairs) / len(pairs) if pairs else None


def table(results: dict[str, dict]) -> list[str]:
    header = ("side", "precision", "texts", "seconds", "texts/s", "x pipeline", "agreement", "accuracy")
    rows = [header]
    for name, r in results.items():
        rows.append((name, r["precision"], f"{r['texts']:,}", f"{r['seconds']:.2f}", f"{r['texts_per_s']:.1f}",
                     f"{r['ratio_vs_pipeline']:.2f}", "(ref)" if name == "pipeline" else f"{r['agreement']:.4f}",
                     "n/a" if r["accuracy"] is None else f"{r['accuracy']:.4f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return ["  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
            for row in rows]


# --- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="classifier directory (a textft run or any *ForSequenceClassification"
                                         " checkpoint); required unless --quick")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="jsonl with 'text' and optionally 'label'")
    parser.add_argument("--n", type=int, help="texts to label (default 2000; 32 with --quick)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, help="tokens per text (default: the model's training max_length)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=42, help="seed of the shuffle that picks the texts")
    parser.add_argument("--quick", action="store_true",
                        help="without --model, train the tiny preset first; a few dozen texts: checks that"
                             " everything runs")
    parser.add_argument("--json-out", help="write every number to this file")
    parser.add_argument("--force-fp32", action="store_true",
                        help="treat this CPU as one without native bf16 (auto precision is then never bf16)")
    parser.add_argument("--no-unbatched", action="store_true", help="skip pipeline_b1 (one text per forward pass)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="the texts are cut into this many chunks; the sides take turns on each chunk")
    parser.add_argument("--sides", help=f"comma-separated subset of {', '.join(TEXTFT_SIDES)} (default: all)")
    args = parser.parse_args(argv)
    sides = list(TEXTFT_SIDES) if not args.sides else [x.strip() for x in args.sides.split(",") if x.strip()]
    unknown = [x for x in sides if x not in TEXTFT_SIDES]
    if unknown:
        parser.error(f"--sides: unknown {', '.join(unknown)}; choose from {', '.join(TEXTFT_SIDES)}")
    if not args.model and not args.quick:
        parser.error("--model is required (or --quick, which trains a tiny classifier to measure)")
    n = args.n or (32 if args.quick else 2000)
    if n < 1 or args.batch_size < 1:
        parser.error("--n and --batch-size must be >= 1")
    data = Path(args.data)
    if not data.is_file():
        if args.quick and args.data == str(DEFAULT_DATA):
            data = BUNDLED_DATA  # CI without ../shared/data still proves the script runs
        else:
            print(f"error: '--data': {data} does not exist (a jsonl file with a 'text' field, like"
                  " ../shared/data/imdb/train.jsonl)", file=sys.stderr)
            return 2

    import torch
    import transformers

    import textft
    import textft.precision
    from textft.onnx_backend import quality_note, unavailable_reason

    if args.force_fp32:
        # resolve_precision asks this function whether bf16 is native: the switch a CPU without
        # AVX-512-BF16/AMX flips
        textft.precision.cpu_supports_bf16 = lambda: False
        sides = [x for x in sides if x != "torch_bf16"]
    native_bf16 = textft.precision.cpu_supports_bf16()
    if unavailable_reason():
        print(f"note: ONNX Runtime sides skipped: {unavailable_reason()}", file=sys.stderr)
        sides = [x for x in sides if not x.startswith("onnx")]
    transformers.logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="textft-bench-") as tmp:
        if args.model:
            model_dir = Path(args.model)
        else:
            start = time.perf_counter()
            model_dir = train_tiny(Path(tmp))
            print(f"quick: trained the tiny preset in {time.perf_counter() - start:.1f} s", file=sys.stderr)

        rows = read_jsonl(data)
        total = len(rows)
        trained = trained_texts(model_dir, data) or set()
        rows = [r for r in rows if r["text"] not in trained]
        left_out = total - len(rows)
        random.Random(args.seed).shuffle(rows)  # the IMDB files are sorted by label
        rows = rows[:n]
        texts = [r["text"] for r in rows]
        if not texts:
            print(f"error: '--data': no texts left in {data}", file=sys.stderr)
            return 2

        # out_of_scope=False: the pipeline knows nothing of a calibrated rejection threshold, so both
        # sides answer the model's own classes.
        common = {"device": "cpu", "max_length": args.max_length, "out_of_scope": False}
        probe = textft.load(model_dir, precision="fp32", backend="torch", **common)
        length = probe.max_length
        common["max_length"] = length
        names = probe.labels
        gold = gold_labels(rows, names)
        batch = args.batch_size

        print(f"machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, transformers"
              f" {transformers.__version__}, {torch.get_num_threads()} threads, native bf16"
              f" {'yes' if native_bf16 else 'no'}{' (forced off: --force-fp32)' if args.force_fp32 else ''};"
              f" CPU flags: {cpu_flags()}")
        cfg = probe.model.config
        params = sum(p.numel() for p in probe.model.parameters())
        print(f"model: {model_dir} ({(cfg.architectures or [type(probe.model).__name__])[0]}, {params / 1e6:.1f}M"
              f" parameters, labels {', '.join(names[:10])}{' ...' if len(names) > 10 else ''});"
              f" max_length {length}, textft long_text {probe.long_text}")
        if probe.long_text != "head":
            print(f"note: the run was trained with '{probe.long_text}' truncation; every textft side keeps the head like the"
                  " pipeline, and default_as_trained truncates as in training (for its accuracy)")
        common["long_text"] = "head"
        # exports and int8 checks happen once, before any timing
        for name in sides:
            backend, precision = TEXTFT_SIDES[name]
            if backend != "torch":
                clf = textft.load(model_dir, backend=backend, precision=precision, **common)
                note = f" ({quality_note(clf.backend_info.get('quality'))})" if clf.precision == "int8" else ""
                print(f"{name}: {clf.backend} {clf.precision}{note}", file=sys.stderr, flush=True)
        dropped = f"; {left_out:,} rows the model trained on left out" if left_out else ""
        print(f"data: {data}: {len(texts):,} texts (first of {total:,} rows after a shuffle with seed"
              f" {args.seed}{dropped}), batch size {batch}", flush=True)

        from transformers import pipeline

        # float32 explicitly: the default dtype "auto" is the checkpoint's own, float32 for what textft
        # writes, and the anchor must be fp32 whatever the checkpoint holds.
        pipe = pipeline("text-classification", model=str(model_dir), device="cpu", dtype=torch.float32)
        results: dict[str, dict] = {}

        def record(name: str, precision: str, labels: list[str], seconds: float) -> None:
            k = len(labels)
            results[name] = {"precision": precision, "texts": k, "seconds": seconds,
                             "texts_per_s": k / seconds, "labels": labels,
                             "accuracy": accuracy(labels, gold[:k])}
            print(f"{name}: {k / seconds:.1f} texts/s", file=sys.stderr, flush=True)

        if not args.no_unbatched:
            unbatched = texts if args.quick else texts[:UNBATCHED_LIMIT]
            pipe(texts[:2], truncation=True, max_length=length)
            labels, seconds = timed(lambda t: pipe(t, truncation=True, max_length=length), unbatched)
            record("pipeline_b1", "fp32", labels, seconds)
        # Every side labels the same chunks of texts, the sides taking turns chunk by chunk (ABC CBA
        # ...): on a shared machine a neighbour's load then falls on every side alike.
        runners = {"pipeline": lambda t: pipe(t, batch_size=batch, truncation=True, max_length=length)}
        shown = {"pipeline": "fp32"}
        variants = [(name, common) for name in sides]
        if probe.long_text != "head" and "default" in sides:
            variants.append(("default_as_trained", {k: v for k, v in common.items() if k != "long_text"}))
        quality = {}
        for name, kwargs in variants:
            backend, precision = TEXTFT_SIDES[name.replace("_as_trained", "")]
            clf = textft.load(model_dir, backend=backend, precision=precision, **kwargs)
            runners[name] = lambda t, clf=clf: clf.predict(t, batch_size=batch)
            shown[name] = f"{clf.backend} {clf.precision}"
            if clf.backend == "onnx" and clf.precision == "int8":
                quality[name] = clf.backend_info.get("quality")
        for run in runners.values():
            run(texts[:batch])  # warm-up
        rounds = max(1, min(args.rounds, len(texts) // batch))
        bounds = [round(i * len(texts) / rounds) for i in range(rounds + 1)]
        labels = {name: [] for name in runners}
        seconds = {name: 0.0 for name in runners}
        for r in range(rounds):
            chunk = texts[bounds[r]:bounds[r + 1]]
            for name in (list(runners) if r % 2 == 0 else list(runners)[::-1]):
                got, took = timed(runners[name], chunk)
                labels[name] += got
                seconds[name] += took
        for name in runners:
            record(name, shown[name], labels[name], seconds[name])
            if name in quality:
                results[name]["int8_validation"] = quality[name]
        del pipe, runners

    anchor = results["pipeline"]
    for r in results.values():
        r["agreement"] = share(r["labels"], anchor["labels"][:len(r["labels"])])
        r["ratio_vs_pipeline"] = r["texts_per_s"] / anchor["texts_per_s"]
    print()
    print("\n".join(table(results)))
    print()
    for name in [x for x in ("torch_fp32", "onnx_fp32", "default") if x in results]:
        side = results[name]
        differ = [i for i, (a, b) in enumerate(zip(side["labels"], anchor["labels"])) if a != b]
        print(f"{name} ({side['precision']}) vs pipeline fp32: labels equal on {len(texts) - len(differ):,} of"
              f" {len(texts):,} texts, agreement {side['agreement']:.4f}")
        if side["agreement"] < AGREEMENT_FLOOR:
            warning = (f"WARNING: {name} labels differ from the fp32 pipeline's on {len(differ)} text(s)"
                       f" (first: #{', #'.join(map(str, differ[:5]))}), below {AGREEMENT_FLOOR:.1%}")
            print(warning)
            print(warning, file=sys.stderr)
    fp32 = results.get("torch_fp32") or results.get("onnx_fp32") or {"agreement": float("nan")}
    default = results.get("default") or results[next(x for x in results if x not in ("pipeline", "pipeline_b1"))]
    if args.json_out:
        machine = {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
                   "transformers": transformers.__version__, "threads": torch.get_num_threads(),
                   "native_bf16": native_bf16, "force_fp32": args.force_fp32, "cpu_flags": cpu_flags()}
        sides = {name: {k: v for k, v in r.items() if k != "labels"} for name, r in results.items()}
        Path(args.json_out).write_text(json.dumps({
            "args": vars(args), "machine": machine, "model": str(model_dir), "max_length": length,
            "data": {"path": str(data), "rows": total, "texts": len(texts), "trained_rows_left_out": left_out},
            "sides": sides, "fp32_agreement": fp32["agreement"], "ratio_vs_pipeline": default["ratio_vs_pipeline"],
            "agreement": default["agreement"]}, indent=2))
    backend, precision = default["precision"].split()
    print(f"ratio_vs_pipeline={default['ratio_vs_pipeline']:.2f} agreement={default['agreement']:.4f}"
          f" backend={backend} precision={precision}")
    return 0


if __name__ == "__main__":
    from textft.config import UserError

    try:
        sys.exit(main())
    except UserError as e:  # a wrong --model or --max-length: the message, not a traceback
        for problem in e.problems:
            print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
