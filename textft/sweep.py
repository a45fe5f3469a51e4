"""Hyper-parameter search with Optuna: ``textft sweep --config FILE --trials N [--output DIR] [key=value ...]``.

The search space is a ``sweep:`` section, in the config file itself or in a separate ``--sweep`` file::

    sweep:
      metric: macro_f1            # accuracy | macro_f1 | weighted_f1 | loss (validation split)
      direction: maximize         # default: minimize for loss, maximize otherwise
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

import argparse
import csv
import dataclasses
import inspect
import io
import json
import logging
import math
import sys
import tempfile
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from textft.config import Config, UserError, closest, load_config

log = logging.getLogger("textft")

METRICS = ("accuracy", "macro_f1", "weighted_f1", "loss")
DIRECTIONS = ("maximize", "minimize")
DISTRIBUTIONS = {"uniform": ({"low", "high"}, {"step"}), "log_uniform": ({"low", "high"}, set()),
                 "int": ({"low", "high"}, {"step", "log"}), "categorical": ({"choices"}, set())}
"""type: (required fields, optional fields)"""
SWEEP_KEYS = ("metric", "direction", "space", "seed", "startup_trials", "prune", "prune_startup_trials",
              "prune_warmup_epochs")
STUDY_NAME = "textft-sweep"
EXAMPLE = "train.lr: {type: log_uniform, low: 1.0e-5, high: 1.0e-3}"


@dataclass
class SweepSpec:
    space: dict[str, dict[str, Any]]
    metric: str = "macro_f1"
    direction: str = "maximize"
    seed: int | None = None
    """Sampler seed; defaults to the config's ``train.seed``."""
    startup_trials: int = 10
    """Random trials before TPE starts modelling the results."""
    prune: bool = True
    prune_startup_trials: int = 3
    """Finished trials needed before any trial is pruned."""
    prune_warmup_epochs: int = 1
    """Epochs whose results never prune a trial (the first is usually too early to judge)."""
    source: str = ""


# --- reading and checking the sweep section ---------------------------------------------------


def read_yaml(path: str | Path, what: str) -> dict:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} '{path}' does not exist")
    try:
        # OmegaConf reads 1e-5 as a number, where plain YAML 1.1 leaves it a string.
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except (OmegaConfBaseException, yaml.YAMLError) as e:
        raise UserError(f"{what} '{path}' is not valid YAML: {' '.join(str(e).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{what} '{path}' must hold a mapping, got {type(data).__name__}")
    return data


def config_keys() -> list[str]:
    """Every ``section.key`` a config accepts."""
    sections = typing.get_type_hints(Config)
    return [f"{name}.{f.name}" for name, cls in sections.items() for f in dataclasses.fields(cls)]


# Names the same settings carry in transformers' TrainingArguments, the likeliest slip in a space.
HF_NAMES = {"learning_rate": "lr", "num_train_epochs": "epochs", "per_device_train_batch_size": "batch_size",
            "train_batch_size": "batch_size", "warmup_steps": "warmup_ratio", "lr_scheduler_type": "scheduler",
            "max_seq_length": "max_length", "seed": "seed"}


def suggest_key(key: str, keys: list[str]) -> str:
    """`` (did you mean 'x'?)`` for an unknown ``section.key``: the transformers name first, then spelling
    within the same section, then anywhere."""
    section, _, name = str(key).partition(".")
    if name in HF_NAMES:
        matches = [k for k in keys if k.split(".", 1)[1] == HF_NAMES[name]]
        if matches:
            return f" (did you mean '{next((k for k in matches if k.startswith(section + '.')), matches[0])}'?)"
    return closest(key, [k for k in keys if k.startswith(section + ".")]) or closest(key, keys)


def _number(value, where: str, problems: list[str]) -> float | None:
    if isinstance(value, bool):
        problems.append(f"{where} must be a number, got {value!r}")
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        problems.append(f"{where} must be a number, got {value!r}")
        return None
    if not math.isfinite(number):
        problems.append(f"{where} must be finite, got {value!r}")
        return None
    return number


def _check_distribution(key: str, spec: Any, problems: list[str]) -> dict[str, Any] | None:
    where = f"sweep space '{key}'"
    if not isinstance(spec, dict):
        problems.append(f"{where} must be a mapping like {{type: log_uniform, low: 1.0e-5, high: 1.0e-3}},"
                        f" got {spec!r}")
        return None
    kind = spec.get("type")
    if kind not in DISTRIBUTIONS:
        hint = closest(kind, DISTRIBUTIONS) if kind is not None else ""
        what = f"unknown type '{kind}'{hint}" if kind is not None else "has no 'type'"
        problems.append(f"{where}: {what}; types: {', '.join(DISTRIBUTIONS)}")
        return None
    required, optional = DISTRIBUTIONS[kind]
    allowed = required | optional | {"type"}
    before = len(problems)
    for name in spec:
        if name not in allowed:
            problems.append(f"{where}: unknown field '{name}' for type {kind}{closest(name, allowed)};"
                            f" fields: {', '.join(sorted(allowed - {'type'}))}")
    missing = sorted(required - set(spec))
    if missing:
        problems.append(f"{where} ({kind}) needs {' and '.join(repr(m) for m in missing)}")
    if len(problems) > before:
        return None
    out: dict[str, Any] = {"type": kind}
    if kind == "categorical":
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            problems.append(f"{where}: 'choices' must be a non-empty list, got {choices!r}")
            return None
        bad = [c for c in choices if not (c is None or isinstance(c, (bool, int, float, str)))]
        if bad:
            problems.append(f"{where}: choices must be numbers, strings, booleans or null, got {bad[0]!r}")
            return None
        out["choices"] = list(choices)
        return out
    low, high = _number(spec["low"], f"{where}: 'low'", problems), _number(spec["high"], f"{where}: 'high'", problems)
    if low is None or high is None:
        return None
    if low >= high:
        problems.append(f"{where}: 'low' ({spec['low']}) must be below 'high' ({spec['high']})")
        return None
    if kind == "log_uniform" and low <= 0:
        problems.append(f"{where}: log_uniform needs 'low' > 0, got {spec['low']}")
        return None
    if kind == "int":
        if not (low.is_integer() and high.is_integer()):
            problems.append(f"{where}: int needs whole 'low' and 'high', got {spec['low']} and {spec['high']}")
            return None
        low, high = int(low), int(high)
        if spec.get("log") and low <= 0:
            problems.append(f"{where}: int with log: true needs 'low' > 0, got {low}")
            return None
        out["log"] = bool(spec.get("log", False))
    out.update(low=low, high=high)
    if spec.get("step") is not None:
        step = _number(spec["step"], f"{where}: 'step'", problems)
        if step is None or step <= 0:
            if step is not None:
                problems.append(f"{where}: 'step' must be > 0, got {spec['step']}")
            return None
        out["step"] = int(step) if kind == "int" else step
    return out


def parse_sweep(raw: Any, source: str) -> SweepSpec:
    """The ``sweep:`` section checked in full: every problem is reported at once."""
    problems: list[str] = []
    if not isinstance(raw, dict):
        raise UserError(f"'sweep' in '{source}' must be a mapping with a 'space', got {raw!r}")
    for key in raw:
        if key not in SWEEP_KEYS:
            problems.append(f"unknown key 'sweep.{key}'{closest(key, SWEEP_KEYS)}; keys: {', '.join(SWEEP_KEYS)}")
    metric = raw.get("metric", "macro_f1")
    if metric not in METRICS:
        problems.append(f"'sweep.metric': unknown metric '{metric}'{closest(metric, METRICS)};"
                        f" choose from {', '.join(METRICS)}")
    direction = raw.get("direction", "minimize" if metric == "loss" else "maximize")
    if direction not in DIRECTIONS:
        problems.append(f"'sweep.direction' must be maximize or minimize, got {direction!r}"
                        f"{closest(direction, DIRECTIONS)}")
    ints = {}
    for key, default, low in (("seed", None, 0), ("startup_trials", 10, 0), ("prune_startup_trials", 3, 0),
                              ("prune_warmup_epochs", 1, 0)):
        value = raw.get(key, default)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            problems.append(f"'sweep.{key}' must be a whole number >= {low}, got {value!r}")
            value = default
        ints[key] = value
    prune = raw.get("prune", True)
    if not isinstance(prune, bool):
        problems.append(f"'sweep.prune' must be true or false, got {prune!r}")
    space_raw = raw.get("space")
    space: dict[str, dict] = {}
    if not isinstance(space_raw, dict) or not space_raw:
        problems.append(f"the sweep space is empty: declare at least one key under sweep.space, e.g. {EXAMPLE}")
    else:
        keys = config_keys()
        for key, spec in space_raw.items():
            if key not in keys:
                problems.append(f"unknown key '{key}' in the sweep space{suggest_key(key, keys)};"
                                " keys look like train.lr, model.transfer")
                continue
            if key.startswith("output."):
                problems.append(f"'{key}' cannot be searched: the sweep sets each trial's output directory")
                continue
            if (dist := _check_distribution(key, spec, problems)) is not None:
                space[key] = dist
    if problems:
        raise UserError(problems)
    return SweepSpec(space=space, metric=metric, direction=direction, seed=ints["seed"],
                     startup_trials=ints["startup_trials"], prune=prune,
                     prune_startup_trials=ints["prune_startup_trials"],
                     prune_warmup_epochs=ints["prune_warmup_epochs"], source=source)


def override(key: str, value: Any) -> str:
    """``key=value`` that the config loader reads back as exactly ``value``."""
    if isinstance(value, str):
        return f"{key}={json.dumps(value)}"  # quoted: 'no' or '1e-3' stay strings
    if value is None:
        return f"{key}=null"
    if isinstance(value, bool):
        return f"{key}={'true' if value else 'false'}"
    return f"{key}={value!r}"


def split_config(config_path: str, sweep_path: str | None) -> tuple[str, Any, str]:
    """The config file without its ``sweep`` section (YAML text for load_config), the sweep section, and
    the file it came from: load_config refuses sections it does not know."""
    raw = read_yaml(config_path, "config file")
    inline = raw.pop("sweep", None)
    base_text = yaml.safe_dump(raw, sort_keys=False)
    if sweep_path is not None:
        extra = read_yaml(sweep_path, "sweep file")
        return base_text, extra.get("sweep", extra), sweep_path
    if inline is None:
        raise UserError(f"no search space: '{config_path}' has no 'sweep' section and no --sweep file was given;"
                        f" add e.g. sweep: {{metric: macro_f1, space: {{{EXAMPLE}}}}}")
    return base_text, inline, config_path


def check_space_values(spec: SweepSpec, base: Path, overrides: list[str]) -> None:
    """Every bound and choice of the space, tried against the config's own checks."""
    problems: list[str] = []
    for key, dist in spec.space.items():
        candidates = dist["choices"] if dist["type"] == "categorical" else [dist["low"], dist["high"]]
        for value in candidates:
            try:
                load_config(base, [*overrides, override(key, value)])
            except UserError as e:
                problems += [f"sweep space '{key}' value {value!r}: {p}" for p in e.problems if key in p]
    if problems:
        raise UserError(list(dict.fromkeys(problems)))


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


def train_accepts_hook(train_fn) -> bool:
    try:
        return "on_evaluate" in inspect.signature(train_fn).parameters
    except (TypeError, ValueError):
        return False


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
            if reporter is not None and train_accepts_hook(train):
                reports = train(cfg, on_evaluate=reporter)
            else:
                reports = train(cfg)
                if reporter is not None:
                    self._report_afterwards(trial, run_dir)
        finally:
            trial.set_user_attr("seconds", round(time.perf_counter() - start, 2))
        value = reports["validation"][self.spec.metric]
        if "test" in reports:
            trial.set_user_attr(f"test_{self.spec.metric}", reports["test"][self.spec.metric])
        if not (run_dir / "report.json").is_file():
            write_run_report(run_dir)
        return float(value)

    def _report_afterwards(self, trial, run_dir: Path) -> None:
        """Without the training hook, the per-epoch values still reach the study (for the pruning of
        later trials and for plots), read from the run's log once it has finished."""
        path = run_dir / "train_log.jsonl"
        if not path.is_file():
            return
        values: dict[int, float] = {}
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            epoch, m = record.get("epoch"), record.get("eval")
            if isinstance(m, dict) and isinstance(epoch, (int, float)) and m.get(self.spec.metric) is not None:
                if epoch >= 1 - 1e-6 and abs(epoch - round(epoch)) <= 1e-6:
                    values.setdefault(int(round(epoch)), float(m[self.spec.metric]))
        for number, value in sorted(values.items()):
            trial.report(value, number)


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

    best = _best_trial(study)
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


def _best_trial(study):
    import optuna

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None]
    if not complete:
        return None
    pick = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
    return pick(complete, key=lambda t: (t.value, -t.number))


def markdown_summary(rows: list[dict], spec: SweepSpec) -> str:
    if not rows:
        return "(no trials yet)\n"
    keys = [k for k in rows[0] if k != "best"]
    lines = ["| " + " | ".join(keys) + " |", "|" + "|".join("---" if k == "state" else "---:" for k in keys) + "|"]
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
    return str(v)


def write_outputs(sweep: Sweep, study) -> Path | None:
    """summary.md, summary.csv and best_config.yaml, refreshed after every trial."""
    from textft.config import save_config
    from textft.report import _replace_atomically

    rows = summary_rows(study, sweep.spec)
    _replace_atomically(sweep.out_dir / "summary.md", markdown_summary(rows, sweep.spec).encode())
    if rows:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        _replace_atomically(sweep.out_dir / "summary.csv", buf.getvalue().encode())
    best = _best_trial(study)
    if best is None:
        return None
    cfg = sweep.trial_config(best.params, sweep.out_dir / "best", overwrite=False)
    path = sweep.out_dir / "best_config.yaml"
    tmp = sweep.out_dir / ".best_config.yaml.tmp"
    save_config(cfg, tmp)
    header = (f"# Best of the textft sweep in {sweep.out_dir}: trial {best.number},"
              f" validation {sweep.spec.metric} {best.value:.4f}.\n"
              + "".join(f"#   {k}: {_show(v)}\n" for k, v in best.params.items())
              + f"# Train it: textft train --config {path}\n")
    _replace_atomically(path, (header + tmp.read_text()).encode())
    tmp.unlink()
    return path


def _checked_inputs(config: str, trials: int, output: str | None, sweep_file: str | None,
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
    spec, base_text, base_cfg, out_dir = _checked_inputs(config, trials, output, sweep_file, overrides)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = out_dir / "base_config.yaml"
    if base.is_file() and base.read_text() != base_text:
        log.warning("the config differs from the one this sweep started with (%s); new trials use the new one", base)
    base.write_text(base_text)
    sweep = Sweep(spec, base, overrides, out_dir)
    study = open_study(spec, out_dir, spec.seed if spec.seed is not None else base_cfg.train.seed)
    done = len(finished(study))
    todo = max(0, trials - done)
    hook = train_accepts_hook(_train_fn())
    pruning = ("" if not spec.prune else "; median pruning per epoch" if hook else
               "; no pruning (train() has no on_evaluate hook)")
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


def _train_fn():
    from textft.train import train

    return train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="textft sweep", description="Hyper-parameter search with Optuna (TPE sampling, median pruning).",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 2)[2])
    parser.add_argument("--config", required=True, help="YAML config; may hold the sweep section")
    parser.add_argument("--trials", type=int, required=True, help="finished trials wanted in the study (all sessions)")
    parser.add_argument("--output", help="sweep directory (default: the config's output.dir + '-sweep')")
    parser.add_argument("--sweep", dest="sweep_file", help="YAML file with the sweep section (instead of the config's)")
    parser.add_argument("overrides", nargs="*", help="section.key=value pairs applied to every trial")
    args = parser.parse_intermixed_args(argv)  # overrides may come before and after the options
    try:
        sweep, study, best_path = run_sweep(args.config, args.trials, args.output, args.sweep_file, args.overrides)
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume the sweep", file=sys.stderr)
        return 130
    rows = summary_rows(study, sweep.spec)
    print(f"\n# Sweep: validation {sweep.spec.metric} ({sweep.spec.direction}), {len(rows)} trial(s)\n")
    print(markdown_summary(rows, sweep.spec))
    best = _best_trial(study)
    if best is None:
        print("no trial finished; nothing to recommend")
        return 1
    print(f"best: trial {best.number}, validation {sweep.spec.metric} {best.value:.4f}")
    print(f"best configuration: {best_path}  (train it: textft train --config {best_path})")
    complete = [r["trial"] for r in rows if r["state"] == "complete"]
    print("compare the trials: textft compare " + " ".join(str(sweep.out_dir / "trials" / f"trial-{n}")
                                                          for n in complete))
    return 0
