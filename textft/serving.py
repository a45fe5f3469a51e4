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
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Callable

import numpy as np

from textft.config import UserError

log = logging.getLogger("textft.serve")

try:
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
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


def _missing_extra() -> UserError:
    return UserError("textft serve needs FastAPI and uvicorn; install them with: pip install 'textft[serve]'")


class MicroBatcher:
    """Collects the texts of concurrent requests and runs them through the model together.

    The first request of a batch waits at most ``max_wait_s`` for company, and a batch closes
    early at ``max_batch_size`` texts. The model runs in one worker thread, so the event loop
    keeps accepting requests (and filling the next batch) during a forward pass.
    """

    def __init__(self, run: Callable[[list[str]], np.ndarray], max_batch_size: int, max_wait_s: float):
        self.run, self.max_batch_size, self.max_wait_s = run, max_batch_size, max_wait_s
        self.queue: asyncio.Queue = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="textft-model")
        self.task: asyncio.Task | None = None
        self.batches = self.texts = 0

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

    async def submit(self, texts: list[str]) -> np.ndarray:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((texts, future))
        return await future

    async def _collect(self) -> list[tuple[list[str], asyncio.Future]]:
        loop = asyncio.get_running_loop()
        items = [await self.queue.get()]
        size = len(items[0][0])
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
            items.append(item)
            size += len(item[0])
        return items

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = await self._collect()
            items = [(texts, fut) for texts, fut in items if not fut.done()]  # clients that gave up
            if not items:
                continue
            texts = [t for batch, _ in items for t in batch]
            try:
                logits = await loop.run_in_executor(self.executor, self.run, texts)
            except Exception as e:  # one failing batch answers its requests with 500, the service goes on
                log.exception("prediction failed for a batch of %d texts", len(texts))
                for _, fut in items:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            self.batches += 1
            self.texts += len(texts)
            start = 0
            for batch, fut in items:
                if not fut.done():
                    fut.set_result(logits[start:start + len(batch)])
                start += len(batch)


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


def metadata(classifier, limits: dict[str, Any]) -> dict[str, Any]:
    info = classifier.describe()
    oos = info.pop("out_of_scope")
    info["out_of_scope"] = None if oos is None else {k: oos.get(k) for k in ("method", "threshold", "label", "target")}
    info["metrics"] = _metrics_from_reports(classifier.model_dir, classifier.task.headline)
    info["limits"] = limits
    info.pop("model_dir", None)  # a server path tells clients nothing and leaks the host's layout
    return info


def create_app(classifier, *, max_batch_size: int = 32, max_wait_ms: float = 5.0, max_texts: int = 64,
               max_chars: int = 20_000) -> "FastAPI":
    """The FastAPI application serving ``classifier`` (a ``textft.classifier.Classifier``)."""
    if FastAPI is None:
        raise _missing_extra()

    limits = {"max_texts": max_texts, "max_chars": max_chars, "max_batch_size": max_batch_size,
              "max_wait_ms": max_wait_ms}
    info = metadata(classifier, limits)
    def run(items: list[tuple[str, str | None]]) -> np.ndarray:
        pairs = [p for _, p in items]
        return classifier.logits([t for t, _ in items], batch_size=max_batch_size,
                                 pairs=pairs if any(p is not None for p in pairs) else None)

    batcher = MicroBatcher(run, max_batch_size, max_wait_ms / 1000)

    @asynccontextmanager
    async def lifespan(app):
        # the first forward pass allocates; keep it off a client's clock
        classifier.logits(["warm up"], pairs=["warm up"] if classifier.pairs else None)
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="textft classifier", version="1", lifespan=lifespan,
                  description=f"Labels: {', '.join(classifier.labels[:20])}" + (" ..." if len(classifier.labels) > 20 else ""))

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
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/metadata")
    async def get_metadata() -> dict:
        return {**info, "served": {"batches": batcher.batches, "texts": batcher.texts}}

    @app.post("/predict", response_model=PredictResponse, response_model_exclude_none=True)
    async def predict(req: PredictRequest):
        inputs = req.inputs if isinstance(req.inputs, list) else [req.inputs]
        if not inputs:
            raise HTTPException(422, "inputs: give at least one text")
        if len(inputs) > max_texts:
            raise HTTPException(413, f"inputs: {len(inputs)} texts in one request; the limit is {max_texts}"
                                     " (textft serve --max-texts)")
        items = [(x, None) if isinstance(x, str) else (x.text, x.text_pair) for x in inputs]
        check_inputs(items, max_chars, classifier.pairs)
        try:
            classifier.results(np.zeros((0, classifier.task.num_outputs)), req.top_k, req.return_all_scores)
        except UserError as e:
            raise HTTPException(422, e.problems[0].replace("'--top-k'", "top_k").replace("'--all-scores'",
                                                                                          "return_all_scores")) from None
        logits = await batcher.submit(items)
        return {"predictions": classifier.results(logits, top_k=req.top_k, return_all_scores=req.return_all_scores)}

    # JSON escapes (\uXXXX) take up to 6 bytes a character; anything larger cannot pass the limits.
    app.add_middleware(BodyLimit, max_bytes=6 * max_texts * max_chars + 65_536)
    return app


def check_inputs(items: list[tuple[str, str | None]], max_chars: int, model_pairs: bool | None) -> None:
    """Every input within the limits, not empty, and a pair exactly when the model reads pairs."""
    for i, (text, pair) in enumerate(items):
        for where, value in ((f"inputs[{i}]", text), (f"inputs[{i}].text_pair", pair)):
            if value is None:
                continue
            if len(value) > max_chars:
                raise HTTPException(413, f"{where}: {len(value):,} characters; the limit is {max_chars:,}"
                                         " (textft serve --max-chars)")
            if not value.strip():
                raise HTTPException(422, f"{where}: the text is empty")
        if model_pairs and pair is None:
            raise HTTPException(422, f"inputs[{i}]: this model reads text pairs; send"
                                     ' {"text": ..., "text_pair": ...}')
        if model_pairs is False and pair is not None:
            raise HTTPException(422, f"inputs[{i}]: this model reads single texts, not pairs")


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
