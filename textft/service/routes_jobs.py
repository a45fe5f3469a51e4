"""``/v1/jobs``: queue a fine-tuning job, list and follow it (state, live events, log, report), cancel
and delete it; ``/v1/recipe``: what the auto recipe would choose for a job, without queueing it."""

from __future__ import annotations

import json
import math
import shutil
import statistics
import time
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from textft.service.jobs import RUN_DIR, JobRequest, Problems, check_request, split_sizes, write_job_dir
from textft.service.keys import Principal
from textft.service.limits import Refused, storage_message
from textft.service.routes_shared import accepting, auth, current_service, iso, key_names, max_queued, new_id, owned, scope
from textft.service.scheduler import read_new_lines
from textft.service.core import Service
from textft.service.store import ACTIVE, FINISHED, add_event, dumps
from textft.service.textft_api import (DEFAULT_TASK, UserError, closest, recipe_facts, resolve_recipe,
                                      task_default_metric, task_one_class_per_text, task_outputs)

router = APIRouter(tags=["jobs"])
EVENTS = {200: {"content": {"text/event-stream": {}},
                "description": "Server-Sent Events: `state`, `plan` and `log` (each train_log.jsonl"
                               " entry), each with an id; reconnect with Last-Event-ID"}}
HIDDEN = {"output.dir", "output.overwrite", "output.push_to_hub", "output.hub_repo_id", "output.hub_private",
          "data.train_file", "data.validation_file", "data.test_file", "train.resume_from"}
"""Settings the service chooses itself, left out of what /v1/recipe shows."""


class JobBody(BaseModel):
    """Body of POST /v1/jobs and POST /v1/recipe."""

    model_config = ConfigDict(extra="forbid")
    dataset: StrictStr = Field(description="id of the training dataset (POST /v1/datasets)")
    validation_dataset: StrictStr | None = Field(None, description="id of a validation dataset; default: a"
                                                 " stratified data.validation_split of the training data")
    test_dataset: StrictStr | None = Field(None, description="id of a test dataset, evaluated once at the end")
    config: StrictStr = Field("quickstart", description="preset name (GET /v1/presets)")
    overrides: dict[StrictStr, Any] = Field(default_factory=dict,
                                            description='section.key settings, e.g. {"train.lr": 3e-5}')
    accelerate_config: StrictStr | None = Field(None, description="launch config (GET /v1/accelerate-configs)")
    num_processes: StrictInt | None = Field(None, description="processes (GPUs) for an accelerate_config")


def job_out(service: Service, row: dict, names: dict[str, str] | None = None) -> dict:
    out = {k: row[k] for k in ("id", "state", "config", "overrides", "accelerate_config", "dataset",
                               "validation_dataset", "test_dataset", "attempt", "worker", "error",
                               "stop_reason")}
    out.update(created_at=iso(row["created_at"]), started_at=iso(row["started_at"]),
               finished_at=iso(row["finished_at"]), cancel_requested=bool(row["cancel_requested"]),
               progress=row["progress"], metrics=row["metrics"],
               owner=(names or key_names(service.store)).get(row["owner"]))
    if row["state"] == "queued":
        out["queue_position"] = service.store.row(
            "SELECT COUNT(*) AS n FROM jobs WHERE state = 'queued' AND (priority > ? OR priority = ? AND seq < ?)",
            row["priority"], row["priority"], row["seq"])["n"] + 1
    return out


def job_request(service: Service, body: JobBody, who: Principal):
    ids = {i for i in (body.dataset, body.validation_dataset, body.test_dataset) if i}
    where, args = scope(who)
    visible = {r["id"]: r for r in service.store.rows(f"SELECT * FROM datasets WHERE 1{where}", *args)}
    records = {**{i: visible.get(i) for i in ids}, **visible}
    req = JobRequest(dataset=body.dataset, config=body.config, validation_dataset=body.validation_dataset,
                     test_dataset=body.test_dataset, overrides=body.overrides,
                     accelerate_config=body.accelerate_config, num_processes=body.num_processes)
    cfg, launch = check_request(req, records, service.catalog, service.settings, service.limits.for_key(who))
    return req, cfg, launch, records


@router.post("/v1/jobs", status_code=201)
def create_job(body: JobBody, who: Principal = Depends(auth), service: Service = Depends(current_service)) -> dict:
    """Queue a fine-tuning job: `textft train` with the preset, the overrides and the uploaded data."""
    accepting(service)
    store = service.store
    req, cfg, launch, _ = job_request(service, body, who)
    limits = service.limits.for_key(who)
    if limits.max_storage_bytes is not None and (used := service.storage.used(who.id)) >= limits.max_storage_bytes:
        raise Refused(507, [("body", storage_message(used, limits.max_storage_bytes))])
    limit = max_queued(service, who)
    job_id = new_id("job")
    accel = service.catalog.accelerate_configs().get(req.accelerate_config) if req.accelerate_config else None
    write_job_dir(service.data, job_id, cfg, launch, accel, time_limit_s=limits.job_seconds)
    try:
        # The count and the insert are one transaction: concurrent requests cannot all pass the check.
        with store.transaction() as db:
            queued = db.execute("SELECT COUNT(*) FROM jobs WHERE owner = ? AND state = 'queued'", (who.id,)).fetchone()[0]
            if queued >= limit:
                raise HTTPException(429, f"this key has {queued} queued job(s), its limit; wait until some start or"
                                         " cancel one")
            db.execute("INSERT INTO jobs (id, owner, state, config, overrides, accelerate_config, dataset,"
                       " validation_dataset, test_dataset, created_at) VALUES (?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?)",
                       (job_id, who.id, req.config, dumps(req.overrides), req.accelerate_config, req.dataset,
                        req.validation_dataset, req.test_dataset, time.time()))
            add_event(db, job_id, "state", {"state": "queued", "attempt": 1})
    except BaseException:
        shutil.rmtree(service.data.job(job_id), ignore_errors=True)
        raise
    service.queue.enqueue(job_id, 1)
    service.notifier.notify()
    return job_out(service, store.row("SELECT * FROM jobs WHERE id = ?", job_id))


@router.get("/v1/jobs")
def list_jobs(state: str | None = None, who: Principal = Depends(auth),
              service: Service = Depends(current_service)) -> list[dict]:
    where, args = scope(who)
    if state is not None:
        if state not in ACTIVE + FINISHED:
            raise HTTPException(422, f"'state' must be one of {', '.join(ACTIVE + FINISHED)}, got"
                                     f" '{state}'{closest(state, ACTIVE + FINISHED)}")
        where, args = where + " AND state = ?", (*args, state)
    names = key_names(service.store)
    return [job_out(service, r, names)
            for r in service.store.rows(f"SELECT * FROM jobs WHERE 1{where} ORDER BY seq", *args)]


@router.get("/v1/jobs/{job_id}")
def get_job(job_id: str, who: Principal = Depends(auth), service: Service = Depends(current_service)) -> dict:
    return job_out(service, owned(service.store, "jobs", "job", job_id, who))


@router.get("/v1/jobs/{job_id}/events", responses=EVENTS)
async def job_events(job_id: str, request: Request, after: int | None = None, who: Principal = Depends(auth),
                     service: Service = Depends(current_service)) -> StreamingResponse:
    store = service.store
    await run_in_threadpool(owned, store, "jobs", "job", job_id, who)
    header = request.headers.get("last-event-id", "")
    last = int(header) if header.strip().isdigit() else (after or 0)

    async def stream():
        nonlocal last
        yield "retry: 2000\n\n"
        while True:
            rows = await run_in_threadpool(
                store.rows, "SELECT id, type, data FROM events WHERE job_id = ? AND id > ? ORDER BY id LIMIT 500",
                job_id, last)
            for r in rows:
                yield f"id: {r['id']}\nevent: {r['type']}\ndata: {json.dumps(r['data'])}\n\n"
                last = r["id"]
            if rows:
                continue
            job = await run_in_threadpool(store.row, "SELECT state, event_seq FROM jobs WHERE id = ?", job_id)
            if job is None or job["state"] in FINISHED and job["event_seq"] <= last or not service.accepting:
                return
            if await request.is_disconnected():
                return
            if not await service.notifier.wait(15.0):
                yield ": keep-alive\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/v1/jobs/{job_id}/log", response_class=PlainTextResponse)
def job_log(job_id: str, lines: int = 200, who: Principal = Depends(auth),
            service: Service = Depends(current_service)) -> PlainTextResponse:
    """The last lines of the job's output (all attempts)."""
    owned(service.store, "jobs", "job", job_id, who)
    lines = min(max(lines, 1), 5000)
    path = service.data.job(job_id) / "job.log"
    size = path.stat().st_size if path.exists() else 0
    text, _ = read_new_lines(path, max(0, size - 512 * 1024)) if size else ([], 0)
    return PlainTextResponse("\n".join(text[-lines:]) + ("\n" if text else ""))


@router.post("/v1/jobs/{job_id}/cancel")
def cancel_job(job_id: str, who: Principal = Depends(auth), service: Service = Depends(current_service)) -> JSONResponse:
    """Queued: cancelled at once (200). Running: SIGTERM to its process group (202); the state
    becomes cancelled once it has stopped."""
    store = service.store
    job = owned(store, "jobs", "job", job_id, who)
    if job["state"] in FINISHED:
        raise HTTPException(409, f"job '{job_id}' has already {job['state']}")
    (service.data.job(job_id) / "cancel").touch()
    with store.transaction() as db:
        state = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
        if state == "queued":
            db.execute("UPDATE jobs SET state = 'cancelled', cancel_requested = 1, finished_at = ?,"
                       " stop_reason = 'cancelled' WHERE id = ?", (time.time(), job_id))
            add_event(db, job_id, "state", {"state": "cancelled", "stop_reason": "cancelled"})
        elif state == "running":
            db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
            add_event(db, job_id, "state", {"state": "running", "cancel_requested": True})
    service.notifier.notify()
    row = store.row("SELECT * FROM jobs WHERE id = ?", job_id)
    return JSONResponse(job_out(service, row), status_code=200 if row["state"] == "cancelled" else 202)


@router.get("/v1/jobs/{job_id}/report", response_class=FileResponse)
def job_report(job_id: str, who: Principal = Depends(auth), service: Service = Depends(current_service)):
    """The run's report.html (self-contained: plots embedded)."""
    job = owned(service.store, "jobs", "job", job_id, who)
    path = service.data.job(job_id) / RUN_DIR / "report.html"
    if not path.is_file():
        raise HTTPException(404, f"job '{job_id}' has no report ({job['state']}); reports are written when"
                                 " training finishes")
    return FileResponse(path, media_type="text/html")


@router.delete("/v1/jobs/{job_id}", status_code=204)
async def delete_job(job_id: str, who: Principal = Depends(auth), service: Service = Depends(current_service)) -> Response:
    """A finished job, its files and its model."""
    def remove():
        owned(service.store, "jobs", "job", job_id, who)
        with service.store.transaction() as db:
            state = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
            if state in ACTIVE:
                raise HTTPException(409, f"job '{job_id}' is {state}; cancel it first")
            db.execute("DELETE FROM events WHERE job_id = ?", (job_id,))
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    await run_in_threadpool(remove)
    await service.models.evict(job_id)
    await run_in_threadpool(shutil.rmtree, service.data.job(job_id), True)
    service.storage.forget(job_id)
    return Response(status_code=204)


@router.post("/v1/recipe")
async def recipe(body: JobBody, who: Principal = Depends(auth), service: Service = Depends(current_service)) -> dict:
    """The values the auto recipe would choose for this job, each with its reason (nothing is queued)."""
    req, cfg, launch, records = await run_in_threadpool(job_request, service, body, who)
    train = records[req.dataset]
    # the task the run will train: the one the job names, else what the loader found in the upload
    task = cfg.data.task if cfg.data.task != "auto" else await dataset_task(service, train, who.id)
    # the model, the plan and the answer off the event loop: building them takes a while
    return await run_in_threadpool(recipe_answer, req, cfg, launch, records, task)


def recipe_answer(req: JobRequest, cfg, launch: dict, records: dict, task: str) -> dict:
    train = records[req.dataset]
    labels = task_outputs(task, list(train["labels"]))
    n_train, n_val = split_sizes(cfg, train, records.get(req.validation_dataset) if req.validation_dataset else None)
    global_batch = cfg.train.batch_size * cfg.train.grad_accum_steps * launch["num_processes"]
    try:
        params, fresh = backbone_facts(cfg.model, labels)
    except UserError as e:
        raise Problems([(("overrides.model.name_or_path" if "model.name_or_path" in req.overrides else "config"), p)
                        for p in e.problems]) from None
    per_epoch = max(1, math.ceil(n_train / global_batch))
    facts = {"non_embedding_params": params, "fresh_head": fresh, "pretrained_encoder": not cfg.model.random_init,
             "n_train": n_train, "n_validation": n_val, "num_labels": len(labels), "global_batch": global_batch,
             "steps_per_epoch": per_epoch, "task": task, "default_metric": task_default_metric(task),
             "pairs": cfg.data.text_pair_column is not None,
             "examples_per_class": per_class_median(train, n_train) if task_one_class_per_text(task) else None}
    try:
        resolved, why = resolve_recipe(cfg, **facts)
    except UserError as e:  # an explicit transfer mode the upload cannot use
        raise Problems([("overrides.model.transfer" if "model.transfer" in req.overrides else "config", p)
                        for p in e.problems]) from None
    auto = {key: {"value": resolved.to_dict()[key.split(".", 1)[0]][key.split(".", 1)[1]], "reason": reason}
            for key, reason in why.items()}
    total = resolved.train.max_steps or max(1, round(resolved.train.epochs * per_epoch))
    return {"config": req.config, "auto": auto, "facts": facts,
            "plan": {"total_steps": total, "steps_per_epoch": per_epoch},
            "settings": {f"{section}.{k}": v for section, values in resolved.to_dict().items()
                         for k, v in values.items() if f"{section}.{k}" not in HIDDEN}}


def per_class_median(train: dict, n_train: int) -> float:
    """Median training examples per class of an upload, scaled to the rows the run trains on (a carved
    validation split and data.max_train_samples take their share of every class)."""
    counts = sorted(n for n in (train.get("labels") or {}).values() if n > 0)
    if not counts:
        return 0.0
    return round(statistics.median(counts) * n_train / max(1, sum(counts)), 1)


async def dataset_task(service: Service, record: dict, key: str = "") -> str:
    """The task the loader found in a dataset; datasets stored before the task was recorded are read
    again (once) with the loader, and the answer kept."""
    if record.get("task"):
        return record["task"]
    found = await service.checker.inspect(str(service.data.root / record["path"]), record["filename"],
                                          record["text_column"], record["label_column"], bool(record["drop_empty"]),
                                          text_pair_column=record.get("text_pair_column"), key=key)
    if not found.get("task"):  # the file no longer reads (problems): training would say so
        return DEFAULT_TASK
    with service.store.transaction() as db:
        db.execute("UPDATE datasets SET task = ? WHERE id = ? AND task IS NULL", (found["task"], record["id"]))
    return found["task"]


_FACTS: dict[tuple, tuple[int, bool]] = {}


def backbone_facts(model, labels: list[str]) -> tuple[int, bool]:
    """Backbone facts for the recipe, built once per backbone and label count."""
    key = (model.name_or_path, model.revision, model.random_init, len(labels))
    if key not in _FACTS:
        if len(_FACTS) >= 64:
            _FACTS.pop(next(iter(_FACTS)))
        _FACTS[key] = recipe_facts(model, labels)
    return _FACTS[key]
