"""The HTTP API of ``textft service``, versioned under ``/v1`` (OpenAPI at ``/openapi.json``).

Every route but ``/health`` needs ``Authorization: Bearer KEY``. A key sees its own datasets, jobs
and models (another key's are answered 404, as if absent); an admin key sees all. Errors are JSON
``{"error": "...", "problems": [{"field": ..., "message": ...}]}`` with one entry per problem.
"""

from __future__ import annotations

import asyncio
import json
import math
import secrets
import shutil
import time
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr
from starlette.exceptions import HTTPException as StarletteHTTPException

from textft.service import datasets as uploads
from textft.service.jobs import RUN_DIR, JobRequest, Problems, check_request, write_job_dir
from textft.service.keys import AuthError, Principal
from textft.service.models import input_lengths, out_of_scope_settings, tar_stream
from textft.service.scheduler import read_new_lines
from textft.service.server import Service
from textft.service.store import ACTIVE, FINISHED, add_event, dumps
from textft.service.textft_api import (UserError, __version__, closest, data_formats, hub_token, predict_schemas, push_model,
                                      recipe_facts, request_items, resolve_recipe)
from textft.service.web import mount_page

PredictRequest, PredictResponse = predict_schemas()
JSON_BODY_LIMIT = 1 << 20


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


class PushBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    repo_id: StrictStr = Field(description="owner/name on the Hugging Face Hub (created if missing)")
    private: StrictBool = False


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(5)}"


def error(status: int, message: str, problems: list[tuple[str, str]] | None = None,
          headers: dict | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if problems:
        body["problems"] = [{"field": f, "message": m} for f, m in problems]
    return JSONResponse(body, status_code=status, headers=headers)


class JsonBodyLimit:
    """Refuses JSON bodies over the limit before reading them (uploads stream under their own limit)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"].startswith("/v1/datasets"):
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            response = error(413, f"request body larger than {self.max_bytes:,} bytes", headers={"Connection": "close"})
            return await response(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise HTTPException(413, f"request body larger than {self.max_bytes:,} bytes")
            return message

        await self.app(scope, limited, send)


def create_app(service: Service) -> FastAPI:
    store, opts = service.store, service.opts

    @asynccontextmanager
    async def lifespan(app):
        service.notifier.bind(asyncio.get_running_loop())
        await run_in_threadpool(service.start)
        yield
        await run_in_threadpool(service.stop)
        await service.models.close()

    app = FastAPI(title="textft service", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Fine-tuning jobs over HTTP: upload datasets, start jobs from preset configs,"
                              " follow them live, download, query and push the resulting models.")

    # -- errors --------------------------------------------------------------------------------

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        if any(e.get("type") == "json_invalid" for e in exc.errors()):
            return error(400, "the request body is not valid JSON")
        problems = []
        for e in exc.errors():
            where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
            problems.append((where, f"'{where}': {e.get('msg')}"))
        return error(422, "; ".join(m for _, m in problems), problems)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        headers = getattr(exc, "headers", None)
        return error(exc.status_code, str(exc.detail), headers=headers)

    @app.exception_handler(Problems)
    async def problems_error(request: Request, exc: Problems):
        return error(422, "; ".join(exc.problems), exc.items)

    @app.exception_handler(UserError)
    async def user_error(request: Request, exc: UserError):
        return error(422, "; ".join(exc.problems), [("body", p) for p in exc.problems])

    @app.exception_handler(uploads.UploadError)
    async def upload_error(request: Request, exc: uploads.UploadError):
        return error(exc.status, str(exc), exc.problems, headers={"Connection": "close"} if exc.close else None)

    # -- auth and visibility -------------------------------------------------------------------

    def auth(request: Request) -> Principal:
        try:
            return service.verifier.principal(request.headers.get("authorization"))
        except AuthError as e:
            raise HTTPException(401, str(e), headers={"WWW-Authenticate": "Bearer"}) from None

    def owned(table: str, what: str, item_id: str, who: Principal) -> dict:
        row = store.row(f"SELECT * FROM {table} WHERE id = ?", item_id)
        if row is None or not (who.admin or row["owner"] == who.id):
            raise HTTPException(404, f"no {what} '{item_id}'")
        return row

    def key_names() -> dict[str, str]:
        return {r["id"]: r["name"] for r in store.rows("SELECT id, name FROM keys")}

    def scope(who: Principal) -> tuple[str, tuple]:
        return ("", ()) if who.admin else (" AND owner = ?", (who.id,))

    def accepting() -> None:
        if not service.accepting:
            raise HTTPException(503, "the service is stopping; try again once it is back")

    # -- service -------------------------------------------------------------------------------

    @app.get("/health", tags=["service"])
    def health() -> dict:
        return {"status": "ok" if service.accepting else "stopping", "version": __version__}

    @app.get("/v1/me", tags=["service"])
    def me(who: Principal = Depends(auth)) -> dict:
        queued = store.row("SELECT COUNT(*) AS n FROM jobs WHERE owner = ? AND state = 'queued'", who.id)["n"]
        return {"id": who.id, "name": who.name, "admin": who.admin,
                "limits": {"max_queued_jobs": max_queued(who), "max_upload_bytes": max_upload(who),
                           "max_texts_per_prediction": opts.max_texts, "max_chars_per_text": opts.max_chars},
                "queued_jobs": queued}

    def max_queued(who: Principal) -> int:
        return who.max_queued if who.max_queued is not None else opts.max_queued

    def max_upload(who: Principal) -> int:
        return who.max_upload_bytes if who.max_upload_bytes is not None else opts.max_upload_bytes

    @app.get("/v1/presets", tags=["jobs"])
    def presets(who: Principal = Depends(auth)) -> list[dict]:
        return service.catalog.describe_presets()

    @app.get("/v1/accelerate-configs", tags=["jobs"])
    def accelerate_configs(who: Principal = Depends(auth)) -> list[dict]:
        return service.catalog.describe_accelerate()

    # -- datasets ------------------------------------------------------------------------------

    def dataset_out(row: dict, names: dict[str, str] | None = None) -> dict:
        return {"id": row["id"], "name": row["name"], "filename": row["filename"], "format": row["format"],
                "size_bytes": row["size_bytes"], "rows": row["rows"], "text_column": row["text_column"],
                "label_column": row["label_column"], "drop_empty": bool(row["drop_empty"]),
                "labels": row["labels"], "preview": row["preview"], "created_at": iso(row["created_at"]),
                "owner": (names or key_names()).get(row["owner"])}

    @app.post("/v1/datasets", status_code=201, tags=["datasets"],
              openapi_extra={"requestBody": {"content": {"multipart/form-data": {"schema": {
                  "type": "object", "required": ["file"], "properties": {
                      "file": {"type": "string", "format": "binary", "description": "csv, tsv, json, jsonl or parquet"},
                      "text_column": {"type": "string", "default": "text"},
                      "label_column": {"type": "string", "default": "label"},
                      "name": {"type": "string", "description": "display name (default: the file name)"},
                      "drop_empty": {"type": "boolean", "default": False}}}}}}})
    async def upload_dataset(request: Request, who: Principal = Depends(auth)) -> dict:
        """Upload a labelled file; it is checked as `textft train` would check it before it is kept."""
        accepting()
        dataset_id = new_id("ds")
        dest = service.data.dataset(dataset_id)
        upload = await uploads.receive(request, dest, max_upload(who), data_formats())
        fields = upload.fields
        unknown = sorted(set(fields) - {"text_column", "label_column", "name", "drop_empty"})
        problems = [(f, f"'{f}': unknown form field; fields: file, text_column, label_column, name, drop_empty")
                    for f in unknown]
        drop = fields.get("drop_empty", "false").strip().lower()
        if drop not in ("true", "false", "1", "0", "yes", "no"):
            problems.append(("drop_empty", f"'drop_empty' must be true or false, got {fields['drop_empty']!r}"))
        text_column = fields.get("text_column", "").strip() or "text"
        label_column = fields.get("label_column", "").strip() or "label"
        if not problems:
            try:
                result = await service.checker.inspect(str(upload.path), upload.filename, text_column, label_column,
                                                       drop in ("true", "1", "yes"))
            except BaseException:
                shutil.rmtree(dest, ignore_errors=True)
                raise
            problems = [tuple(p) for p in result.get("problems", [])]
        if problems:
            shutil.rmtree(dest, ignore_errors=True)
            return error(422, "; ".join(m for _, m in problems), problems)
        name = fields.get("name", "").strip()[:200] or upload.filename
        try:
            with store.transaction() as db:
                db.execute("INSERT INTO datasets (id, owner, name, filename, path, format, size_bytes, rows, text_column,"
                           " label_column, drop_empty, labels, preview, created_at)"
                           " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           (dataset_id, who.id, name, upload.filename, str(upload.path.relative_to(service.data.root)),
                            upload.path.suffix.lstrip("."), upload.size, result["rows"], text_column, label_column,
                            int(drop in ("true", "1", "yes")), dumps(result["labels"]), dumps(result["preview"]),
                            time.time()))
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)
            raise
        return dataset_out(store.row("SELECT * FROM datasets WHERE id = ?", dataset_id))

    @app.post("/v1/datasets/columns", tags=["datasets"])
    async def dataset_columns(request: Request, who: Principal = Depends(auth)) -> dict:
        """Column names and first rows of a file, to choose text_column and label_column; nothing is kept."""
        dest = service.data.cache / "peek" / secrets.token_hex(8)
        upload = await uploads.receive(request, dest, max_upload(who), data_formats())
        try:
            if upload.fields:
                raise HTTPException(422, f"unknown form field(s) {', '.join(sorted(upload.fields))}; send only 'file'")
            result = await service.checker.peek(upload.path, upload.path.suffix.lower())
        finally:
            shutil.rmtree(dest, ignore_errors=True)
        if result.get("problems"):
            problems = [tuple(p) for p in result["problems"]]
            return error(422, "; ".join(m for _, m in problems), problems)
        return {"filename": upload.filename, **result}

    @app.get("/v1/datasets", tags=["datasets"])
    def list_datasets(who: Principal = Depends(auth)) -> list[dict]:
        where, args = scope(who)
        names = key_names()
        return [dataset_out(r, names) for r in store.rows(f"SELECT * FROM datasets WHERE 1{where} ORDER BY created_at",
                                                           *args)]

    @app.get("/v1/datasets/{dataset_id}", tags=["datasets"])
    def get_dataset(dataset_id: str, who: Principal = Depends(auth)) -> dict:
        return dataset_out(owned("datasets", "dataset", dataset_id, who))

    @app.delete("/v1/datasets/{dataset_id}", status_code=204, tags=["datasets"])
    def delete_dataset(dataset_id: str, who: Principal = Depends(auth)) -> Response:
        owned("datasets", "dataset", dataset_id, who)
        with store.transaction() as db:
            users = [r[0] for r in db.execute(
                f"SELECT id FROM jobs WHERE state IN {ACTIVE} AND ? IN (dataset, validation_dataset, test_dataset)",
                (dataset_id,)).fetchall()]
            if users:
                raise HTTPException(409, f"dataset '{dataset_id}' is used by queued or running job(s)"
                                         f" {', '.join(users)}; cancel them or wait until they finish")
            db.execute("DELETE FROM datasets WHERE id = ?", (dataset_id,))
        shutil.rmtree(service.data.dataset(dataset_id), ignore_errors=True)
        return Response(status_code=204)

    # -- jobs ----------------------------------------------------------------------------------

    def job_out(row: dict, names: dict[str, str] | None = None) -> dict:
        out = {k: row[k] for k in ("id", "state", "config", "overrides", "accelerate_config", "dataset",
                                   "validation_dataset", "test_dataset", "attempt", "worker", "error",
                                   "stop_reason")}
        out.update(created_at=iso(row["created_at"]), started_at=iso(row["started_at"]),
                   finished_at=iso(row["finished_at"]), cancel_requested=bool(row["cancel_requested"]),
                   progress=row["progress"], metrics=row["metrics"], owner=(names or key_names()).get(row["owner"]))
        if row["state"] == "queued":
            out["queue_position"] = store.row(
                "SELECT COUNT(*) AS n FROM jobs WHERE state = 'queued' AND (priority > ? OR priority = ? AND seq < ?)",
                row["priority"], row["priority"], row["seq"])["n"] + 1
        return out

    def job_request(body: JobBody, who: Principal):
        ids = {i for i in (body.dataset, body.validation_dataset, body.test_dataset) if i}
        where, args = scope(who)
        visible = {r["id"]: r for r in store.rows(f"SELECT * FROM datasets WHERE 1{where}", *args)}
        records = {**{i: visible.get(i) for i in ids}, **visible}
        req = JobRequest(dataset=body.dataset, config=body.config, validation_dataset=body.validation_dataset,
                         test_dataset=body.test_dataset, overrides=body.overrides,
                         accelerate_config=body.accelerate_config, num_processes=body.num_processes)
        cfg, launch = check_request(req, records, service.catalog, service.settings)
        return req, cfg, launch, records

    @app.post("/v1/jobs", status_code=201, tags=["jobs"])
    def create_job(body: JobBody, who: Principal = Depends(auth)) -> dict:
        """Queue a fine-tuning job: `textft train` with the preset, the overrides and the uploaded data."""
        accepting()
        req, cfg, launch, _ = job_request(body, who)
        limit = max_queued(who)
        queued = store.row("SELECT COUNT(*) AS n FROM jobs WHERE owner = ? AND state = 'queued'", who.id)["n"]
        if queued >= limit:
            raise HTTPException(429, f"this key has {queued} queued job(s), its limit; wait until some start or"
                                     " cancel one")
        job_id = new_id("job")
        accel = service.catalog.accelerate_configs().get(req.accelerate_config) if req.accelerate_config else None
        write_job_dir(service.data, job_id, cfg, launch, accel)
        try:
            with store.transaction() as db:
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
        return job_out(store.row("SELECT * FROM jobs WHERE id = ?", job_id))

    @app.get("/v1/jobs", tags=["jobs"])
    def list_jobs(state: str | None = None, who: Principal = Depends(auth)) -> list[dict]:
        where, args = scope(who)
        if state is not None:
            if state not in ACTIVE + FINISHED:
                raise HTTPException(422, f"'state' must be one of {', '.join(ACTIVE + FINISHED)}, got"
                                         f" '{state}'{closest(state, ACTIVE + FINISHED)}")
            where, args = where + " AND state = ?", (*args, state)
        names = key_names()
        return [job_out(r, names) for r in store.rows(f"SELECT * FROM jobs WHERE 1{where} ORDER BY seq", *args)]

    @app.get("/v1/jobs/{job_id}", tags=["jobs"])
    def get_job(job_id: str, who: Principal = Depends(auth)) -> dict:
        return job_out(owned("jobs", "job", job_id, who))

    @app.get("/v1/jobs/{job_id}/events", tags=["jobs"],
             responses={200: {"content": {"text/event-stream": {}},
                              "description": "Server-Sent Events: `state`, `plan` and `log` (each train_log.jsonl"
                                             " entry), each with an id; reconnect with Last-Event-ID"}})
    async def job_events(job_id: str, request: Request, after: int | None = None,
                         who: Principal = Depends(auth)) -> StreamingResponse:
        await run_in_threadpool(owned, "jobs", "job", job_id, who)
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

    @app.get("/v1/jobs/{job_id}/log", tags=["jobs"], response_class=PlainTextResponse)
    def job_log(job_id: str, lines: int = 200, who: Principal = Depends(auth)) -> PlainTextResponse:
        """The last lines of the job's output (all attempts)."""
        owned("jobs", "job", job_id, who)
        lines = min(max(lines, 1), 5000)
        path = service.data.job(job_id) / "job.log"
        size = path.stat().st_size if path.exists() else 0
        text, _ = read_new_lines(path, max(0, size - 512 * 1024)) if size else ([], 0)
        return PlainTextResponse("\n".join(text[-lines:]) + ("\n" if text else ""))

    @app.post("/v1/jobs/{job_id}/cancel", tags=["jobs"])
    def cancel_job(job_id: str, who: Principal = Depends(auth)) -> JSONResponse:
        """Queued: cancelled at once (200). Running: SIGTERM to its process group (202); the state
        becomes cancelled once it has stopped."""
        job = owned("jobs", "job", job_id, who)
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
        return JSONResponse(job_out(row), status_code=200 if row["state"] == "cancelled" else 202)

    @app.get("/v1/jobs/{job_id}/report", tags=["jobs"], response_class=FileResponse)
    def job_report(job_id: str, who: Principal = Depends(auth)):
        """The run's report.html (self-contained: plots embedded)."""
        job = owned("jobs", "job", job_id, who)
        path = service.data.job(job_id) / RUN_DIR / "report.html"
        if not path.is_file():
            raise HTTPException(404, f"job '{job_id}' has no report ({job['state']}); reports are written when"
                                     " training finishes")
        return FileResponse(path, media_type="text/html")

    @app.delete("/v1/jobs/{job_id}", status_code=204, tags=["jobs"])
    async def delete_job(job_id: str, who: Principal = Depends(auth)) -> Response:
        """A finished job, its files and its model."""
        def remove():
            owned("jobs", "job", job_id, who)
            with store.transaction() as db:
                state = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
                if state in ACTIVE:
                    raise HTTPException(409, f"job '{job_id}' is {state}; cancel it first")
                db.execute("DELETE FROM events WHERE job_id = ?", (job_id,))
                db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

        await run_in_threadpool(remove)
        await service.models.evict(job_id)
        await run_in_threadpool(shutil.rmtree, service.data.job(job_id), True)
        return Response(status_code=204)

    @app.post("/v1/recipe", tags=["jobs"])
    async def recipe(body: JobBody, who: Principal = Depends(auth)) -> dict:
        """The values the auto recipe would choose for this job, each with its reason (nothing is queued)."""
        req, cfg, launch, records = await run_in_threadpool(job_request, body, who)
        train = records[req.dataset]
        labels = list(train["labels"])
        val = records.get(req.validation_dataset) if req.validation_dataset else None
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
        global_batch = cfg.train.batch_size * cfg.train.grad_accum_steps * launch["num_processes"]
        try:
            params, fresh = await run_in_threadpool(_facts, cfg.model, labels)
        except UserError as e:
            raise Problems([(("overrides.model.name_or_path" if "model.name_or_path" in req.overrides else "config"), p)
                            for p in e.problems]) from None
        per_epoch = max(1, math.ceil(n_train / global_batch))
        facts = {"non_embedding_params": params, "fresh_head": fresh, "pretrained_encoder": not cfg.model.random_init,
                 "n_train": n_train, "n_validation": n_val, "num_labels": len(labels), "global_batch": global_batch,
                 "steps_per_epoch": per_epoch}
        resolved, why = resolve_recipe(cfg, **facts)
        auto = {key: {"value": getattr(resolved.train, key.split(".", 1)[1]), "reason": reason}
                for key, reason in why.items()}
        total = resolved.train.max_steps or max(1, round(resolved.train.epochs * per_epoch))
        return {"config": req.config, "auto": auto, "facts": facts,
                "plan": {"total_steps": total, "steps_per_epoch": per_epoch},
                "settings": {f"{section}.{k}": v for section, values in resolved.to_dict().items()
                             for k, v in values.items() if f"{section}.{k}" not in _HIDDEN}}

    # -- models --------------------------------------------------------------------------------

    def model_row(model_id: str, who: Principal) -> dict:
        row = store.row("SELECT * FROM jobs WHERE id = ?", model_id)
        if row is None or not (who.admin or row["owner"] == who.id) or row["state"] != "succeeded":
            raise HTTPException(404, f"no model '{model_id}' (models are the jobs that succeeded)")
        return row

    def model_out(row: dict, names: dict[str, str] | None = None) -> dict:
        run = service.data.job(row["id"]) / RUN_DIR
        metrics = row["metrics"] or {}
        from textft.service.models import model_files

        trained = _trained_settings(run)
        return {"id": row["id"], "job": row["id"], "config": row["config"], "dataset": row["dataset"],
                "base_model": trained.get("model.name_or_path"), "max_length": trained.get("data.max_length"),
                "truncation": trained.get("data.truncation"), "head_fraction": trained.get("data.head_fraction"),
                "out_of_scope": out_of_scope_settings(run),
                "labels": metrics.get("labels"), "metrics": metrics.get("splits"), "best": metrics.get("best"),
                "stop_reason": row["stop_reason"], "created_at": iso(row["finished_at"]),
                "size_bytes": sum(p.stat().st_size for p in model_files(run)) if run.is_dir() else 0,
                "owner": (names or key_names()).get(row["owner"])}

    @app.get("/v1/models", tags=["models"])
    def list_models(who: Principal = Depends(auth)) -> list[dict]:
        where, args = scope(who)
        names = key_names()
        return [model_out(r, names) for r in
                store.rows(f"SELECT * FROM jobs WHERE state = 'succeeded'{where} ORDER BY finished_at", *args)]

    @app.get("/v1/models/{model_id}", tags=["models"])
    def get_model(model_id: str, who: Principal = Depends(auth)) -> dict:
        return model_out(model_row(model_id, who))

    @app.get("/v1/models/{model_id}/download", tags=["models"],
             responses={200: {"content": {"application/gzip": {}}, "description": "the save_pretrained directory"}})
    def download_model(model_id: str, who: Principal = Depends(auth)) -> StreamingResponse:
        """The model directory (weights, tokenizer, config, reports) as a streamed .tar.gz."""
        model_row(model_id, who)
        run = service.data.job(model_id) / RUN_DIR
        return StreamingResponse(tar_stream(run, model_id), media_type="application/gzip",
                                 headers={"Content-Disposition": f'attachment; filename="{model_id}.tar.gz"'})

    @app.post("/v1/models/{model_id}/predict", response_model=PredictResponse, response_model_exclude_none=True,
              tags=["models"])
    async def predict(model_id: str, req: PredictRequest, explain: bool = False, who: Principal = Depends(auth)):
        """Same request and response as `textft serve`'s POST /predict. With `?explain=true` each
        prediction also tells how its text was read: `input: {tokens, max_length, truncated, mode,
        windows?}` (mode: head, tail, head+tail or window)."""
        await run_in_threadpool(model_row, model_id, who)
        loaded = await service.models.get(model_id, service.data.job(model_id) / RUN_DIR)
        items = request_items(req.inputs, opts.max_texts, opts.max_chars, loaded.classifier.pairs)
        try:
            loaded.classifier.results(np.zeros((0, loaded.classifier.task.num_outputs)), req.top_k,
                                      req.return_all_scores)
        except UserError as e:
            raise HTTPException(422, e.problems[0].replace("'--top-k'", "top_k").replace(
                "'--all-scores'", "return_all_scores")) from None
        logits = await loaded.batcher.submit(items)
        predictions = loaded.classifier.results(logits, top_k=req.top_k, return_all_scores=req.return_all_scores)
        if not explain:
            return {"predictions": predictions}
        lengths = await run_in_threadpool(input_lengths, loaded.classifier, items)
        return JSONResponse({"predictions": [{**p, "input": n} for p, n in zip(predictions, lengths)]})

    @app.post("/v1/models/{model_id}/push", tags=["models"])
    def push(model_id: str, body: PushBody, who: Principal = Depends(auth)) -> dict:
        """Upload the model with a model card to the Hub, with the service's own token (HF_TOKEN)."""
        model_row(model_id, who)
        token = hub_token()
        if not token:
            raise HTTPException(503, "the service has no Hugging Face token; its operator sets HF_TOKEN")
        try:
            url = push_model(service.data.job(model_id) / RUN_DIR, body.repo_id, body.private)
        except UserError as e:
            problems = [p.replace(token, "***") for p in e.problems]
            status = 422 if any("must look like" in p for p in problems) else 502
            raise HTTPException(status, "; ".join(problems)) from None
        return {"url": url, "repo_id": body.repo_id}

    mount_page(app)
    app.add_middleware(JsonBodyLimit, max_bytes=max(JSON_BODY_LIMIT, 6 * opts.max_texts * opts.max_chars + 65_536))
    return app


def _trained_settings(run) -> dict:
    """A few ``section.key`` values of the run's saved config (what a client shows next to a model)."""
    import yaml

    try:
        saved = yaml.safe_load((run / "textft_config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return {}
    return {f"{section}.{key}": value for section, values in saved.items() if isinstance(values, dict)
            for key, value in values.items()}


_HIDDEN = {"output.dir", "output.overwrite", "output.push_to_hub", "output.hub_repo_id", "output.hub_private",
           "data.train_file", "data.validation_file", "data.test_file", "train.resume_from"}

_FACTS: dict[tuple, tuple[int, bool]] = {}


def _facts(model, labels: list[str]) -> tuple[int, bool]:
    """Backbone facts for the recipe, built once per backbone and label count."""
    key = (model.name_or_path, model.revision, model.random_init, len(labels))
    if key not in _FACTS:
        if len(_FACTS) >= 64:
            _FACTS.pop(next(iter(_FACTS)))
        _FACTS[key] = recipe_facts(model, labels)
    return _FACTS[key]
