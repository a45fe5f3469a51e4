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
    """Counters that make a run resumable; saved with every checkpoint."""

    step: int = 0
    """Optimizer steps done."""
    epoch: int = 0
    """Epoch in progress (0-based)."""
    history: list[dict] = field(default_factory=list)
    """Logged training and evaluation records."""

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


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


def fit(accelerator: Accelerator, model, optimizer, scheduler, train_loader, *, total_steps: int,
        loss_fn: Callable, evaluate: Callable[[], dict], state: LoopState, max_grad_norm: float,
        logging_steps: int, eval_every_steps: int = 0, log_file: Path | None = None) -> LoopState:
    """Train until ``total_steps`` optimizer steps; ``evaluate()`` after each epoch (and every N steps)."""
    main = accelerator.is_main_process
    bar = tqdm(total=total_steps, initial=state.step, disable=not main, desc="train", dynamic_ncols=True)
    # Running sums stay on the device: reading them every step would stall a GPU.
    zeros = lambda: torch.zeros(4, device=accelerator.device)  # noqa: E731  loss, batches, samples, tokens
    window, t0 = zeros(), time.perf_counter()

    def timed_eval() -> dict:
        nonlocal t0
        start = time.perf_counter()
        result = evaluate()
        t0 += time.perf_counter() - start  # evaluation time is not training throughput
        return result

    def record(entry: dict) -> None:
        entry = {"step": state.step, "epoch": round(state.epoch + epoch_progress(), 4), **entry}
        state.history.append(entry)
        if main and "eval" in entry:
            m = entry["eval"]
            log.info("eval at step %d (epoch %.2f): accuracy %.4f  macro-F1 %.4f  loss %.4f", entry["step"],
                     entry["epoch"], m["accuracy"], m["macro_f1"], m["loss"])
        if main and log_file is not None:
            with open(log_file, "a") as f:
                f.write(json.dumps(entry) + "\n")

    def epoch_progress() -> float:
        return min(1.0, batches_seen / max(1, len(train_loader)))

    model.train()
    while state.step < total_steps:
        train_loader.set_epoch(state.epoch)
        batches_seen = 0
        for batch in train_loader:
            batches_seen += 1
            with accelerator.accumulate(model):
                labels = batch.pop("labels")
                loss = loss_fn(model(**batch).logits, labels)
                accelerator.backward(loss)
                if accelerator.sync_gradients and max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            window += torch.stack([loss.detach().float(), torch.ones((), device=window.device),
                                   torch.tensor(float(labels.numel()), device=window.device),
                                   batch["attention_mask"].sum().float()])
            if not accelerator.sync_gradients:
                continue
            if not accelerator.optimizer_step_was_skipped:
                scheduler.step()
            state.step += 1
            bar.update(1)
            if state.step % logging_steps == 0 or state.step == total_steps:
                loss_sum, batches, samples, tokens = accelerator.reduce(window, "sum").tolist()
                seconds = time.perf_counter() - t0
                entry = {"loss": loss_sum / max(1, batches), "lr": scheduler.get_last_lr()[-1],
                         "samples_per_s": samples / seconds, "tokens_per_s": tokens / seconds}
                record(entry)
                bar.set_postfix(loss=f"{entry['loss']:.4f}", lr=f"{entry['lr']:.2e}")
                window, t0 = zeros(), time.perf_counter()
            if eval_every_steps and state.step % eval_every_steps == 0 and state.step < total_steps:
                record({"eval": timed_eval()})
            if state.step >= total_steps:
                break
        record({"eval": timed_eval(), "end_of_epoch": batches_seen == len(train_loader)})
        state.epoch += 1
    bar.close()
    return state


def steps_per_epoch(num_batches: int, grad_accum_steps: int) -> int:
    # Accelerate syncs at the end of the dataloader, so a trailing partial group is one more step.
    return math.ceil(num_batches / grad_accum_steps)
