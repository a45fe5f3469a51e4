"""What every route module of the service API shares: the service behind the app, the key of a
request, what that key may see, its limits, and the one JSON error shape."""

from __future__ import annotations

import secrets
from datetime import datetime, timezone
from typing import Any

from fastapi import HTTPException, Request, Security
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from textft.service.keys import AuthError, Principal
from textft.service.core import Service
from textft.service.store import Store


async def current_service(request: Request) -> Service:
    """The service the app was created for (a dependency of every route)."""
    return request.app.state.service


BEARER = HTTPBearer(auto_error=False, description="an API key (textft service keys create)")
"""Declares the key in the OpenAPI schema, so that /docs has an Authorize button; ``auth`` checks it."""


def auth(request: Request, _: HTTPAuthorizationCredentials | None = Security(BEARER)) -> Principal:
    """The key of ``Authorization: Bearer KEY``, or 401."""
    try:
        return request.app.state.service.verifier.principal(request.headers.get("authorization"))
    except AuthError as e:
        raise HTTPException(401, str(e), headers={"WWW-Authenticate": "Bearer"}) from None


def owned(store: Store, table: str, what: str, item_id: str, who: Principal) -> dict:
    """The row, if this key may see it; another key's rows are answered 404, as if absent."""
    row = store.row(f"SELECT * FROM {table} WHERE id = ?", item_id)
    if row is None or not (who.admin or row["owner"] == who.id):
        raise HTTPException(404, f"no {what} '{item_id}'")
    return row


def key_names(store: Store) -> dict[str, str]:
    return {r["id"]: r["name"] for r in store.rows("SELECT id, name FROM keys")}


def scope(who: Principal) -> tuple[str, tuple]:
    """A WHERE clause suffix and its arguments: the rows this key may see."""
    return ("", ()) if who.admin else (" AND owner = ?", (who.id,))


def accepting(service: Service) -> None:
    if not service.accepting:
        raise HTTPException(503, "the service is stopping; try again once it is back")


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


def error(status: int, message: str, problems: list[tuple[str, str]] | None = None,
          headers: dict | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if problems:
        body["problems"] = [{"field": f, "message": m} for f, m in problems]
    return JSONResponse(body, status_code=status, headers=headers)
