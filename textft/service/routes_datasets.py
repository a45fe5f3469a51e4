"""``/v1/datasets``: uploads checked as ``textft train`` would check them, their columns, list, one, delete."""

from __future__ import annotations

import secrets
import shutil
import time

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from textft.service import datasets as uploads
from textft.service.keys import Principal
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
    upload = await uploads.receive(request, dest, max_upload(service, who), data_formats())
    fields = upload.fields
    problems = form_problems(fields)
    drop = fields.get("drop_empty", "false").strip().lower() in ("true", "1", "yes")
    text_column = fields.get("text_column", "").strip() or "text"
    label_column = fields.get("label_column", "").strip() or "label"
    pair_column = fields.get("text_pair_column", "").strip() or None
    if not problems:
        try:
            result = await service.checker.inspect(str(upload.path), upload.filename, text_column, label_column, drop,
                                                   text_pair_column=pair_column)
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)
            raise
        problems = uploads.problems_of(result)
    if problems:
        shutil.rmtree(dest, ignore_errors=True)
        raise UserError(problems)
    name = fields.get("name", "").strip()[:200] or upload.filename
    try:
        store.insert_dataset({
            "id": dataset_id, "owner": who.id, "name": name, "filename": upload.filename,
            "path": str(upload.path.relative_to(service.data.root)), "format": upload.path.suffix.lstrip("."),
            "size_bytes": upload.size, "rows": result["rows"], "text_column": text_column, "label_column": label_column,
            "drop_empty": int(drop), "labels": result["labels"], "preview": result["preview"],
            "created_at": time.time(), "task": result["task"], "text_pair_column": pair_column})
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return dataset_out(service, store.dataset(dataset_id))


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
        result = await service.checker.peek(upload.path, upload.path.suffix.lower())
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
