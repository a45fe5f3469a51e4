"""``/health``, ``/v1/me``, the tasks (``/v1/tasks``) and the catalog a job chooses from (presets,
accelerate configs)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from textft.service.keys import Principal
from textft.service.problems import ERROR_RESPONSES
from textft.service.routes_shared import auth, current_service, max_queued, max_upload
from textft.service.core import Service
from textft.service.schemas import AccelerateConfigOut, HealthOut, MeOut, PresetOut, TransferOptionsOut
from textft.service.textft_api import __version__, describe_tasks, task_schema, transfer_options

router = APIRouter(responses=ERROR_RESPONSES)
TaskInfo = task_schema()


@router.get("/health", tags=["service"], response_model=HealthOut)
def health(service: Service = Depends(current_service)) -> dict:
    return {"status": "ok" if service.accepting else "stopping", "version": __version__}


@router.get("/v1/me", tags=["service"], response_model=MeOut)
def me(who: Principal = Depends(auth), service: Service = Depends(current_service)) -> dict:
    opts, limits = service.opts, service.limits.for_key(who)
    return {"id": who.id, "name": who.name, "admin": who.admin, "hub_namespaces": list(who.hub_namespaces),
            "limits": {"max_queued_jobs": max_queued(service, who), "max_upload_bytes": max_upload(service, who),
                       "max_storage_bytes": limits.max_storage_bytes, "max_steps_per_job": limits.max_steps,
                       "max_job_seconds": limits.job_seconds, "job_memory_bytes": limits.job_memory_bytes,
                       "max_texts_per_prediction": opts.max_texts, "max_chars_per_text": opts.max_chars},
            "queued_jobs": service.store.queued_count(who.id), "storage_bytes": service.storage.used(who.id)}


@router.get("/v1/tasks", tags=["service"], response_model=list[TaskInfo])
def tasks(who: Principal = Depends(auth)) -> list[dict]:
    """Every task: its metrics with display names and direction, headline, curves, default metric and
    the fields of its answers, as textft.tasks defines them."""
    return describe_tasks()


@router.get("/v1/presets", tags=["jobs"], response_model=list[PresetOut])
def presets(who: Principal = Depends(auth), service: Service = Depends(current_service)) -> list[dict]:
    return service.catalog.describe_presets()


@router.get("/v1/accelerate-configs", tags=["jobs"], response_model=list[AccelerateConfigOut])
def accelerate_configs(who: Principal = Depends(auth), service: Service = Depends(current_service)) -> list[dict]:
    return service.catalog.describe_accelerate()


@router.get("/v1/transfer-options", tags=["jobs"], response_model=TransferOptionsOut)
def transfers(who: Principal = Depends(auth)) -> dict:
    """model.transfer's choices with their meaning, and the LoRA keys (model.lora_*: default, type, meaning)."""
    return transfer_options()
