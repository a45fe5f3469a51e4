"""Stopping a training run on a signal without damaging what it has written.

SIGTERM (a job scheduler's stop, ``kill``) only sets a flag. The training loop checks it once per
optimizer step, so a checkpoint being written is finished first; the run then ends with one line
and exit code 143. Ctrl-C (SIGINT) stops at once; checkpoint and model writes are atomic, so the
ones already written stay whole and a partial one is removed, and the command prints one line and
exits with 130.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Iterator

RESUME_HINT = "the checkpoints written so far are intact (resume with train.resume_from=latest)"


class Interrupted(BaseException):
    """Raised by the training loop after a stop signal.

    A BaseException, like KeyboardInterrupt, so that an ``except Exception`` in a callback cannot swallow it.
    """

    def __init__(self, signum: int, step: int):
        self.exit_code = 128 + signum
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}; {RESUME_HINT}")


class StopFlag:
    """Set by the signal handler, checked by the loop once per optimizer step."""

    def __init__(self, accelerator=None):
        self.accelerator, self.signum = accelerator, None

    def __call__(self, state) -> None:
        requested = self.signum is not None
        acc = self.accelerator
        if acc is not None and acc.num_processes > 1:
            # Every process stops at the same step, or the others would wait forever in the next all-reduce.
            import torch

            requested = bool(acc.reduce(torch.tensor([int(requested)], device=acc.device), "sum").item())
        if requested:
            raise Interrupted(self.signum or signal.SIGTERM, state.step)


@contextlib.contextmanager
def stop_on_sigterm(accelerator=None) -> Iterator[StopFlag]:
    """Within the block, SIGTERM sets the flag it yields instead of ending the process."""
    flag = StopFlag(accelerator)
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield flag
        return

    def handler(signum, frame):
        flag.signum = signum

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)


def report_interruption(e: BaseException, training: bool = True) -> int:
    """Print one line for an Interrupted or KeyboardInterrupt and return the exit code; ``training``
    adds how to resume (other commands have no checkpoints)."""
    close_progress_bars()
    if isinstance(e, Interrupted):
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    print("error: interrupted (Ctrl-C)" + (f"; {RESUME_HINT}" if training else ""), file=sys.stderr)
    return 128 + signal.SIGINT


def close_progress_bars() -> None:
    # A bar left open would put the message after its last carriage return, on the bar's line.
    from tqdm.auto import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


@contextlib.contextmanager
def terminate_as_exit():
    """SIGTERM (kill, a job scheduler's timeout) unwinds like Ctrl-C, so a staged output is removed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
