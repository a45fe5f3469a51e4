"""The HTTP API of ``textft service``, versioned under ``/v1`` (OpenAPI at ``/openapi.json``).

Every route but ``/health`` needs ``Authorization: Bearer KEY``. A key sees its own datasets, jobs
and models (another key's are answered 404, as if absent); an admin key sees all. Every route declares
its request and response models (``schemas``); errors are JSON ``{"error": "...", "problems":
[{"field": ..., "message": ..., "kind": ...}]}`` with one entry per problem, the status from the kind
(``problems``).

The routes live in one module per resource (``routes_*``); this module builds the app around them:
lifespan, error handlers, the JSON body limit and the web page.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from textft.service import routes_datasets, routes_jobs, routes_models, routes_ops, routes_service
from textft.service.core import Service
from textft.service.metrics import RequestMetrics
from textft.service.problems import error_response, problem_of_status, refusal
from textft.service.textft_api import Problem, UserError, serve_local_docs
from textft.service.web import mount_page

log = logging.getLogger("textft.service")

JSON_BODY_LIMIT = 1 << 20


class JsonBodyLimit:
    """Refuses JSON bodies over the limit before reading them (uploads stream under their own limit)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"].startswith("/v1/datasets"):
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            response = error_response([Problem(f"request body larger than {self.max_bytes:,} bytes", "body",
                                               "too_large")], headers={"Connection": "close"})
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


async def invalid_request(request: Request, exc: RequestValidationError):
    if any(e.get("type") == "json_invalid" for e in exc.errors()):
        return error_response([Problem("the request body is not valid JSON", "body", "malformed")])
    problems = []
    for e in exc.errors():
        where = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path")) or "body"
        problems.append(Problem(f"'{where}': {e.get('msg')}", where))
    return error_response(problems)


async def http_error(request: Request, exc: StarletteHTTPException):
    """The framework's own refusals (an unknown path, a method not allowed, a body over the limit)
    and ``textft serve``'s answers, which come as a status."""
    return error_response([problem_of_status(exc.status_code, str(exc.detail))],
                          headers=getattr(exc, "headers", None), status=exc.status_code)


async def user_error(request: Request, exc: UserError):
    """Every problem raised by the service and by textft: the status comes from its kind."""
    return refusal(exc, {"Connection": "close"} if getattr(exc, "close", False) else None)


async def internal_error(request: Request, exc: Exception):
    """A fault of the service's own: the client learns nothing of the server (the log has the traceback)."""
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    # uvicorn closes the connection after a fault: the client must not send its next request on it
    return error_response([Problem("the service failed to answer this request; its operator's log has the details",
                                   None, "internal")], headers={"Connection": "close"})


EXCEPTION_HANDLERS = {RequestValidationError: invalid_request, StarletteHTTPException: http_error,
                      UserError: user_error,
                      Exception: internal_error}


def create_app(service: Service) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app):
        service.notifier.bind(asyncio.get_running_loop())
        await run_in_threadpool(service.start)
        yield
        await run_in_threadpool(service.stop)
        await service.models.close()

    app = FastAPI(title="textft service", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  exception_handlers=EXCEPTION_HANDLERS,
                  description="Fine-tuning jobs over HTTP: upload datasets, start jobs from preset configs,"
                              " follow them live, download, query and push the resulting models.")
    app.state.service = service
    for routes in (routes_service, routes_datasets, routes_jobs, routes_models, routes_ops):
        app.include_router(routes.router)
    mount_page(app)
    serve_local_docs(app)
    opts = service.opts
    app.add_middleware(JsonBodyLimit, max_bytes=max(JSON_BODY_LIMIT, 6 * opts.max_texts * opts.max_chars + 65_536))
    app.add_middleware(RequestMetrics, metrics=service.metrics)  # outermost: it also counts what the limit refuses
    return app
