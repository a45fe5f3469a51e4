"""What every route module of the service API shares: the service behind the app, the key of a
request, what that key may see and its limits."""

from __future__ import annotations

import secrets
from datetime import datetime, timezone

from fastapi import HTTPException, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from textft.service.keys import AuthError, Principal, Throttled
from textft.service.core import Service
from textft.service.textft_api import UserError


async def current_service(request: Request) -> Service:
    """The service the app was created for (a dependency of every route)."""
    return request.app.state.service


BEARER = HTTPBearer(auto_error=False, description="an API key (textft service keys create)")
"""Declares the key in the OpenAPI schema, so that /docs has an Authorize button; ``auth`` checks it."""


def auth(request: Request, _: HTTPAuthorizationCredentials | None = Security(BEARER)) -> Principal:
    """The key of ``Authorization: Bearer KEY``, or 401."""
    address = request.client.host if request.client else None
    try:
        return request.app.state.service.verifier.principal(request.headers.get("authorization"), address)
    except Throttled as e:
        raise HTTPException(429, str(e), headers={"Retry-After": str(e.retry_after)}) from None
    except AuthError as e:
        raise UserError(str(e), "authorization", "unauthorized") from None


def visible(row: dict | None, who: Principal, what: str, item_id: str) -> dict:
    """The row, if this key may see it; another key's rows are answered 404, as if absent."""
    if row is None or not (who.admin or row["owner"] == who.id):
        raise UserError(f"no {what} '{item_id}'", kind="not_found")
    return row


def owner_scope(who: Principal) -> str | None:
    """The ``owner`` of the rows this key may see: its own id, None (every row) for an admin key."""
    return None if who.admin else who.id


def accepting(service: Service) -> None:
    if not service.accepting:
        raise UserError("the service is stopping; try again once it is back", kind="unavailable")


def max_queued(service: Service, who: Principal) -> int:
    return who.max_queued if who.max_queued is not None else service.opts.max_queued


def max_upload(service: Service, who: Principal) -> int:
    return who.max_upload_bytes if who.max_upload_bytes is not None else service.opts.max_upload_bytes


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(5)}"

