"""The job queue (huey) and the executors that take jobs from it.

One machine: a SqliteHuey file in the data directory, consumed by threads of ``textft service``.
Several machines: ``--broker redis://HOST:PORT/DB`` on the service and on every ``textft worker``
(PriorityRedisHuey). A queued message is only ``(job id, attempt)``; messages are JSON, never
pickles, so a compromised broker cannot run code on the workers.

An executor runs one attempt of one job: it claims the attempt (a file created exclusively, so an
attempt never runs twice), waits for the GPUs it needs, starts the job's supervisor
(textft.service.supervise) with ``python -m textft.train --config job.yaml`` (``accelerate launch`` for a
job of several processes), passes
on a cancel or a shutdown as SIGTERM, and records how the attempt ended in ``exit-N.json``. It
never touches the database: the service reads these files (textft.service.scheduler).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from huey import PriorityRedisHuey, SqliteHuey
from huey.consumer import Consumer
from huey.registry import Message
from huey.serializer import Serializer

from textft.service.containment import CGROUP_ENV, Cgroups, duration
from textft.service.jobs import RUN_DIR
from textft.service.layout import DataDir, create_exclusively, read_json, this_process, write_json
from textft.service.supervise import group_alive, stop_group
from textft.service.textft_api import launch_precision

log = logging.getLogger("textft.service")

QUEUE_NAME = "textft-jobs"
TASK_NAME = "textft.run_job"
HEARTBEAT_S = 2.0
SETTLE_S = 5.0
PRIORITY_RESUMED = 1
"""Interrupted jobs go ahead of jobs that never started, so that work in progress finishes first."""


class JsonSerializer(Serializer):
    """huey messages as JSON: a job message is two plain values, and JSON cannot carry code."""

    def _serialize(self, message: Message) -> bytes:
        data = message._asdict()
        unsupported = [k for k in ("eta", "on_complete", "on_error", "chord_config", "expires") if data.get(k)]
        if unsupported:
            raise ValueError(f"textft's queue carries plain job messages; got {', '.join(unsupported)}")
        return json.dumps({k: data[k] for k in ("id", "name", "retries", "retry_delay", "priority", "args",
                                                "kwargs", "timeout", "retry_backoff")}).encode()

    def _deserialize(self, data: bytes) -> Message:
        fields = json.loads(data)
        fields["args"] = tuple(fields.get("args") or ())
        return Message(**fields)


def public_url(url: str | None) -> str | None:
    """A broker URL as logs and messages may show it: its password replaced by ***."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


class JobQueue:
    """The queue: embedded SQLite by default, Redis when a broker URL is given."""

    def __init__(self, data: DataDir, broker: str | None = None):
        common = {"results": False, "utc": True, "serializer": JsonSerializer()}
        if broker:
            if not broker.startswith(("redis://", "rediss://", "unix://")):
                raise ValueError(f"'--broker' must be a redis:// URL, got '{public_url(broker)}'")
            self.huey = PriorityRedisHuey(QUEUE_NAME, url=broker, **common)
        else:
            self.huey = SqliteHuey(QUEUE_NAME, filename=str(data.queue_db), **common)
        self.broker = broker
        self.task = self.huey.task(name=TASK_NAME)(run_job)

    def enqueue(self, job_id: str, attempt: int, priority: int = 0) -> None:
        self.huey.enqueue(self.task.task_class(args=(job_id, attempt), priority=priority))

    def pending(self) -> set[tuple[str, int]]:
        """(job id, attempt) of every message still waiting in the queue."""
        return {(t.args[0], t.args[1]) for t in self.huey.pending()}

    def ping(self) -> None:
        """Raises when the broker cannot be reached (a worker checks this before it starts)."""
        if self.broker:
            self.huey.storage.conn.ping()


# --- executors --------------------------------------------------------------------------------


class Devices:
    """The GPUs of this machine, handed to jobs; no GPUs means jobs run on the CPU."""

    def __init__(self, gpus: list[str]):
        self.gpus = list(gpus)
        self.free = list(gpus)
        self.cond = threading.Condition()

    def acquire(self, n: int, give_up: threading.Event) -> list[str] | None:
        with self.cond:
            while len(self.free) < n:
                if give_up.is_set():
                    return None
                self.cond.wait(0.5)
            taken, self.free = self.free[:n], self.free[n:]
            return taken

    def release(self, taken: list[str]) -> None:
        with self.cond:
            self.free.extend(taken)
            self.cond.notify_all()


GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia", "/dev/kfd", "/dev/dxg")
"""What a machine whose GPUs torch could use has (NVIDIA's driver, ROCm, WSL's GPU): without any of
them torch counts none, and the service need not import it (seconds of its start) to learn that."""


def detect_gpus() -> list[str]:
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return [d for d in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
    if not any(os.path.exists(p) for p in GPU_DEVICE_FILES):
        return []
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # no usable CUDA: a CPU machine
        return []


@dataclass
class Runtime:
    """What the executors of this process share."""

    data: DataDir
    devices: Devices
    slots: int
    """Jobs that may run at the same time in this process."""
    grace_s: float = 60.0
    """Seconds a stopped job gets to finish its step before SIGKILL."""
    job_memory_bytes: int | None = None
    """Memory of one job's processes together on this machine (None: no limit)."""
    cgroups: Cgroups | None = None
    """Where job cgroups go, when the service manages cgroup v2 (else rlimits and a watchdog)."""
    stopping: threading.Event = field(default_factory=threading.Event)
    running: set = field(default_factory=set)
    """Ids of the jobs this process runs now (its heartbeat reports how many)."""


RUNTIME: Runtime | None = None
"""Set by the process that consumes the queue (service or worker) before its consumer starts."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_threads(slots: int) -> int:
    """Threads of a CPU job: what torch would use alone (OMP_NUM_THREADS, else every core), shared by the slots."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, slots))


def launch_command(job_dir: Path, spec: dict, gpus: list[str], slots: int = 1) -> list[str]:
    """``python -m textft.train --config job.yaml`` for a job of one process (its settings in
    ``launch_env``), ``accelerate launch -m textft.train ...`` with its Accelerate config for several."""
    # The job's settings come from a user of the service: read as plain values, never interpolated.
    train = ["-m", "textft.train", "--config", str(job_dir / "job.yaml"), "--no-interpolation"]
    if spec.get("resume"):
        train.append("train.resume_from=latest")
    if not spec.get("accelerate_config"):
        # One process needs no launcher: `accelerate launch` would only set the environment launch_env
        # sets, at the cost of a second interpreter importing torch (seconds, and memory, per attempt).
        return [sys.executable, *train]
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if not gpus:  # accelerate launch would otherwise run a CPU job on one thread, unlike textft train
        cmd += ["--num_cpu_threads_per_process", str(cpu_threads(slots * int(spec.get("num_processes") or 1)))]
    cmd += ["--config_file", spec["accelerate_config"], "--num_processes", str(spec["num_processes"])]
    if spec["num_processes"] > 1:
        cmd += ["--main_process_port", str(_free_port())]
    return cmd + train


def launch_env(spec: dict, gpus: list[str], slots: int = 1) -> dict[str, str]:
    """What ``accelerate launch`` would set for a job of one process: its precision (so that
    ``mixed_precision: auto`` resolves as ``textft train`` would on this machine, not by the service's
    own environment), no compilation backend, and a CPU job's share of the cores."""
    if spec.get("accelerate_config"):
        return {}
    env = {"ACCELERATE_MIXED_PRECISION": precision(spec["mixed_precision"]), "ACCELERATE_DYNAMO_BACKEND": "NO"}
    if not gpus:
        env["OMP_NUM_THREADS"] = str(cpu_threads(slots))
    return env


_PRECISION_LOCK = threading.Lock()


def precision(requested: str) -> str:
    """Accelerate's name (no, bf16, fp16) of what ``textft train`` would run ``requested`` as here,
    ignoring this process's own ACCELERATE_MIXED_PRECISION (which would otherwise decide ``auto``)."""
    if requested != "auto":
        return launch_precision(requested)
    with _PRECISION_LOCK:
        saved = os.environ.pop("ACCELERATE_MIXED_PRECISION", None)
        try:
            return launch_precision(requested)
        finally:
            if saved is not None:
                os.environ["ACCELERATE_MIXED_PRECISION"] = saved


def job_env(gpus: list[str], cgroups: Cgroups | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", CGROUP_ENV)}
    if cgroups is not None:
        env[CGROUP_ENV] = str(cgroups.base)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        env.pop("ACCELERATE_USE_CPU", None)
    else:
        env["ACCELERATE_USE_CPU"] = "1"
    return env


def run_job(job_id: str, attempt: int) -> None:
    """The queue's task: run one attempt of a job and record how it ended."""
    rt = RUNTIME
    if rt is None:
        raise RuntimeError("textft.service.queue.RUNTIME is not set in this process")
    job_dir = rt.data.job(job_id)
    spec = read_json(job_dir / "job.json")
    if spec is None or spec["attempt"] != attempt or (job_dir / "cancel").exists() or rt.stopping.is_set():
        return  # deleted, superseded, cancelled while queued, or this process is stopping (re-queued later)
    claim = job_dir / f"attempt-{attempt}.json"
    if claim.exists():
        return  # another executor has it (a message can arrive twice)
    # The previous attempt's log goes before the claim is visible: the monitor reads the new
    # attempt's log from its start, and a resumed run rewrites it from its checkpoint.
    (job_dir / RUN_DIR / "train_log.jsonl").unlink(missing_ok=True)
    log_path = job_dir / "job.log"
    log_offset = log_path.stat().st_size if log_path.exists() else 0
    if not create_exclusively(claim, {**this_process(), "attempt": attempt, "claimed_at": time.time(),
                                       "log_offset": log_offset}):
        return  # another executor has it
    heartbeat = job_dir / f"heartbeat-{attempt}"
    heartbeat.write_text("0")
    outcome, gpus = {"attempt": attempt, "rc": None, "reason": "exited"}, []
    try:
        need = spec["gpus"] if spec["gpus"] is not None else (1 if rt.devices.gpus else 0)
        if need > len(rt.devices.gpus):
            where = f"{len(rt.devices.gpus)} GPU(s)" if rt.devices.gpus else "no GPU"
            outcome.update(reason="unschedulable", error=f"the job needs {need} GPU(s) and worker"
                                                         f" {socket.gethostname()} has {where}")
            return
        cancel = job_dir / "cancel"
        taken = rt.devices.acquire(need, _EitherEvent(rt.stopping, cancel)) if need else []
        if taken is None:
            outcome["reason"] = "cancelled" if cancel.exists() else "shutdown"
            return
        gpus = taken
        rt.running.add(job_id)
        outcome.update(_supervise(rt, job_dir, spec, attempt, gpus, heartbeat))
    except Exception as e:
        outcome.update(reason="error", error=f"the executor could not run the job: {e}")
        raise
    finally:
        rt.running.discard(job_id)
        rt.devices.release(gpus)
        write_json(job_dir / f"exit-{attempt}.json", {**outcome, "finished_at": time.time()})
        _wait_until_settled(rt, job_dir, attempt)


def _wait_until_settled(rt: Runtime, job_dir: Path, attempt: int, timeout: float = SETTLE_S) -> None:
    """Give the service a moment to record the attempt (and re-queue the job if it resumes) before
    this executor takes the next message: an interrupted job then goes ahead of jobs queued after it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not rt.stopping.is_set():
        spec = read_json(job_dir / "job.json")
        if spec is None or spec.get("settled", 0) >= attempt:
            return
        time.sleep(0.1)


class _EitherEvent:
    """Looks like an Event that is set once the process stops or the job is cancelled."""

    def __init__(self, stopping: threading.Event, cancel: Path):
        self.stopping, self.cancel = stopping, cancel

    def is_set(self) -> bool:
        return self.stopping.is_set() or self.cancel.exists()


def _supervise(rt: Runtime, job_dir: Path, spec: dict, attempt: int, gpus: list[str], heartbeat: Path) -> dict:
    with open(job_dir / "job.log", "a") as f:
        where = f"GPU {','.join(gpus)}" if gpus else "CPU"
        f.write(f"--- attempt {attempt} on {socket.gethostname()} ({where})"
                f"{', resuming from the latest checkpoint' if spec.get('resume') else ''} ---\n")
    seconds = time_left(spec)
    if seconds is not None and seconds <= 0:
        return {"rc": None, "reason": "limit", "error": f"the job used up its time limit of"
                                                        f" {duration(spec['time_limit_s'])} in earlier attempts"}
    cmd = [sys.executable, "-m", "textft.service.supervise", str(job_dir), str(attempt), str(rt.grace_s),
           str(rt.job_memory_bytes or 0), str(seconds or 0), str(spec.get("time_limit_s") or 0), "--",
           *launch_command(job_dir, spec, gpus, rt.slots)]
    proc = subprocess.Popen(cmd, cwd=job_dir, env={**job_env(gpus, rt.cgroups), **launch_env(spec, gpus, rt.slots)},
                            start_new_session=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    reason, beats, last_beat = "exited", 0, time.monotonic()
    while True:
        try:
            rc = proc.wait(timeout=0.25)
            break
        except subprocess.TimeoutExpired:
            pass
        if reason == "exited":
            if (job_dir / "cancel").exists():
                reason = "cancelled"
            elif rt.stopping.is_set():
                reason = "shutdown"
            if reason != "exited":
                proc.send_signal(signal.SIGTERM)  # the supervisor passes it to the job's process group
        if time.monotonic() - last_beat >= HEARTBEAT_S:
            beats += 1
            heartbeat.write_text(str(beats))
            last_beat = time.monotonic()
    # A supervisor killed on its own leaves its group behind: stop that group here.
    group = read_json(job_dir / f"proc-{attempt}.json")
    if group is not None and group_alive(group["pgid"]):
        stop_group(group["pgid"], 5.0)
    hit = read_json(job_dir / f"limit-{attempt}.json")
    if hit is not None and reason == "exited":  # stopped by its memory or time limit: it would only fail again
        return {"rc": rc, "reason": "limit", "limit": hit.get("limit"), "error": hit.get("error")}
    return {"rc": rc, "reason": reason}


def time_left(spec: dict) -> float | None:
    """Seconds of its time limit a job has left for this attempt (None: no limit)."""
    if not spec.get("time_limit_s"):
        return None
    return spec["time_limit_s"] - (spec.get("time_used_s") or 0.0)


# --- the consumer -----------------------------------------------------------------------------


class EmbeddedConsumer(Consumer):
    """huey's consumer, minus its signal handlers: the host process (uvicorn, or the worker's
    main loop) owns SIGTERM and SIGINT and stops the consumer itself."""

    def _set_signal_handlers(self):
        pass


def start_consumer(queue: JobQueue, runtime: Runtime) -> EmbeddedConsumer | None:
    """Executors of this process taking jobs from ``queue`` (none when ``runtime.slots`` is 0)."""
    global RUNTIME
    RUNTIME = runtime
    if runtime.slots < 1:
        return None
    logging.getLogger("huey").setLevel(logging.WARNING)
    consumer = EmbeddedConsumer(queue.huey, workers=runtime.slots, worker_type="thread", periodic=False,
                                initial_delay=0.1, backoff=1.15, max_delay=1.0, check_worker_health=False)
    consumer.start()
    return consumer


def stop_consumer(consumer: EmbeddedConsumer | None, runtime: Runtime, timeout: float) -> None:
    """Take no more jobs, stop the running ones (SIGTERM, then their grace), wait for their records."""
    runtime.stopping.set()
    if consumer is None:
        return
    consumer.stop_flag.set()
    deadline = time.monotonic() + timeout
    for _, thread in consumer.worker_threads:
        thread.join(max(0.0, deadline - time.monotonic()))
