"""The schedule of a run: training settings left at ``auto`` resolved from the backbone and the data,
and the ``Plan`` the training loop executes.

``resolve`` replaces every ``auto`` with a number and says why; the reasons go to the log, to the
saved ``textft_config.yaml`` (as comments) and to the run report. The constants are anchored on
measurements kept in ``benchmarks/recipes.md``. ``Plan`` holds the step arithmetic (when to log,
evaluate, checkpoint and stop) in one place: the recipe counts evaluations with it and the loop asks
it at every step, so the two cannot disagree.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING


from textft.config import AUTO, Config, TrainConfig
from textft.errors import UserError
from textft.run_events import PlanRecord
from textft.tasks import DEFAULT_TASK, LOWER_IS_BETTER, TASKS, task_class

if TYPE_CHECKING:  # the service reads Facts without loading torch
    from torch import nn

REFERENCE_LR = 2e-4
"""Best encoder lr measured for all-MiniLM-L6-v2 (Banking77 and IMDB grids, benchmarks/recipes.md)."""
REFERENCE_PARAMS = 10.6e6
"""Non-embedding parameters of all-MiniLM-L6-v2, the backbone REFERENCE_LR was measured on."""
LARGE_LR, LARGE_PARAMS = 3e-5, 85e6
"""bert-base: the middle of the 2e-5..5e-5 grid its authors searched (Devlin et al. 2019), which later
fine-tuning studies confirm; the second anchor of the size rule."""
LR_EXPONENT = math.log(REFERENCE_LR / LARGE_LR) / math.log(LARGE_PARAMS / REFERENCE_PARAMS)
"""lr falls as (non-embedding parameters)^-LR_EXPONENT between and beyond the two anchors (about 0.92)."""
LR_RANGE = (1e-5, 1e-3)
HEAD_LR_MULTIPLIER = 10.0
"""A freshly initialised head needs bigger steps than the pretrained encoder under it (Banking77,
MiniLM, lr 1e-4, 2 epochs: head at 3x 0.876, 10x 0.922 validation accuracy; benchmarks/recipes.md)."""
LORA_LR_MULTIPLIER = 10.0
"""LoRA adapters' lr over the full fine-tuning lr of the same encoder (MiniLM, Banking77 and IMDB grids,
benchmarks/recipes.md)."""
LORA_MAX_LR = 1e-2
LORA_STEPS_FACTOR = 1.5
"""An auto-length LoRA run takes this many times the steps of full fine-tuning (Banking77, MiniLM, lr 2e-3:
564 steps 0.925, 846 steps 0.931 validation accuracy; full fine-tuning gained nothing from a third pass)."""
MIN_STEPS = 150
"""Fewest optimizer steps an auto-length run takes, whatever the dataset size."""
STEPS_PER_CLASS = 8
"""More classes need more steps to train every row of the head (Banking77: ~600 steps for 77)."""
PAIRS_MIN_EPOCHS = 3.0
"""Fewest passes an auto-length run on text pairs takes: whether two texts say the same thing is learnt
more slowly than what one text is about (MRPC, 3,667 pairs: 150 steps ended at accuracy 0.777; the best
pass of longer runs was the third, 0.809-0.811, the fourth over-fits; benchmarks/recipes.md)."""
MAX_EPOCHS = 20.0
"""Upper bound for tiny datasets, where the minimum step count would mean hundreds of passes."""
EVAL_SHARE = 0.15
"""Largest share of the run's compute spent on validation passes when picking the cadence."""
MAX_EVALS = 10
PATIENCE = 3
"""Evaluations without improvement before an auto-length run stops (when it evaluates often enough)."""
MIN_EVALS_FOR_PATIENCE = 6
FEW_SHOT_MAX_PER_CLASS = 16
"""``model.transfer=auto`` picks few_shot up to this many training examples per class (median), the
largest size benchmarks/few_shot.py measures (BENCHMARKS.md, "Few examples per intent")."""


@dataclass
class Facts:
    """What the recipe looks at: the backbone and the data, known once both are loaded."""

    non_embedding_params: int
    fresh_head: bool
    """The classification head has no trained weights (it was missing or had another shape)."""
    pretrained_encoder: bool
    n_train: int
    n_validation: int
    num_labels: int
    global_batch: int
    """Examples per optimizer step over all processes and accumulation steps."""
    steps_per_epoch: int
    """Optimizer steps in one pass over the (sharded) training loader, a partial last group included."""
    task: str = DEFAULT_TASK
    """What a label is (textft.tasks): single_label, multi_label or regression."""
    default_metric: str = "macro_f1"
    """The task's validation metric for picking the best model, when train.metric_for_best is auto."""
    pairs: bool = False
    """Each example is a pair of texts read together (data.text_pair_column)."""
    examples_per_class: float | None = None
    """Median training examples per class (single_label; None for other tasks)."""


@dataclass(frozen=True)
class Plan:
    """How long and how to train: the loop's fixed inputs besides model and data.

    An epoch is ``steps_per_epoch`` optimizer steps (Accelerate syncs at the end of the loader, so a
    partial last accumulation group is one more step). The loop evaluates once at each step that
    ``evaluates_at`` names, and at the step where it stops early (early stopping, time budget).
    """

    total_steps: int
    steps_per_epoch: int
    eval_every_steps: int = 0
    save_every_steps: int = 0
    save_every_epoch: bool = False
    logging_steps: int = 10
    max_grad_norm: float = 1.0
    metric: str = "macro_f1"
    patience: int = 0
    min_steps_before_stopping: int = 0
    min_delta: float = 0.0
    time_budget_s: float | None = None

    @classmethod
    def from_config(cls, t: TrainConfig, steps_per_epoch: int) -> "Plan":
        """The plan of a resolved training config (no ``auto`` left)."""
        return cls(total_steps=total_steps(t, steps_per_epoch),
                   steps_per_epoch=steps_per_epoch, eval_every_steps=t.eval_every_steps,
                   save_every_steps=t.save_every_steps, save_every_epoch=t.save_every_epoch,
                   logging_steps=t.logging_steps, max_grad_norm=t.max_grad_norm, metric=t.metric_for_best,
                   patience=t.early_stopping_patience, min_steps_before_stopping=t.early_stopping_min_steps,
                   min_delta=t.early_stopping_min_delta, time_budget_s=t.time_budget_s)

    @property
    def lower_is_better(self) -> bool:
        return self.metric in LOWER_IS_BETTER

    def record(self, global_batch: int, task: str, step: int = 0) -> PlanRecord:
        """The plan as the first record of ``train_log.jsonl``, with the run's global batch and task
        (``step``: where a resumed run starts)."""
        return PlanRecord(total_steps=self.total_steps, steps_per_epoch=self.steps_per_epoch,
                          global_batch=global_batch, task=task, metric=self.metric,
                          lower_is_better=self.lower_is_better, eval_every_steps=self.eval_every_steps,
                          patience=self.patience, min_delta=self.min_delta, time_budget_s=self.time_budget_s,
                          step=step)

    def epoch_ends_at(self, step: int) -> bool:
        return step % self.steps_per_epoch == 0

    def logs_at(self, step: int) -> bool:
        return step % self.logging_steps == 0 or step == self.total_steps

    def evaluates_at(self, step: int) -> bool:
        """Every ``eval_every_steps`` steps, at each epoch end and at the last step."""
        return step == self.total_steps or self.epoch_ends_at(step) or \
            bool(self.eval_every_steps and step % self.eval_every_steps == 0)

    def checkpoints_at(self, step: int) -> bool:
        """Every ``save_every_steps`` steps and (with ``save_every_epoch``) at each epoch end, but not at
        the last step: the model is exported then."""
        return step < self.total_steps and (bool(self.save_every_steps and step % self.save_every_steps == 0)
                                            or (self.save_every_epoch and self.epoch_ends_at(step)))

    def evaluation_steps(self) -> list[int]:
        """Every step ``evaluates_at`` names, in order: the steps the loop evaluates at when it runs to the end."""
        steps = set(range(self.steps_per_epoch, self.total_steps, self.steps_per_epoch)) | {self.total_steps}
        if self.eval_every_steps:
            steps |= set(range(self.eval_every_steps, self.total_steps, self.eval_every_steps))
        return sorted(steps)


def non_embedding_params(model: nn.Module) -> int:
    """Parameters outside the embedding tables and the head: what the encoder's depth and width cost."""
    from textft.modeling import layer_depths

    depths = layer_depths(model)
    head = max(depths.values())
    return sum(p.numel() for name, p in model.named_parameters() if 0 < depths[name] < head)


def head_is_fresh(model: nn.Module, initialised_here: set[str]) -> bool:
    """Whether any head parameter was initialised here rather than loaded from the checkpoint."""
    from textft.modeling import layer_depths

    depths = layer_depths(model)
    head = max(depths.values())
    return any(depths.get(name) == head for name in initialised_here)


def count_evaluations(total_steps: int, every: int, per_epoch: int) -> int:
    """``len(Plan(...).evaluation_steps())``, counted rather than listed: the multiples of the epoch
    length and of ``every`` below the last step (those of both once), plus the last step. Nothing
    here grows with the step count, however large a request makes it."""
    def below(m: int) -> int:
        return (total_steps - 1) // m

    count = below(per_epoch) + 1
    if every:
        count += below(every) - below(math.lcm(every, per_epoch))
    return count


def _count(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 100_000 else f"{n:,}"


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def total_steps(t: TrainConfig, steps_per_epoch: int) -> int:
    """Optimizer steps of the run: ``max_steps``, else ``epochs`` passes (rounded, at least one step)."""
    return t.max_steps or max(1, round(t.epochs * steps_per_epoch))


def full_fine_tuning_lr(non_embedding: int) -> tuple[float, str]:
    """The encoder lr of full fine-tuning for an encoder of this size, and why."""
    raw = REFERENCE_LR * (REFERENCE_PARAMS / max(1, non_embedding)) ** LR_EXPONENT
    lr = float(f"{min(max(raw, LR_RANGE[0]), LR_RANGE[1]):.2g}")
    return lr, (f"{_count(non_embedding)} non-embedding parameters, on the line through MiniLM"
                f" ({REFERENCE_PARAMS / 1e6:.1f}M: {_fmt(REFERENCE_LR)}, measured) and bert-base"
                f" ({LARGE_PARAMS / 1e6:.0f}M: {_fmt(LARGE_LR)}); lr ~ params^-{LR_EXPONENT:.2f}"
                + (f", clipped to [{_fmt(LR_RANGE[0])}, {_fmt(LR_RANGE[1])}]"
                   if not LR_RANGE[0] <= raw <= LR_RANGE[1] else ""))


def _learning_rates(t: TrainConfig, facts: Facts, lora: bool, values: dict, why: dict) -> None:
    lr, full_why = full_fine_tuning_lr(facts.non_embedding_params)
    full_lr = lr
    if t.lr == AUTO:
        why["train.lr"] = full_why
        if lora:
            lr = float(f"{min(LORA_LR_MULTIPLIER * full_lr, LORA_MAX_LR):.2g}")
            why["train.lr"] = (f"LoRA: {LORA_LR_MULTIPLIER:g} x {_fmt(full_lr)}, the full fine-tuning lr of this"
                               f" encoder ({full_why}); the adapters start at zero and move the weights through"
                               " a low-rank product, so they need larger steps (benchmarks/recipes.md)")
        values["lr"] = lr
    else:
        lr = t.lr
    if t.head_lr == AUTO:
        if facts.fresh_head and facts.pretrained_encoder and lora:
            values["head_lr"] = float(f"{HEAD_LR_MULTIPLIER * full_lr:.2g}")
            why["train.head_lr"] = (f"{HEAD_LR_MULTIPLIER:g} x {_fmt(full_lr)} (the full fine-tuning lr): the"
                                    f" {facts.num_labels}-way head is freshly initialised and trained in full, as"
                                    " under full fine-tuning")
        elif facts.fresh_head and facts.pretrained_encoder:
            values["head_lr"] = float(f"{HEAD_LR_MULTIPLIER * lr:.2g}")
            why["train.head_lr"] = (f"{HEAD_LR_MULTIPLIER:g} x lr: the {facts.num_labels}-way head is freshly"
                                    " initialised on a pretrained encoder")
        else:
            values["head_lr"] = lr
            why["train.head_lr"] = ("= lr: the head was loaded with trained weights" if not facts.fresh_head
                                    else "= lr: the whole model starts from random weights")


def _length(t: TrainConfig, facts: Facts, lora: bool, values: dict, why: dict) -> None:
    per_epoch = facts.steps_per_epoch
    if t.max_steps is not None:
        values["epochs"] = round(t.max_steps / per_epoch, 3)
        why["train.epochs"] = f"from train.max_steps={t.max_steps} at {per_epoch} steps per epoch"
        return
    # Every output row of the head needs its share of steps: a class, or a label of a multi-label
    # task (each a binary decision of its own); a regression head has one.
    steps = max(MIN_STEPS, STEPS_PER_CLASS * facts.num_labels)
    base_steps = steps
    if lora:
        steps = round(LORA_STEPS_FACTOR * steps)
    min_epochs, min_reason = min_passes(facts)
    epochs = min(max(steps / per_epoch, min_epochs), MAX_EPOCHS)
    values["epochs"] = round(epochs, 3)
    bound = (f" (at least {min_reason})" if epochs == min_epochs and steps < min_epochs * per_epoch
             else f" (capped at {MAX_EPOCHS:g})" if epochs == MAX_EPOCHS else "")
    outputs = task_class(facts.task).output_noun
    lora_why = (f" x {LORA_STEPS_FACTOR:g} under LoRA (the adapters start at zero and learn more slowly"
                f" than full fine-tuning)" if lora else "")
    why["train.epochs"] = (f"at least max({MIN_STEPS}, {STEPS_PER_CLASS} x {facts.num_labels} {outputs})"
                           f"{' = ' + str(base_steps) if lora else ''}{lora_why} = {steps} optimizer steps;"
                           f" {facts.n_train:,} examples / global batch {facts.global_batch} = {per_epoch} steps"
                           f" per epoch{bound}")


def min_passes(facts: Facts) -> tuple[float, str]:
    """The fewest passes over the training data an auto-length run makes, and why."""
    task = task_class(facts.task)
    passes = [(task.min_epochs, f"{task.min_epochs:g} passes: {task.min_epochs_reason}" if task.min_epochs > 1
               else task.min_epochs_reason)]
    if facts.pairs:
        passes.append((PAIRS_MIN_EPOCHS, f"{PAIRS_MIN_EPOCHS:g} passes: the examples are text pairs"))
    return max(passes, key=lambda p: p[0])  # on a tie the task's own reason is given


def _evaluation_cadence(total: int, facts: Facts, values: dict, why: dict) -> None:
    per_epoch = facts.steps_per_epoch
    # A validation pass costs about a third of a training pass over as many examples.
    seen = total * facts.global_batch
    budget = int(EVAL_SHARE * 3 * seen / max(1, facts.n_validation))
    n_evals = min(max(budget, 1), MAX_EVALS)
    # Epoch ends are evaluated anyway: widen the cadence until the total fits the budget.
    every = math.ceil(total / n_evals)
    while every < per_epoch and count_evaluations(total, every, per_epoch) > n_evals:
        every += 1
    every = every if every < per_epoch else 0
    count = count_evaluations(total, every, per_epoch)
    share = count * facts.n_validation / (3 * seen)
    values["eval_every_steps"] = every
    why["train.eval_every_steps"] = (
        f"{count} evaluation(s) of {facts.n_validation:,} validation examples"
        f"{' (epoch ends and the last step only)' if not every else ''}, about {share:.0%} of the compute"
        f" of {total} training steps (evaluations beyond the epoch ends are added while the total"
        f" stays under {EVAL_SHARE:.0%} and {MAX_EVALS} evaluations)")


def _early_stopping(t: TrainConfig, total: int, planned: int, length_is_auto: bool, few_shot: bool, n_validation: int,
                    values: dict, why: dict) -> None:
    if t.early_stopping_patience == AUTO:
        if few_shot:
            values["early_stopping_patience"] = 0
            why["train.early_stopping_patience"] = (
                f"off: the few-shot recipe trains its whole plan; {n_validation:,} validation examples of so few per"
                " class are too noisy to stop on (they ended Banking77 runs of 8 per intent at step 216 of 360)")
        elif length_is_auto and planned >= MIN_EVALS_FOR_PATIENCE:
            values["early_stopping_patience"] = PATIENCE
            why["train.early_stopping_patience"] = (f"stop after {PATIENCE} of the {planned} planned evaluations"
                                                    f" without a better validation {t.metric_for_best}")
        else:
            values["early_stopping_patience"] = 0
            why["train.early_stopping_patience"] = (
                "off: the training length was set explicitly" if not length_is_auto
                else f"off: only {planned} evaluation(s) planned")
    if t.early_stopping_min_steps == AUTO:
        if values.get("early_stopping_patience", t.early_stopping_patience) and length_is_auto:
            values["early_stopping_min_steps"] = total // 2
            why["train.early_stopping_min_steps"] = (f"half of the {total} planned steps: warmup and the"
                                                     " first half of the decay always run")
        else:
            values["early_stopping_min_steps"] = 0
            why["train.early_stopping_min_steps"] = "0: no constraint beyond the patience"


def few_shot_problem(facts: Facts) -> str | None:
    """Why the few-shot method cannot train this data, or None."""
    if not task_class(facts.task).one_class_per_text:
        able = " or ".join(name for name, cls in TASKS.items() if cls.one_class_per_text)
        return f"it needs one class per text ({able}), the data is {facts.task}"
    if facts.pairs:
        return "it compares single texts, the examples are text pairs"
    return None


def resolve_transfer(cfg: Config, facts: Facts, why: dict[str, str]) -> Config:
    """``cfg`` with ``model.transfer`` resolved: few_shot for few examples per class, else full; an
    explicit few_shot the data cannot use is refused."""
    transfer, problem = cfg.model.transfer, few_shot_problem(facts)
    if transfer == "few_shot" and problem:
        raise UserError(f"'model.transfer': few_shot cannot train this data: {problem}; use full", "model.transfer")
    if transfer != AUTO:
        return cfg
    per_class = facts.examples_per_class
    if problem:
        transfer, reason = "full", f"the few-shot method does not apply: {problem}"
    elif not facts.pretrained_encoder:
        transfer, reason = "full", "the encoder starts from random weights: there are no features to compare"
    elif per_class is not None and per_class <= FEW_SHOT_MAX_PER_CLASS:
        transfer, reason = "few_shot", (f"{per_class:g} training examples per class (median) <="
                                        f" {FEW_SHOT_MAX_PER_CLASS}: the head reads the model's own sentence pooling,"
                                        " starts as a logistic regression on the frozen features, then class-grouped"
                                        " batches and a contrastive loss (Banking77, 8 per intent, 3 seeds: 0.830 test"
                                        " accuracy against 0.807 for full fine-tuning)")
    else:
        transfer, reason = "full", (f"{per_class:g} training examples per class (median) >"
                                    f" {FEW_SHOT_MAX_PER_CLASS}: enough for ordinary fine-tuning"
                                    if per_class is not None else "ordinary fine-tuning of every layer")
    why["model.transfer"] = reason
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, transfer=transfer))


def resolve(cfg: Config, facts: Facts) -> tuple[Config, dict[str, str], Plan]:
    """``cfg`` with every ``auto`` setting replaced by a value, why (keyed ``section.key``), and the plan
    the loop executes."""
    why: dict[str, str] = {}
    values: dict[str, object] = {}
    cfg = resolve_transfer(cfg, facts, why)
    t = cfg.train
    if t.metric_for_best == AUTO:
        t = dataclasses.replace(t, metric_for_best=facts.default_metric)
        lower = "lower" if t.metric_for_best in LOWER_IS_BETTER else "higher"
        why["train.metric_for_best"] = f"the {facts.task} default ({lower} is better)"
        values["metric_for_best"] = t.metric_for_best
    lora = cfg.model.transfer == "lora"
    _learning_rates(t, facts, lora, values, why)
    length_is_auto = t.epochs == AUTO and t.max_steps is None
    if t.epochs == AUTO:
        _length(t, facts, lora, values, why)
    total = total_steps(dataclasses.replace(t, epochs=values.get("epochs", t.epochs)), facts.steps_per_epoch)
    if t.eval_every_steps == AUTO:
        if length_is_auto:
            _evaluation_cadence(total, facts, values, why)
        else:
            values["eval_every_steps"] = 0
            why["train.eval_every_steps"] = "at the end of each epoch (the training length was set explicitly)"
    planned = count_evaluations(total, values.get("eval_every_steps", t.eval_every_steps), facts.steps_per_epoch)
    _early_stopping(t, total, planned, length_is_auto, cfg.model.transfer == "few_shot", facts.n_validation, values, why)
    if "train.metric_for_best" in why:  # listed last: the rules above say how it is used
        why["train.metric_for_best"] = why.pop("train.metric_for_best")
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(t, **values))
    return cfg, why, Plan.from_config(cfg.train, facts.steps_per_epoch)
