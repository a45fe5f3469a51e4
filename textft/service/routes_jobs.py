"""``/v1/jobs``: queue a fine-tuning job, list and follow it (state, live events, log, report), cancel
and delete it; ``/v1/recipe``: what the auto recipe would choose for a job, without queueing it."""

from __future__ import annotations

import json
import math
import shutil
import statistics

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse

from textft.service.estimates import recipe_estimate
from textft.service.jobs import RUN_DIR, JobRequest, check_request, split_sizes, write_job_dir
from textft.service.keys import Principal
from textft.service.limits import storage_message
from textft.service.problems import ERROR_RESPONSES, JSON_ERRORS
from textft.service.routes_shared import (accepting, auth, current_service, iso, max_queued, new_id, owner_scope,
                                          visible)
from textft.service.scheduler import read_new_lines
from textft.service.core import Service
from textft.service.schemas import JobBody, JobOut, RecipeOut
from textft.service.store import ACTIVE, FINISHED
from textft.service.webhooks import url_problem
from textft.service.textft_api import (DEFAULT_TASK, Problem, UserError, closest, recipe_facts, resolve_recipe,
                                      task_default_metric, task_one_class_per_text, task_outputs)

router = APIRouter(tags=["jobs"], responses=ERROR_RESPONSES)
EVENTS = {200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                "description": "Server-Sent Events, each with an id (reconnect with Last-Event-ID): `state` (the job's"
                               " state changed), and one per record of the run's train_log.jsonl as JobOut.progress"
                               " reads them: `plan`, `log` (training and evaluation records), `best` (the loop's new"
                               " best model), `end` (training stopped and why)"}}
TEXT = {200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "the last lines of the log"}}
REPORT = {200: {"content": {"text/html": {"schema": {"type": "string"}}},
                "description": "the run report, self-contained (plots embedded)"}}
HIDDEN = {"output.dir", "output.overwrite", "output.push_to_hub", "output.hub_repo_id", "output.hub_private",
          "output.log_errors", "data.train_file", "data.validation_file", "data.test_file", "train.resume_from"}
"""Settings the service chooses itself, left out of what /v1/recipe shows."""


def job_out(service: Service, row: dict, names: dict[str, str] | None = None) -> dict:
    out = {k: row[k] for k in ("id", "state", "config", "overrides", "accelerate_config", "dataset",
                               "validation_dataset", "test_dataset", "attempt", "worker", "error",
                               "stop_reason")}
    out.update(created_at=iso(row["created_at"]), started_at=iso(row["started_at"]),
               finished_at=iso(row["finished_at"]), cancel_requested=bool(row["cancel_requested"]),
               progress=row["progress"], metrics=row["metrics"],
               owner=(names or service.store.key_names()).get(row["owner"]), webhook_url=row.get("webhook_url"))
    if row.get("webhook_url"):
        out["webhook_deliveries"] = service.store.delivery_counts(row["id"])
    if row["state"] == "queued":
        out["queue_position"] = service.store.queue_position(row)
    return out


def visible_job(service: Service, job_id: str, who: Principal) -> dict:
    return visible(service.store.job(job_id), who, "job", job_id)


def job_request(service: Service, body: JobBody, who: Principal):
    ids = {i for i in (body.dataset, body.validation_dataset, body.test_dataset) if i}
    visible_sets = {r["id"]: r for r in service.store.datasets(owner_scope(who))}
    records = {**{i: visible_sets.get(i) for i in ids}, **visible_sets}
    req = JobRequest(dataset=body.dataset, config=body.config, validation_dataset=body.validation_dataset,
                     test_dataset=body.test_dataset, overrides=body.overrides,
                     accelerate_config=body.accelerate_config, num_processes=body.num_processes)
    cfg, launch = check_request(req, records, service.catalog, service.settings, service.limits.for_key(who))
    return req, cfg, launch, records


@router.post("/v1/jobs", status_code=201, response_model=JobOut)
def create_job(body: JobBody, who: Principal = Depends(auth), service: Service = Depends(current_service)) -> dict:
    """Queue a fine-tuning job: `textft train` with the preset, the overrides and the uploaded data."""
    accepting(service)
    store = service.store
    hook = webhook_problems(service, body, who)
    try:
        req, cfg, launch, _ = job_request(service, body, who)
    except UserError as e:  # every problem at once
        raise UserError(e.problems + hook) from None
    if hook:
        raise UserError(hook)
    limits = service.limits.for_key(who)
    if limits.max_storage_bytes is not None and (used := service.storage.used(who.id)) >= limits.max_storage_bytes:
        raise UserError(storage_message(used, limits.max_storage_bytes), None, "storage")
    limit = max_queued(service, who)
    job_id = new_id("job")
    accel = service.catalog.accelerate_configs().get(req.accelerate_config) if req.accelerate_config else None
    write_job_dir(service.data, job_id, cfg, launch, accel, time_limit_s=limits.job_seconds)
    try:
        queued = store.insert_job(job_id, who.id, req.config, req.overrides, req.accelerate_config, req.dataset,
                                  req.validation_dataset, req.test_dataset, max_queued=limit)
        if queued is not None:
            raise UserError(f"this key has {queued} queued job(s), its limit; wait until some start or cancel one",
                            kind="quota")
    except BaseException:
        shutil.rmtree(service.data.job(job_id), ignore_errors=True)
        raise
    if body.webhook_url:
        store.set_webhook(job_id, body.webhook_url)
    service.queue.enqueue(job_id, 1)
    service.notifier.notify()
    return job_out(service, store.job(job_id))


def webhook_problems(service: Service, body: JobBody, who: Principal) -> list[Problem]:
    """What is wrong with a job's webhook: a URL the service will not send to, or a key that cannot sign."""
    if body.webhook_url is None:
        return []
    problem = url_problem(body.webhook_url, service.opts.webhooks.allow_private)
    if problem is None and not (service.store.key(who.id) or {}).get("webhook_secret"):
        problem = ("'webhook_url': this key has no webhook secret to sign with; get one with POST"
                   " /v1/me/webhook-secret (or textft service keys webhook-secret NAME)")
    return [Problem(problem, "webhook_url")] if problem else []


@router.get("/v1/jobs", response_model=list[JobOut])
def list_jobs(state: str | None = Query(None, description=f"only jobs in this state: {', '.join(ACTIVE + FINISHED)}"),
              who: Principal = Depends(auth), service: Service = Depends(current_service)) -> list[dict]:
    if state is not None and state not in ACTIVE + FINISHED:
        raise UserError(f"'state' must be one of {', '.join(ACTIVE + FINISHED)}, got"
                        f" '{state}'{closest(state, ACTIVE + FINISHED)}", "state")
    names = service.store.key_names()
    return [job_out(service, r, names) for r in service.store.jobs(owner_scope(who), state)]


@router.get("/v1/jobs/{job_id}", response_model=JobOut)
def get_job(job_id: str, who: Principal = Depends(auth), service: Service = Depends(current_service)) -> dict:
    return job_out(service, visible_job(service, job_id, who))


MAX_EVENT_ID = 2 ** 63 - 1
"""SQLite's largest integer: an event id past it cannot exist."""


def event_cursor(name: str, value: str | None) -> int:
    """The event id a client has seen (0: none), or 400 naming the header or parameter."""
    if value is None or not value.strip():
        return 0
    text = value.strip()
    if not text.isdecimal() or not text.isascii() or len(text) > 19 or int(text) > MAX_EVENT_ID:
        raise UserError(f"'{name}' must be an event id, a whole number from 0 to {MAX_EVENT_ID}, got {value[:40]!r}",
                        name, "malformed")
    return int(text)


@router.get("/v1/jobs/{job_id}/events", responses=EVENTS, response_class=StreamingResponse)
async def job_events(job_id: str, request: Request, after: str | None = None, who: Principal = Depends(auth),
                     service: Service = Depends(current_service)) -> StreamingResponse:
    store = service.store
    await run_in_threadpool(visible_job, service, job_id, who)
    header = request.headers.get("last-event-id")
    last = event_cursor("Last-Event-ID", header) if header is not None else event_cursor("after", after)

    async def stream():
        nonlocal last
        yield "retry: 2000\n\n"
        while True:
            rows = await run_in_threadpool(store.events_after, job_id, last)
            for r in rows:
                yield f"id: {r['id']}\nevent: {r['type']}\ndata: {json.dumps(r['data'])}\n\n"
                last = r["id"]
            if rows:
                continue
            job = await run_in_threadpool(store.job, job_id)
            if job is None or job["state"] in FINISHED and job["event_seq"] <= last or not service.accepting:
                return
            if await request.is_disconnected():
                return
            if not await service.notifier.wait(15.0):
                yield ": keep-alive\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/v1/jobs/{job_id}/log", response_class=PlainTextResponse, responses={**TEXT, **JSON_ERRORS})
def job_log(job_id: str, lines: int = 200, who: Principal = Depends(auth),
            service: Service = Depends(current_service)) -> PlainTextResponse:
    """The last lines of the job's output (all attempts)."""
    visible_job(service, job_id, who)
    lines = min(max(lines, 1), 5000)
    path = service.data.job(job_id) / "job.log"
    size = path.stat().st_size if path.exists() else 0
    text, _ = read_new_lines(path, max(0, size - 512 * 1024)) if size else ([], 0)
    return PlainTextResponse("\n".join(text[-lines:]) + ("\n" if text else ""))


@router.post("/v1/jobs/{job_id}/cancel", response_model=JobOut,
             responses={202: {"model": JobOut, "description": "a running job: it stops after its current step"}})
def cancel_job(job_id: str, who: Principal = Depends(auth), service: Service = Depends(current_service)) -> JSONResponse:
    """Queued: cancelled at once (200). Running: SIGTERM to its process group (202); the state
    becomes cancelled once it has stopped."""
    job = visible_job(service, job_id, who)
    if job["state"] in FINISHED:
        raise UserError(f"job '{job_id}' has already {job['state']}", kind="conflict")
    (service.data.job(job_id) / "cancel").touch()
    service.store.cancel_job(job_id)
    service.notifier.notify()
    row = service.store.job(job_id)
    out = JobOut.model_validate(job_out(service, row)).model_dump(mode="json")
    return JSONResponse(out, status_code=200 if row["state"] == "cancelled" else 202)


@router.get("/v1/jobs/{job_id}/report", response_class=FileResponse, responses=REPORT)
def job_report(job_id: str, who: Principal = Depends(auth), service: Service = Depends(current_service)):
    """The run's report.html (self-contained: plots embedded)."""
    job = visible_job(service, job_id, who)
    path = service.data.job(job_id) / RUN_DIR / "report.html"
    if not path.is_file():
        raise UserError(f"job '{job_id}' has no report ({job['state']}); reports are written when training"
                        " finishes", kind="not_found")
    return FileResponse(path, media_type="text/html")


@router.delete("/v1/jobs/{job_id}", status_code=204, response_class=Response)
async def delete_job(job_id: str, who: Principal = Depends(auth), service: Service = Depends(current_service)) -> Response:
    """A finished job, its files and its model."""
    def remove():
        visible_job(service, job_id, who)
        if state := service.store.delete_job(job_id):
            raise UserError(f"job '{job_id}' is {state}; cancel it first", kind="conflict")

    await run_in_threadpool(remove)
    await service.models.evict(job_id)
    await run_in_threadpool(shutil.rmtree, service.data.job(job_id), True)
    service.storage.forget(job_id)
    return Response(status_code=204)


@router.post("/v1/recipe", response_model=RecipeOut)
async def recipe(body: JobBody, who: Principal = Depends(auth), service: Service = Depends(current_service)) -> dict:
    """The values the auto recipe would choose for this job, each with its reason (nothing is queued)."""
    req, cfg, launch, records = await run_in_threadpool(job_request, service, body, who)
    train = records[req.dataset]
    # the task the run will train: the one the job names, else what the loader found in the upload
    task = cfg.data.task if cfg.data.task != "auto" else await dataset_task(service, train, who.id)
    # the model, the plan and the answer off the event loop: building them takes a while
    return await run_in_threadpool(recipe_answer, service, req, cfg, launch, records, task)


def recipe_answer(service: Service, req: JobRequest, cfg, launch: dict, records: dict, task: str) -> dict:
    train = records[req.dataset]
    labels = task_outputs(task, list(train["labels"]))
    n_train, n_val = split_sizes(cfg, train, records.get(req.validation_dataset) if req.validation_dataset else None)
    global_batch = cfg.train.batch_size * cfg.train.grad_accum_steps * launch["num_processes"]
    try:
        params, fresh = backbone_facts(cfg.model, labels)
    except UserError as e:
        where = "overrides.model.name_or_path" if "model.name_or_path" in req.overrides else "config"
        raise UserError([Problem(p, where, p.kind) for p in e.problems]) from None
    per_epoch = max(1, math.ceil(n_train / global_batch))
    facts = {"non_embedding_params": params, "fresh_head": fresh, "pretrained_encoder": not cfg.model.random_init,
             "n_train": n_train, "n_validation": n_val, "num_labels": len(labels), "global_batch": global_batch,
             "steps_per_epoch": per_epoch, "task": task, "default_metric": task_default_metric(task),
             "pairs": cfg.data.text_pair_column is not None,
             "examples_per_class": per_class_median(train, n_train) if task_one_class_per_text(task) else None}
    try:
        resolved, why, plan = resolve_recipe(cfg, **facts)
    except UserError as e:  # an explicit transfer mode the upload cannot use
        where = "overrides.model.transfer" if "model.transfer" in req.overrides else "config"
        raise UserError([Problem(p, where, p.kind) for p in e.problems]) from None
    auto = {key: {"value": resolved.to_dict()[key.split(".", 1)[0]][key.split(".", 1)[1]], "reason": reason}
            for key, reason in why.items()}
    estimate = recipe_estimate(service, resolved, plan["total_steps"], plan.get("global_batch") or global_batch)
    return {"config": req.config, "auto": auto, "facts": facts, "plan": plan, "estimate": estimate,
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
    service.store.set_dataset_task(record["id"], found["task"])
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
