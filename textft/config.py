"""Run configuration: YAML files and ``section.key=value`` overrides read into the typed dataclasses of
``textft.config_schema`` (whose names this module also exports).

Every problem in a config is collected and reported at once, each naming the key, what was
expected and, for a misspelt key or choice, the closest valid one.
"""

from __future__ import annotations

import dataclasses
import logging
import typing
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from textft.coerce import choices, coerce
from textft.config_checks import check_values
from textft.config_schema import (AUTO, BACKENDS, INFERENCE_PRECISIONS, LONG_TEXT, METRICS,  # noqa: F401 (the names of textft.config)
                                  PRECISIONS, SECTION_TYPES, TASKS, TRUNCATIONS, VALUE_ALIASES, Config, DataConfig,
                                  ModelConfig, OutputConfig, TrainConfig)
from textft.errors import Problem, UserError, closest
from textft.presets import resolve as resolve_preset

log = logging.getLogger("textft")


TRAINER_NAMES = {
    "learning_rate": "train.lr", "num_train_epochs": "train.epochs", "per_device_train_batch_size": "train.batch_size",
    "train_batch_size": "train.batch_size", "per_device_eval_batch_size": "train.eval_batch_size",
    "gradient_accumulation_steps": "train.grad_accum_steps", "resume_from_checkpoint": "train.resume_from",
    "warmup_steps": "train.warmup_ratio", "lr_scheduler_type": "train.scheduler", "eval_steps": "train.eval_every_steps",
    "evaluation_strategy": "train.eval_every_steps", "eval_strategy": "train.eval_every_steps",
    "save_steps": "train.save_every_steps", "save_strategy": "train.save_every_epoch",
    "save_total_limit": "train.keep_checkpoints", "metric_for_best_model": "train.metric_for_best",
    "bf16": "train.mixed_precision", "fp16": "train.mixed_precision", "torch_compile": "train.compile",
    "dataloader_num_workers": "train.num_workers", "label_smoothing_factor": "train.label_smoothing",
    "max_time": "train.time_budget_s", "output_dir": "output.dir", "overwrite_output_dir": "output.overwrite",
    "hub_model_id": "output.hub_repo_id", "hub_private_repo": "output.hub_private",
    "model_name_or_path": "model.name_or_path", "max_seq_length": "data.max_length", "dataset_name": "data.dataset",
    "dataset_config_name": "data.dataset_config", "text_column_name": "data.text_column",
    "label_column_name": "data.label_column", "max_train_samples": "data.max_train_samples",
    "problem_type": "data.task", "text_pair_column_name": "data.text_pair_column",
}
"""transformers' TrainingArguments (and run_glue) names of textft settings: the likeliest slips."""


def config_keys() -> list[str]:
    """Every ``section.key`` a config accepts."""
    return [f"{name}.{f.name}" for name, cls in SECTION_TYPES.items() for f in dataclasses.fields(cls)]


def suggest_key(key: str) -> str:
    """`` (did you mean 'x'?)`` for an unknown ``section.key`` or bare ``key``: the textft name of a
    Trainer argument first, then the closest spelling within the section, then anywhere."""
    keys = config_keys()
    section, _, name = str(key).rpartition(".")
    bare = {k.split(".", 1)[1]: k for k in keys}
    if name in TRAINER_NAMES:
        return f" (did you mean '{TRAINER_NAMES[name]}'?)"
    if not section and name in bare:
        return f" (did you mean '{bare[name]}'?)"
    return closest(key, [k for k in keys if k.startswith(section + ".")]) or closest(key, keys)


def _build_section(name: str, cls, values: Any, problems: list[Problem]):
    if values is None:
        values = {}
    if not isinstance(values, dict):
        problems.append(Problem(f"'{name}' must be a mapping of keys, got {values!r}", name))
        return cls()
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in hints:
            problems.append(Problem(f"unknown key '{name}.{key}'{suggest_key(f'{name}.{key}')}", f"{name}.{key}"))
            continue
        old = "no" if value is False else value  # YAML 1.1 reads a bare `no` as false
        new = VALUE_ALIASES.get(f"{name}.{key}", {}).get(old) if isinstance(old, str) else None
        if new is not None:
            log.warning("'%s.%s': '%s' is the old name of '%s' (did you mean '%s'?); reading it as %s",
                        name, key, old, new, new, new)
            value = new
        try:
            kwargs[key] = coerce(value, hints[key])
        except TypeError as e:
            hint = closest(value, choices(hints[key])) if isinstance(value, str) else ""
            if f"{name}.{key}" == "data.truncation" and value in LONG_TEXT:
                hint = f"; {value} is a prediction mode (textft.load, --long-text)"
            problems.append(Problem(f"'{name}.{key}' must be {e}, got {value!r}{hint}", f"{name}.{key}"))
    return cls(**kwargs)


def _plain(node) -> Any:
    return OmegaConf.to_container(node, resolve=True) if node is not None else {}


def _env_references(node) -> dict[str, Any]:
    """``section.key`` → the unresolved value of every key of ``node`` that reads the environment."""
    written = OmegaConf.to_container(node, resolve=False)
    if not isinstance(written, dict):
        return {}
    return {f"{section}.{key}": value for section, values in written.items() if isinstance(values, dict)
            for key, value in values.items() if "oc.env" in str(value)}


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                values: dict[str, Any] | None = None, interpolate: bool = True) -> Config:
    """Config from an optional YAML file or preset name plus ``section.key=value`` overrides, fully validated.

    ``values`` ({"section.key": value}) are settings given as values rather than text (a JSON
    request): they win over the file and the overrides and are neither parsed nor interpolated.
    With ``interpolate=False`` the file and the overrides are plain YAML as well: a ``${...}`` stays
    the text it is, so settings that come from someone else (the service's users) never read this
    process's environment or other settings.
    """
    problems: list[Problem] = []
    merged: dict[str, Any] = {}
    references: dict[str, Any] = {}
    if path is not None:
        merged, references = _read_file(resolve_preset(path), interpolate)
    for item in overrides or []:
        key = item.split("=", 1)[0]
        if "=" not in item or item.startswith("="):
            problems.append(Problem(f"override '{item}' must look like section.key=value", key or None))
            continue
        text = item.split("=", 1)[1]
        if "." not in key:
            problems.append(Problem(f"override '{item}' must name a section and a key, like train.lr=3e-5"
                                    + suggest_key(key), key))
            continue
        try:
            parsed, found = _parse_override(item, key, text, interpolate)
        except (OmegaConfBaseException, yaml.YAMLError) as e:
            problems.append(Problem(f"override '{item}' could not be parsed: {' '.join(str(e).split())}", key))
            continue
        _deep_merge(merged, parsed)
        references.pop(".".join(key.split(".")[:2]), None)
        references.update(found)
    for key, value in (values or {}).items():
        if "." not in key:
            problems.append(Problem(f"'{key}' must name a section and a key, like train.lr{suggest_key(key)}", key))
            continue
        _deep_merge(merged, _nested(key, value))
        references.pop(".".join(key.split(".")[:2]), None)
    for section in merged:
        if section not in SECTION_TYPES:
            problems.append(Problem(f"unknown section '{section}'" + (
                suggest_key(section) if section in TRAINER_NAMES else closest(section, SECTION_TYPES)), section))
    sections = {name: _build_section(name, cls, merged.get(name), problems) for name, cls in SECTION_TYPES.items()}
    cfg = Config(**sections, env_references={k: v for k, v in references.items() if k in config_keys()})
    # Keys that failed their type check kept their defaults, so range checks stay meaningful.
    check_values(cfg, problems)
    if problems:
        raise UserError(problems)
    return cfg


def _read_file(path: Path, interpolate: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """The settings of a YAML file, and the environment references among them."""
    references: dict[str, Any] = {}
    try:
        if interpolate:
            raw = OmegaConf.load(path)
        else:
            merged = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OmegaConfBaseException, yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"config file '{path}' is not valid YAML: {' '.join(str(e).split())}") from None
    if interpolate:
        try:
            merged = _plain(raw) or {}
        except OmegaConfBaseException as e:  # e.g. ${oc.env:NAME} of a variable that is not set
            raise UserError(f"config file '{path}': {' '.join(str(e).split())}") from None
        references = _env_references(raw)
    if not isinstance(merged, dict):
        raise UserError(f"config file '{path}' must hold a mapping of sections, got {type(merged).__name__}")
    return merged, references


def _parse_override(item: str, key: str, text: str, interpolate: bool) -> tuple[dict, dict[str, Any]]:
    """One ``section.key=value`` override as nested settings, and its environment references."""
    if not interpolate:
        return _nested(key, yaml.safe_load(text) if text.strip() else None), {}
    node = OmegaConf.from_dotlist([item])
    return _plain(node), _env_references(node)


def _nested(key: str, value: Any) -> dict:
    """``a.b.c`` = v as {a: {b: {c: v}}}."""
    out: Any = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def _deep_merge(base: dict, update: dict) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = value


def config_yaml(cfg: Config, notes: dict[str, str] | None = None) -> str:
    """The config as YAML; ``notes`` ({"section.key": why}) become comments after their keys, so
    the saved file says which values were chosen automatically and why, and still loads as is."""
    lines, section = [], None
    for line in yaml.safe_dump(cfg.to_dict(), sort_keys=False).splitlines():
        if not line.startswith(" "):
            section = line.rstrip(":")
        elif not line.startswith("   ") and ":" in line:
            note = (notes or {}).get(f"{section}.{line.strip().split(':', 1)[0]}")
            if note:
                line += f"  # auto: {' '.join(note.split())}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def save_config(cfg: Config, path: str | Path, notes: dict[str, str] | None = None) -> None:
    """``config_yaml`` written to ``path`` atomically."""
    from textft.files import replace_file

    replace_file(path, config_yaml(cfg, notes))
