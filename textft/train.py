"""Fine-tune a classifier: ``accelerate launch textft/train.py --config configs/NAME.yaml [section.key=value ...]``.

setup (config, accelerator, data, model) → fit → evaluate → save.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from textft.checkpoint import check_output_dir, save_model, write_atomically
from textft.config import Config, UserError, describe_keys, load_config, save_config
from textft.data import TaskData, check_files, data_files, load_splits
from textft.evaluation import (compute_metrics, markdown_report, prediction_rows, summary_line, write_predictions,
                               write_reports)
from textft.loop import LoopState, fit, make_loss, predict_logits, steps_per_epoch
from textft.modeling import apply_transfer, build_model, load_tokenizer, param_groups, resolve_model_path
from textft.tokenization import eval_loader, sort_by_length, tokenize_splits, train_loader

log = logging.getLogger("textft")


def resolve_precision(requested: str) -> str:
    """``auto`` → bf16 where the hardware runs it natively (most GPUs, AVX-512-bf16/AMX CPUs), else fp32."""
    if requested != "auto":
        return requested
    if os.environ.get("ACCELERATE_MIXED_PRECISION"):
        return os.environ["ACCELERATE_MIXED_PRECISION"]
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    try:
        return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "no"
    except (AttributeError, RuntimeError):
        return "no"


def preflight(cfg: Config) -> None:
    """Cheap checks of everything the run will touch, all reported together before any work."""
    problems = []
    if problem := check_output_dir(cfg.output.dir, cfg.output.overwrite):
        problems.append(problem)
    try:
        resolve_model_path(cfg.model.name_or_path)
    except UserError as e:
        problems += e.problems
    try:
        problems += check_files(data_files(cfg.data))
    except UserError as e:
        problems += e.problems
    if problems:
        raise UserError(problems)


def class_weight_tensor(spec, labels: list[int], label_names: list[str]) -> torch.Tensor | None:
    """Loss weights: ``balanced`` (n / (k * count)), a mapping {label: weight}, or None."""
    if spec in (None, "none"):
        return None
    if spec == "balanced":
        counts = np.bincount(labels, minlength=len(label_names)).astype(float)
        return torch.tensor(len(labels) / (len(label_names) * np.maximum(counts, 1)), dtype=torch.float32)
    unknown = [str(k) for k in spec if str(k) not in label_names]
    if unknown:
        from textft.config import closest

        raise UserError(f"'train.class_weights': unknown label(s) {', '.join(unknown)}"
                        f"{closest(unknown[0], label_names)}; labels: {', '.join(label_names[:20])}")
    weights = {str(k): float(v) for k, v in spec.items()}
    return torch.tensor([weights.get(n, 1.0) for n in label_names], dtype=torch.float32)


def setup_logging(is_main: bool) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S",
                        level=logging.INFO if is_main else logging.ERROR, force=True)
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*null_placement.*")  # pyarrow, inside datasets.sort
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()


def train(cfg: Config) -> dict:
    """Run the whole job described by ``cfg``; returns the final evaluation reports."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    preflight(cfg)
    t, d = cfg.train, cfg.data
    precision = resolve_precision(t.mixed_precision)
    accelerator = Accelerator(mixed_precision=precision, gradient_accumulation_steps=t.grad_accum_steps)
    setup_logging(accelerator.is_main_process)
    set_seed(t.seed)
    out_dir = Path(cfg.output.dir)

    with accelerator.main_process_first():
        data: TaskData = load_splits(d, t.seed)
        tokenizer = load_tokenizer(cfg.model)
        tokenized = tokenize_splits(data.splits, tokenizer, d.max_length, d.truncation, d.head_fraction)
    model = build_model(cfg.model, data.label_names)
    model.config.problem_type = "single_label_classification"
    params = apply_transfer(model, cfg.model)
    log.info("data %s: %s; %d labels", data.source,
             ", ".join(f"{k} {len(v)}" for k, v in tokenized.items()), len(data.label_names))
    log.info("model %s (%s): %s of %s parameters trainable (%.1f%%); precision %s; %d process(es)",
             cfg.model.name_or_path, cfg.model.transfer, f"{params['trainable']:,}", f"{params['total']:,}",
             100 * params["trainable"] / params["total"], precision, accelerator.num_processes)

    amp = precision != "no"
    train_dl = train_loader(tokenized["train"], tokenizer, t.batch_size, t.seed, d.group_by_length, amp, t.num_workers)
    eval_bs = t.eval_batch_size or 2 * t.batch_size
    eval_sets = {split: sort_by_length(tokenized[split]) for split in ("validation", "test") if split in tokenized}
    eval_dls = {split: eval_loader(ds, tokenizer, eval_bs, amp, t.num_workers) for split, ds in eval_sets.items()}
    optimizer = torch.optim.AdamW(param_groups(model, t.lr, t.head_lr, t.weight_decay, cfg.model.layer_lr_decay),
                                  lr=t.lr, weight_decay=t.weight_decay)
    model, optimizer, train_dl, *eval_list = accelerator.prepare(model, optimizer, train_dl, *eval_dls.values())
    eval_dls = dict(zip(eval_dls, eval_list))

    # Counted on the sharded loader, so the schedule is the same on 1 or N processes.
    per_epoch = steps_per_epoch(len(train_dl), t.grad_accum_steps)
    total_steps = t.max_steps or max(1, round(t.epochs * per_epoch))
    scheduler = get_scheduler(t.scheduler, optimizer, num_warmup_steps=round(t.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    accelerator.register_for_checkpointing(scheduler)
    weights = class_weight_tensor(t.class_weights, tokenized["train"]["labels"], data.label_names)
    loss_fn = make_loss(weights, t.label_smoothing)

    predictions: dict[str, list[dict]] = {}

    def evaluate(split: str = "validation", keep_predictions: bool = False) -> dict:
        logits, labels = predict_logits(accelerator, model, eval_dls[split])
        metrics = compute_metrics(labels, logits.argmax(-1), data.label_names)
        metrics["loss"] = float(F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)))
        if keep_predictions:
            predictions[split] = prediction_rows(eval_sets[split]["text"], labels, logits, data.label_names)
        return metrics

    if accelerator.is_main_process:
        if out_dir.exists() and cfg.output.overwrite:
            shutil.rmtree(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "textft_config.yaml")
    accelerator.wait_for_everyone()

    log.info("training: %d optimizer steps (%d per epoch), global batch %d", total_steps, per_epoch,
             t.batch_size * t.grad_accum_steps * accelerator.num_processes)
    start = time.perf_counter()
    state = fit(accelerator, model, optimizer, scheduler, train_dl, total_steps=total_steps, loss_fn=loss_fn,
                evaluate=evaluate, state=LoopState(), max_grad_norm=t.max_grad_norm,
                logging_steps=t.logging_steps, eval_every_steps=t.eval_every_steps,
                log_file=out_dir / "train_log.jsonl")
    train_seconds = time.perf_counter() - start

    reports = {split: evaluate(split, keep_predictions=True) for split in eval_dls}
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        extra = {"label_names": data.label_names, "data_source": data.source, "parameters": params,
                 "precision": precision, "num_processes": accelerator.num_processes,
                 "optimizer_steps": state.step, "train_seconds": round(train_seconds, 2),
                 "config": cfg.to_dict()}

        def write(tmp: Path) -> None:
            save_model(tmp, unwrapped, tokenizer)
            save_config(cfg, tmp / "textft_config.yaml")
            write_reports(tmp, reports, extra, title=f"textft: {cfg.model.name_or_path} on {data.source}")
            write_predictions(tmp / "predictions", predictions)

        write_atomically(out_dir, write, keep=("train_log.jsonl", "checkpoints"))
        if len(data.label_names) <= 10:  # small enough to read on a terminal
            print(markdown_report(reports, title=f"{cfg.model.name_or_path} on {data.source}"))
        for split, m in reports.items():
            print(summary_line(split, m))
        print(f"model saved to {out_dir} ({state.step} steps in {train_seconds:.0f} s)")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return reports


def build_parser(prog: str = "textft train") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Fine-tune a text classifier.", formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="overrides (section.key=value):\n" + describe_keys())
    parser.add_argument("--config", help="YAML config file (configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="section.key=value pairs that win over the file")
    return parser


def report_error(e: UserError) -> int:
    for problem in e.problems:
        print(f"error: {problem}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        train(load_config(args.config, args.overrides))
    except UserError as e:
        return report_error(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
