"""The search space of ``textft sweep``: the ``sweep:`` section, checked in full before any trial runs.

Every problem is reported at once: unknown keys (with the textft name of a Trainer argument, or the
closest spelling), unknown distribution types and fields, bounds out of order, and values the
config itself would refuse.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from textft.config import METRICS as CONFIG_METRICS
from textft.config import config_keys, load_config, suggest_key
from textft.errors import UserError, closest
from textft.presets import resolve as resolve_preset
from textft.tasks import LOWER_IS_BETTER

METRICS = ("auto", *CONFIG_METRICS)
"""auto: the default metric of the config's task (macro_f1, or rmse for regression)."""
DIRECTIONS = ("maximize", "minimize")
DISTRIBUTIONS = {"uniform": ({"low", "high"}, {"step"}), "log_uniform": ({"low", "high"}, set()),
                 "int": ({"low", "high"}, {"step", "log"}), "categorical": ({"choices"}, set())}
"""type: (required fields, optional fields)"""
SWEEP_KEYS = ("metric", "direction", "space", "seed", "startup_trials", "prune", "prune_startup_trials",
              "prune_warmup_epochs")
EXAMPLE = "train.lr: {type: log_uniform, low: 1.0e-5, high: 1.0e-3}"


@dataclass
class SweepSpec:
    space: dict[str, dict[str, Any]]
    metric: str = "auto"
    direction: str | None = None
    """maximize or minimize; None until the metric is known (then: minimize for loss, mae, rmse and
    hamming_loss)."""
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


def default_direction(metric: str) -> str | None:
    if metric == "auto":
        return None
    return "minimize" if metric in LOWER_IS_BETTER else "maximize"


def resolve_metric(spec: SweepSpec, task) -> SweepSpec:
    """The spec with ``auto`` replaced by the task's metric, after checking the task computes it."""
    metric = task.check_metric(spec.metric, "'sweep.metric'")
    return dataclasses.replace(spec, metric=metric, direction=spec.direction or default_direction(metric))


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
    metric = raw.get("metric", "auto")
    if metric not in METRICS:
        problems.append(f"'sweep.metric': unknown metric '{metric}'{closest(metric, METRICS)};"
                        f" choose from {', '.join(METRICS)}")
    direction = raw.get("direction", default_direction(metric))
    if direction is not None and direction not in DIRECTIONS:
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
                problems.append(f"unknown key '{key}' in the sweep space{suggest_key(key)};"
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
    raw = read_yaml(resolve_preset(config_path), "config file")
    inline = raw.pop("sweep", None)
    base_text = yaml.safe_dump(raw, sort_keys=False)
    if sweep_path is not None:
        extra = read_yaml(resolve_preset(sweep_path, "sweep", "sweep file"), "sweep file")
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
