"""``/v1/models``: the jobs that succeeded, with their headline metrics; download, predict, push."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from textft.service.jobs import RUN_DIR
from textft.service.keys import Principal
from textft.service.models import (decision_thresholds, input_lengths, model_files, out_of_scope_settings,
                                   predict_path, saved_config, stored_adapter, tar_stream,
                                   tests_on_shared_test_sets)
from textft.service.problems import ERROR_RESPONSES
from textft.service.routes_shared import auth, current_service, iso, owner_scope
from textft.service.core import Service
from textft.service.schemas import InputLength, ModelOut, PushBody, PushOut
from textft.service.store import Store
from textft.service.textft_api import (Problem, UserError, adapter_subdir, adapter_summary, batched_logits,
                                      check_answer_options, hub_token, lower_is_better, model_task, predict_schemas,
                                      prediction_schema, public_model_name, push_model, repo_id_problems,
                                      request_items, task_headline, write_merged_weights)

router = APIRouter(tags=["models"], responses=ERROR_RESPONSES)
PredictRequest, _ = predict_schemas()
DOWNLOAD = {200: {"content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}},
                  "description": "the model directory (or with format=adapter, a LoRA model's adapter) as a .tar.gz"}}
FORMATS = {
    "model": "the save_pretrained classifier (plain transformers loads it), its tokenizer, textft's config and"
             " reports, and for a LoRA model its adapter in adapter/",
    "adapter": "the LoRA adapter alone in peft's format (adapter_config.json, adapter_model.safetensors with the"
               " head), its tokenizer and textft_adapter.json (labels, base model)",
}
"""What each ``?format=`` of a download holds."""


class ExplainedPrediction(prediction_schema()):
    input: InputLength | None = None
    """How its text was read (``?explain=true``)."""


class PredictOut(BaseModel):
    """The answer of `textft serve`'s POST /predict; with ``?explain=true`` each prediction has ``input``."""

    predictions: list[ExplainedPrediction]


def model_row(store: Store, model_id: str, who: Principal) -> dict:
    row = store.job(model_id)
    if row is None or not (who.admin or row["owner"] == who.id) or row["state"] != "succeeded":
        raise UserError(f"no model '{model_id}' (models are the jobs that succeeded)", kind="not_found")
    return row


def trained_settings(run: Path) -> dict:
    """A few ``section.key`` values of the run's saved config (what a client shows next to a model)."""
    import yaml

    try:
        saved = yaml.safe_load((run / "textft_config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return {}
    return {f"{section}.{key}": value for section, values in saved.items() if isinstance(values, dict)
            for key, value in values.items()}


def model_out(service: Service, row: dict, names: dict[str, str] | None = None) -> dict:
    run = service.data.job(row["id"]) / RUN_DIR
    metrics = row["metrics"] or {}
    trained = trained_settings(run)
    config = saved_config(run) or {}
    pair_column = trained.get("data.text_pair_column")
    task = model_task(config) if config else None
    # jobs that ended before metrics named their task kept the single-label numbers
    headline = metrics.get("headline") or list(task_headline(task))
    return {"id": row["id"], "job": row["id"], "config": row["config"], "dataset": row["dataset"],
            "base_model": public_model_name(trained.get("model.name_or_path")), "max_length": trained.get("data.max_length"),
            "truncation": trained.get("data.truncation"), "head_fraction": trained.get("data.head_fraction"),
            "task": task, "pairs": pair_column is not None,
            "text_pair_column": pair_column, "out_of_scope": out_of_scope_settings(run, config),
            "thresholds": decision_thresholds(config),
            "labels": metrics.get("labels"), "metrics": metrics.get("splits"), "best": metrics.get("best"),
            "headline": headline, "lower_is_better": [k for k in headline if lower_is_better(k)],
            "test_set": metrics.get("test_set"), "stop_reason": row["stop_reason"],
            "created_at": iso(row["finished_at"]),
            "size_bytes": sum(p.stat().st_size for p in model_files(run)) if run.is_dir() else 0,
            "owner": (names or service.store.key_names()).get(row["owner"]), **storage(run)}


def storage(run: Path) -> dict:
    """How a model is stored and what each download holds: a LoRA model as its adapter on a base model
    (``adapter`` says which, and its settings), any other as its full weights."""
    adapter = stored_adapter(run)
    if adapter is None:
        has_adapter = (adapter_subdir(run) / "adapter_config.json").is_file()
        return {"stored_as": "model", "adapter": None,
                "downloads": {k: v for k, v in FORMATS.items() if k == "model" or has_adapter}}
    return {"stored_as": "adapter", "adapter": {**adapter_summary(adapter), "size_bytes": sum(
        p.stat().st_size for p in adapter.rglob("*") if p.is_file())},
            "downloads": {"model": FORMATS["model"] + " (the merged weights are rebuilt from the base model and"
                                                      " the adapter for each download)", "adapter": FORMATS["adapter"]}}


@router.get("/v1/models", response_model=list[ModelOut])
def list_models(who: Principal = Depends(auth), service: Service = Depends(current_service)) -> list[dict]:
    names = service.store.key_names()
    models = [model_out(service, r, names) for r in service.store.models(owner_scope(who))]
    tests_on_shared_test_sets(models, lambda job: service.data.job(job) / RUN_DIR)
    return models


@router.get("/v1/models/{model_id}", response_model=ModelOut)
def get_model(model_id: str, who: Principal = Depends(auth), service: Service = Depends(current_service)) -> dict:
    model_row(service.store, model_id, who)  # 404 unless it is a model this key may see
    # as listed: its comparison with the other models on the same test set is part of it
    return next(m for m in list_models(who, service) if m["id"] == model_id)


@router.get("/v1/models/{model_id}/download", responses=DOWNLOAD, response_class=StreamingResponse)
def download_model(model_id: str, format: Literal["model", "adapter"] = "model", who: Principal = Depends(auth),
                   service: Service = Depends(current_service)) -> StreamingResponse:
    """The model as a streamed .tar.gz. `format=model` (default): the save_pretrained directory (weights,
    tokenizer, config, reports; a LoRA model's merged weights are rebuilt from its base and adapter);
    `format=adapter`: a LoRA model's adapter alone, in peft's format."""
    model_row(service.store, model_id, who)
    run = service.data.job(model_id) / RUN_DIR
    headers = {"Content-Disposition": f'attachment; filename="{model_id}{"-adapter" if format == "adapter" else ""}.tar.gz"'}
    if format == "adapter":
        adapter = adapter_subdir(run)
        if not (adapter / "adapter_config.json").is_file():
            raise UserError(f"model '{model_id}' has no LoRA adapter (it was not trained with model.transfer=lora);"
                            " download it with format=model", kind="not_found")
        return StreamingResponse(tar_stream(adapter, f"{model_id}-adapter"), media_type="application/gzip",
                                 headers=headers)
    if (adapter := stored_adapter(run)) is None:
        return StreamingResponse(tar_stream(run, model_id), media_type="application/gzip", headers=headers)
    merged = merged_copy(run, adapter, service.data.cache, model_id)
    return StreamingResponse(removed_after(tar_stream(merged, model_id), merged), media_type="application/gzip",
                             headers=headers)


def merged_copy(run: Path, adapter: Path, cache: Path, model_id: str) -> Path:
    """A LoRA model stored as its adapter, as the save_pretrained directory it was trained into: its files
    copied into a new directory under ``cache`` with the merged weights rebuilt. The caller removes it."""
    merged = Path(tempfile.mkdtemp(prefix=f".{model_id}-merged-", dir=cache))
    try:
        for path in model_files(run):
            (merged / path.relative_to(run)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, merged / path.relative_to(run))
        write_merged_weights(adapter, merged)
    except BaseException:
        shutil.rmtree(merged, ignore_errors=True)
        raise
    return merged


def removed_after(chunks, directory: Path):
    """``chunks``, then ``directory`` removed (also when the client leaves halfway)."""
    try:
        yield from chunks
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@router.post("/v1/models/{model_id}/predict", response_model=PredictOut, response_model_exclude_none=True)
async def predict(model_id: str, req: PredictRequest, explain: bool = False, who: Principal = Depends(auth),
                  service: Service = Depends(current_service)):
    """Same request and response as `textft serve`'s POST /predict. With `?explain=true` each
    prediction also tells how its text was read: `input: {tokens, max_length, truncated, mode,
    windows?}` (mode: head, tail, head+tail or window)."""
    opts = service.opts
    await run_in_threadpool(model_row, service.store, model_id, who)
    path = predict_path(service.data.job(model_id) / RUN_DIR)
    loaded = await service.models.get(model_id, path)
    items = request_items(req.inputs, opts.max_texts, opts.max_chars, loaded.classifier.pairs)
    check_answer_options(loaded.classifier, req.top_k, req.return_all_scores)
    # through the cache: a model evicted by another request meanwhile is found again, not a 500
    outputs = await batched_logits(service.models.batcher(model_id, path), items)
    predictions = loaded.classifier.results(outputs, top_k=req.top_k, return_all_scores=req.return_all_scores)
    service.metrics.predicted(len(items))
    if not explain:
        return {"predictions": predictions}
    lengths = await run_in_threadpool(input_lengths, loaded.classifier, items)
    return {"predictions": [{**p, "input": n} for p, n in zip(predictions, lengths)]}


def push_token(body: PushBody, who: Principal) -> str:
    """The token this push uses: the caller's own, or the service's for a namespace the key was given."""
    if body.token is not None:
        if not body.token.strip():
            raise UserError("'token': empty; send your Hugging Face token or leave 'token' out", "token")
        return body.token.strip()
    namespace = body.repo_id.split("/")[0] if "/" in body.repo_id else None
    if not who.hub_namespaces:
        raise UserError("this key may not push with the service's token (it was created without --hub-namespace);"
                        " send your own Hugging Face token as 'token'", "repo_id", "forbidden")
    if namespace not in who.hub_namespaces:
        raise UserError(f"with the service's token this key pushes only into {', '.join(who.hub_namespaces)} (as"
                        f" ORG/NAME); send your own Hugging Face token as 'token' to push elsewhere", "repo_id", "forbidden")
    token = hub_token()
    if not token:
        raise UserError("the service has no Hugging Face token; its operator sets HF_TOKEN", kind="unavailable")
    return token


@router.post("/v1/models/{model_id}/push", response_model=PushOut)
def push(model_id: str, body: PushBody, who: Principal = Depends(auth), service: Service = Depends(current_service)) -> dict:
    """Upload the model with a model card to the Hub: with the caller's own token, or with the
    service's (HF_TOKEN) into the namespaces the key was created for."""
    model_row(service.store, model_id, who)
    if problems := repo_id_problems(body.repo_id):
        raise UserError(problems)
    token = push_token(body, who)
    run = service.data.job(model_id) / RUN_DIR
    # a LoRA model stored as its adapter is pushed as the merged model it downloads as
    adapter = stored_adapter(run)
    folder = merged_copy(run, adapter, service.data.cache, model_id) if adapter else run
    hidden = {t: "***" for t in (token, hub_token()) if t} | {str(folder): f"model {model_id}", str(run): f"model {model_id}"}
    try:
        url = push_model(folder, body.repo_id, body.private, token=body.token and token)
    except UserError as e:  # no token and no server path reaches an answer, whatever a library put in its message
        problems = list(e.problems)
        for secret, shown in hidden.items():
            problems = [Problem(p.replace(secret, shown), p.field, p.kind) for p in problems]
        raise UserError(problems) from None
    finally:
        if folder != run:
            shutil.rmtree(folder, ignore_errors=True)
    return {"url": url, "repo_id": body.repo_id}
