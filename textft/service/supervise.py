"""Supervisor of one job attempt: ``python -m textft.service.supervise JOB_DIR ATTEMPT GRACE -- COMMAND...``.

The executor (a thread of ``textft service`` or ``textft worker``) starts this small process in a
session of its own; it starts COMMAND (``accelerate launch -m textft.train ...``) as a new process
group and records that group in ``proc-ATTEMPT.json``. Then:

- SIGTERM (a cancel, or the service stopping) is passed to the whole group, which gets GRACE
  seconds to finish its step and exit before SIGKILL;
- if the executor dies (kill -9 of the service), the group is stopped the same way, so a job
  never trains on unsupervised while the service re-queues it;
- when the launcher exits, any process it left behind in the group (a training process whose
  launcher was killed) is stopped too, and its exit status becomes this process's.

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

from textft.service.layout import HOST, write_json

PR_SET_CHILD_SUBREAPER = 36
POLL_S = 0.2


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


def main(argv: list[str]) -> int:
    job_dir, attempt, grace = Path(argv[0]), int(argv[1]), float(argv[2])
    command = argv[argv.index("--") + 1:]
    parent = os.getppid()
    _become_subreaper()
    stopping = {"at": None}

    def on_term(signum, frame):
        stopping["at"] = stopping["at"] or time.monotonic()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    with open(job_dir / "job.log", "ab") as log:
        launcher = subprocess.Popen(command, cwd=job_dir, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, process_group=0)
    pgid = launcher.pid
    write_json(job_dir / f"proc-{attempt}.json", {**HOST, "pgid": pgid, "supervisor_pid": os.getpid()})
    forwarded = None
    while launcher.poll() is None:
        if os.getppid() != parent:  # the executor is gone: nobody would record this attempt
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
    return rc if rc >= 0 else 128 - rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
