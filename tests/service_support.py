"""A real ``textft service`` (and ``textft worker``, ``redis-server``) as subprocesses on loopback, for tests
and benchmarks."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}


SERVICE_CAP = 10 << 30
"""Address space a service under hostile tests (and whatever it starts) may map: far above what it
needs, far below the machine, so that a bound that fails kills the service instead of the machine."""


def tiny_overrides(tiny_model_dir, **overrides) -> dict:
    """Overrides that make the ``tiny`` preset train the tiny test BERT on the toy task in seconds."""
    return {"model.name_or_path": str(tiny_model_dir), "model.random_init": False, "data.max_length": 32,
            "train.epochs": 2, "train.lr": 3e-3, "train.batch_size": 16, "train.mixed_precision": "fp32",
            "train.logging_steps": 5, **overrides}


def rss(pid: int) -> int:
    """Resident bytes of a process (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def create_key(data_dir: Path, name: str, admin: bool = False, **limits) -> str:
    from textft.service.keys import create_key as create
    from textft.service.layout import DataDir
    from textft.service.store import Store

    store = Store(DataDir(data_dir).create().db)
    try:
        return create(store, name, admin, **limits)[0]
    finally:
        store.close()


class ServiceProcess:
    """``textft service --data-dir DIR`` on a free loopback port."""

    def __init__(self, data_dir: Path, args: list[str] = (), env: dict | None = None, command: list[str] | None = None,
                 cwd: Path | None = None, memory_cap: int | None = None, umask: int | None = None):
        """``memory_cap``: bytes of address space the service and everything it starts may map (a
        hostile probe that gets past its bound then kills the service, not the machine)."""
        self.data_dir, self.args, self.env = Path(data_dir), list(args), env or {}
        self.command = command or [sys.executable, "-m", "textft"]  # or another installation's textft script
        self.cwd, self.umask = cwd, umask
        self.memory_cap = memory_cap
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log = self.data_dir.parent / f"{self.data_dir.name}-service.log"

    def start(self, timeout: float = 120) -> "ServiceProcess":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "a") as f:
            self.proc = subprocess.Popen(
                [*self.command, "service", "--data-dir", str(self.data_dir), "--port", str(self.port), *self.args],
                stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **OFFLINE, **self.env}, cwd=self.cwd,
                preexec_fn=None if self.memory_cap is None and self.umask is None else self._before_exec)

        def up():
            assert self.proc.poll() is None, f"the service exited:\n{self.tail()}"
            try:
                return httpx.get(self.url + "/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout, f"the service to start:\n{self.tail()}")
        return self

    def _before_exec(self) -> None:
        if self.memory_cap is not None:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (self.memory_cap, self.memory_cap))
        if self.umask is not None:
            os.umask(self.umask)

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text()[-n:] if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 120) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the service did not stop within {timeout} s:\n{self.tail()}")

    def client(self, key: str | None, timeout: float = 60) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)


def upload(http: httpx.Client, path: Path, **fields) -> httpx.Response:
    with open(path, "rb") as f:
        return http.post("/v1/datasets", files={"file": (path.name, f)}, data=fields)


def wait_state(http: httpx.Client, job_id: str, states: tuple[str, ...], timeout: float = 240) -> dict:
    def reached():
        job = http.get(f"/v1/jobs/{job_id}").json()
        return job if job["state"] in states else None

    return wait_for(reached, timeout, f"job {job_id} to reach {states}", interval=0.3)


def read_events(http: httpx.Client, job_id: str, last_id: int | None = None, limit: int | None = None,
                timeout: float = 240) -> list[dict]:
    """Server-Sent Events of a job as dicts {id, event, data}; stops after ``limit`` events or at the end."""
    headers = {"Last-Event-ID": str(last_id)} if last_id is not None else {}
    events, current = [], {}
    with http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=timeout) as resp:
        assert resp.status_code == 200, resp.read()
        assert resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            if line.startswith("id: "):
                current["id"] = int(line[4:])
            elif line.startswith("event: "):
                current["event"] = line[7:]
            elif line.startswith("data: "):
                current["data"] = json.loads(line[6:])
            elif line == "" and current:
                if "id" in current:
                    events.append(current)
                current = {}
                if limit is not None and len(events) >= limit:
                    break
    return events


def job_processes(job_dir: Path) -> list[int]:
    """Pids of processes whose command line names this job's directory."""
    marker = str(job_dir).encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if marker in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                pass
    return pids


def children(pid: int) -> list[int]:
    """Pids of the direct children of ``pid``."""
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                stat = (proc / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                out.append(int(proc.name))
    return out


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def training_pid(job_dir: Path) -> int | None:
    """The training process of a job (``python -m textft.train``, not its launcher or supervisor)."""
    for pid in job_processes(job_dir):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"textft.train" in args and b"accelerate.commands.launch" not in args \
                and b"textft.service.supervise" not in args:
            return pid
    return None


class RedisServer:
    """``redis-server`` on a free loopback port, without persistence."""

    def __init__(self, workdir: Path):
        self.binary = shutil.which("redis-server")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.workdir = workdir
        self.proc = None

    def start(self) -> "RedisServer":
        self.proc = subprocess.Popen([self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.workdir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        wait_for(lambda: _ping(redis.Redis(port=self.port)), 30, "redis-server to start")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


def _ping(client) -> bool:
    try:
        return client.ping()
    except Exception:  # not listening yet
        return False
