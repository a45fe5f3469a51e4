"""The training loop and batched prediction, both rank-aware through Accelerate.

``fit`` reads top to bottom: each batch runs forward and backward under ``accumulate``; each
optimizer step clips, steps, schedules, logs, evaluates and keeps the best model, and checkpoints,
at the steps the ``Plan`` names. The small objects above it do one thing each: ``Evaluator`` scores
a split, ``BestModel`` selects the best weights and decides early stopping, ``GradualUnfreezing``
holds back the layers not yet released, ``TrainLog`` records, ``Throughput`` measures.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from textft.modeling import frozen_by_schedule, layer_depths, unfrozen_depth
from textft.recipe import Plan
from textft.run_events import (BestRecord, EndRecord, EvalRecord, PlanRecord, Record, TrainRecord, to_dict,
                               to_line)

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


def steps_per_epoch(num_batches: int, grad_accum_steps: int) -> int:
    # Accelerate syncs at the end of the dataloader, so a trailing partial group is one more step.
    return math.ceil(num_batches / grad_accum_steps)


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


class Evaluator:
    """Scores a split (validation by default) with the model as it is now, on every process; the task
    (textft.tasks) turns logits and labels into its metrics."""

    def __init__(self, accelerator: Accelerator, model, loaders: dict, task):
        self.accelerator, self.model, self.loaders, self.task = accelerator, model, loaders, task

    def logits(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        return predict_logits(self.accelerator, self.model, self.loaders[split])

    def __call__(self, split: str = "validation") -> dict:
        return self.task.evaluate(*self.logits(split))


def improved(value: float | None, best: float | None, lower_is_better: bool, min_delta: float) -> bool:
    if value is None or math.isnan(value):  # an undefined score (a correlation of constant predictions)
        return False
    if best is None:
        return True
    return value < best - min_delta if lower_is_better else value > best + min_delta


class BestModel:
    """Keeps the weights of the best validation result (through ``save(info)``) and stops the run
    after ``plan.patience`` evaluations without improvement; its state lives in ``LoopState`` so
    that a resumed run carries on counting."""

    def __init__(self, plan: Plan, state: LoopState, save: Callable[[dict], None]):
        self.plan, self.state, self.save = plan, state, save

    def update(self, metrics: dict, epoch: float) -> bool:
        """Whether these metrics make a new best model (then saved)."""
        plan, state = self.plan, self.state
        value = metrics[plan.metric]
        if improved(value, state.best_value, plan.lower_is_better, plan.min_delta):
            state.best_value, state.best_step, state.best_epoch, state.bad_evals = value, state.step, epoch, 0
            self.save({"step": state.step, "epoch": epoch, "metric": plan.metric, "value": value})
            return True
        state.bad_evals += 1
        if plan.patience and state.bad_evals >= plan.patience and state.step >= plan.min_steps_before_stopping:
            state.stop_reason = "early_stopping"
        return False


class GradualUnfreezing:
    """ULMFiT's schedule: the head first, then one more layer from the top every ``every_epochs``.

    Called before each optimizer step, it drops the gradients of the parameters still frozen
    (AdamW skips a parameter without a gradient: no update, no weight decay). Every parameter stays
    trainable, because changing requires_grad mid-run would desynchronise DDP.
    """

    def __init__(self, model, every_epochs: float, batches_per_epoch: int):
        self.model, self.every, self.batches = model, every_epochs, batches_per_epoch
        self.head_depth = max(layer_depths(model).values())
        self.frozen: dict[int, list[torch.Tensor]] = {}

    def __call__(self, state: LoopState) -> None:
        # Progress when this step's first batch started, so an epoch's last step is still in that epoch.
        progress = state.epoch + (state.batches_in_epoch - 1) / self.batches
        lowest = unfrozen_depth(progress, self.every, self.head_depth)
        if lowest not in self.frozen:
            self.frozen[lowest] = frozen_by_schedule(self.model, lowest)
            log.info("gradual unfreezing at step %d: training depth >= %d of %d", state.step, lowest, self.head_depth)
        for p in self.frozen[lowest]:
            p.grad = None


class TrainLog:
    """The run's records (``textft.run_events``): kept in ``LoopState.history`` (so a resumed run has
    them), appended to ``train_log.jsonl`` by the main process and sent to the trackers."""

    def __init__(self, accelerator: Accelerator, state: LoopState, batches_per_epoch: int, path: Path | None):
        self.accelerator, self.state, self.batches, self.path = accelerator, state, batches_per_epoch, path

    def restart(self, plan: PlanRecord | None = None) -> None:
        """The file holds the plan, then exactly the records of the state: none for a fresh start (a
        run in the same directory before it is not continued), those up to the checkpoint for a resumed one."""
        if self.accelerator.is_main_process and self.path is not None:
            lines = [to_line(plan)] if plan is not None else []
            self.path.write_text("".join(lines + [json.dumps(e) + "\n" for e in self.state.history]))

    def epoch(self) -> float:
        return round(self.state.epoch + self.state.batches_in_epoch / self.batches, 4)

    def record(self, record: Record) -> dict:
        entry = to_dict(record)
        self.state.history.append(entry)
        if isinstance(record, (TrainRecord, EvalRecord)):
            values = record.eval if isinstance(record, EvalRecord) else \
                {k: entry[k] for k in ("loss", "lr", "samples_per_s")}
            prefix = "eval" if isinstance(record, EvalRecord) else "train"
            self.accelerator.log({f"{prefix}/{k}": v for k, v in values.items() if isinstance(v, (int, float))},
                                 step=self.state.step)
        if self.accelerator.is_main_process and self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(entry) + "\n")
        return entry

    def train(self, values: dict) -> dict:
        return self.record(TrainRecord(step=self.state.step, epoch=self.epoch(), **values))

    def evaluation(self, metrics: dict) -> dict:
        return self.record(EvalRecord(step=self.state.step, epoch=self.epoch(), eval=metrics))

    def best(self, plan: Plan, value: float) -> dict:
        return self.record(BestRecord(step=self.state.step, epoch=self.epoch(), metric=plan.metric, value=value,
                                      lower_is_better=plan.lower_is_better))

    def end(self) -> dict:
        state = self.state
        return self.record(EndRecord(step=state.step, epoch=self.epoch(), stop_reason=state.stop_reason,
                                     seconds=round(state.seconds, 2), best_step=state.best_step))


class Throughput:
    """Loss and samples/tokens per second over the steps since the last ``take``, evaluation excluded."""

    def __init__(self, accelerator: Accelerator):
        self.accelerator = accelerator
        self.window = torch.zeros(4, device=accelerator.device)  # loss, batches, samples, tokens
        self.t0 = time.perf_counter()

    def add(self, loss: torch.Tensor, labels: torch.Tensor, batch: dict) -> None:
        one = torch.ones_like(self.window[0])
        # a padding-free batch has no mask: every token in its one row is a text's
        tokens = batch["attention_mask"].sum() if "attention_mask" in batch else batch["input_ids"].numel() * one
        self.window += torch.stack([loss.float(), one, one * labels.shape[0], tokens.float()])

    @contextlib.contextmanager
    def paused(self):
        start = time.perf_counter()
        yield
        self.t0 += time.perf_counter() - start

    def take(self) -> dict:
        loss_sum, n_batches, samples, tokens = self.accelerator.reduce(self.window, "sum").tolist()
        seconds = time.perf_counter() - self.t0
        self.window, self.t0 = torch.zeros_like(self.window), time.perf_counter()
        return {"loss": loss_sum / max(1, n_batches), "samples_per_s": samples / seconds,
                "tokens_per_s": tokens / seconds}


def train_batch(accelerator: Accelerator, model, optimizer, batch: dict, loss_fn: Callable, max_grad_norm: float,
                before_optimizer_step: Callable[[], None] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and backward of one batch; the optimizer steps when the accumulation group is complete."""
    with accelerator.accumulate(model):
        labels = batch.pop("labels")
        loss = loss_fn(model(**batch).logits, labels)
        accelerator.backward(loss)
        if accelerator.sync_gradients:
            if before_optimizer_step is not None:
                before_optimizer_step()
            if max_grad_norm > 0:
                accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return loss.detach(), labels


def fit(accelerator: Accelerator, model, optimizer, scheduler, loader, state: LoopState, plan: Plan, *,
        loss_fn: Callable, evaluate: Callable[[], dict], best: BestModel, checkpoint: Callable[[], None],
        train_log: TrainLog, unfreeze: GradualUnfreezing | None = None,
        on_evaluate: Callable[[int, float, dict], None] | None = None,
        stop: Callable[[LoopState], None] | None = None,
        describe: Callable[[dict], str] | None = None) -> LoopState:
    """Train for ``plan.total_steps`` optimizer steps, or until early stopping or the time budget.

    ``on_evaluate(step, epoch, metrics)`` sees every validation result; an exception it raises
    (e.g. a pruned hyper-parameter trial) ends the run. ``stop(state)`` runs after every optimizer
    step (and its checkpoint); it ends the run by raising. ``describe(metrics)`` words them for the log.
    """
    describe = describe or (lambda m: f"{plan.metric} {m.get(plan.metric)}")
    bar = tqdm(total=plan.total_steps, initial=state.step, disable=not accelerator.is_main_process, desc="train",
               dynamic_ncols=True)
    throughput, started = Throughput(accelerator), time.perf_counter() - state.seconds
    before_step = (lambda: unfreeze(state)) if unfreeze is not None else None
    model.train()
    while state.step < plan.total_steps and state.stop_reason is None:
        loader.set_epoch(state.epoch)
        # A resumed run skips exactly the batches its checkpoint had already trained on.
        batches = accelerator.skip_first_batches(loader, state.batches_in_epoch) if state.batches_in_epoch else loader
        for batch in batches:
            state.batches_in_epoch += 1
            loss, labels = train_batch(accelerator, model, optimizer, batch, loss_fn, plan.max_grad_norm, before_step)
            throughput.add(loss, labels, batch)
            if not accelerator.sync_gradients:
                continue
            # -- one optimizer step done ------------------------------------------------------
            if not accelerator.optimizer_step_was_skipped:
                scheduler.step()
            state.step += 1
            if state.batches_in_epoch == len(loader):
                state.epoch, state.batches_in_epoch = state.epoch + 1, 0
            state.seconds = time.perf_counter() - started
            bar.update(1)
            if plan.logs_at(state.step):
                entry = train_log.train({**throughput.take(), "lr": scheduler.get_last_lr()[-1]})
                bar.set_postfix(loss=f"{entry['loss']:.4f}", lr=f"{entry['lr']:.2e}")
            # Stop conditions, checked once per optimizer step: the step is complete, so evaluating,
            # keeping the best model and exporting are all safe from here.
            if plan.time_budget_s and state.seconds >= plan.time_budget_s:
                state.stop_reason = "time_budget"
            last = state.step >= plan.total_steps or state.stop_reason is not None
            if last or plan.evaluates_at(state.step):
                with throughput.paused():
                    metrics = evaluate()
                epoch = train_log.epoch()
                if on_evaluate is not None:
                    on_evaluate(state.step, epoch, metrics)
                train_log.evaluation(metrics)
                log.info("eval at step %d: %s", state.step, describe(metrics))
                if best.update(metrics, epoch):  # the record names exactly the weights that are exported
                    train_log.best(plan, metrics[plan.metric])
            finished = last or state.stop_reason is not None
            if not finished and plan.checkpoints_at(state.step):
                checkpoint()
            if stop is not None:  # a stop signal ends the run here, not after a final evaluation and export
                stop(state)
            if finished:
                break
    state.stop_reason = state.stop_reason or "completed"
    train_log.end()
    bar.close()
    return state
