"""Fine-tune a classifier: ``accelerate launch textft/train.py --config configs/NAME.yaml [section.key=value ...]``.

setup (config, accelerator, data, model) → fit → evaluate → save.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from textft.checkpoint import (RUN_MARKER, Checkpointer, check_checkpointing_supported, check_output_dir,
                               checkpoint_problem, latest_checkpoint, load_best, prepare_output_dir, save_best,
                               save_model, write_atomically)
from textft.config import Config, UserError, describe_keys, load_config, save_config
from textft.data import TaskData, check_files, data_files, load_splits
from textft.evaluation import (compute_metrics, markdown_report, prediction_rows, summary_line, write_predictions,
                               write_reports)
from textft.hub import push_to_hub
from textft.interrupts import Interrupted, close_progress_bars, report_interruption, stop_on_sigterm
from textft.loop import LoopState, Plan, fit, make_loss, predict_logits, steps_per_epoch
from textft.modeling import (apply_transfer, build_model, check_tokenizer_fits, enable_activation_checkpointing,
                             frozen_by_schedule, layer_depths, load_tokenizer, param_groups, resolve_model_path,
                             unfrozen_depth)
from textft.recipe import Facts, head_is_fresh, non_embedding_params
from textft.recipe import resolve as resolve_recipe
from textft.report import write_run_report
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
    resuming = cfg.train.resume_from is not None
    if problem := check_output_dir(cfg.output.dir, cfg.output.overwrite, resuming):
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
    # textft's own logger, so that an application's (or pytest's) root handlers stay untouched.
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
    log.setLevel(logging.INFO if is_main else logging.ERROR)
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one INFO line per file of every checkpoint
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*null_placement.*")  # pyarrow, inside datasets.sort
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()


def setup_accelerator(cfg: Config):
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    t, out_dir = cfg.train, Path(cfg.output.dir)
    precision = resolve_precision(t.mixed_precision)
    accelerator = Accelerator(
        mixed_precision=precision, gradient_accumulation_steps=t.grad_accum_steps,
        log_with=None if t.report_to == "none" else t.report_to,
        project_config=ProjectConfiguration(project_dir=str(out_dir), logging_dir=str(out_dir / "logs")))
    setup_logging(accelerator.is_main_process)
    return accelerator, precision


def find_resume(resume_from: str | None, root: Path) -> Path | None:
    if resume_from is None:
        return None
    if resume_from == "latest":
        found = latest_checkpoint(root)
        if found is None:
            log.warning("train.resume_from=latest: no complete checkpoint in %s, starting from scratch", root)
        return found
    path = Path(resume_from)
    problem = "does not exist" if not path.is_dir() else checkpoint_problem(path)
    if problem:
        raise UserError(f"'train.resume_from': checkpoint '{path}' cannot be used: {problem}")
    return path


def flat_config(cfg: Config) -> dict:
    """``section.key`` → value, with values trackers accept (numbers, strings, booleans)."""
    return {f"{s}.{k}": v if isinstance(v, (int, float, str, bool)) else str(v)
            for s, section in cfg.to_dict().items() for k, v in section.items()}


def train(cfg: Config, on_evaluate: Callable[[int, float, dict], None] | None = None) -> dict:
    """Run the whole job described by ``cfg``; returns the final evaluation reports.

    ``on_evaluate(step, epoch, metrics)`` sees every validation result; an exception it raises
    (e.g. a pruned hyper-parameter trial) ends the run.
    """
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    preflight(cfg)
    t, d, m = cfg.train, cfg.data, cfg.model
    accelerator, precision = setup_accelerator(cfg)
    check_checkpointing_supported(accelerator, t.save_every_steps, t.save_every_epoch, t.resume_from)
    set_seed(t.seed)
    out_dir = Path(cfg.output.dir)
    ckpt_root = out_dir / "checkpoints"

    with accelerator.main_process_first():
        data: TaskData = load_splits(d, t.seed)
        tokenizer = load_tokenizer(m)
        tokenized = tokenize_splits(data.splits, tokenizer, d.max_length, d.truncation, d.head_fraction)
    model, initialised_here = build_model(m, data.label_names)
    check_tokenizer_fits(model, tokenizer, m.name_or_path)
    model.config.problem_type = "single_label_classification"
    cfg, recipe = resolve_recipe(cfg, Facts(
        non_embedding_params=non_embedding_params(model), fresh_head=head_is_fresh(model, initialised_here),
        pretrained_encoder=not m.random_init, n_train=len(tokenized["train"]),
        n_validation=len(tokenized.get("validation", [])), num_labels=len(data.label_names),
        global_batch=t.batch_size * t.grad_accum_steps * accelerator.num_processes))
    t = cfg.train
    for key, why in recipe.items():
        log.info("auto %s = %s: %s", key, getattr(t, key.split(".", 1)[1]), why)
    params = apply_transfer(model, m)
    if t.gradient_checkpointing:
        enable_activation_checkpointing(model)
    weights = class_weight_tensor(t.class_weights, tokenized["train"]["labels"], data.label_names)
    log.info("data %s: %s; %d labels", data.source,
             ", ".join(f"{k} {len(v)}" for k, v in tokenized.items()), len(data.label_names))
    log.info("model %s (%s): %s of %s parameters trainable (%.1f%%); precision %s; %d process(es)",
             m.name_or_path, m.transfer, f"{params['trainable']:,}", f"{params['total']:,}",
             100 * params["trainable"] / params["total"], precision, accelerator.num_processes)

    amp = precision != "no"
    train_dl = train_loader(tokenized["train"], tokenizer, t.batch_size, t.seed, d.group_by_length, amp, t.num_workers)
    eval_sets = {split: sort_by_length(tokenized[split]) for split in ("validation", "test") if split in tokenized}
    eval_dls = {split: eval_loader(ds, tokenizer, t.eval_batch_size or 2 * t.batch_size, amp, t.num_workers)
                for split, ds in eval_sets.items()}
    # fused: one kernel for all parameters instead of a loop of small ops per tensor (CPU and CUDA)
    optimizer = torch.optim.AdamW(param_groups(model, t.lr, t.head_lr, t.weight_decay, m.layer_lr_decay),
                                  lr=t.lr, weight_decay=t.weight_decay, fused=accelerator.device.type in ("cpu", "cuda"))
    model, optimizer, train_dl, *eval_list = accelerator.prepare(model, optimizer, train_dl, *eval_dls.values())
    eval_dls = dict(zip(eval_dls, eval_list))
    if t.compile:
        # Compiled here rather than through Accelerator(dynamo_backend=...): Accelerate keeps that
        # setting in process-wide state, so a second run in the same process would silently ignore it.
        model = torch.compile(model)
        log.info("torch.compile: %s (inductor; the first steps compile, later ones run the compiled graph)",
                 type(model).__name__)

    # Counted on the sharded loader, so the schedule is the same on 1 or N processes; the scheduler
    # stays out of prepare() because Accelerate would step it once per process.
    per_epoch = steps_per_epoch(len(train_dl), t.grad_accum_steps)
    plan = Plan(total_steps=t.max_steps or max(1, round(t.epochs * per_epoch)), max_grad_norm=t.max_grad_norm,
                logging_steps=t.logging_steps, eval_every_steps=t.eval_every_steps,
                save_every_steps=t.save_every_steps, save_every_epoch=t.save_every_epoch, metric=t.metric_for_best,
                patience=t.early_stopping_patience,
                min_steps_before_stopping=t.early_stopping_min_steps, min_delta=t.early_stopping_min_delta,
                time_budget_s=t.time_budget_s)
    scheduler = get_scheduler(t.scheduler, optimizer, num_warmup_steps=round(t.warmup_ratio * plan.total_steps),
                              num_training_steps=plan.total_steps)
    state = LoopState()
    ckpt = Checkpointer(accelerator, ckpt_root, t.keep_checkpoints, model, optimizer, scheduler, state)

    resume = find_resume(t.resume_from, ckpt_root)
    if resume is not None:  # verified and loaded before anything in output.dir changes
        ckpt.load(resume)
    if accelerator.is_main_process:
        prepare_output_dir(out_dir, cfg.output.overwrite, resuming=t.resume_from is not None)
        save_config(cfg, out_dir / "textft_config.yaml", recipe)
    accelerator.wait_for_everyone()
    if resume is not None:
        log.info("resumed from %s: step %d, epoch %d, %d batches into it", resume, state.step, state.epoch,
                 state.batches_in_epoch)
        if accelerator.is_main_process:  # the log restarts at the checkpoint, dropping what came after
            (out_dir / "train_log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in state.history))
    if t.report_to != "none":
        accelerator.init_trackers("textft", config=flat_config(cfg))

    predictions: dict[str, list[dict]] = {}

    def evaluate(split: str = "validation", keep_predictions: bool = False) -> dict:
        logits, labels = predict_logits(accelerator, model, eval_dls[split])
        metrics = compute_metrics(labels, logits.argmax(-1), data.label_names)
        metrics["loss"] = float(F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)))
        if keep_predictions:
            predictions[split] = prediction_rows(eval_sets[split]["text"], labels, logits, data.label_names)
        elif on_evaluate is not None:
            on_evaluate(state.step, state.epoch + state.batches_in_epoch / len(train_dl), metrics)
        return metrics

    def on_best() -> None:
        save_best(accelerator, model, ckpt_root, {"step": state.step, "epoch": state.best_epoch,
                                                  "metric": t.metric_for_best, "value": state.best_value})

    unwrapped = accelerator.unwrap_model(model)
    head_depth = max(layer_depths(unwrapped).values())
    frozen_at = {}

    def gradual_unfreeze(s: LoopState) -> None:
        # Progress when this step's first batch started, so an epoch's last step is still in that epoch.
        progress = s.epoch + (s.batches_in_epoch - 1) / len(train_dl)
        lowest = unfrozen_depth(progress, m.unfreeze_every_epochs, head_depth)
        if lowest not in frozen_at:
            frozen_at[lowest] = frozen_by_schedule(unwrapped, lowest)
            log.info("gradual unfreezing at step %d: training depth >= %d of %d", s.step, lowest, head_depth)
        for p in frozen_at[lowest]:
            p.grad = None  # AdamW skips parameters without a gradient: no update, no weight decay

    log.info("training: %d optimizer steps (%d per epoch), global batch %d", plan.total_steps, per_epoch,
             t.batch_size * t.grad_accum_steps * accelerator.num_processes)
    with stop_on_sigterm(accelerator) as stop:
        fit(accelerator, model, optimizer, scheduler, train_dl, state, plan,
            loss_fn=make_loss(weights, t.label_smoothing), evaluate=evaluate, on_best=on_best,
            checkpoint=lambda: ckpt.save(state.step),
            before_optimizer_step=gradual_unfreeze if m.transfer == "gradual" else None,
            log_file=out_dir / "train_log.jsonl", stop=stop)

    best = load_best(accelerator, model, ckpt_root)
    reports = {split: evaluate(split, keep_predictions=True) for split in eval_dls}
    if accelerator.is_main_process:
        extra = {"label_names": data.label_names, "data_source": data.source, "parameters": params,
                 "precision": precision, "num_processes": accelerator.num_processes,
                 "optimizer_steps": state.step, "train_seconds": round(state.seconds, 2),
                 "best": best, "stop_reason": state.stop_reason,
                 "resumed_from": str(resume) if resume else None, "config": cfg.to_dict(), "recipe": recipe}

        def write(tmp: Path) -> None:
            save_model(tmp, unwrapped, tokenizer)
            save_config(cfg, tmp / "textft_config.yaml", recipe)
            write_reports(tmp, reports, extra, title=f"textft: {m.name_or_path} on {data.source}")
            write_predictions(tmp / "predictions", predictions)
            if (out_dir / "train_log.jsonl").exists():  # the report's learning curves read it
                shutil.copy2(out_dir / "train_log.jsonl", tmp / "train_log.jsonl")
            write_run_report(tmp)

        write_atomically(out_dir, write, keep=("checkpoints", "logs", RUN_MARKER))
        shutil.rmtree(ckpt_root / "best", ignore_errors=True)  # it is now the exported model itself
        if ckpt_root.is_dir() and not any(ckpt_root.iterdir()):
            ckpt_root.rmdir()
        if len(data.label_names) <= 10:  # small enough to read on a terminal
            print(markdown_report(reports, title=f"{m.name_or_path} on {data.source}"))
        for split, metrics in reports.items():
            print(summary_line(split, metrics))
        if best:
            print(f"best {t.metric_for_best} {best['value']:.4f} at step {best['step']} (epoch {best['epoch']});"
                  f" stopped: {state.stop_reason}")
        print(f"model saved to {out_dir} ({state.step} steps in {state.seconds:.0f} s); report: {out_dir / 'report.html'}")
        if cfg.output.push_to_hub:
            print(f"pushed to {push_to_hub(out_dir, cfg.output.hub_repo_id, private=cfg.output.hub_private)}")
    accelerator.wait_for_everyone()
    accelerator.end_training()  # closes trackers and, on several processes, the process group
    return reports


def build_parser(prog: str = "textft train") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Fine-tune a text classifier.", formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="overrides (section.key=value):\n" + describe_keys())
    parser.add_argument("--config", help="YAML config file (configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="section.key=value pairs that win over the file")
    return parser


def report_error(e: UserError) -> int:
    close_progress_bars()
    for problem in e.problems:
        print(f"error: {problem}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        train(load_config(args.config, args.overrides))
    except UserError as e:
        return report_error(e)
    except (Interrupted, KeyboardInterrupt) as e:
        return report_interruption(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
