"""Requests from many clients gathered into batches for one model: bounded queue, per-request
timeouts, clients that gave up skipped, and a failed batch retried request by request so that only
the guilty request fails."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Awaitable, Callable

import numpy as np

log = logging.getLogger("textft.serve")


class QueueFull(Exception):
    """More texts wait for the model than the queue holds."""


class RequestTimeout(Exception):
    """A request's texts were not classified within its time limit."""


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


class PredictionFailed(Exception):
    """The model failed on this request's texts (run alone); the log has the traceback."""


class Retired(PredictionFailed):
    """The batcher was stopped before it took this request into a batch (its model left a cache):
    nothing ran, so asking the model's new batcher again is safe."""


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
        self.in_flight = 0  # requests submitted and not yet answered
        self.running: list[_Pending] = []  # the requests of the batch the model runs now
        self.stopped = False
        self.batches = self.texts = self.dropped = self.rejected = self.timed_out = self.failed = 0

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Stop at once, none left waiting forever: the batch the model runs now fails (PredictionFailed),
        requests still queued were never taken (Retired)."""
        self.stopped = True
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=False, cancel_futures=True)
        queued = [self.queue.get_nowait() for _ in range(self.queue.qsize())]
        for item, error in [(i, PredictionFailed) for i in self.running] + [(i, Retired) for i in queued]:
            if not item.future.done():
                item.future.set_exception(error(item.tag))

    async def retire(self, poll_s: float = 0.05) -> None:
        """Stop once every request submitted so far has its answer (a model evicted from a cache while
        clients wait for it answers them first)."""
        while self.in_flight and not self.stopped:
            await asyncio.sleep(poll_s)
        await self.stop()

    def stats(self) -> dict[str, int]:
        return {"batches": self.batches, "texts": self.texts, "waiting": self.waiting, "rejected_queue_full":
                self.rejected, "timed_out": self.timed_out, "dropped_before_run": self.dropped,
                "failed": self.failed}

    async def submit(self, texts: list[str], *, timeout_s: float | None = None,
                     gone: Awaitable | None = None, tag: str = "") -> np.ndarray:
        """Logits of ``texts`` once their batch has run.

        Raises QueueFull (nothing queued), RequestTimeout after ``timeout_s``, ClientGone when the
        awaitable ``gone`` finishes first (the client disconnected), PredictionFailed when the model
        fails on these texts alone, Retired when the batcher was stopped before taking them.
        """
        if self.stopped:
            raise Retired(tag)
        self.in_flight += 1
        try:
            return await self._submit(texts, timeout_s, gone, tag)
        finally:
            self.in_flight -= 1

    async def _submit(self, texts: list[str], timeout_s: float | None, gone: Awaitable | None, tag: str) -> np.ndarray:
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
            items = self.running = [item for item in await self._collect() if not item.future.done()]
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
