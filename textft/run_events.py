"""The records of ``train_log.jsonl``: what a training run says about itself, as data.

One JSON object a line, each with ``event`` naming its kind:

- ``plan`` (first line): the schedule the loop executes (``recipe.Plan``): optimizer steps in all and
  per epoch, global batch, task, the metric the best model is chosen by and its direction, and the
  evaluation cadence; ``schema`` is the version of these records;
- ``train``: loss, learning rate and throughput of the steps since the previous one;
- ``eval``: the validation metrics at a step;
- ``best``: a new best model, as the loop decided it (with ``early_stopping_min_delta``): the weights
  of the step it names are the ones exported;
- ``end``: training stopped and why (``completed``, ``early_stopping``, ``time_budget``);
- ``error``: the run failed: its kind (``textft.errors.KINDS``), message and the config key it
  concerns, if any; one record per problem.

Readers (the service, ``textft report``) parse lines with ``parse`` and never read the human log.
A record of an unknown kind is skipped; a log whose plan carries a newer ``schema`` raises
``NewerSchema``, so a reader can say so instead of misreading it. Logs written before the schema
existed carry only train and eval records, without ``event``; ``parse`` reads them as such.
"""

from __future__ import annotations

import dataclasses
import json
import traceback
from dataclasses import dataclass, field
from typing import Any, Iterable

from textft.errors import UserError
from textft.interrupts import Interrupted

SCHEMA = 1
"""Version of the records below; raised when a field changes meaning or is removed (a new field is added freely)."""


@dataclass(frozen=True)
class PlanRecord:
    total_steps: int
    """Optimizer steps the run plans (it may stop earlier: early stopping, time budget)."""
    steps_per_epoch: int
    global_batch: int
    """Examples per optimizer step, over all processes and accumulation steps."""
    task: str
    metric: str
    """The validation metric the best model is chosen by."""
    lower_is_better: bool
    eval_every_steps: int
    """Evaluations every this many steps (0: none besides epoch ends); the loop also evaluates at each
    epoch end and at the last step."""
    patience: int = 0
    """Evaluations without improvement before early stopping (0: never)."""
    min_delta: float = 0.0
    """Improvement a new best must exceed."""
    time_budget_s: float | None = None
    step: int = 0
    """The step training starts from (a resumed run's checkpoint)."""
    schema: int = SCHEMA
    event: str = "plan"


@dataclass(frozen=True)
class TrainRecord:
    step: int
    epoch: float
    loss: float
    lr: float
    samples_per_s: float | None = None
    tokens_per_s: float | None = None
    event: str = "train"


@dataclass(frozen=True)
class EvalRecord:
    step: int
    epoch: float
    eval: dict[str, Any]
    """The task's validation metrics (``textft.tasks``)."""
    event: str = "eval"


@dataclass(frozen=True)
class BestRecord:
    step: int
    epoch: float
    metric: str
    value: float
    lower_is_better: bool
    event: str = "best"


@dataclass(frozen=True)
class EndRecord:
    step: int
    epoch: float
    stop_reason: str
    seconds: float
    """Training time over all resumptions."""
    best_step: int | None = None
    event: str = "end"


@dataclass(frozen=True)
class ErrorRecord:
    kind: str
    message: str
    field: str | None = None
    step: int | None = None
    """Optimizer steps done when it failed (None: before training started)."""
    event: str = "error"


Record = PlanRecord | TrainRecord | EvalRecord | BestRecord | EndRecord | ErrorRecord
KINDS: dict[str, type] = {"plan": PlanRecord, "train": TrainRecord, "eval": EvalRecord, "best": BestRecord,
                          "end": EndRecord, "error": ErrorRecord}


class NewerSchema(ValueError):
    """The log was written by a newer textft whose records this one does not know."""

    def __init__(self, schema: int):
        self.schema = schema
        super().__init__(f"train_log.jsonl was written with run-event schema {schema}; this textft reads schema"
                         f" {SCHEMA} (upgrade textft to read it)")


def to_dict(record: Record) -> dict[str, Any]:
    """The JSON object of a record, ``event`` first."""
    data = dataclasses.asdict(record)
    return {"event": data.pop("event"), **data}


def to_line(record: Record) -> str:
    return json.dumps(to_dict(record)) + "\n"


def kind_of(data: dict) -> str | None:
    """The kind of a record as written: its ``event``, or for a log from before the schema, train or eval."""
    if "event" in data:
        return data["event"] if isinstance(data["event"], str) else None
    if isinstance(data.get("eval"), dict):
        return "eval"
    return "train" if "loss" in data else None


def parse(data: dict | str) -> Record | None:
    """The record of one line (or its decoded object); None for a line that is not a record of a
    known kind (skipped). A plan of a newer schema raises ``NewerSchema``."""
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except ValueError:
            return None
    if not isinstance(data, dict):
        return None
    kind = kind_of(data)
    cls = KINDS.get(kind)
    if cls is None:
        return None
    if kind == "plan" and isinstance(data.get("schema"), int) and data["schema"] > SCHEMA:
        raise NewerSchema(data["schema"])
    names = {f.name for f in dataclasses.fields(cls)}
    try:
        return cls(**{k: v for k, v in data.items() if k in names and k != "event"})
    except TypeError:  # a required field missing: not a record of this kind
        return None


def read(lines: Iterable[str | dict]) -> list[Record]:
    """Every record of a log's lines (or their decoded objects), in order; unknown kinds are skipped,
    a newer log raises ``NewerSchema``."""
    return [r for r in map(parse, lines) if r is not None]


def error_records(e: BaseException, step: int | None = None) -> list[ErrorRecord]:
    """How a run failed, as records: one per problem of a UserError (with its field and kind), the
    stop of an interruption, else the exception as its traceback's last line names it."""
    if isinstance(e, UserError):
        return [ErrorRecord(p.kind, p.message, p.field, step) for p in e.items]
    if isinstance(e, Interrupted):
        return [ErrorRecord("interrupted", str(e), None, step)]
    if isinstance(e, KeyboardInterrupt):
        return [ErrorRecord("interrupted", "interrupted (Ctrl-C)", None, step)]
    return [ErrorRecord("internal", traceback.format_exception_only(e)[-1].strip()[:2000], None, step)]


@dataclass
class RunSummary:
    """What a reader keeps of a log: the plan, the latest best, how it ended, and its errors."""

    plan: PlanRecord | None = None
    best: BestRecord | None = None
    end: EndRecord | None = None
    errors: list[ErrorRecord] = field(default_factory=list)

    def add(self, record: Record) -> None:
        if isinstance(record, PlanRecord):
            self.plan = record
        elif isinstance(record, BestRecord):
            self.best = record
        elif isinstance(record, EndRecord):
            self.end = record
        elif isinstance(record, ErrorRecord):
            self.errors.append(record)


def summarize(records: Iterable[Record]) -> RunSummary:
    summary = RunSummary()
    for record in records:
        summary.add(record)
    return summary
