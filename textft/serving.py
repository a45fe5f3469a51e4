"""HTTP inference service: ``create_app(classifier)``, run by ``textft serve --model DIR`` (FastAPI + uvicorn).

``POST /predict`` labels one text or a list, ``GET /health`` answers when the model is ready,
``GET /metadata`` describes the model, ``GET /tasks`` every task (metric names and directions). Requests that arrive together are micro-batched: they
wait a few milliseconds in a queue, then one forward pass serves them all, which keeps a CPU or
GPU busy with full batches under load while a lone request waits only ``max_wait_ms``.
"""

from __future__ import annotations

import json
import logging
import uuid
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any, Awaitable, Callable

import numpy as np

from textft.config import UserError
from textft.micro_batching import ClientGone, MicroBatcher, PredictionFailed, QueueFull, RequestTimeout
from textft.tasks import describe_tasks

log = logging.getLogger("textft.serve")

try:
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError:  # reported when serving, so that `textft --help` works without the extra
    FastAPI = None


if FastAPI is not None:  # the schemas sit at module level so that FastAPI can resolve their annotations

    class TextPair(BaseModel):
        """Two texts read together (paraphrase, entailment, duplicate questions)."""

        model_config = ConfigDict(extra="forbid")
        text: StrictStr
        text_pair: StrictStr

    class PredictRequest(BaseModel):
        """Body of POST /predict."""

        model_config = ConfigDict(extra="forbid")
        inputs: StrictStr | TextPair | list[StrictStr | TextPair] = Field(
            description='one text, a pair {"text": ..., "text_pair": ...}, or a list of them')
        top_k: StrictInt = Field(1, ge=1, description="also list the k most likely labels")
        return_all_scores: StrictBool = Field(False, description="include every label's probability")

    class LabelScore(BaseModel):
        label: str
        score: float

    class Prediction(BaseModel):
        """One input's answer, shaped by the model's task: ``label`` and ``score`` (single-label;
        ``out_of_scope`` and ``model_label`` once a threshold is calibrated), ``labels`` above their
        thresholds (multi-label; empty for none), or ``value`` (regression)."""

        label: str | None = None
        score: float | None = None
        labels: list[LabelScore] | None = None
        value: float | None = None
        out_of_scope: bool | None = None
        model_label: str | None = None
        top_k: list[LabelScore] | None = None
        scores: dict[str, float] | None = None

    class PredictResponse(BaseModel):
        predictions: list[Prediction]

    class MetricInfo(BaseModel):
        name: str = Field(description="the key of the metric in reports, metrics and events")
        display_name: str = Field(description="how reports and pages write it")
        lower_is_better: bool
        selectable: bool = Field(description="train.metric_for_best may name it")

    class TaskInfo(BaseModel):
        """What a client needs to show a task's runs and answers; textft.tasks owns every value."""

        name: str
        problem_type: str = Field(description="problem_type in the saved model's config.json")
        loss_name: str
        metrics: list[MetricInfo] = Field(description="every metric the task reports, headline first")
        headline: list[str] = Field(description="the metrics a run is summarised by, in order")
        curves: list[str] = Field(description="the validation metrics of the learning curves")
        default_metric: str = Field(description="the metric the best model is picked by when train.metric_for_best is auto")
        answer_fields: list[str] = Field(description="the fields a prediction of this task may hold")


def _missing_extra() -> UserError:
    return UserError("textft serve needs FastAPI and uvicorn; install them with: pip install 'textft[serve]'")


def _metrics_from_reports(model_dir: Path | None, headline: tuple[str, ...]) -> dict | None:
    """Headline metrics per split from report.json (richer, when present) or eval_report.json."""
    if model_dir is None:
        return None
    for name in ("report.json", "eval_report.json"):
        path = model_dir / name
        if not path.is_file():
            continue
        try:
            splits = json.loads(path.read_text(encoding="utf-8")).get("splits") or {}
        except (ValueError, AttributeError, UnicodeDecodeError):
            log.warning("ignoring unreadable %s", path)
            continue
        return {split: {k: m.get(k) for k in (*headline, "num_examples") if k in m and k not in ("loss", "ece")}
                for split, m in splits.items() if isinstance(m, dict)}
    return None


def public_model_name(name_or_path: str | None) -> str | None:
    """A model reference fit to show clients: hub names as they are, a local path reduced to its last part."""
    if not name_or_path:
        return name_or_path
    text = str(name_or_path)
    if text.startswith(("/", "~", "./", "../", "\\")) or (len(text) > 1 and text[1] == ":"):
        return Path(text.replace("\\", "/")).name or text
    return text


def metadata(classifier, limits: dict[str, Any]) -> dict[str, Any]:
    info = classifier.describe()
    oos = info.pop("out_of_scope")
    info["out_of_scope"] = None if oos is None else {k: oos.get(k) for k in ("method", "threshold", "label", "target")}
    info["metrics"] = _metrics_from_reports(classifier.model_dir, classifier.task.headline)
    info["limits"] = limits
    # Server paths tell clients nothing and leak the host's layout (user names, mount points).
    info.pop("model_dir", None)
    info["base_model"] = public_model_name(info.get("base_model"))
    return info


def _swagger_assets() -> Path | None:
    """Swagger UI's files as shipped by the fastapi-offline package (Swagger UI 5, which reads the OpenAPI
    3.1 that FastAPI writes; the swagger-ui-bundle package's Swagger UI 4 cannot), or None without it."""
    try:
        path = Path(str(resources.files("fastapi_offline") / "static"))
    except ImportError:
        return None
    return path if (path / "swagger-ui-bundle.js").is_file() else None


async def _client_gone(request: "Request") -> None:
    """Returns once the client has disconnected (the request body is already read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def serve_local_docs(app: "FastAPI") -> None:
    """Swagger UI at /docs from the fastapi-offline package's files; without it, no /docs page."""
    assets = _swagger_assets()
    if assets is None:
        return
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles

    app.mount("/docs/assets", StaticFiles(directory=assets), name="swagger-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs():
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=app.title + " - docs",
                                   swagger_js_url="/docs/assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs/assets/swagger-ui.css",
                                   swagger_favicon_url="/docs/assets/favicon.png")


def add_error_handlers(app: "FastAPI") -> None:
    """Every error as ``{"error": ...}``: 400 for a body that is not JSON, 422 naming each bad field,
    and 500 without a trace (the server log keeps it)."""

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return JSONResponse({"error": "the request body is not valid JSON"}, status_code=400)
        problems = []
        for e in errors:
            where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
            problems.append(f"{where}: {e.get('msg')}")
        return JSONResponse({"error": "; ".join(dict.fromkeys(problems))}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        # Starlette logs the traceback after this handler; the client learns nothing of the code.
        return JSONResponse({"error": "internal server error; the server log has the details"}, status_code=500)


def request_items(inputs, max_texts: int, max_chars: int, model_pairs: bool | None) -> list[tuple[str, str | None]]:
    """The (text, text_pair) items of a request, or an HTTPException naming every item that cannot be
    classified: over the limits, invalid text (see ``textft.texts``), or a pair where the model reads
    single texts (and the reverse)."""
    from textft.texts import text_problem

    single = not isinstance(inputs, list)
    given = [inputs] if single else inputs
    if not given:
        raise HTTPException(422, "inputs: give at least one text")
    if len(given) > max_texts:
        raise HTTPException(413, f"inputs: {len(given)} texts in one request; the limit is {max_texts}"
                                 " (textft serve --max-texts)")
    items = [(x, None) if isinstance(x, str) else (x.text, x.text_pair) for x in given]
    problems = []
    for i, (text, pair) in enumerate(items):
        where = "inputs" if single else f"inputs[{i}]"
        for place, value in ((where, text), (f"{where}.text_pair", pair)):
            if value is None:
                continue
            if len(value) > max_chars:
                raise HTTPException(413, f"{place}: {len(value):,} characters; the limit is {max_chars:,}"
                                         " (textft serve --max-chars)")
            if problem := text_problem(value):
                problems.append(f"{place}: {problem}")
        if model_pairs and pair is None:
            problems.append(f'{where}: this model reads text pairs; send {{"text": ..., "text_pair": ...}}')
        elif model_pairs is False and pair is not None:
            problems.append(f"{where}: this model reads single texts, not pairs")
    if problems:
        more = f" and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise HTTPException(422, "; ".join(problems[:10]) + more)
    return items


def check_answer_options(classifier, top_k, return_all_scores) -> None:
    """422 for answer options the classifier cannot give (e.g. top_k of a regression model), before any work."""
    try:
        classifier.results(np.zeros((0, classifier.task.num_outputs)), top_k, return_all_scores)
    except UserError as e:
        raise HTTPException(422, e.problems[0].replace("'--top-k'", "top_k").replace("'--all-scores'",
                                                                                      "return_all_scores")) from None


async def batched_logits(batcher: MicroBatcher, items: list, *, timeout_s: float | None = None,
                         gone: Awaitable | None = None):
    """The classifier's outputs (logits and out-of-scope scores) of ``items`` through the micro-batcher,
    its refusals as HTTP answers: 503 with Retry-After when the queue is full or the request ran out of
    time, 500 with a request id (never a trace) when the forward pass failed. ClientGone passes through:
    there is nobody to answer."""
    tag = uuid.uuid4().hex[:12]
    retry_after = {"Retry-After": str(max(1, round((timeout_s or 10) / 10)))}
    try:
        return await batcher.submit(items, timeout_s=timeout_s, gone=gone, tag=tag)
    except QueueFull as e:
        raise HTTPException(503, f"the server is busy ({e}); retry later", headers=retry_after) from None
    except RequestTimeout:
        raise HTTPException(503, f"the prediction did not finish within {timeout_s:g} s (textft serve"
                                 " --request-timeout); retry later", headers=retry_after) from None
    except PredictionFailed:
        raise HTTPException(500, f"prediction failed for this request (id {tag}); the server log has"
                                 " the details") from None


def model_runner(classifier, max_batch_size: int) -> Callable[[list[tuple[str, str | None]]], Any]:
    """The function the micro-batcher calls with a batch of (text, text_pair) items: their outputs
    (``Classifier.outputs``: logits, and the in-scope score of a calibrated model's out-of-scope method)."""
    from textft.tokenization import bounded_text

    # head, tail or head+tail; sliding windows read the whole text, which is not cut
    truncation = classifier.long_text

    def run(items: list[tuple[str, str | None]]):
        # Cut to what truncation keeps before tokenising: tokenizers cost more than linear time in
        # the length, and a maximum-size request would otherwise spend most of its time there.
        # Pairs are truncated by the tokenizer's pair strategy, so only single texts are cut here.
        if classifier.pairs:
            return classifier.outputs([t for t, _ in items], batch_size=max_batch_size, pairs=[p for _, p in items])
        texts = [bounded_text(t, classifier.tokenizer, classifier.max_length, truncation, classifier.head_fraction)
                 for t, _ in items]
        return classifier.outputs(texts, batch_size=max_batch_size)

    return run


def create_app(classifier, *, max_batch_size: int = 32, max_wait_ms: float = 5.0, max_texts: int = 64,
               max_chars: int = 20_000, max_queue: int = 1024, request_timeout_s: float = 30.0) -> "FastAPI":
    """The FastAPI application serving ``classifier`` (a ``textft.classifier.Classifier``).

    ``max_queue`` texts may wait for the model (beyond: 503 with Retry-After); a request not answered
    within ``request_timeout_s`` gets 503 too. Invalid texts (see ``textft.texts``) get 422 before
    they reach the model.
    """
    if FastAPI is None:
        raise _missing_extra()

    limits = {"max_texts": max_texts, "max_chars": max_chars, "max_batch_size": max_batch_size,
              "max_wait_ms": max_wait_ms, "max_queue": max_queue, "request_timeout_s": request_timeout_s}
    info = metadata(classifier, limits)

    run = model_runner(classifier, max_batch_size)
    batcher = MicroBatcher(run, max_batch_size, max_wait_ms / 1000, max_queue)

    @asynccontextmanager
    async def lifespan(app):
        # the first forward pass allocates; keep it off a client's clock
        classifier.logits(["warm up"], pairs=["warm up"] if classifier.pairs else None)
        batcher.start()
        yield
        await batcher.stop()

    # FastAPI's own /docs and /redoc pages load their scripts from a CDN: a service on a closed
    # network shows a blank page, and every visitor's browser tells a third party about it.
    app = FastAPI(title="textft classifier", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description=f"Labels: {', '.join(classifier.labels[:20])}" + (" ..." if len(classifier.labels) > 20 else ""))
    serve_local_docs(app)
    add_error_handlers(app)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/tasks", response_model=list[TaskInfo])
    async def tasks() -> list[dict]:
        return describe_tasks()

    @app.get("/metadata")
    async def get_metadata() -> dict:
        return {**info, "served": batcher.stats()}

    @app.post("/predict", response_model=PredictResponse, response_model_exclude_none=True)
    async def predict(req: PredictRequest, request: Request):
        items = request_items(req.inputs, max_texts, max_chars, classifier.pairs)
        check_answer_options(classifier, req.top_k, req.return_all_scores)
        try:
            outputs = await batched_logits(batcher, items, timeout_s=request_timeout_s, gone=_client_gone(request))
        except ClientGone:
            return Response(status_code=499)  # nginx's "client closed request"; nobody reads it
        return {"predictions": classifier.results(outputs, top_k=req.top_k, return_all_scores=req.return_all_scores)}

    # JSON escapes (\uXXXX) take up to 6 bytes a character; anything larger cannot pass the limits.
    app.add_middleware(BodyLimit, max_bytes=6 * max_texts * max_chars + 65_536)
    return app


class BodyLimit:
    """Refuses request bodies over ``max_bytes`` with 413 before they are read into memory."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                too_large = int(declared) > self.max_bytes
            except ValueError:
                return await JSONResponse({"error": "invalid Content-Length header"}, status_code=400)(scope, receive, send)
            if too_large:
                return await self._refuse(scope, receive, send)
        received = 0
        started = False

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI passes HTTPException through its body parsing (anything else becomes a 400).
                    raise HTTPException(413, self.message)
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except HTTPException as e:
            if started or e.status_code != 413:
                raise
            await self._refuse(scope, receive, send)

    @property
    def message(self) -> str:
        return f"request body larger than {self.max_bytes:,} bytes (limits: --max-texts texts of --max-chars characters)"

    async def _refuse(self, scope, receive, send):
        response = JSONResponse({"error": self.message}, status_code=413, headers={"Connection": "close"})
        await response(scope, receive, send)
