"""The running service: its options, its parts (store, key verifier, queue, monitor, catalog, model
cache, executors) and their start and stop. The app keeps it in ``app.state.service``; routes reach it
through ``routes_shared.current_service``, so no route module imports the process that builds the app
(``server``).

Start: settle what the last run left (finished attempts, orphans, half-built directories), then
start the executors and the monitor, then answer requests. Stop: refuse new jobs and uploads (503),
stop the running jobs (SIGTERM to their process groups; each gets its grace to finish its step),
record them as queued to resume at the next start.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from textft.service.beacons import Beacon
from textft.service.checks import Checker
from textft.service.containment import Cgroups
from textft.service.jobs import Catalog, Settings
from textft.service.keys import Verifier
from textft.service.layout import DataDir, private_files
from textft.service.limits import Storage, default_limits, machine_memory
from textft.service.metrics import Metrics
from textft.service.models import ModelCache
from textft.service.queue import (Devices, JobQueue, Runtime, detect_gpus, public_url, start_consumer,
                                  stop_consumer)
from textft.service.safekeeping import open_store
from textft.service.scheduler import Monitor
from textft.service.webhooks import Dispatcher, WebhookSettings

log = logging.getLogger("textft.service")


@dataclass
class Options:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int | None = None
    """Jobs run at once by this process (default: one per GPU, else 1); 0 leaves all jobs to workers."""
    broker: str | None = None
    configs_dirs: tuple[Path, ...] = ()
    """The team's own preset directories, on top of the packaged presets."""
    local_models: tuple[Path, ...] = ()
    save_every_steps: int = 100
    max_upload_bytes: int = 200_000_000
    max_queued: int = 10
    max_loaded_models: int = 2
    """Models with their own weights in memory for prediction: full models and shared base models."""
    max_loaded_adapters: int = 64
    """LoRA models in memory on their (shared) base models."""
    predict_device: str = "cpu"
    predict_threads: int = 1
    max_texts: int = 64
    max_chars: int = 20_000
    grace_s: float = 60.0
    gpus: list[str] | None = None
    log_level: str = "info"
    limits: dict = field(default_factory=dict)
    """Limits given explicitly (textft.service.limits.Limits fields); the others come from the machine."""
    check_workers: int = 2
    """Processes that check uploads (each key has at most one of them at a time)."""
    check_memory_bytes: int | None = None
    """Memory of one upload check (default: 15% of the machine's, at most 4 GB)."""
    check_seconds: float = 300.0
    """Time of one upload check."""
    max_retries: int = 3
    """Times a killed job (its executor or its process killed) runs again before it fails."""
    metrics_port: int | None = None
    """Serve /metrics without a key on this port too (bound to metrics_host)."""
    metrics_host: str = "127.0.0.1"
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    max_auth_failures: int = 20
    """Failed key checks a client address may make per minute before it is refused (429); 0: no limit."""
    header_timeout_s: float = 10.0
    """Seconds a client has to send a request's headers (and an idle connection stays open)."""
    body_timeout_s: float = 30.0
    """Longest pause, in seconds, while a client sends a request's body."""
    max_connections_per_client: int = 32
    """Open connections one client address may hold at once (0: no cap)."""
    adopt_orphans: bool = False
    """Start even without a database over a data directory with datasets and jobs (they are kept aside)."""
    extra: dict = field(default_factory=dict)


class Notifier:
    """Wakes the event streams when the monitor records something (called from its thread)."""

    def __init__(self):
        self.loop: asyncio.AbstractEventLoop | None = None
        self.event: asyncio.Event | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop, self.event = loop, asyncio.Event()

    def notify(self) -> None:
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._fire)

    def _fire(self) -> None:
        event, self.event = self.event, asyncio.Event()
        event.set()

    async def wait(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self.event.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False


class Service:
    def __init__(self, opts: Options):
        self.opts = opts
        private_files()
        self.data = DataDir(opts.data_dir).create()
        # Jobs inherit this: the datasets cache stays with the service's files.
        os.environ.setdefault("HF_DATASETS_CACHE", str(self.data.cache / "datasets"))
        self.store = open_store(self.data, opts.adopt_orphans)
        self.verifier = Verifier(self.store, max_failures=opts.max_auth_failures)
        self.queue = JobQueue(self.data, opts.broker)
        self.notifier = Notifier()
        self.monitor = Monitor(self.store, self.data, self.queue, self.notifier.notify, max_retries=opts.max_retries)
        self.catalog = Catalog(tuple(opts.configs_dirs))
        self.settings = Settings(save_every_steps=opts.save_every_steps, local_models=tuple(opts.local_models))
        self.models = ModelCache(opts.max_loaded_models, opts.predict_device, opts.predict_threads,
                                 adapter_capacity=opts.max_loaded_adapters)
        gpus = detect_gpus() if opts.gpus is None else opts.gpus
        slots = opts.workers if opts.workers is not None else max(1, len(gpus))
        self.limits = default_limits(self.data.root, slots, len(gpus), remote=bool(opts.broker), **opts.limits)
        self.storage = Storage(self.store, self.data.jobs)
        # cgroup v2 where this service may manage it (each job and each checker gets one), else rlimits
        self.cgroups = Cgroups.take()
        self.runtime = Runtime(self.data, Devices(gpus), slots, grace_s=opts.grace_s,
                               job_memory_bytes=self.limits.job_memory_bytes, cgroups=self.cgroups)
        self.metrics = Metrics(self)
        self.webhooks = Dispatcher(self.store, opts.webhooks)
        self.beacon: Beacon | None = None
        self.checker: Checker | None = None
        self.consumer = None
        self.accepting = True
        self._stopper: threading.Thread | None = None

    def start(self) -> None:
        self.monitor.recover()
        memory = self.opts.check_memory_bytes or int(min(4e9, 0.15 * machine_memory()))
        self.checker = Checker(self.data.cache / "uploads", workers=self.opts.check_workers, memory_bytes=memory,
                               seconds=self.opts.check_seconds, cgroups=self.cgroups)
        self.checker.warm_up()
        self.consumer = start_consumer(self.queue, self.runtime)
        self.monitor.start()
        self.webhooks.start()
        if self.runtime.slots:
            self.beacon = Beacon(self.data, "service", self.runtime.slots, self.runtime.devices.gpus,
                                 lambda: len(self.runtime.running)).start()
        if self.opts.metrics_port:
            self.metrics.serve(self.opts.metrics_host, self.opts.metrics_port)
        where = f"GPUs {','.join(self.runtime.devices.gpus)}" if self.runtime.devices.gpus else "CPU"
        log.info("textft service: data in %s; queue %s; %d executor(s) on %s", self.data.root,
                 public_url(self.opts.broker) or self.data.queue_db, self.runtime.slots, where)

    def upload_bounds(self) -> dict:
        """The bounds of an uploaded file's shape, as upload_bounds.shape_problems takes them."""
        return {"columns": self.limits.upload_columns, "row_bytes": self.limits.upload_row_bytes,
                "cells": self.limits.upload_cells}

    def begin_shutdown(self) -> None:
        """Refuse new work and start stopping the running jobs (returns at once)."""
        if not self.accepting:
            return
        self.accepting = False
        log.info("stopping: running jobs get %gs to stop and stay queued for the next start", self.opts.grace_s)
        self._stopper = threading.Thread(target=stop_consumer, name="textft-stop",
                                         args=(self.consumer, self.runtime, self.opts.grace_s + 15))
        self._stopper.start()

    def stop(self) -> None:
        self.begin_shutdown()
        if self._stopper is not None:
            self._stopper.join()
        self.monitor.stop()
        self.webhooks.stop()  # after the monitor: the deliveries of its last changes are in the store
        self.metrics.close()
        if self.beacon is not None:
            self.beacon.stop()
        if self.checker is not None:
            self.checker.close()
        self.store.close()
