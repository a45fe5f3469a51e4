"""``/v1/datasets``: uploads checked as ``textft train`` would check them, their columns, list, one, delete."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import time

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from textft.service import datasets as uploads
from textft.service.keys import Principal
from textft.service.limits import storage_message
from textft.service.problems import ERROR_RESPONSES
from textft.service.routes_shared import (accepting, auth, current_service, iso, max_upload, new_id, owner_scope,
                                          visible)
from textft.service.core import Service
from textft.service.schemas import ColumnsOut, DatasetOut
from textft.service.textft_api import Problem, UserError, closest, data_formats

router = APIRouter(tags=["datasets"], responses=ERROR_RESPONSES)
FORM_FIELDS = {"text_column", "text_pair_column", "label_column", "name", "drop_empty"}
UPLOAD_FORM = {"requestBody": {"content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary", "description": "csv, tsv, json, jsonl or parquet"},
        "text_column": {"type": "string", "default": "text"},
        "text_pair_column": {"type": "string", "description": "column of the second text of each example (sentence"
                                                           " pairs: paraphrase, NLI, question duplicates); default: none"},
        "label_column": {"type": "string", "default": "label"},
        "name": {"type": "string", "description": "display name (default: the file name)"},
        "drop_empty": {"type": "boolean", "default": False}}}}}}}
COLUMNS_FORM = {"requestBody": {"content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"], "additionalProperties": False, "properties": {
        "file": {"type": "string", "format": "binary", "description": "csv, tsv, json, jsonl or parquet"}}}}}}}


def dataset_out(service: Service, row: dict, names: dict[str, str] | None = None) -> dict:
    return {"id": row["id"], "name": row["name"], "filename": row["filename"], "format": row["format"],
            "size_bytes": row["size_bytes"], "rows": row["rows"], "text_column": row["text_column"],
            "text_pair_column": row["text_pair_column"], "pairs": row["text_pair_column"] is not None,
            "label_column": row["label_column"], "task": row["task"], "drop_empty": bool(row["drop_empty"]),
            "labels": row["labels"], "preview": row["preview"], "created_at": iso(row["created_at"]),
            "owner": (names or service.store.key_names()).get(row["owner"])}


def form_problems(fields: dict[str, str]) -> list[Problem]:
    problems = [Problem(f"'{f}': unknown form field; fields: file, text_column, text_pair_column, label_column, name,"
                        f" drop_empty{closest(f, sorted(FORM_FIELDS))}", f) for f in sorted(set(fields) - FORM_FIELDS)]
    pair = fields.get("text_pair_column", "").strip()
    for other, default in (("text_column", "text"), ("label_column", "label")):
        if pair and pair == (fields.get(other, "").strip() or default):
            problems.append(Problem(f"'text_pair_column': '{pair}' is also the {other}; name the column of the"
                                    " second text (leave it empty for single texts)", "text_pair_column"))
    if fields.get("drop_empty", "false").strip().lower() not in ("true", "false", "1", "0", "yes", "no"):
        problems.append(Problem(f"'drop_empty' must be true or false, got {fields['drop_empty']!r}", "drop_empty"))
    return problems


@router.post("/v1/datasets", status_code=201, openapi_extra=UPLOAD_FORM, response_model=DatasetOut)
async def upload_dataset(request: Request, who: Principal = Depends(auth),
                         service: Service = Depends(current_service)) -> dict:
    """Upload a labelled file; it is checked as `textft train` would check it before it is kept."""
    accepting(service)
    store = service.store
    dataset_id = new_id("ds")
    dest = service.data.dataset(dataset_id)
    quota = service.limits.for_key(who).max_storage_bytes
    upload = await receive_within_quota(request, service, who, dest, quota)
    fields = upload.fields
    problems = form_problems(fields)
    drop = fields.get("drop_empty", "false").strip().lower() in ("true", "1", "yes")
    text_column = fields.get("text_column", "").strip() or "text"
    label_column = fields.get("label_column", "").strip() or "label"
    pair_column = fields.get("text_pair_column", "").strip() or None
    if not problems:
        try:
            result = await while_connected(request, service.checker.inspect(
                str(upload.path), upload.filename, text_column, label_column, drop, text_pair_column=pair_column,
                key=who.id, bounds=service.upload_bounds()))
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)
            raise
        problems = uploads.problems_of(result)
    if problems:
        shutil.rmtree(dest, ignore_errors=True)
        raise UserError(problems)
    name = fields.get("name", "").strip()[:200] or upload.filename
    try:
        if await request.is_disconnected():  # nobody would learn this dataset's id
            raise uploads.UploadError("the client went away while its upload was checked; nothing was stored",
                                      kind="interrupted")

        def within_quota(db) -> None:
            # Checked again with the insert, in one transaction: concurrent uploads cannot all fit.
            if quota is not None and (now := service.storage.used(who.id, db)) + upload.size > quota:
                raise uploads.UploadError(storage_message(now, quota, upload.size), kind="storage")

        store.insert_dataset({
            "id": dataset_id, "owner": who.id, "name": name, "filename": upload.filename,
            "path": str(upload.path.relative_to(service.data.root)), "format": upload.path.suffix.lstrip("."),
            "size_bytes": upload.size, "rows": result["rows"], "text_column": text_column, "label_column": label_column,
            "drop_empty": int(drop), "labels": result["labels"], "preview": result["preview"],
            "created_at": time.time(), "task": result["task"], "text_pair_column": pair_column}, check=within_quota)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return dataset_out(service, store.dataset(dataset_id))


async def receive_within_quota(request: Request, service: Service, who: Principal, dest, quota: int | None):
    """The upload streamed into ``dest`` under the key's upload limit and what is left of its storage
    (507 naming what it stores when the storage is the tighter of the two)."""
    max_bytes = max_upload(service, who)
    used = 0
    if quota is not None:
        used = await run_in_threadpool(service.storage.used, who.id)
        declared = request.headers.get("content-length", "")
        if used >= quota or declared.isdigit() and used + int(declared) > quota + uploads.BODY_SLACK:
            raise uploads.UploadError(storage_message(used, quota, int(declared or 0)), kind="storage", close=True)
    room = max_bytes if quota is None else min(max_bytes, quota - used)
    try:
        return await uploads.receive(request, dest, room, data_formats())
    except uploads.UploadError as e:
        if e.kind == "too_large" and room < max_bytes:
            raise uploads.UploadError(storage_message(used, quota), kind="storage", close=True) from None
        raise


async def while_connected(request: Request, awaitable):
    """The result of ``awaitable``; once the client has gone away it is cancelled (an upload check
    stops with its process): nothing is kept for a client that gave up."""
    task = asyncio.ensure_future(awaitable)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.25)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise uploads.UploadError("the client went away while its upload was checked; nothing was stored",
                                          kind="interrupted")
    finally:
        if not task.done():
            task.cancel()


@router.post("/v1/datasets/columns", openapi_extra=COLUMNS_FORM, response_model=ColumnsOut)
async def dataset_columns(request: Request, who: Principal = Depends(auth),
                          service: Service = Depends(current_service)) -> dict:
    """Column names and first rows of a file, to choose text_column, label_column and (for sentence
    pairs) text_pair_column; nothing is kept."""
    dest = service.data.cache / "peek" / secrets.token_hex(8)
    upload = await uploads.receive(request, dest, max_upload(service, who), data_formats())
    try:
        if upload.fields:
            raise UserError([Problem(f"unknown form field(s) {', '.join(sorted(upload.fields))}; send only 'file'",
                                     sorted(upload.fields)[0])])
        result = await while_connected(request, service.checker.peek(
            upload.path, upload.path.suffix.lower(), key=who.id, bounds=service.upload_bounds()))
    finally:
        shutil.rmtree(dest, ignore_errors=True)
    if problems := uploads.problems_of(result):
        raise UserError(problems)
    return {"filename": upload.filename, **result}


@router.get("/v1/datasets", response_model=list[DatasetOut])
def list_datasets(who: Principal = Depends(auth), service: Service = Depends(current_service)) -> list[dict]:
    names = service.store.key_names()
    return [dataset_out(service, r, names) for r in service.store.datasets(owner_scope(who))]


@router.get("/v1/datasets/{dataset_id}", response_model=DatasetOut)
def get_dataset(dataset_id: str, who: Principal = Depends(auth), service: Service = Depends(current_service)) -> dict:
    return dataset_out(service, visible(service.store.dataset(dataset_id), who, "dataset", dataset_id))


@router.delete("/v1/datasets/{dataset_id}", status_code=204, response_class=Response)
def delete_dataset(dataset_id: str, who: Principal = Depends(auth),
                   service: Service = Depends(current_service)) -> Response:
    visible(service.store.dataset(dataset_id), who, "dataset", dataset_id)
    users = service.store.delete_dataset(dataset_id)
    if users:
        raise UserError(f"dataset '{dataset_id}' is used by queued or running job(s) {', '.join(users)}; cancel them"
                        " or wait until they finish", kind="conflict")
    shutil.rmtree(service.data.dataset(dataset_id), ignore_errors=True)
    return Response(status_code=204)
