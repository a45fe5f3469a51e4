"""``/v1/datasets``: uploads checked as ``textft train`` would check them, their columns, list, one, delete."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import time

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from textft.service import datasets as uploads
from textft.service.keys import Principal
from textft.service.limits import storage_message
from textft.service.routes_shared import (accepting, auth, current_service, error, iso, key_names, max_upload, new_id,
                                          owned, scope)
from textft.service.core import Service
from textft.service.store import ACTIVE, dumps
from textft.service.textft_api import closest, data_formats

router = APIRouter(tags=["datasets"])
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


def dataset_out(service: Service, row: dict, names: dict[str, str] | None = None) -> dict:
    return {"id": row["id"], "name": row["name"], "filename": row["filename"], "format": row["format"],
            "size_bytes": row["size_bytes"], "rows": row["rows"], "text_column": row["text_column"],
            "text_pair_column": row["text_pair_column"], "pairs": row["text_pair_column"] is not None,
            "label_column": row["label_column"], "task": row["task"], "drop_empty": bool(row["drop_empty"]),
            "labels": row["labels"], "preview": row["preview"], "created_at": iso(row["created_at"]),
            "owner": (names or key_names(service.store)).get(row["owner"])}


def form_problems(fields: dict[str, str]) -> list[tuple[str, str]]:
    problems = [(f, f"'{f}': unknown form field; fields: file, text_column, text_pair_column, label_column, name,"
                    f" drop_empty{closest(f, sorted(FORM_FIELDS))}") for f in sorted(set(fields) - FORM_FIELDS)]
    pair = fields.get("text_pair_column", "").strip()
    for other, default in (("text_column", "text"), ("label_column", "label")):
        if pair and pair == (fields.get(other, "").strip() or default):
            problems.append(("text_pair_column", f"'text_pair_column': '{pair}' is also the {other}; name the column"
                                                 " of the second text (leave it empty for single texts)"))
    if fields.get("drop_empty", "false").strip().lower() not in ("true", "false", "1", "0", "yes", "no"):
        problems.append(("drop_empty", f"'drop_empty' must be true or false, got {fields['drop_empty']!r}"))
    return problems


@router.post("/v1/datasets", status_code=201, openapi_extra=UPLOAD_FORM)
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
        problems = [tuple(p) for p in result.get("problems", [])]
    if problems:
        shutil.rmtree(dest, ignore_errors=True)
        return error(422, "; ".join(m for _, m in problems), problems)
    name = fields.get("name", "").strip()[:200] or upload.filename
    try:
        if await request.is_disconnected():  # nobody would learn this dataset's id
            raise uploads.UploadError(499, [("file", "the client went away while its upload was checked; nothing"
                                                     " was stored")])
        with store.transaction() as db:
            # Checked again with the insert, in one transaction: concurrent uploads cannot all fit.
            if quota is not None and (now := service.storage.used(who.id, db)) + upload.size > quota:
                raise uploads.UploadError(507, [("file", storage_message(now, quota, upload.size))])
            db.execute("INSERT INTO datasets (id, owner, name, filename, path, format, size_bytes, rows, text_column,"
                       " label_column, drop_empty, labels, preview, created_at, task, text_pair_column)"
                       " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (dataset_id, who.id, name, upload.filename, str(upload.path.relative_to(service.data.root)),
                        upload.path.suffix.lstrip("."), upload.size, result["rows"], text_column, label_column,
                        int(drop), dumps(result["labels"]), dumps(result["preview"]), time.time(), result["task"],
                        pair_column))
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return dataset_out(service, store.row("SELECT * FROM datasets WHERE id = ?", dataset_id))


async def receive_within_quota(request: Request, service: Service, who: Principal, dest, quota: int | None):
    """The upload streamed into ``dest`` under the key's upload limit and what is left of its storage
    (507 naming what it stores when the storage is the tighter of the two)."""
    max_bytes = max_upload(service, who)
    used = 0
    if quota is not None:
        used = await run_in_threadpool(service.storage.used, who.id)
        declared = request.headers.get("content-length", "")
        if used >= quota or declared.isdigit() and used + int(declared) > quota + uploads.BODY_SLACK:
            raise uploads.UploadError(507, [("file", storage_message(used, quota, int(declared or 0)))], close=True)
    room = max_bytes if quota is None else min(max_bytes, quota - used)
    try:
        return await uploads.receive(request, dest, room, data_formats())
    except uploads.UploadError as e:
        if e.status == 413 and room < max_bytes:
            raise uploads.UploadError(507, [("file", storage_message(used, quota))], close=True) from None
        raise


async def while_connected(request: Request, awaitable):
    """The result of ``awaitable``; once the client has gone away it is cancelled (an upload check
    stops with its process) and the answer is 499: nothing is kept for a client that gave up."""
    task = asyncio.ensure_future(awaitable)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.25)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise uploads.UploadError(499, [("file", "the client went away while its upload was checked;"
                                                         " nothing was stored")])
    finally:
        if not task.done():
            task.cancel()


@router.post("/v1/datasets/columns")
async def dataset_columns(request: Request, who: Principal = Depends(auth),
                          service: Service = Depends(current_service)) -> dict:
    """Column names and first rows of a file, to choose text_column, label_column and (for sentence
    pairs) text_pair_column; nothing is kept."""
    dest = service.data.cache / "peek" / secrets.token_hex(8)
    upload = await uploads.receive(request, dest, max_upload(service, who), data_formats())
    try:
        if upload.fields:
            raise HTTPException(422, f"unknown form field(s) {', '.join(sorted(upload.fields))}; send only 'file'")
        result = await while_connected(request, service.checker.peek(
            upload.path, upload.path.suffix.lower(), key=who.id, bounds=service.upload_bounds()))
    finally:
        shutil.rmtree(dest, ignore_errors=True)
    if result.get("problems"):
        problems = [tuple(p) for p in result["problems"]]
        return error(422, "; ".join(m for _, m in problems), problems)
    return {"filename": upload.filename, **result}


@router.get("/v1/datasets")
def list_datasets(who: Principal = Depends(auth), service: Service = Depends(current_service)) -> list[dict]:
    where, args = scope(who)
    names = key_names(service.store)
    return [dataset_out(service, r, names)
            for r in service.store.rows(f"SELECT * FROM datasets WHERE 1{where} ORDER BY created_at", *args)]


@router.get("/v1/datasets/{dataset_id}")
def get_dataset(dataset_id: str, who: Principal = Depends(auth), service: Service = Depends(current_service)) -> dict:
    return dataset_out(service, owned(service.store, "datasets", "dataset", dataset_id, who))


@router.delete("/v1/datasets/{dataset_id}", status_code=204)
def delete_dataset(dataset_id: str, who: Principal = Depends(auth),
                   service: Service = Depends(current_service)) -> Response:
    owned(service.store, "datasets", "dataset", dataset_id, who)
    with service.store.transaction() as db:
        users = [r[0] for r in db.execute(
            f"SELECT id FROM jobs WHERE state IN {ACTIVE} AND ? IN (dataset, validation_dataset, test_dataset)",
            (dataset_id,)).fetchall()]
        if users:
            raise HTTPException(409, f"dataset '{dataset_id}' is used by queued or running job(s)"
                                     f" {', '.join(users)}; cancel them or wait until they finish")
        db.execute("DELETE FROM datasets WHERE id = ?", (dataset_id,))
    shutil.rmtree(service.data.dataset(dataset_id), ignore_errors=True)
    return Response(status_code=204)
