"""``/v1/models``: the jobs that succeeded, with their headline metrics; download, predict, push."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from textft.service.jobs import RUN_DIR
from textft.service.keys import Principal
from textft.service.models import (decision_thresholds, input_lengths, model_files, out_of_scope_settings,
                                   saved_config, tar_stream)
from textft.service.problems import ERROR_RESPONSES
from textft.service.routes_shared import auth, current_service, iso, owner_scope
from textft.service.core import Service
from textft.service.schemas import InputLength, ModelOut, PushBody, PushOut
from textft.service.store import Store
from textft.service.textft_api import (Problem, UserError, batched_logits, check_answer_options, hub_token,
                                      lower_is_better, model_task, predict_schemas, prediction_schema,
                                      public_model_name, push_model, request_items, task_headline)

router = APIRouter(tags=["models"], responses=ERROR_RESPONSES)
PredictRequest, _ = predict_schemas()
DOWNLOAD = {200: {"content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}},
                  "description": "the save_pretrained directory as a .tar.gz"}}


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
            "stop_reason": row["stop_reason"], "created_at": iso(row["finished_at"]),
            "size_bytes": sum(p.stat().st_size for p in model_files(run)) if run.is_dir() else 0,
            "owner": (names or service.store.key_names()).get(row["owner"])}


@router.get("/v1/models", response_model=list[ModelOut])
def list_models(who: Principal = Depends(auth), service: Service = Depends(current_service)) -> list[dict]:
    names = service.store.key_names()
    return [model_out(service, r, names) for r in service.store.models(owner_scope(who))]


@router.get("/v1/models/{model_id}", response_model=ModelOut)
def get_model(model_id: str, who: Principal = Depends(auth), service: Service = Depends(current_service)) -> dict:
    return model_out(service, model_row(service.store, model_id, who))


@router.get("/v1/models/{model_id}/download", responses=DOWNLOAD, response_class=StreamingResponse)
def download_model(model_id: str, who: Principal = Depends(auth),
                   service: Service = Depends(current_service)) -> StreamingResponse:
    """The model directory (weights, tokenizer, config, reports) as a streamed .tar.gz."""
    model_row(service.store, model_id, who)
    run = service.data.job(model_id) / RUN_DIR
    return StreamingResponse(tar_stream(run, model_id), media_type="application/gzip",
                             headers={"Content-Disposition": f'attachment; filename="{model_id}.tar.gz"'})


@router.post("/v1/models/{model_id}/predict", response_model=PredictOut, response_model_exclude_none=True)
async def predict(model_id: str, req: PredictRequest, explain: bool = False, who: Principal = Depends(auth),
                  service: Service = Depends(current_service)):
    """Same request and response as `textft serve`'s POST /predict. With `?explain=true` each
    prediction also tells how its text was read: `input: {tokens, max_length, truncated, mode,
    windows?}` (mode: head, tail, head+tail or window)."""
    opts = service.opts
    await run_in_threadpool(model_row, service.store, model_id, who)
    loaded = await service.models.get(model_id, service.data.job(model_id) / RUN_DIR)
    items = request_items(req.inputs, opts.max_texts, opts.max_chars, loaded.classifier.pairs)
    check_answer_options(loaded.classifier, req.top_k, req.return_all_scores)
    logits = await batched_logits(loaded.batcher, items)
    predictions = loaded.classifier.results(logits, top_k=req.top_k, return_all_scores=req.return_all_scores)
    service.metrics.predicted(len(items))
    if not explain:
        return {"predictions": predictions}
    lengths = await run_in_threadpool(input_lengths, loaded.classifier, items)
    return {"predictions": [{**p, "input": n} for p, n in zip(predictions, lengths)]}


@router.post("/v1/models/{model_id}/push", response_model=PushOut)
def push(model_id: str, body: PushBody, who: Principal = Depends(auth), service: Service = Depends(current_service)) -> dict:
    """Upload the model with a model card to the Hub, with the service's own token (HF_TOKEN)."""
    model_row(service.store, model_id, who)
    token = hub_token()
    if not token:
        raise UserError("the service has no Hugging Face token; its operator sets HF_TOKEN", kind="unavailable")
    try:
        url = push_model(service.data.job(model_id) / RUN_DIR, body.repo_id, body.private)
    except UserError as e:  # the token never reaches an answer, whatever a library put in its message
        raise UserError([Problem(p.replace(token, "***"), p.field, p.kind) for p in e.problems]) from None
    return {"url": url, "repo_id": body.repo_id}
