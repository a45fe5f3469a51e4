"""The training loop and batched prediction, both rank-aware through Accelerate."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from tqdm.auto import tqdm

log = logging.getLogger("textft")


@dataclass
class LoopState:
    """Everything besides model, optimizer, scheduler and RNG that a resumed run needs."""

    step: int = 0
    """Optimizer steps done."""
    epoch: int = 0
    """Epoch in progress (0-based)."""
    batches_in_epoch: int = 0
    """Batches of the epoch in progress already trained on (skipped on resume)."""
    best_value: float | None = None
    best_step: int | None = None
    best_epoch: float | None = None
    bad_evals: int = 0
    """Evaluations since the last improvement (early stopping)."""
    stop_reason: str | None = None
    seconds: float = 0.0
    """Training time so far, over all resumptions (for the time budget)."""
    history: list[dict] = field(default_factory=list)
    """Logged training and evaluation records."""

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


@dataclass
class Plan:
    """How long and how to train; the loop's fixed inputs besides model and data."""

    total_steps: int
    max_grad_norm: float = 1.0
    logging_steps: int = 10
    eval_every_steps: int = 0
    save_every_steps: int = 0
    save_every_epoch: bool = False
    metric: str = "macro_f1"
    patience: int = 0
    min_steps_before_stopping: int = 0
    min_delta: float = 0.0
    time_budget_s: float | None = None


def make_loss(class_weights: torch.Tensor | None, label_smoothing: float) -> Callable:
    def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        weight = class_weights.to(logits.device) if class_weights is not None else None
        return F.cross_entropy(logits.float(), labels, weight=weight, label_smoothing=label_smoothing)
    return loss_fn


@torch.no_grad()
def predict_logits(accelerator: Accelerator, model, loader) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels of every example exactly once, in loader order, on every process."""
    model.eval()
    logits_all, labels_all = [], []
    for batch in loader:
        labels = batch.pop("labels")
        logits = model(**batch).logits.float()
        logits, labels = accelerator.gather_for_metrics((logits, labels))
        logits_all.append(logits.cpu())
        labels_all.append(labels.cpu())
    model.train()
    return torch.cat(logits_all).numpy(), torch.cat(labels_all).numpy()


def improved(value: float, best: float | None, metric: str, min_delta: float) -> bool:
    if best is None:
        return True
    return value < best - min_delta if metric == "loss" else value > best + min_delta


def fit(accelerator: Accelerator, model, optimizer, scheduler, loader, state: LoopState, plan: Plan, *,
        loss_fn: Callable, evaluate: Callable[[], dict], on_best: Callable[[], None],
        checkpoint: Callable[[], None], before_optimizer_step: Callable[[LoopState], None] | None = None,
        log_file: Path | None = None, stop: Callable[[LoopState], None] | None = None) -> LoopState:
    """Train for ``plan.total_steps`` optimizer steps, or until early stopping or the time budget.

    ``stop(state)`` runs after every optimizer step (and its checkpoint); it ends the run by raising.
    """
    main = accelerator.is_main_process
    bar = tqdm(total=plan.total_steps, initial=state.step, disable=not main, desc="train", dynamic_ncols=True)
    started = time.perf_counter() - state.seconds
    window, t0 = torch.zeros(4, device=accelerator.device), time.perf_counter()  # loss, batches, samples, tokens

    def record(entry: dict) -> None:
        entry = {"step": state.step, "epoch": round(state.epoch + state.batches_in_epoch / len(loader), 4), **entry}
        state.history.append(entry)
        values = entry.get("eval") or {k: entry[k] for k in ("loss", "lr", "samples_per_s") if k in entry}
        prefix = "eval" if "eval" in entry else "train"
        accelerator.log({f"{prefix}/{k}": v for k, v in values.items() if isinstance(v, (int, float))},
                        step=state.step)
        if main and log_file is not None:
            with open(log_file, "a") as f:
                f.write(json.dumps(entry) + "\n")

    def evaluate_and_select() -> None:
        nonlocal t0
        start = time.perf_counter()
        metrics = evaluate()
        t0 += time.perf_counter() - start  # evaluation time is not training throughput
        record({"eval": metrics})
        value = metrics[plan.metric]
        log.info("eval at step %d: accuracy %.4f  macro-F1 %.4f  loss %.4f", state.step, metrics["accuracy"],
                 metrics["macro_f1"], metrics["loss"])
        if improved(value, state.best_value, plan.metric, plan.min_delta):
            state.best_value, state.best_step, state.bad_evals = value, state.step, 0
            state.best_epoch = state.history[-1]["epoch"]
            on_best()
        else:
            state.bad_evals += 1
            if plan.patience and state.bad_evals >= plan.patience \
                    and state.step >= plan.min_steps_before_stopping:
                state.stop_reason = "early_stopping"

    model.train()
    while state.step < plan.total_steps and state.stop_reason is None:
        loader.set_epoch(state.epoch)
        # A resumed run skips exactly the batches its checkpoint had already trained on.
        batches = accelerator.skip_first_batches(loader, state.batches_in_epoch) if state.batches_in_epoch else loader
        for batch in batches:
            state.batches_in_epoch += 1
            with accelerator.accumulate(model):
                labels = batch.pop("labels")
                loss = loss_fn(model(**batch).logits, labels)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    if before_optimizer_step is not None:
                        before_optimizer_step(state)
                    if plan.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(model.parameters(), plan.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            window += torch.stack([loss.detach().float(), torch.ones_like(window[0]),
                                   torch.full_like(window[0], labels.numel()), batch["attention_mask"].sum().float()])
            if not accelerator.sync_gradients:
                continue
            if not accelerator.optimizer_step_was_skipped:
                scheduler.step()
            state.step += 1
            state.seconds = time.perf_counter() - started
            bar.update(1)
            if state.step % plan.logging_steps == 0 or state.step == plan.total_steps:
                loss_sum, n_batches, samples, tokens = accelerator.reduce(window, "sum").tolist()
                seconds = time.perf_counter() - t0
                record({"loss": loss_sum / max(1, n_batches), "lr": scheduler.get_last_lr()[-1],
                        "samples_per_s": samples / seconds, "tokens_per_s": tokens / seconds})
                bar.set_postfix(loss=f"{state.history[-1]['loss']:.4f}", lr=f"{state.history[-1]['lr']:.2e}")
                window, t0 = torch.zeros_like(window), time.perf_counter()
            if plan.eval_every_steps and state.step % plan.eval_every_steps == 0 \
                    and state.batches_in_epoch < len(loader):
                evaluate_and_select()
            if plan.time_budget_s and state.seconds >= plan.time_budget_s:
                state.stop_reason = "time_budget"
            if plan.save_every_steps and state.step % plan.save_every_steps == 0 \
                    and state.batches_in_epoch < len(loader):
                checkpoint()
            if stop is not None:
                stop(state)
            if state.step >= plan.total_steps or state.stop_reason:
                break
        if state.batches_in_epoch >= len(loader):
            state.epoch, state.batches_in_epoch = state.epoch + 1, 0
        if state.stop_reason != "early_stopping":
            evaluate_and_select()
        if state.step < plan.total_steps and not state.stop_reason and (
                plan.save_every_epoch or (plan.save_every_steps and state.step % plan.save_every_steps == 0)):
            checkpoint()
    state.stop_reason = state.stop_reason or "completed"
    bar.close()
    return state


def steps_per_epoch(num_batches: int, grad_accum_steps: int) -> int:
    # Accelerate syncs at the end of the dataloader, so a trailing partial group is one more step.
    return math.ceil(num_batches / grad_accum_steps)
