"""Upload checks: a small pool of processes that read uploads with the training loader
(``datasets.inspect`` and ``datasets.peek``), each check under a memory and a wall-clock limit, taken
in turns by key.

Each process is started once and reused (importing the loader takes seconds). A key has at most
``workers - 1`` checks running while another key waits, and keys take turns, so one tenant's large
upload never holds up another's. A check past its time or memory is stopped with its process (the
next one starts in its place, its scratch files removed) and answered 413 naming the limit; a check
whose client went away is stopped the same way; a full disk is 507.
"""

from __future__ import annotations

import asyncio
import errno
import multiprocessing
import os
import shutil
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textft.service import datasets
from textft.service.containment import Cgroups, gb, process_memory, rlimits
from textft.service.datasets import UploadError

POLL_S = 0.1
MEMORY_POLL_S = 0.25
STARTUP_S = 300.0
"""Time a checking process may take to import the loader (minutes on a machine that is busy)."""
FUNCTIONS = {"inspect": datasets.inspect, "peek": datasets.peek}


@dataclass
class _Task:
    name: str
    args: tuple
    kwargs: dict
    future: asyncio.Future
    cancelled: threading.Event = field(default_factory=threading.Event)


class _Stopped(Exception):
    """The check was stopped because its client went away."""


class _Slot:
    """One checking process, started on demand and replaced when it is stopped."""

    def __init__(self, index: int, scratch: Path, memory: int | None, seconds: float, cgroups: Cgroups | None):
        self.index, self.memory, self.seconds, self.cgroups = index, memory, seconds, cgroups
        self.scratch = scratch / f"worker-{index}"
        self.proc = self.conn = None
        self.lock = threading.Lock()
        self.closed = threading.Event()

    def ensure(self) -> None:
        with self.lock:
            if self.proc is not None and self.proc.is_alive():
                return
            if self.closed.is_set():
                raise UploadError("the service is stopping; try again", kind="unavailable")
            self._clean()
            ctx = multiprocessing.get_context("spawn")
            parent, child = ctx.Pipe()
            cgroup = None
            if self.cgroups is not None and self.memory:
                cgroup = self.cgroups.create(f"textft-check-{self.index}", self.memory)
            self.proc = ctx.Process(target=_serve, name=f"textft-check-{self.index}", daemon=True,
                                    args=(child, os.getpid(), None if cgroup else self.memory, str(self.scratch)))
            self.proc.start()
            child.close()
            self.conn = parent
            if cgroup is not None:
                (cgroup / "cgroup.procs").write_text(str(self.proc.pid))
            if not self._ready(parent):
                self.proc.kill()
                self.proc.join(10)
                raise UploadError("the service could not start a checking process; try again", kind="unavailable")

    def _ready(self, conn) -> bool:
        """Ready once the loader is imported: a check's time limit counts the check alone. Not ready
        when the service closes meanwhile: its stop does not wait for an import it no longer needs."""
        deadline = time.monotonic() + STARTUP_S
        while not conn.poll(POLL_S):
            if self.closed.is_set() or time.monotonic() > deadline:
                return False
        return conn.recv() == "ready"

    def stop(self, restart: bool = True) -> None:
        """End the process (its scratch files go with it) and, unless told otherwise, start the next
        one in the background, so that the next check does not wait for the loader's import."""
        with self.lock:
            if self.proc is not None:
                self.proc.kill()
                self.proc.join(10)
                self.conn.close()
                self.proc = self.conn = None
            self._clean()
        if restart:
            threading.Thread(target=self._restart, name=f"textft-check-start-{self.index}", daemon=True).start()

    def _restart(self) -> None:
        try:
            self.ensure()
        except UploadError:
            pass  # the next check tries again and says so

    def _clean(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.scratch.mkdir(parents=True, exist_ok=True)

    def call(self, task: _Task) -> dict:
        """Run one check here (an executor thread); UploadError for a limit, _Stopped for a cancel."""
        self.ensure()
        self.conn.send((task.name, task.args, task.kwargs))
        started = measured = time.monotonic()
        while not self.conn.poll(POLL_S):
            now = time.monotonic()
            if task.cancelled.is_set():
                self.stop()
                raise _Stopped()
            if not self.proc.is_alive():
                self.stop()
                raise _limit("memory", f"the check stopped (out of memory?){_what(self.memory)}")
            if now - started > self.seconds:
                self.stop()
                raise _limit("time", f"reading the file took longer than the check's limit of {self.seconds:g} s")
            if self.memory and now - measured >= MEMORY_POLL_S:
                measured = now
                if (used := process_memory(self.proc.pid)) > self.memory:
                    self.stop()
                    raise _limit("memory", f"reading the file took {gb(used)} of memory, more than the check's"
                                           f" limit of {gb(self.memory)}")
        try:
            kind, value = self.conn.recv()
        except (EOFError, OSError):
            self.stop()
            raise _limit("memory", f"the check stopped (out of memory?){_what(self.memory)}") from None
        if kind == "ok":
            return value
        self.stop()  # a fresh process for the next check
        if kind == "memory":
            raise _limit("memory", f"reading the file needed more memory than the check may use{_what(self.memory)}")
        if kind == "disk":
            raise UploadError("the service's disk is full; nothing was stored. Try again later or ask the operator to"
                              " free space", kind="storage")
        raise UploadError(f"'file' could not be read: {value}")


def _what(memory: int | None) -> str:
    return f" (limit {gb(memory)})" if memory else ""


def _limit(which: str, message: str) -> UploadError:
    return UploadError(f"'file': {message}; nothing was stored. Upload a smaller file or split it", kind="too_large")


class Checker:
    """The pool: ``await checker.inspect(..., key=KEY)`` / ``peek`` run a check in turn with other keys'."""

    def __init__(self, scratch: Path, workers: int = 2, memory_bytes: int | None = None, seconds: float = 300.0,
                 cgroups: Cgroups | None = None):
        self.scratch = scratch
        scratch.mkdir(parents=True, exist_ok=True)
        self.slots = [_Slot(i, scratch, memory_bytes, seconds, cgroups) for i in range(max(1, workers))]
        self.free = list(self.slots)
        self.per_key = max(1, len(self.slots) - 1)
        self.waiting: dict[str, deque[_Task]] = {}
        self.running: dict[str, int] = {}
        self.executor = ThreadPoolExecutor(len(self.slots), thread_name_prefix="textft-check")

    def warm_up(self) -> Future:
        """Start the processes now rather than on the first upload."""
        return self.executor.submit(lambda: [slot.ensure() for slot in self.slots])

    async def inspect(self, *args, text_pair_column: str | None = None, key: str = "",
                      bounds: dict | None = None) -> dict:
        return await self.run(key, "inspect", *args, str(self.scratch), text_pair_column=text_pair_column,
                              bounds=bounds)

    async def peek(self, path: Path, suffix: str, key: str = "", bounds: dict | None = None) -> dict:
        return await self.run(key, "peek", str(path), suffix, bounds=bounds)

    async def run(self, key: str, name: str, *args, **kwargs) -> dict:
        task = _Task(name, args, kwargs, asyncio.get_running_loop().create_future())
        self.waiting.setdefault(key, deque()).append(task)
        self._dispatch()
        try:
            return await task.future
        except asyncio.CancelledError:
            task.cancelled.set()  # a waiting task is skipped, a running one stopped with its process
            raise

    def _dispatch(self) -> None:
        while self.free:
            key = next((k for k, tasks in self.waiting.items() if tasks and self.running.get(k, 0) < self.per_key),
                       None)
            if key is None:
                return
            task = self.waiting[key].popleft()
            rest = self.waiting.pop(key)
            if rest:
                self.waiting[key] = rest  # to the back: the other keys go first
            if task.cancelled.is_set():
                continue
            slot = self.free.pop()
            self.running[key] = self.running.get(key, 0) + 1
            done = asyncio.get_running_loop().run_in_executor(self.executor, slot.call, task)
            done.add_done_callback(lambda f, k=key, s=slot, t=task: self._finished(k, s, t, f))

    def _finished(self, key: str, slot: _Slot, task: _Task, done: asyncio.Future) -> None:
        self.free.append(slot)
        self.running[key] -= 1
        if not self.running[key]:
            del self.running[key]
        if not task.future.done():
            if done.exception() is not None:
                task.future.set_exception(done.exception())
            else:
                task.future.set_result(done.result())
        elif done.exception() is not None:
            done.exception()  # retrieved: a stopped check's _Stopped is expected
        self._dispatch()

    def close(self) -> None:
        for slot in self.slots:
            slot.closed.set()  # a process still importing the loader is not waited for
        for slot in self.slots:
            slot.stop(restart=False)
        self.executor.shutdown(wait=False, cancel_futures=True)


def _serve(conn, parent: int, memory: int | None, scratch: str) -> None:
    """A checking process: run the checks the pipe sends, one at a time, until the pipe closes."""
    datasets.exit_with_parent(parent)
    rlimits(memory, None)()
    datasets.warm_up()
    conn.send("ready")
    while True:
        try:
            name, args, kwargs = conn.recv()
        except (EOFError, OSError):
            return
        try:
            reply: tuple[str, Any] = ("ok", FUNCTIONS[name](*args, **kwargs))
        except MemoryError:
            reply = ("memory", None)
        except Exception as e:  # any reader's failure is a problem of this file, answered as such
            full = isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)
            text = " ".join(str(e).split()).replace(str(args[0]) if args else "\0", "the file")  # no server path
            reply = ("disk", None) if full or "No space left" in text else ("error", text[:300])
        conn.send(reply)
        if reply[0] != "ok":
            return
