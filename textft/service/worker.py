"""``textft worker``: runs jobs from a shared Redis queue on another machine.

The worker and the service share the data directory (e.g. an NFS mount, at any path): datasets
are read from it and each job's run directory is written into it, and the service follows the
job through those files. The worker never writes the service's database.
"""

from __future__ import annotations

import logging
import signal
import threading

from textft.service.beacons import Beacon
from textft.service.containment import Cgroups
from textft.service.layout import DataDir
from textft.service.limits import machine_memory
from textft.service.queue import Devices, JobQueue, Runtime, detect_gpus, public_url, start_consumer, stop_consumer
from textft.service.textft_api import UserError

log = logging.getLogger("textft.service")


def run_worker(data_dir: str, broker: str, workers: int | None, gpus: list[str] | None, grace_s: float,
               job_memory_bytes: int | None = None) -> int:
    data = DataDir(data_dir)
    if not data.jobs.is_dir():
        raise UserError(f"'--data-dir': '{data.root}' has no jobs/ directory; give the data directory of the"
                        " service (shared with this machine, e.g. over NFS)")
    try:
        queue = JobQueue(data, broker)
        queue.ping()
    except ValueError as e:
        raise UserError(str(e)) from None
    except Exception as e:  # redis raises connection, auth and URL errors alike
        raise UserError(f"'--broker': cannot reach {public_url(broker)}: {e}") from None
    gpus = detect_gpus() if gpus is None else gpus
    slots = workers if workers is not None else max(1, len(gpus))
    if slots < 1:
        raise UserError(f"'--workers' must be >= 1, got {slots}")
    memory = job_memory_bytes or int(0.6 * machine_memory() / slots)
    runtime = Runtime(data, Devices(gpus), slots, grace_s=grace_s, job_memory_bytes=memory, cgroups=Cgroups.take())
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    consumer = start_consumer(queue, runtime)
    beacon = Beacon(data, "worker", slots, gpus, lambda: len(runtime.running)).start()
    where = f"GPUs {','.join(gpus)}" if gpus else "CPU"
    print(f"textft worker: {slots} executor(s) on {where}, queue {public_url(broker)}, data {data.root}", flush=True)
    while not stop.wait(1.0):
        pass
    print("textft worker: stopping; running jobs stop after their current step and go back to the queue", flush=True)
    stop_consumer(consumer, runtime, grace_s + 15)
    beacon.stop()
    return 0
