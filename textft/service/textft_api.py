"""Every name the service takes from the rest of textft, in one place.

The service schedules and serves what the other modules build; it never reaches into their
internals. Heavy modules (torch, transformers, datasets) are imported on first use, so that the
key commands and the HTTP front stay quick to start.
"""

from __future__ import annotations

from textft.version import __version__
from textft.config import Config, DataConfig, ModelConfig, UserError, closest, config_yaml, load_config, save_config
from textft.files import DATA_FORMATS
from textft.presets import presets
from textft.out_of_scope import OOS_KEY  # light: numpy only; torch and transformers load on first use
from textft.tasks import DEFAULT_TASK, describe_tasks  # light as well: numpy, and torch on first use
from textft.tasks.multi_label import THRESHOLDS_KEY
from textft.recipe import Facts  # the recipe's inputs, as /v1/recipe answers them (torch loads on first use)
from textft import run_events
from textft.errors import KINDS, Problem
from textft.files import set_umask
from textft.micro_batching import Retired  # light: asyncio and numpy
from textft.run_events import (BestRecord, EndRecord, EvalRecord, NewerSchema, PlanRecord, Record, RunSummary,
                               TrainRecord, summarize, to_dict)

__all__ = ["__version__", "Config", "DataConfig", "ModelConfig", "UserError", "closest", "config_yaml", "load_config", "save_config",
           "presets", "serve_local_docs", "set_umask",
           "data_formats", "load_splits", "load_classifier", "predict_schemas", "prediction_schema", "task_schema", "request_items", "check_answer_options", "batched_logits", "micro_batcher",
           "recipe_facts", "count_evaluations", "model_positions", "task_default_metric", "task_one_class_per_text", "task_headline", "task_outputs", "model_task", "DEFAULT_TASK", "describe_tasks",
           "test_set_key", "versus_best",
           "resolve_recipe", "launch_precision", "lower_is_better", "public_model_name", "push_model", "repo_id_problems", "hub_token", "OOS_KEY",
           "THRESHOLDS_KEY", "run_events", "KINDS", "Problem", "BestRecord", "EndRecord", "EvalRecord", "NewerSchema",
           "PlanRecord", "Record", "RunSummary", "TrainRecord", "summarize",
           "is_adapter_dir", "adapter_subdir", "adapter_base", "adapter_summary", "shared_base",
           "write_merged_weights", "transfer_options", "Retired"]


def data_formats() -> tuple[str, ...]:
    """File extensions ``textft train`` reads."""
    return tuple(DATA_FORMATS)


def load_splits(cfg: DataConfig, seed: int = 42):
    """textft.data.load_splits: the checks and messages of ``textft train``."""
    from textft.data import load_splits as load

    return load(cfg, seed)


def load_classifier(model_dir, device: str, precision: str = "auto", shared=None):
    """textft.load; ``shared``: (shared_base(...), name) runs an adapter directory on that base."""
    from textft.classifier import Classifier

    return Classifier.from_pretrained(model_dir, device=device, precision=precision, shared=shared)


def is_adapter_dir(path) -> bool:
    """Whether ``path`` holds a LoRA adapter in peft's format (adapter_config.json)."""
    from textft.lora import is_adapter_dir as check

    return check(path)


def adapter_subdir(run):
    """Where a LoRA run directory keeps its adapter alone (output.save_adapter)."""
    from textft.lora import ADAPTER_DIR

    return run / ADAPTER_DIR


def adapter_base(path) -> tuple[str, str | None]:
    """(location, revision) of the base model an adapter directory belongs on."""
    from textft.shared_base import base_key

    return base_key(path)


def shared_base(key: tuple[str, str | None], device: str):
    """One copy of a base model that adapters attach to (textft.shared_base), loaded with its first adapter."""
    import torch

    from textft.shared_base import SharedBase

    return SharedBase(key[0], key[1], torch.device(device))


def adapter_summary(path) -> dict:
    """What a client shows of an adapter: rank, alpha, dropout, target layers."""
    import json

    from textft.lora import ADAPTER_CONFIG

    try:
        config = json.loads((path / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    targets = config.get("target_modules") or []
    layers = sorted({t.rsplit(".layer.", 1)[-1].split(".", 1)[-1] for t in targets}) if isinstance(targets, list) else targets
    return {"rank": config.get("r"), "alpha": config.get("lora_alpha"), "dropout": config.get("lora_dropout"),
            "target_modules": layers, "trained_in_full": sorted(set(config.get("modules_to_save") or []))}


def write_merged_weights(adapter, dst) -> None:
    """The merged classifier's weights (model.safetensors) of an adapter directory, written into ``dst``."""
    import shutil
    import tempfile
    from pathlib import Path

    from textft.lora import load_adapter_model

    model, _ = load_adapter_model(adapter)
    with tempfile.TemporaryDirectory(dir=dst) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        for file in Path(tmp).iterdir():
            if file.name.startswith("model") and file.name.endswith((".safetensors", ".json")):
                shutil.move(str(file), Path(dst) / file.name)


def transfer_options() -> dict:
    """model.transfer's choices, and the LoRA keys (model.lora_*) with their defaults, types and meaning."""
    import dataclasses

    from textft.config_help import field_docs
    from textft.config_schema import TRANSFERS

    docs = field_docs(ModelConfig)
    lora = [{"key": f"model.{f.name}", "default": f.default, "type": type(f.default).__name__,
             "help": docs.get(f.name, "")} for f in dataclasses.fields(ModelConfig) if f.name.startswith("lora_")]
    return {"transfers": list(TRANSFERS), "help": docs.get("transfer", ""), "lora": lora}


def task_schema():
    """The response model of one task in ``GET /v1/tasks`` (``textft serve``'s ``GET /tasks``)."""
    from textft.serving import TaskInfo

    return TaskInfo


def predict_schemas():
    """(request model, response model) of ``textft serve``'s POST /predict."""
    from textft.serving import PredictRequest, PredictResponse

    return PredictRequest, PredictResponse


def prediction_schema():
    """The model of one prediction of ``textft serve``'s POST /predict."""
    from textft.serving import Prediction

    return Prediction


def request_items(inputs, max_texts: int, max_chars: int, model_pairs: bool | None) -> list[tuple[str, str | None]]:
    """The (text, text_pair) items of a POST /predict body, checked as ``textft serve`` checks them."""
    from textft.serving import request_items as check

    return check(inputs, max_texts, max_chars, model_pairs)


def check_answer_options(classifier, top_k, return_all_scores) -> None:
    """422 for answer options the model cannot give, as ``textft serve`` answers them."""
    from textft.serving import check_answer_options as check

    check(classifier, top_k, return_all_scores)


async def batched_logits(batcher, items: list):
    """Logits through ``textft serve``'s micro-batcher, with its 503 (busy) and 500 (failed) answers."""
    from textft.serving import batched_logits as run

    return await run(batcher, items)


def serve_local_docs(app) -> None:
    """``textft serve``'s /docs: Swagger UI from the fastapi-offline package's files, never a CDN."""
    from textft.serving import serve_local_docs as serve

    serve(app)


def micro_batcher(classifier, max_batch_size: int, max_wait_s: float):
    """``textft serve``'s micro-batcher over ``classifier``: submit (text, text_pair) items, get logits."""
    from textft.micro_batching import MicroBatcher
    from textft.serving import model_runner

    return MicroBatcher(model_runner(classifier, max_batch_size), max_batch_size, max_wait_s)


def recipe_facts(model: ModelConfig, label_names: list[str]) -> tuple[int, bool]:
    """(non-embedding parameters, whether the head starts fresh) of the model ``textft train`` would build."""
    from textft.modeling import build_model
    from textft.recipe import head_is_fresh, non_embedding_params

    built, initialised_here = build_model(model, label_names)
    return non_embedding_params(built), head_is_fresh(built, initialised_here)


def count_evaluations(total_steps: int, every: int, per_epoch: int) -> int:
    """Validation passes of a run of ``total_steps`` (counted, not listed: nothing grows with the steps)."""
    from textft.recipe import count_evaluations as count

    return count(total_steps, every, per_epoch)


def model_positions(model: ModelConfig) -> int | None:
    """Tokens per text the model reads (None when its config cannot be read here)."""
    from textft.modeling import model_positions as positions

    return positions(model)


def task_default_metric(task: str) -> str:
    """The validation metric ``textft train`` picks the best model by for ``task`` when
    train.metric_for_best is auto."""
    from textft.tasks import task_class

    return task_class(task).default_metric


def task_one_class_per_text(task: str) -> bool:
    """Whether each text of ``task`` has exactly one class (examples per class can be counted)."""
    from textft.tasks import task_class

    return task_class(task).one_class_per_text


def task_headline(task: str | None) -> tuple[str, ...]:
    """The metrics a run of ``task`` is summarised by, in its report's order (a run from before
    tasks existed is single-label); the calibration error is left to the report."""
    from textft.tasks import task_class

    return tuple(k for k in task_class(task or DEFAULT_TASK).headline if k != "ece")


def task_outputs(task: str, label_names: list[str]) -> list[str]:
    """The outputs of the head ``textft train`` builds for ``task`` from a dataset's label names."""
    from textft.tasks import task_class

    return task_class(task).output_names(label_names)


def test_set_key(run) -> str | None:
    """The fingerprint of the examples a run's test split holds (from predictions/test.jsonl), None
    without one: models with equal keys were scored on the same test set."""
    from textft.files import read_jsonl
    from textft.significance import examples_key

    path = run / "predictions" / "test.jsonl"
    return examples_key(read_jsonl(path)) if path.is_file() else None


def versus_best(task: str, metric: str, best_run, other_run) -> dict:
    """``textft compare``'s paired test of ``metric`` between two runs' test predictions (other minus best)."""
    from textft.files import read_jsonl
    from textft.significance import paired_test
    from textft.tasks import task_class

    rows = [read_jsonl(r / "predictions" / "test.jsonl") for r in (best_run, other_run)]
    return paired_test(task_class(task), metric, *rows).to_dict()


def model_task(config: dict) -> str | None:
    """The task (single_label, multi_label, regression) of a saved model's config.json, None if unreadable."""
    from textft.tasks import from_model_config

    try:
        return from_model_config(config).name
    except UserError:
        return None


def resolve_recipe(cfg: Config, **facts) -> tuple[Config, dict[str, str], dict]:
    """The config ``textft train`` would run with these facts, why each auto value was chosen, and the
    plan record its train_log.jsonl would open with."""
    from textft.recipe import resolve

    facts = Facts(**facts)
    resolved, why, plan = resolve(cfg, facts)
    return resolved, why, to_dict(plan.record(facts.global_batch, facts.task))


def launch_precision(requested: str) -> str:
    """The mixed precision ``textft train`` would pick on this machine for ``requested``, as
    ``accelerate launch --mixed_precision`` names it (no, bf16, fp16)."""
    from textft.precision import ACCELERATE_NAMES, training_precision

    chosen = training_precision(requested)
    return ACCELERATE_NAMES.get(chosen, chosen)


def push_model(model_dir, repo_id: str, private: bool, token: str | None = None) -> str:
    """``textft push``: problems name the request field ``repo_id``; ``token`` pushes as its holder."""
    from textft.hub import push_to_hub

    return push_to_hub(model_dir, repo_id, private=private, repo_key="repo_id", token=token)


def repo_id_problems(repo_id: str) -> list[Problem]:
    from textft.hub import repo_id_problems as problems

    return problems(repo_id, "repo_id")


def hub_token() -> str | None:
    """The Hugging Face token this process would push with (HF_TOKEN or a stored login)."""
    from huggingface_hub import get_token

    return get_token()


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of this validation metric is the better model (loss, MAE, RMSE, ...)."""
    from textft.tasks import LOWER_IS_BETTER

    return metric in LOWER_IS_BETTER


def public_model_name(name_or_path: str | None) -> str | None:
    """A base model as clients may see it: hub names as they are, a server path reduced to its last part."""
    from textft.serving import public_model_name as public

    return public(name_or_path)
