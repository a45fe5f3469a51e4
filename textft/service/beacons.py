"""Heartbeats of the processes that run jobs: the service's own executors and each ``textft worker``.

Each such process rewrites ``DATA_DIR/workers/HOST-PID.json`` every few seconds (its slots, GPUs,
jobs running, the time) and removes it when it stops. A worker never writes the service's database,
and may run on another machine that shares the data directory: these files are how the service
(``/metrics``) knows which workers are alive, without a port of their own to scrape.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Callable

from textft.service.layout import DataDir, read_json, write_json

log = logging.getLogger("textft.service")

BEAT_S = 5.0
STALE_S = 30.0
"""A beacon older than this (by the writer's clock) is a worker that is gone or hung."""


def beacon_dir(data: DataDir) -> Path:
    return data.root / "workers"


class Beacon:
    """Rewrites this process's heartbeat file until stopped. ``busy`` says how many jobs run now."""

    def __init__(self, data: DataDir, kind: str, slots: int, gpus: list[str], busy: Callable[[], int]):
        self.path = beacon_dir(data) / f"{socket.gethostname()}-{os.getpid()}.json"
        self.record = {"worker": f"{socket.gethostname()}:{os.getpid()}", "kind": kind, "slots": slots,
                       "gpus": list(gpus), "started_at": time.time()}
        self.busy = busy
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json(self.path, {**self.record, "busy": self.busy(), "time": time.time()})

    def start(self) -> "Beacon":
        self.beat()
        self._thread = threading.Thread(target=self._run, name="textft-beacon", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(BEAT_S):
            try:
                self.beat()
            except OSError as e:  # a full or unmounted data directory: the service reports the beacon stale
                log.warning("cannot write the heartbeat %s: %s", self.path, e)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(BEAT_S + 1)
        self.path.unlink(missing_ok=True)


def read_beacons(data: DataDir) -> list[dict]:
    """Every heartbeat file's record, with ``age_s`` (by this machine's clock) and ``alive``."""
    out, now = [], time.time()
    folder = beacon_dir(data)
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        record = read_json(path)
        if not isinstance(record, dict) or not isinstance(record.get("time"), (int, float)):
            continue
        age = max(0.0, now - record["time"])
        out.append({**record, "age_s": age, "alive": age < STALE_S})
    return out
