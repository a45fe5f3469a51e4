"""Jobs: from a request to a job directory that ``textft train`` runs as it is.

A request names uploaded datasets, a preset config (``textft configs list``), ``section.key``
overrides and optionally an Accelerate launch config. It is checked by the same config loader as
``textft train``, with every problem reported at once, and becomes ``job.yaml`` (the full,
validated config) plus ``job.json`` (what an executor needs to launch it).
"""

from __future__ import annotations

import dataclasses
import errno
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from textft.service.layout import DataDir, write_json
from textft.service.limits import Limits, job_problems
from textft.service.textft_api import (Problem, UserError, closest, config_yaml, load_config, model_positions,
                                       presets)

RUN_DIR = "run"
"""output.dir of every job, relative to the job's directory."""

SERVICE_KEYS = {
    "data.dataset": "a job trains on the uploaded 'dataset'",
    "data.dataset_config": "a job trains on the uploaded 'dataset'",
    "data.train_file": "set by 'dataset'",
    "data.source_name": "the name and id of the uploaded 'dataset'",
    "data.validation_file": "set by 'validation_dataset'",
    "data.test_file": "set by 'test_dataset'",
    "data.text_column": "chosen when the dataset was uploaded",
    "data.text_pair_column": "chosen when the dataset was uploaded",
    "data.label_column": "chosen when the dataset was uploaded",
    "output.dir": "the service chooses each job's directory",
    "output.overwrite": "the service chooses each job's directory",
    "output.push_to_hub": "push a finished model with POST /v1/models/{id}/push",
    "output.hub_repo_id": "push a finished model with POST /v1/models/{id}/push",
    "output.hub_private": "push a finished model with POST /v1/models/{id}/push",
    "output.log_errors": "the service records every job's failure itself",
    "train.resume_from": "the service resumes interrupted jobs itself",
}
"""Keys a job may not set, and why."""


def request_field(key: str | None, overrides: dict) -> str:
    """The request field of a problem with config key ``key`` (or section): the override that set it,
    else the preset."""
    if key in overrides:
        return f"overrides.{key}"
    within = [k for k in overrides if key and k.startswith(f"{key}.")]  # a problem with a whole section
    return f"overrides.{within[0]}" if within else "config"


# --- presets ----------------------------------------------------------------------------------


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict) and not prefix:
            out.update(_flat(value, f"{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@dataclass
class Catalog:
    """The preset configs and Accelerate launch configs jobs may name: the ones textft ships, and
    those of the team's own directories (laid out like ``textft/configs``; a name they share with a
    packaged preset replaces it)."""

    extra_dirs: tuple[Path, ...] = ()

    def presets(self) -> dict[str, Path]:
        return {name: p.path for name, p in presets("train", self.extra_dirs).items()}

    def accelerate_configs(self) -> dict[str, Path]:
        return {p.path.stem: p.path for p in presets("accelerate", self.extra_dirs).values()}

    def describe_presets(self) -> list[dict]:
        out = []
        for name, preset in presets("train", self.extra_dirs).items():
            raw = yaml.safe_load(preset.path.read_text(encoding="utf-8")) or {}
            settings = _flat(raw)
            out.append({"name": name, "summary": preset.summary, "description": preset.description,
                        "model": settings.get("model.name_or_path"),
                        "settings": {k: v for k, v in settings.items() if k not in SERVICE_KEYS}})
        return out

    def describe_accelerate(self) -> list[dict]:
        out = []
        for preset in presets("accelerate", self.extra_dirs).values():
            launch = launch_settings(preset.path)
            out.append({"name": preset.path.stem, "summary": preset.summary, "description": preset.description,
                        **launch})
        return out


def launch_settings(path: Path) -> dict:
    """What the service needs from an Accelerate config: processes, machines, GPUs."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    processes = int(raw.get("num_processes") or 1)
    cpu = bool(raw.get("use_cpu")) or raw.get("distributed_type") == "MULTI_CPU"
    return {"distributed_type": str(raw.get("distributed_type", "NO")), "num_processes": processes,
            "num_machines": int(raw.get("num_machines") or 1), "gpus": 0 if cpu else processes}


# --- submission -------------------------------------------------------------------------------


@dataclass
class JobRequest:
    dataset: str
    config: str = "quickstart"
    validation_dataset: str | None = None
    test_dataset: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    accelerate_config: str | None = None
    num_processes: int | None = None


@dataclass
class Settings:
    """Service-wide choices that shape every job."""

    save_every_steps: int = 100
    """Periodic checkpoint cadence unless the job sets train.save_every_steps (resume needs them)."""
    local_models: tuple[Path, ...] = ()
    """Directories under which model.name_or_path may name a local model."""


HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?$")
"""A Hub repository id: NAME or ORG/NAME."""


def _model_problem(name: Any, settings: Settings) -> str | None:
    """Why ``name`` may not be a job's model: a local path must be absolute and under --local-models; any
    other name must be a Hub id that is not also a path from the service's working directory, which
    transformers would load first. The answer names none of the server's directories."""
    if not isinstance(name, str) or name.startswith("builtin:"):
        return None
    use = "use a hub name (NAME or ORG/NAME), builtin:minilm or builtin:tiny-bert"
    local = name.startswith((".", "/", "~")) or name.count("/") > 1
    if not local:
        if not HUB_NAME.match(name) or ".." in name or name.endswith("."):
            return f"'model.name_or_path': '{name[:100]}' is not a hub name; {use}"
        if Path(name).exists():
            return (f"'model.name_or_path': '{name}' also names a file beside the service, which it will not load;"
                    f" name local models by their absolute path under the directories the operator allows"
                    f" (textft service --local-models), or {use}")
        return None
    path = Path(name).expanduser()
    resolved = path.resolve()
    if path.is_absolute() and any(resolved.is_relative_to(root.resolve()) for root in settings.local_models):
        return None
    allowed = (f"{len(settings.local_models)} director{'y' if len(settings.local_models) == 1 else 'ies'} the operator"
               " chose" if settings.local_models else "none (the operator allows them with textft service --local-models)")
    return (f"'model.name_or_path': local model '{name[:100]}' is not under a directory the service allows ({allowed},"
            f" named by absolute paths); {use}")


def check_request(req: JobRequest, datasets: dict[str, dict | None], catalog: Catalog,
                  settings: Settings, limits: Limits | None = None) -> tuple[Any, dict]:
    """The validated training config and the launch settings, or a UserError listing everything wrong, each
    problem with its request field.

    ``datasets`` maps each named dataset id to its record, or None when the caller may not see it.
    ``limits`` (the key's) bound what the job may ask for; they are checked once the config is valid.
    """
    problems: list[Problem] = []
    for fieldname in ("dataset", "validation_dataset", "test_dataset"):
        ds_id = getattr(req, fieldname)
        if ds_id is not None and datasets.get(ds_id) is None:
            visible = [i for i, d in datasets.items() if d is not None]
            problems.append(Problem(f"'{fieldname}': no dataset '{ds_id}'{closest(ds_id, visible)}", fieldname))
    presets = catalog.presets()
    if req.config not in presets:
        problems.append(Problem(f"'config': unknown preset '{req.config}'{closest(req.config, presets)};"
                                f" presets: {', '.join(presets) or 'none'}", "config"))
    launch = {"distributed_type": "NO", "num_processes": 1, "num_machines": 1, "gpus": None}
    if req.accelerate_config is not None:
        accel = catalog.accelerate_configs()
        if req.accelerate_config not in accel:
            problems.append(Problem(f"'accelerate_config': unknown launch config '{req.accelerate_config}'"
                                    f"{closest(req.accelerate_config, accel)}; available: {', '.join(accel) or 'none'}",
                                    "accelerate_config"))
        else:
            launch = launch_settings(accel[req.accelerate_config])
            if launch["num_machines"] > 1:
                problems.append(Problem(f"'accelerate_config': '{req.accelerate_config}' spans {launch['num_machines']}"
                                        " machines; a job runs on one machine (several GPUs are fine). Launch"
                                        " multi-node runs with accelerate launch on every node", "accelerate_config"))
    if req.num_processes is not None:
        if req.num_processes < 1:
            problems.append(Problem(f"'num_processes' must be >= 1, got {req.num_processes}", "num_processes"))
        launch["num_processes"] = req.num_processes
        if launch["gpus"]:
            launch["gpus"] = req.num_processes

    values = _override_values(req, settings, problems)
    train = datasets.get(req.dataset)
    service = _service_values(req, datasets, train, settings, problems)
    cfg = None
    if req.config in presets:
        try:
            cfg = load_config(presets[req.config], values={**values, **service})
        except UserError as e:
            problems += [Problem(p, request_field(p.field, req.overrides), p.kind) for p in e.problems]
        if cfg is not None and (problem := _model_problem(cfg.model.name_or_path, settings)):
            problems.append(Problem(problem, "config"))
    if problems:
        raise UserError(problems)
    if limits is not None:
        validation = datasets.get(req.validation_dataset) if req.validation_dataset else None
        n_train, _ = split_sizes(cfg, train, validation)
        bounds = job_problems(cfg, launch, req.overrides, limits, n_train, positions(cfg.model),
                              "num_processes" if req.num_processes is not None else "accelerate_config")
        if bounds:
            raise UserError([Problem(message, field) for field, message in bounds])
    return cfg, launch


_POSITIONS: dict[tuple, int | None] = {}


def positions(model) -> int | None:
    """Tokens per text the job's model reads, read once per model."""
    key = (model.name_or_path, model.revision)
    if key not in _POSITIONS:
        if len(_POSITIONS) >= 64:
            _POSITIONS.pop(next(iter(_POSITIONS)))
        _POSITIONS[key] = model_positions(model)
    return _POSITIONS[key]


def split_sizes(cfg, train: dict, val: dict | None) -> tuple[int, int]:
    """Training and validation examples of a job, as the run will split and cap them."""
    n = train["rows"]
    if val is not None:
        n_train, n_val = n, val["rows"]
    else:
        n_val = max(1, round(cfg.data.validation_split * n))
        n_train = n - n_val
    if cfg.data.max_train_samples:
        n_train = min(n_train, cfg.data.max_train_samples)
    if cfg.data.max_eval_samples:
        n_val = min(n_val, cfg.data.max_eval_samples)
    return n_train, n_val


def _override_values(req: JobRequest, settings: Settings, problems: list) -> dict[str, Any]:
    """The request's overrides a job may set, as plain values; a problem for each it may not."""
    values: dict[str, Any] = {}
    for key, value in req.overrides.items():
        if key in SERVICE_KEYS:
            problems.append(Problem(f"'{key}' cannot be set on a job: {SERVICE_KEYS[key]}", f"overrides.{key}"))
        elif key == "model.trust_remote_code" and value is not False:
            problems.append(Problem("'model.trust_remote_code' cannot be set on a job: model code from the Hub never"
                                    " runs on the service", f"overrides.{key}"))
        elif has_interpolation(value):
            problems.append(Problem(f"'{key}': ${{...}} is not interpolated on the service (settings are plain"
                                    " values, never read from the server's environment or other settings); give"
                                    " the value itself", f"overrides.{key}"))
        elif key == "model.name_or_path" and (problem := _model_problem(value, settings)):
            problems.append(Problem(problem, f"overrides.{key}"))
        else:
            values[key] = value
    return values


def _service_values(req: JobRequest, datasets: dict, train: dict | None, settings: Settings,
                    problems: list) -> dict[str, Any]:
    """The settings the service chooses for every job: its data files and columns, its directory."""
    service: dict[str, Any] = {"data.dataset": None, "data.dataset_config": None, "output.dir": RUN_DIR,
                               "output.overwrite": True, "output.push_to_hub": False, "output.log_errors": True}
    if train is not None:
        service.update({"data.train_file": rel_dataset(train), "data.source_name": f"{train['name']} ({train['id']})",
                        "data.text_column": train["text_column"],
                        "data.text_pair_column": train.get("text_pair_column"),
                        "data.label_column": train["label_column"]})
        if train["drop_empty"] and "data.drop_empty" not in req.overrides:
            service["data.drop_empty"] = True
        for fieldname, key in (("validation_dataset", "validation_file"), ("test_dataset", "test_file")):
            other = datasets.get(getattr(req, fieldname)) if getattr(req, fieldname) else None
            service[f"data.{key}"] = rel_dataset(other) if other else None
            if other is not None:
                problems += _compatible(fieldname, other, train)
    if "train.save_every_steps" not in req.overrides and settings.save_every_steps:
        service["train.save_every_steps"] = settings.save_every_steps
    return service


def has_interpolation(value: Any) -> bool:
    """Whether a request value (or a key or item inside it) holds ``${``, which OmegaConf would resolve."""
    if isinstance(value, str):
        return "${" in value
    if isinstance(value, dict):
        return any(has_interpolation(k) or has_interpolation(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(has_interpolation(v) for v in value)
    return False


def rel_dataset(record: dict) -> str:
    """A dataset's file as seen from a job's directory."""
    return f"../../datasets/{record['id']}/{Path(record['path']).name}"


def _compatible(fieldname: str, other: dict, train: dict) -> list[Problem]:
    """Problems ``textft train`` would find when reading ``other`` as a split next to ``train``."""
    split = fieldname.split("_")[0]
    problems = []
    for key in ("text_column", "text_pair_column", "label_column"):
        mine, theirs = other.get(key), train.get(key)
        if mine == theirs:
            continue
        what = key.replace("_", " ")
        if theirs is None:  # the training texts are single, these are pairs
            problems.append(Problem(f"'{fieldname}': it was uploaded with {key}={mine} (text pairs) but the training"
                                    f" dataset has single texts; upload it without {key}", fieldname))
        elif mine is None:
            problems.append(Problem(f"'{fieldname}': it has no {what} but the training dataset reads text pairs (its"
                                    f" {key} is '{theirs}'); upload it with {key}={theirs}", fieldname))
        else:
            problems.append(Problem(f"'{fieldname}': its {what} is '{mine}' but the training dataset's is"
                                    f" '{theirs}'; upload it with {key}={theirs}", fieldname))
    if problems:
        return problems
    unseen = sorted(set(other["labels"]) - set(train["labels"]))
    if unseen:
        names = sorted(train["labels"])
        problems.append(Problem(f"'{fieldname}': the {split} split has label(s) never seen in training:"
                                f" {', '.join(unseen[:10])}{closest(unseen[0], names)}; training labels:"
                                f" {', '.join(names[:20])}", fieldname))
    return problems


def write_job_dir(data: DataDir, job_id: str, cfg, launch: dict, accelerate_path: Path | None,
                  time_limit_s: float | None = None) -> Path:
    """The job's directory, complete before it becomes visible (built aside, then renamed); a full
    disk is a UserError of kind storage (507) with nothing left behind."""
    final = data.job(job_id)
    tmp = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{job_id}.tmp-", dir=data.jobs))
        # Resolved values only: the job reads this file without interpolation, so a preset's
        # ${oc.env:...} is written as the value the service read.
        (tmp / "job.yaml").write_text(config_yaml(dataclasses.replace(cfg, env_references={})), encoding="utf-8")
        if accelerate_path is not None:
            shutil.copyfile(accelerate_path, tmp / "accelerate.yaml")
        write_json(tmp / "job.json", {
            "id": job_id, "attempt": 1, "resume": False, "mixed_precision": cfg.train.mixed_precision,
            "accelerate_config": "accelerate.yaml" if accelerate_path is not None else None,
            "num_processes": launch["num_processes"], "gpus": launch["gpus"],
            "time_limit_s": time_limit_s, "time_used_s": 0.0})
        tmp.rename(final)
    except BaseException as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UserError("the service's disk is full; nothing was queued. Try again later or ask the operator to"
                            " free space", None, "storage") from None
        raise
    return final
