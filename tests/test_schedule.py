"""The schedule the recipe plans is the one the loop runs: evaluation and checkpoint steps of real tiny
runs against the plan, with grad accumulation (a partial last group), a final mid-epoch step and an
early stop."""

import json
from pathlib import Path

import pytest

from textft.config import load_config
from textft.recipe import Plan
from textft.train import main, train

# 400 examples / batch 16 = 25 batches = 13 optimizer steps per epoch at 2 batches a step (the 13th
# step has one batch). 2.5 epochs = 32 steps: the last one falls in the middle of the third epoch,
# and on the evaluation (and checkpoint) cadence of 4.
SCHEDULE = ["train.grad_accum_steps=2", "train.epochs=2.5", "train.eval_every_steps=4", "train.save_every_steps=4",
            "train.keep_checkpoints=50", "train.logging_steps=1"]


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def eval_steps(out: Path) -> list[int]:
    return [r["step"] for r in records(out) if "eval" in r]


def checkpoint_steps(out: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("step-*"))


def run(tiny_args, out, *extra):
    return train(load_config(None, [*tiny_args[:-1], *SCHEDULE, *extra, f"output.dir={out}"]))


def planned(out: Path) -> Plan:
    """The plan of a finished run, rebuilt from the config it saved."""
    return Plan.from_config(load_config(out / "textft_config.yaml").train, steps_per_epoch=13)


def test_the_loop_evaluates_exactly_at_the_planned_steps(tiny_args, tmp_path):
    out = tmp_path / "full"
    run(tiny_args, out)
    plan = planned(out)
    assert plan.evaluation_steps() == [4, 8, 12, 13, 16, 20, 24, 26, 28, 32]
    planned_steps = plan.evaluation_steps()
    assert eval_steps(out) == planned_steps  # the final mid-epoch step once, not twice
    # epochs of the evaluations: the epoch ends are whole, the others fractions of 25 batches
    epochs = {r["step"]: r["epoch"] for r in records(out) if "eval" in r}
    assert (epochs[13], epochs[26], epochs[4], epochs[32]) == (1.0, 2.0, 0.32, 2.48)
    # a resumable checkpoint every 4 steps, but none at the last step: the model is exported then
    assert checkpoint_steps(out) == [4, 8, 12, 16, 20, 24, 28]
    report = json.loads((out / "eval_report.json").read_text())
    assert report["optimizer_steps"] == 32 and report["stop_reason"] == "completed"


def test_an_early_stop_ends_the_plan_without_a_checkpoint(tiny_args, tmp_path):
    out = tmp_path / "early"
    # No later evaluation can beat the first by 10: the second one stops the run.
    run(tiny_args, out, "train.early_stopping_patience=1", "train.early_stopping_min_delta=10",
        "train.metric_for_best=loss")
    assert eval_steps(out) == planned(out).evaluation_steps()[:2] == [4, 8]
    assert checkpoint_steps(out) == [4]  # nothing written after the stop
    report = json.loads((out / "eval_report.json").read_text())
    assert report["stop_reason"] == "early_stopping" and report["optimizer_steps"] == 8
    assert report["best"]["step"] == 4
    # The log says the same as data: the plan first, the loop's best (the second evaluation improves the
    # loss, but not by min_delta: no best record), how it ended.
    log = records(out)
    plan, end = log[0], log[-1]
    assert (plan["event"], plan["total_steps"], plan["steps_per_epoch"], plan["global_batch"], plan["eval_every_steps"],
            plan["metric"], plan["lower_is_better"], plan["task"], plan["min_delta"]) == \
        ("plan", 32, 13, 32, 4, "loss", True, "single_label", 10)
    assert [(r["step"], r["metric"], r["value"]) for r in log if r["event"] == "best"] == \
        [(4, "loss", report["best"]["value"])]
    assert (end["event"], end["stop_reason"], end["step"], end["best_step"]) == ("end", "early_stopping", 8, 4)


def test_resuming_a_finished_run_without_checkpoints_starts_a_fresh_log(tiny_args, tmp_path):
    out = Path(tiny_args[-1].split("=", 1)[1])
    assert main([*tiny_args, "train.max_steps=5"]) == 0
    first = records(out)
    assert main([*tiny_args, "train.max_steps=5", "train.resume_from=latest"]) == 0
    again = records(out)
    steps = [r["step"] for r in again if "loss" in r]
    assert steps == sorted(set(steps)) and len(again) == len(first)  # one run's records, not two runs' appended


@pytest.mark.parametrize("every,per_epoch,total,expected", [
    (0, 13, 32, [13, 26, 32]), (4, 13, 32, [4, 8, 12, 13, 16, 20, 24, 26, 28, 32]), (5, 5, 10, [5, 10]),
    (0, 25, 25, [25]), (7, 3, 8, [3, 6, 7, 8])])
def test_planned_evaluation_steps_are_the_steps_the_loop_asks_about(every, per_epoch, total, expected):
    plan = Plan(total_steps=total, steps_per_epoch=per_epoch, eval_every_steps=every)
    assert plan.evaluation_steps() == expected
    assert [s for s in range(1, total + 1) if plan.evaluates_at(s)] == expected


def test_checkpoints_are_planned_before_the_last_step_only():
    plan = Plan(total_steps=10, steps_per_epoch=4, save_every_steps=5, save_every_epoch=True)
    assert [s for s in range(1, 11) if plan.checkpoints_at(s)] == [4, 5, 8]
