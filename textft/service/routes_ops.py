"""What operators and integrations use: ``/metrics`` (Prometheus, admin key), a job's webhook deliveries,
and a key's own webhook secret."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, Field

from textft.service.core import Service
from textft.service.keys import Principal
from textft.service.problems import ERROR_RESPONSES
from textft.service.routes_shared import auth, current_service, iso, visible
from textft.service.webhooks import SIGNATURE_HEADER, new_secret

router = APIRouter(responses=ERROR_RESPONSES)


class Attempt(BaseModel):
    attempt: int
    at: float = Field(description="Unix time the attempt started")
    seconds: float = Field(description="how long it took")
    status: int | None = Field(description="the receiver's HTTP status, None when none came")
    error: str | None = Field(description="why it failed (None: delivered)")


class Delivery(BaseModel):
    id: str = Field(description="the body's id: the same at every attempt, for the receiver to drop duplicates")
    event_id: int
    state: str = Field(description="pending (retried at next_attempt_at), delivered or failed (given up)")
    url: str
    attempts: int
    last_status: int | None
    last_error: str | None
    created_at: str | None
    finished_at: str | None
    next_attempt_at: str | None
    body: str = Field(description="the JSON POSTed, exactly as signed")
    history: list[Attempt] = Field(description="the first and the latest attempts")


class WebhookSecret(BaseModel):
    webhook_secret: str = Field(description="signs this key's webhooks from now on; shown only this once")
    signature_header: str = SIGNATURE_HEADER


@router.get("/metrics", tags=["service"], response_class=Response,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                             "description": "the Prometheus text format"}})
def metrics(who: Principal = Depends(auth), service: Service = Depends(current_service)) -> Response:
    """The service's metrics in the Prometheus text format (an admin key; or no key on --metrics-port)."""
    if not who.admin:
        raise HTTPException(403, "/metrics needs an admin key (or scrape the service's --metrics-port)")
    body, media_type = service.metrics.exposition()
    return Response(body, media_type=media_type)


@router.get("/v1/jobs/{job_id}/deliveries", tags=["jobs"], response_model=list[Delivery])
def deliveries(job_id: str, who: Principal = Depends(auth), service: Service = Depends(current_service)) -> list[dict]:
    """Every webhook delivery of the job (one per state change) with its attempts."""
    visible(service.store.job(job_id), who, "job", job_id)
    return [{"id": f"{d['job_id']}.{d['event_id']}", "event_id": d["event_id"], "state": d["state"], "url": d["url"],
             "attempts": d["attempts"], "last_status": d["last_status"], "last_error": d["last_error"],
             "created_at": iso(d["created_at"]), "finished_at": iso(d["finished_at"]),
             "next_attempt_at": iso(d["next_at"]) if d["state"] == "pending" else None, "body": d["body"],
             "history": d["history"]} for d in service.store.deliveries(job_id)]


@router.post("/v1/me/webhook-secret", tags=["service"], response_model=WebhookSecret)
async def rotate_webhook_secret(who: Principal = Depends(auth), service: Service = Depends(current_service)) -> dict:
    """A new webhook secret for the calling key (the old one stops signing at once), shown only here."""
    secret = new_secret()
    await run_in_threadpool(service.store.set_webhook_secret, who.id, secret)
    return {"webhook_secret": secret, "signature_header": SIGNATURE_HEADER}
