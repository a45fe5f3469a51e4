"""Supervisor of one job attempt: ``python -m textft.service.supervise JOB_DIR ATTEMPT GRACE MEMORY SECONDS LIMIT
-- COMMAND...`` (MEMORY bytes and SECONDS of wall-clock time the attempt may use, of the job's LIMIT; 0: none).

The executor (a thread of ``textft service`` or ``textft worker``) starts this small process in a
session of its own; it starts COMMAND (``python -m textft.train ...``, or ``accelerate launch`` for several
processes) as a new process
group and records that group in ``proc-ATTEMPT.json``. Then:

- SIGTERM (a cancel, or the service stopping) is passed to the whole group, which gets GRACE
  seconds to finish its step and exit before SIGKILL;
- if the executor dies (kill -9 of the service), the group is stopped the same way, so a job
  never trains on unsupervised while the service re-queues it;
- when the launcher exits, any process it left behind in the group (a training process whose
  launcher was killed) is stopped too, and its exit status becomes this process's;
- the group runs under its memory and time limits (textft.service.containment): past its memory it
  is killed at once, past its time it is stopped like a cancel; either way ``limit-ATTEMPT.json``
  says which limit and by how much, and the job fails with that reason rather than running again.

It is a subreaper, so processes orphaned inside the group are reaped here instead of lingering
as zombies where PID 1 does not reap.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from textft.service.containment import (CGROUP_ENV, Cgroups, duration, gb, group_memory, join_cgroup, oom_kills,
                                       ran_out_of_memory, remove_cgroup, rlimits)
from textft.service.layout import HOST, write_json

PR_SET_CHILD_SUBREAPER = 36
POLL_S = 0.2
MEMORY_POLL_S = 0.5
"""How often the watchdog sums the group's memory (without a cgroup, which the kernel enforces)."""


def _become_subreaper() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: orphans go to init as usual


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_group(pgid: int, grace: float, already_sent: float | None = None) -> None:
    """SIGTERM the group (unless sent at ``already_sent``), wait up to ``grace`` s, then SIGKILL."""
    if already_sent is None:
        signal_group(pgid, signal.SIGTERM)
        already_sent = time.monotonic()
    while group_alive(pgid) and time.monotonic() - already_sent < grace:
        _reap()
        time.sleep(POLL_S)
    if group_alive(pgid):
        signal_group(pgid, signal.SIGKILL)
        while group_alive(pgid):
            _reap()
            time.sleep(0.05)


class AttemptLimits:
    """The attempt's memory and time limits, and what stopped it if one of them did (``limit-N.json``)."""

    def __init__(self, job_dir: Path, attempt: int, memory: int, seconds: float, limit_s: float, gpu: bool):
        """``seconds``: what this attempt may still run of the job's ``limit_s``."""
        self.job_dir, self.attempt, self.memory, self.seconds = job_dir, attempt, memory or None, seconds or None
        self.limit_s = limit_s or seconds
        self.gpu = gpu
        self.cgroup = None
        if self.memory and os.environ.get(CGROUP_ENV):
            try:
                self.cgroup = str(Cgroups(Path(os.environ[CGROUP_ENV])).create(
                    f"textft-{job_dir.name}-{attempt}", self.memory))
            except OSError:
                self.cgroup = None  # the rlimits and the watchdog below stand in
        self.started = self.measured = time.monotonic()
        self.log_offset = (job_dir / "job.log").stat().st_size if (job_dir / "job.log").exists() else 0
        self.hit: dict | None = None

    def preexec(self) -> None:
        join_cgroup(self.cgroup)()
        cpu = self.seconds * max(1, len(os.sched_getaffinity(0))) if self.seconds else None
        rlimits(None if self.cgroup else self.memory, cpu, address_space=not self.gpu)()

    def check(self, pgid: int) -> str | None:
        """'memory' or 'time' once the group passes a limit (recorded), else None."""
        if self.hit is not None:
            return None
        now = time.monotonic()
        measure = self.memory and not self.cgroup and now - self.measured >= MEMORY_POLL_S
        if measure and (used := group_memory(pgid)) > self.memory:
            return self.record("memory", f"the job used {gb(used)} of memory, more than its limit of {gb(self.memory)};"
                                         " it was stopped (a smaller train.batch_size or data.max_length needs less)")
        if measure:
            self.measured = now
        if self.seconds and now - self.started > self.seconds:
            return self.record("time", f"the job ran past its time limit of {duration(self.limit_s)} (all attempts"
                                       " together); it was stopped (train.time_budget_s stops earlier and keeps the best"
                                       " model)")
        return None

    def after_exit(self, rc: int) -> None:
        """Name the limit behind a failure that did not go through ``check``: the kernel's OOM kill in
        the cgroup, a failed allocation under the address-space limit, the CPU-time limit."""
        if self.hit is not None or rc == 0:
            return
        if oom_kills(self.cgroup):
            self.record("memory", f"the job needed more memory than its limit of {gb(self.memory)}; the kernel stopped"
                                  " it (a smaller train.batch_size or data.max_length needs less)")
        elif self.memory and not self.cgroup and not self.gpu and ran_out_of_memory(self._log_tail()):
            self.record("memory", f"the job could not allocate memory within its limit of {gb(self.memory)}"
                                  " (a smaller train.batch_size or data.max_length needs less)")
        elif self.seconds and (rc == 128 + signal.SIGXCPU or "SIGXCPU" in self._log_tail()):
            self.record("time", f"the job used up its CPU time (the backstop of its {duration(self.limit_s)} limit)")
        remove_cgroup(self.cgroup)

    def record(self, limit: str, error: str) -> str:
        self.hit = {"limit": limit, "error": error}
        write_json(self.job_dir / f"limit-{self.attempt}.json", self.hit)
        return limit

    def _log_tail(self) -> str:
        try:
            with open(self.job_dir / "job.log", "rb") as f:
                f.seek(max(self.log_offset, os.fstat(f.fileno()).st_size - 256 * 1024))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""


def main(argv: list[str]) -> int:
    job_dir, attempt, grace = Path(argv[0]), int(argv[1]), float(argv[2])
    memory, seconds, limit_s = int(argv[3]), float(argv[4]), float(argv[5])
    command = argv[argv.index("--") + 1:]
    parent = os.getppid()
    _become_subreaper()
    stopping = {"at": None}

    def on_term(signum, frame):
        stopping["at"] = stopping["at"] or time.monotonic()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    limits = AttemptLimits(job_dir, attempt, memory, seconds, limit_s, gpu=os.environ.get("ACCELERATE_USE_CPU") != "1")
    with open(job_dir / "job.log", "ab") as log:
        launcher = subprocess.Popen(command, cwd=job_dir, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, process_group=0, preexec_fn=limits.preexec)
    pgid = launcher.pid
    write_json(job_dir / f"proc-{attempt}.json", {**HOST, "pgid": pgid, "supervisor_pid": os.getpid()})
    forwarded, killed = None, False
    while launcher.poll() is None:
        if os.getppid() != parent:  # the executor is gone: nobody would record this attempt
            stopping["at"] = stopping["at"] or time.monotonic()
        hit = limits.check(pgid)
        if hit == "memory" and not killed:  # past its memory: now, before the machine runs short
            signal_group(pgid, signal.SIGKILL)
            killed = True
        elif hit == "time":
            stopping["at"] = stopping["at"] or time.monotonic()
        if stopping["at"] is not None and forwarded is None:
            signal_group(pgid, signal.SIGTERM)
            forwarded = time.monotonic()
        if forwarded is not None and time.monotonic() - forwarded > grace:
            signal_group(pgid, signal.SIGKILL)
        time.sleep(POLL_S)
    # The launcher is done; training processes it started may still run (it was killed alone) or
    # still save a checkpoint after a SIGTERM.
    if group_alive(pgid):
        stop_group(pgid, grace if forwarded is not None else 10.0, already_sent=forwarded)
    _reap()
    rc = launcher.returncode
    rc = rc if rc >= 0 else 128 - rc
    limits.after_exit(rc)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
