"""HTTP inference service: ``create_app(classifier)``, run by ``textft serve --model DIR`` (FastAPI + uvicorn).

``POST /predict`` labels one text or a list, ``GET /health`` answers when the model is ready,
``GET /metadata`` describes the model. Requests that arrive together are micro-batched: they
wait a few milliseconds in a queue, then one forward pass serves them all, which keeps a CPU or
GPU busy with full batches under load while a lone request waits only ``max_wait_ms``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

import numpy as np

from textft.config import UserError

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

    class PredictRequest(BaseModel):
        """Body of POST /predict."""

        model_config = ConfigDict(extra="forbid")
        inputs: StrictStr | list[StrictStr] = Field(description="one text, or a list of texts")
        top_k: StrictInt = Field(1, ge=1, description="also list the k most likely labels")
        return_all_scores: StrictBool = Field(False, description="include every label's probability")

    class LabelScore(BaseModel):
        label: str
        score: float

    class Prediction(BaseModel):
        """One text's answer; ``out_of_scope`` and ``model_label`` appear once a threshold is calibrated."""

        label: str
        score: float
        out_of_scope: bool | None = None
        model_label: str | None = None
        top_k: list[LabelScore] | None = None
        scores: dict[str, float] | None = None

    class PredictResponse(BaseModel):
        predictions: list[Prediction]


def _missing_extra() -> UserError:
    return UserError("textft serve needs FastAPI and uvicorn; install them with: pip install 'textft[serve]'")


class QueueFull(Exception):
    """More texts wait for the model than the queue holds."""


class RequestTimeout(Exception):
    """A request's texts were not classified within its time limit."""


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


class PredictionFailed(Exception):
    """The model failed on this request's texts (run alone); the log has the traceback."""


@dataclass
class _Pending:
    texts: list[str]
    future: asyncio.Future
    tag: str


class MicroBatcher:
    """Collects the texts of concurrent requests and runs them through the model together.

    The first request of a batch waits at most ``max_wait_s`` for company, and a batch closes
    early at ``max_batch_size`` texts. The model runs in one worker thread, so the event loop
    keeps accepting requests (and filling the next batch) during a forward pass.

    One request must not hurt another: when a batch fails, its requests run again one by one, so
    that only the request that breaks the model fails. At most ``max_queue`` texts wait; beyond
    that ``submit`` raises QueueFull at once instead of letting latency grow without bound.
    Requests whose client gave up (timeout, disconnect) leave the queue without a forward pass.
    """

    def __init__(self, run: Callable[[list[str]], np.ndarray], max_batch_size: int, max_wait_s: float,
                 max_queue: int = 1024):
        self.run, self.max_batch_size, self.max_wait_s = run, max_batch_size, max_wait_s
        self.max_queue = max_queue
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="textft-model")
        self.task: asyncio.Task | None = None
        self.waiting = 0  # texts in the queue, not yet taken into a batch
        self.batches = self.texts = self.dropped = self.rejected = self.timed_out = self.failed = 0

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=False, cancel_futures=True)

    def stats(self) -> dict[str, int]:
        return {"batches": self.batches, "texts": self.texts, "waiting": self.waiting, "rejected_queue_full":
                self.rejected, "timed_out": self.timed_out, "dropped_before_run": self.dropped,
                "failed": self.failed}

    async def submit(self, texts: list[str], *, timeout_s: float | None = None,
                     gone: Awaitable | None = None, tag: str = "") -> np.ndarray:
        """Logits of ``texts`` once their batch has run.

        Raises QueueFull (nothing queued), RequestTimeout after ``timeout_s``, ClientGone when the
        awaitable ``gone`` finishes first (the client disconnected), PredictionFailed when the model
        fails on these texts alone.
        """
        if self.waiting + len(texts) > self.max_queue:
            self.rejected += 1
            if gone is not None and hasattr(gone, "close"):
                gone.close()
            raise QueueFull(f"{self.waiting} texts are waiting for the model (limit {self.max_queue})")
        future = asyncio.get_running_loop().create_future()
        self.waiting += len(texts)
        self.queue.put_nowait(_Pending(texts, future, tag))
        watcher = asyncio.ensure_future(gone) if gone is not None else None
        try:
            done, _ = await asyncio.wait([future] + ([watcher] if watcher else []), timeout=timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            if watcher is not None:
                watcher.cancel()
        if future.done():
            return future.result()
        future.cancel()  # the batch loop skips it, or drops its result if its batch already runs
        if watcher is not None and watcher in done:
            raise ClientGone()
        self.timed_out += 1
        raise RequestTimeout()

    def _take(self, item: _Pending) -> _Pending | None:
        self.waiting -= len(item.texts)
        if item.future.done():  # its client gave up while it waited
            self.dropped += 1
            return None
        return item

    async def _collect(self) -> list[_Pending]:
        loop = asyncio.get_running_loop()
        items: list[_Pending] = []
        while not items:
            first = self._take(await self.queue.get())
            items = [first] if first else []
        size = len(items[0].texts)
        deadline = loop.time() + self.max_wait_s
        while size < self.max_batch_size:
            try:
                item = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self.queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
            if self._take(item):
                items.append(item)
                size += len(item.texts)
        return items

    async def _run(self, texts: list[str]) -> np.ndarray:
        logits = await asyncio.get_running_loop().run_in_executor(self.executor, self.run, texts)
        self.batches += 1
        return logits

    async def _loop(self) -> None:
        while True:
            items = [item for item in await self._collect() if not item.future.done()]
            if not items:
                continue
            texts = [t for item in items for t in item.texts]
            try:
                logits = await self._run(texts)
            except Exception:
                if len(items) == 1:
                    self._fail(items[0])
                    continue
                log.warning("a batch of %d requests failed; running them one by one", len(items))
                for item in items:
                    if item.future.done():
                        continue
                    try:
                        self._answer(item, await self._run(item.texts))
                    except Exception:
                        self._fail(item)
                continue
            start = 0
            for item in items:
                self._answer(item, logits[start:start + len(item.texts)])
                start += len(item.texts)

    def _answer(self, item: _Pending, logits: np.ndarray) -> None:
        self.texts += len(item.texts)
        if not item.future.done():
            item.future.set_result(logits)

    def _fail(self, item: _Pending) -> None:
        self.failed += 1
        log.exception("prediction failed for request %s (%d texts)", item.tag, len(item.texts))
        if not item.future.done():
            item.future.set_exception(PredictionFailed(item.tag))


def _metrics_from_reports(model_dir: Path | None) -> dict | None:
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
        return {split: {k: m.get(k) for k in ("accuracy", "macro_f1", "weighted_f1", "num_examples") if k in m}
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
    info["metrics"] = _metrics_from_reports(classifier.model_dir)
    info["limits"] = limits
    # Server paths tell clients nothing and leak the host's layout (user names, mount points).
    info.pop("model_dir", None)
    info["base_model"] = public_model_name(info.get("base_model"))
    return info


def _swagger_assets() -> Path | None:
    """Swagger UI's files as shipped by the swagger-ui-bundle package, or None without it."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return None
    path = Path(str(swagger_ui_path))
    return path if (path / "swagger-ui-bundle.js").is_file() else None


async def _client_gone(request: "Request") -> None:
    """Returns once the client has disconnected (the request body is already read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def serve_local_docs(app: "FastAPI") -> None:
    """Swagger UI at /docs from the swagger-ui-bundle package's files; without it, no /docs page."""
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
                                   swagger_favicon_url="/docs/assets/favicon-32x32.png")


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


def request_texts(inputs, max_texts: int, max_chars: int) -> list[str]:
    """The texts of a request, or an HTTPException naming every item that cannot be classified."""
    from textft.texts import text_problem

    texts = [inputs] if isinstance(inputs, str) else inputs
    if not texts:
        raise HTTPException(422, "inputs: give at least one text")
    if len(texts) > max_texts:
        raise HTTPException(413, f"inputs: {len(texts)} texts in one request; the limit is {max_texts}"
                                 " (textft serve --max-texts)")
    single = isinstance(inputs, str)
    problems = []
    for i, text in enumerate(texts):
        where = "inputs" if single else f"inputs[{i}]"
        if len(text) > max_chars:
            raise HTTPException(413, f"{where}: {len(text):,} characters; the limit is {max_chars:,}"
                                     " (textft serve --max-chars)")
        if problem := text_problem(text):
            problems.append(f"{where}: {problem}")
    if problems:
        more = f" and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise HTTPException(422, "; ".join(problems[:10]) + more)
    return texts


def create_app(classifier, *, max_batch_size: int = 32, max_wait_ms: float = 5.0, max_texts: int = 64,
               max_chars: int = 20_000, max_queue: int = 1024, request_timeout_s: float = 30.0) -> "FastAPI":
    """The FastAPI application serving ``classifier`` (a ``textft.classifier.Classifier``).

    ``max_queue`` texts may wait for the model (beyond: 503 with Retry-After); a request not answered
    within ``request_timeout_s`` gets 503 too. Invalid texts (see ``textft.texts``) get 422 before
    they reach the model.
    """
    if FastAPI is None:
        raise _missing_extra()

    from textft.tokenization import bounded_text

    limits = {"max_texts": max_texts, "max_chars": max_chars, "max_batch_size": max_batch_size,
              "max_wait_ms": max_wait_ms, "max_queue": max_queue, "request_timeout_s": request_timeout_s}
    info = metadata(classifier, limits)

    # head, tail or head+tail; sliding windows read the whole text, which is not cut
    truncation = classifier.long_text

    def run(texts: list[str]) -> np.ndarray:
        # Cut to what truncation keeps before tokenising: tokenizers cost more than linear time in
        # the length, and a maximum-size request would otherwise spend most of its time there.
        texts = [bounded_text(t, classifier.tokenizer, classifier.max_length, truncation, classifier.head_fraction)
                 for t in texts]
        return classifier.logits(texts, batch_size=max_batch_size)

    batcher = MicroBatcher(run, max_batch_size, max_wait_ms / 1000, max_queue)
    retry_after = {"Retry-After": str(max(1, round(request_timeout_s / 10)))}

    @asynccontextmanager
    async def lifespan(app):
        classifier.logits(["warm up"])  # the first forward pass allocates; keep it off a client's clock
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

    @app.get("/metadata")
    async def get_metadata() -> dict:
        return {**info, "served": batcher.stats()}

    @app.post("/predict", response_model=PredictResponse, response_model_exclude_none=True)
    async def predict(req: PredictRequest, request: Request):
        texts = request_texts(req.inputs, max_texts, max_chars)
        tag = uuid.uuid4().hex[:12]
        try:
            logits = await batcher.submit(texts, timeout_s=request_timeout_s, gone=_client_gone(request), tag=tag)
        except QueueFull as e:
            raise HTTPException(503, f"the server is busy ({e}); retry later", headers=retry_after) from None
        except RequestTimeout:
            raise HTTPException(503, f"the prediction did not finish within {request_timeout_s:g} s"
                                     " (textft serve --request-timeout); retry later", headers=retry_after) from None
        except ClientGone:
            return Response(status_code=499)  # nginx's "client closed request"; nobody reads it
        except PredictionFailed:
            raise HTTPException(500, f"prediction failed for this request (id {tag}); the server log has"
                                     " the details") from None
        return {"predictions": classifier.results(logits, top_k=req.top_k, return_all_scores=req.return_all_scores)}

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
