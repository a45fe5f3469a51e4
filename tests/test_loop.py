"""``fit`` on a stub model: the loop's schedule (evaluations, checkpoints, logs, stops) for many plans in
seconds. The real model runs through the same loop in test_schedule.py and test_training_behaviour.py."""

from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader

from textft.config import TrainConfig
from textft.loop import BestModel, LoopState, TrainLog, fit, steps_per_epoch
from textft.recipe import Plan
from textft.tasks.single_label import SingleLabel

CROSS_ENTROPY = SingleLabel(["a", "b"]).loss_fn(TrainConfig(), [0, 1])


class StubModel(nn.Module):
    """Mean of token embeddings → 2 logits: enough to have gradients, an optimizer and a scheduler."""

    def __init__(self):
        super().__init__()
        self.embed = nn.EmbeddingBag(16, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, input_ids, attention_mask):
        return SimpleNamespace(logits=self.head(self.embed(input_ids, per_sample_weights=None)))


def examples(n: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(0, 16, (6,), generator=g), "label": i % 2} for i in range(n)]


def collate(rows):
    ids = torch.stack([r["input_ids"] for r in rows])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([r["label"] for r in rows])}


class Scripted:
    """Validation metrics from a script of macro-F1 values (then the last one again)."""

    def __init__(self, values):
        self.values, self.calls = list(values), 0

    def __call__(self):
        value = self.values[min(self.calls, len(self.values) - 1)]
        self.calls += 1
        return {"accuracy": value, "macro_f1": value, "loss": 1 - value}


def run_fit(tmp_path, n_examples=50, batch_size=2, accum=1, scores=(0.5,), **plan_kw):
    """Train the stub for a plan; returns (state, plan, checkpoint steps, saved-best steps)."""
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=accum)
    model = StubModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(examples(n_examples), batch_size=batch_size, collate_fn=collate)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    plan_kw.setdefault("total_steps", steps_per_epoch(len(loader), accum))
    plan = Plan(steps_per_epoch=steps_per_epoch(len(loader), accum), **plan_kw)
    state, checkpoints, saved = LoopState(), [], []
    best = BestModel(plan, state, lambda info: saved.append(info["step"]))
    fit(accelerator, model, optimizer, scheduler, loader, state, plan, loss_fn=CROSS_ENTROPY,
        evaluate=Scripted(scores), best=best, checkpoint=lambda: checkpoints.append(state.step),
        train_log=TrainLog(accelerator, state, len(loader), tmp_path / "train_log.jsonl"))
    return state, plan, checkpoints, saved


def evals(state) -> list[int]:
    return [r["step"] for r in state.history if "eval" in r]


@pytest.mark.parametrize("n,batch,accum,every,total", [
    (50, 2, 1, 0, 60),     # epoch ends only
    (50, 2, 2, 4, 30),     # 25 batches: 13 steps an epoch, the last one a single batch; final step mid-epoch
    (50, 2, 3, 5, 20),     # 9 steps an epoch (the last of one batch); cadence and epoch ends interleave
    (40, 4, 1, 10, 10),    # the last step is an epoch end and on the cadence at once
    (40, 4, 4, 1, 7),      # evaluate every step; 3 steps an epoch
])
def test_the_loop_evaluates_and_checkpoints_at_the_planned_steps(tmp_path, n, batch, accum, every, total):
    state, plan, checkpoints, _ = run_fit(tmp_path, n, batch, accum, eval_every_steps=every, total_steps=total,
                                          save_every_steps=3, save_every_epoch=True)
    assert state.step == total and state.stop_reason == "completed"
    assert evals(state) == plan.evaluation_steps()
    assert checkpoints == [s for s in range(1, total + 1) if plan.checkpoints_at(s)]
    assert total not in checkpoints
    # epochs in the log: whole at epoch ends, fractions of the batches in between
    epochs = {r["step"]: r["epoch"] for r in state.history if "eval" in r}
    assert all(epochs[s] == s // plan.steps_per_epoch for s in epochs if plan.epoch_ends_at(s))


def test_early_stopping_stops_at_the_evaluation_that_runs_out_of_patience(tmp_path):
    # best at the second evaluation, then two without improvement
    state, plan, checkpoints, saved = run_fit(tmp_path, eval_every_steps=5, total_steps=50, patience=2,
                                              save_every_steps=5, scores=[0.5, 0.7, 0.6, 0.65, 0.9])
    assert state.stop_reason == "early_stopping" and state.step == 20
    assert evals(state) == [5, 10, 15, 20] and saved == [5, 10] and state.best_step == 10
    assert checkpoints == [5, 10, 15]  # none at the stop


def test_early_stopping_waits_for_the_minimum_steps(tmp_path):
    state, *_ = run_fit(tmp_path, eval_every_steps=5, total_steps=50, patience=1, min_steps_before_stopping=30,
                        scores=[0.9, 0.1])
    assert state.stop_reason == "early_stopping" and evals(state) == [5, 10, 15, 20, 25, 30]


def test_the_time_budget_stops_after_a_step_and_evaluates_it_once(tmp_path):
    state, plan, checkpoints, _ = run_fit(tmp_path, eval_every_steps=1, total_steps=50, time_budget_s=1e-9,
                                          save_every_steps=1)
    assert state.stop_reason == "time_budget" and state.step == 1
    assert evals(state) == [1] and checkpoints == []


def test_logs_every_logging_steps_and_at_the_end(tmp_path):
    state, *_ = run_fit(tmp_path, total_steps=23, logging_steps=5)
    train = [r for r in state.history if "loss" in r and "eval" not in r]
    assert [r["step"] for r in train] == [5, 10, 15, 20, 23]
    assert all(r["samples_per_s"] > 0 and r["tokens_per_s"] > 0 and r["lr"] == 0.1 for r in train)
    lines = (tmp_path / "train_log.jsonl").read_text().splitlines()
    assert len(lines) == len(state.history)


def test_an_on_evaluate_exception_ends_the_run(tmp_path):
    class Pruned(Exception):
        pass

    seen = []

    def hook(step, epoch, metrics):
        seen.append((step, epoch))
        if step >= 10:
            raise Pruned

    accelerator = Accelerator(cpu=True)
    model = StubModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(examples(20), batch_size=2, collate_fn=collate)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    state, plan = LoopState(), Plan(total_steps=40, steps_per_epoch=10)
    with pytest.raises(Pruned):
        fit(accelerator, model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0), loader, state,
            plan, loss_fn=CROSS_ENTROPY, evaluate=Scripted([0.5]), best=BestModel(plan, state, lambda i: None),
            checkpoint=lambda: None, train_log=TrainLog(accelerator, state, len(loader), None), on_evaluate=hook)
    assert seen == [(10, 1.0)] and state.step == 10
