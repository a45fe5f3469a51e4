"""Hyper-parameter search with Optuna: ``textft sweep --config FILE --trials N [--output DIR] [key=value ...]``.

The search space is a ``sweep:`` section, in the config file itself or in a separate ``--sweep`` file::

    sweep:
      metric: macro_f1            # validation metric of the task (auto: macro_f1; rmse for regression)
      direction: maximize         # default: minimize for loss, mae, rmse, hamming_loss; else maximize
      space:
        train.lr: {type: log_uniform, low: 1.0e-5, high: 1.0e-3}
        train.batch_size: {type: categorical, choices: [16, 32]}
        train.warmup_ratio: {type: uniform, low: 0.0, high: 0.2}
        model.layer_lr_decay: {type: uniform, low: 0.8, high: 1.0}
      # optional: seed (default train.seed), startup_trials (random trials before TPE, 10),
      # prune (true), prune_startup_trials (3), prune_warmup_epochs (1)

Types: uniform (low, high, step?), log_uniform (low, high), int (low, high, step?, log?), categorical (choices).

Each trial is a full ``textft train`` run in ``OUTPUT/trials/trial-N`` (readable by ``textft compare``).
TPE proposes the values; a trial whose validation metric after an epoch falls below the median of
earlier trials at that epoch is pruned. The study lives in ``OUTPUT/study.db`` (SQLite), so running
the same command again resumes it: ``--trials`` counts the finished trials of the whole study.
The best configuration is kept in ``OUTPUT/best_config.yaml``, ready for ``textft train --config``.
"""

from __future__ import annotations

import csv
import io
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textft.config import Config, load_config
from textft.data import task_of
from textft.errors import UserError
from textft.files import read_json, read_jsonl, replace_file
from textft.report_parts import md_cell
from textft.significance import ALPHA, paired_test
from textft.sweep_space import SweepSpec, check_space_values, override, parse_sweep, resolve_metric, split_config
from textft.tasks import DEFAULT_TASK, task_class

log = logging.getLogger("textft")

STUDY_NAME = "textft-sweep"


# --- the study --------------------------------------------------------------------------------


def suggest(trial, key: str, dist: dict[str, Any]):
    kind = dist["type"]
    if kind == "categorical":
        return trial.suggest_categorical(key, dist["choices"])
    if kind == "int":
        return trial.suggest_int(key, dist["low"], dist["high"], step=dist.get("step", 1), log=dist["log"])
    if kind == "log_uniform":
        return trial.suggest_float(key, dist["low"], dist["high"], log=True)
    return trial.suggest_float(key, dist["low"], dist["high"], step=dist.get("step"))


class EpochReporter:
    """The ``on_evaluate`` hook of a trial: reports the validation metric at the end of each epoch
    to Optuna, and stops the run by raising ``optuna.TrialPruned`` when the pruner says so."""

    def __init__(self, trial, metric: str):
        self.trial, self.metric = trial, metric
        self.reported: dict[int, float] = {}

    def __call__(self, step: int, epoch: float, metrics: dict) -> None:
        import optuna

        value = metrics.get(self.metric)
        # Mid-epoch evaluations (eval_every_steps) fall at different epochs for different batch sizes;
        # only whole epochs line up across trials, which the median comparison needs.
        if value is None or epoch < 1 - 1e-6 or abs(epoch - round(epoch)) > 1e-6:
            return
        number = int(round(epoch))
        if number in self.reported:
            return
        self.reported[number] = float(value)
        self.trial.report(float(value), number)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"{self.metric} {value:.4f} after epoch {number} is below the median of"
                                     " earlier trials")


@dataclass
class Sweep:
    spec: SweepSpec
    base: Path
    overrides: list[str]
    out_dir: Path

    def trial_config(self, params: dict[str, Any], output_dir: Path, overwrite: bool = True) -> Config:
        return load_config(self.base, [*self.overrides, *(override(k, v) for k, v in params.items()),
                                       override("output.dir", str(output_dir)),
                                       f"output.overwrite={'true' if overwrite else 'false'}"])

    def objective(self, trial) -> float:
        from textft.report import write_run_report
        from textft.train import train

        params = {key: suggest(trial, key, dist) for key, dist in self.spec.space.items()}
        run_dir = self.out_dir / "trials" / f"trial-{trial.number}"
        trial.set_user_attr("run_dir", str(run_dir))
        cfg = self.trial_config(params, run_dir)
        print(f"\n== trial {trial.number}: " + ", ".join(f"{k}={_show(v)}" for k, v in params.items()), flush=True)
        start = time.perf_counter()
        reporter = EpochReporter(trial, self.spec.metric) if self.spec.prune else None
        try:
            reports = train(cfg, on_evaluate=reporter)
        finally:
            trial.set_user_attr("seconds", round(time.perf_counter() - start, 2))
        value = reports["validation"][self.spec.metric]
        if "test" in reports:
            trial.set_user_attr(f"test_{self.spec.metric}", reports["test"][self.spec.metric])
        if not (run_dir / "report.json").is_file():
            write_run_report(run_dir)
        return float(value)


def _show(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def open_study(spec: SweepSpec, out_dir: Path, seed: int):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{(out_dir / 'study.db').resolve()}"
    finished_before = 0
    if (out_dir / "study.db").is_file():
        try:
            old = optuna.load_study(study_name=STUDY_NAME, storage=storage)
        except KeyError:
            old = None
        if old is not None:
            attrs = old.user_attrs
            if attrs.get("metric", spec.metric) != spec.metric or old.direction.name.lower() != spec.direction:
                raise UserError(f"'{out_dir}' holds a sweep that {old.direction.name.lower()}s"
                                f" {attrs.get('metric')}; this one {spec.direction}s {spec.metric}:"
                                " choose another --output")
            finished_before = len(old.trials)
    # A resumed sweep must not replay the random draws of the first session, so the seed moves on.
    sampler = optuna.samplers.TPESampler(seed=seed + finished_before, n_startup_trials=spec.startup_trials)
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=spec.prune_startup_trials,
                                          n_warmup_steps=spec.prune_warmup_epochs + 1)
              if spec.prune else optuna.pruners.NopPruner())
    study = optuna.create_study(study_name=STUDY_NAME, storage=storage, load_if_exists=True,
                                direction=spec.direction, sampler=sampler, pruner=pruner)
    study.set_user_attr("metric", spec.metric)
    # Only one process works on a sweep directory, so a trial still marked running was cut off.
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    return study


def finished(study) -> list:
    import optuna

    return [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]


def summary_rows(study, spec: SweepSpec) -> list[dict[str, Any]]:
    import optuna

    best = best_trial(study)
    rows = []
    for t in study.trials:
        state = t.state.name.lower()
        if t.state == optuna.trial.TrialState.PRUNED and t.intermediate_values:
            state = f"pruned (epoch {max(t.intermediate_values)})"
        row = {"trial": t.number, "state": state, spec.metric: t.value,
               **{k: t.params.get(k) for k in spec.space},
               f"test_{spec.metric}": t.user_attrs.get(f"test_{spec.metric}"),
               "seconds": t.user_attrs.get("seconds"), "best": best is not None and t.number == best.number}
        rows.append(row)
    return rows


def best_trial(study):
    ranked = ranked_trials(study)
    return ranked[0] if ranked else None


def ranked_trials(study) -> list:
    """Complete trials, best first (the earlier of equal values first)."""
    import optuna

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None]
    sign = -1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1
    return sorted(complete, key=lambda t: (sign * t.value, t.number))


def runner_up_line(study, spec: SweepSpec) -> str | None:
    """Whether the best trial is separable from the runner-up: a paired test of the sweep metric over
    both trials' validation predictions, in one line (None with fewer than two complete trials)."""
    ranked = ranked_trials(study)
    if len(ranked) < 2:
        return None
    best, second = ranked[:2]
    head = (f"best trial {best.number} vs runner-up trial {second.number}: validation {spec.metric}"
            f" {best.value:.4f} vs {second.value:.4f}")
    runs = [Path(t.user_attrs.get("run_dir", "")) for t in (best, second)]
    files = [r / "predictions" / "validation.jsonl" for r in runs]
    rows = [read_jsonl(f) if f.is_file() else None for f in files]
    try:
        task = task_class(read_json(runs[0] / "eval_report.json").get("task") or DEFAULT_TASK)
    except UserError:
        return f"{head}; not tested: trial {best.number} left no readable eval_report.json"
    test = paired_test(task, spec.metric, rows[0], rows[1])
    if test.p_value is None:
        return f"{head}; not tested: {test.reason}"
    verdict = (f"separable at {100 * ALPHA:.0f}%" if test.significant else
               f"not separable at {100 * ALPHA:.0f}%: on this validation split the runner-up is as good a choice")
    return f"{head} on the same {test.examples:,} examples, p {test.p_value:.3f} ({test.test}): {verdict}"


def markdown_summary(rows: list[dict], spec: SweepSpec) -> str:
    if not rows:
        return "(no trials yet)\n"
    keys = [k for k in rows[0] if k != "best"]
    lines = ["| " + " | ".join(map(md_cell, keys)) + " |",
             "|" + "|".join("---" if k == "state" else "---:" for k in keys) + "|"]
    for r in rows:
        cells = [f"{r[k]:.1f}" if k == "seconds" and r[k] is not None else _cell(r[k]) for k in keys]
        if r["best"]:
            cells[keys.index(spec.metric)] = f"**{cells[keys.index(spec.metric)]}**"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e-3 else f"{v:.4f}"
    return md_cell(v)


def write_outputs(sweep: Sweep, study) -> Path | None:
    """summary.md, summary.csv and best_config.yaml, refreshed after every trial."""
    from textft.config import config_yaml

    rows = summary_rows(study, sweep.spec)
    separable = runner_up_line(study, sweep.spec)
    replace_file(sweep.out_dir / "summary.md",
                 markdown_summary(rows, sweep.spec) + (f"\n{separable}\n" if separable else ""))
    if rows:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        replace_file(sweep.out_dir / "summary.csv", buf.getvalue())
    best = best_trial(study)
    if best is None:
        return None
    cfg = sweep.trial_config(best.params, sweep.out_dir / "best", overwrite=False)
    path = sweep.out_dir / "best_config.yaml"
    header = (f"# Best of the textft sweep in {sweep.out_dir}: trial {best.number},"
              f" validation {sweep.spec.metric} {best.value:.4f}.\n"
              + "".join(f"#   {k}: {_show(v)}\n" for k, v in best.params.items())
              + f"# Train it: textft train --config {path}\n")
    replace_file(path, header + config_yaml(cfg))
    return path


def checked_inputs(config: str, trials: int, output: str | None, sweep_file: str | None,
                   overrides: list[str]) -> tuple[SweepSpec, str, Config, Path]:
    """Everything wrong with the command line, the config and the search space, reported at once."""
    problems = [f"'--trials' must be >= 1, got {trials}"] if trials < 1 else []
    base_text, section, source = split_config(config, sweep_file)
    spec = base_cfg = None
    try:
        spec = parse_sweep(section, source)
    except UserError as e:
        problems += e.problems
    with tempfile.TemporaryDirectory(prefix="textft-sweep-") as tmp:
        base = Path(tmp) / "base_config.yaml"
        base.write_text(base_text)
        try:
            base_cfg = load_config(base, overrides)
        except UserError as e:
            problems += [p.replace(str(base), config) for p in e.problems]
        if spec is not None and base_cfg is not None:
            try:
                check_space_values(spec, base, overrides)
            except UserError as e:
                problems += e.problems
    if spec is not None and base_cfg is not None and not problems:
        try:
            spec = resolve_metric(spec, task_class(task_of(base_cfg.data)))
        except UserError as e:
            problems += e.problems
    out_dir = Path(output) if output else Path(f"{base_cfg.output.dir.rstrip('/')}-sweep") if base_cfg else None
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        problems.append(f"'--output': '{out_dir}' exists and is not a directory")
    elif out_dir is not None and out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "study.db").is_file():
        problems.append(f"'--output': '{out_dir}' is not empty and holds no study.db: choose a new directory"
                        " (or the directory of the sweep to resume)")
    if problems:
        raise UserError(problems)
    return spec, base_text, base_cfg, out_dir


def run_sweep(config: str, trials: int, output: str | None, sweep_file: str | None, overrides: list[str]):
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise UserError("textft sweep needs Optuna: pip install 'textft[sweep]'") from None
    spec, base_text, base_cfg, out_dir = checked_inputs(config, trials, output, sweep_file, overrides)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = out_dir / "base_config.yaml"
    if base.is_file() and base.read_text() != base_text:
        log.warning("the config differs from the one this sweep started with (%s); new trials use the new one", base)
    replace_file(base, base_text)
    sweep = Sweep(spec, base, overrides, out_dir)
    study = open_study(spec, out_dir, spec.seed if spec.seed is not None else base_cfg.train.seed)
    done = len(finished(study))
    todo = max(0, trials - done)
    pruning = "; median pruning per epoch" if spec.prune else ""
    print(f"sweep in {out_dir}: {done} finished trial(s) found, {todo} to run; {spec.direction} validation"
          f" {spec.metric} over {', '.join(spec.space)}{pruning}", flush=True)

    def after_trial(study, trial) -> None:
        write_outputs(sweep, study)
        value = "-" if trial.value is None else f"{trial.value:.4f}"
        print(f"== trial {trial.number} {trial.state.name.lower()}: {spec.metric} {value}", flush=True)

    if todo:
        # A trial that crashes (NaN loss, out of memory) is recorded as failed and the sweep goes on;
        # a UserError means the setup itself is wrong and stops it.
        study.optimize(sweep.objective, n_trials=todo, catch=(RuntimeError, FloatingPointError),
                       callbacks=[after_trial], gc_after_trial=True)
    best_path = write_outputs(sweep, study)
    return sweep, study, best_path
