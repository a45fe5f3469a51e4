"""Ctrl-C and SIGTERM during a real training process: one line, exit 130 / 143, checkpoints intact."""

import os
import signal
import subprocess
import sys
import time

import pytest

from textft.checkpoint import checkpoint_problem, latest_checkpoint

LONG = ["train.epochs=40", "train.save_every_steps=5", "train.keep_checkpoints=3", "train.logging_steps=1000"]


def default_sigint():
    # A shell starts background jobs with SIGINT ignored and children inherit that, so Ctrl-C would never
    # reach the run; a user at a terminal has the default disposition, which is what is tested here.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(args):
    return subprocess.Popen([sys.executable, "-m", "textft", "train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                            preexec_fn=default_sigint)


def wait_for_checkpoint(proc, root, timeout=300):
    deadline = time.monotonic() + timeout
    while latest_checkpoint(root) is None:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.01)


def assert_intact(root):
    steps = sorted(root.glob("step-*"))
    assert steps and all(checkpoint_problem(s, verify_hashes=True) is None for s in steps)
    assert not list(root.glob(".tmp-*"))


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_training_is_one_line_and_keeps_the_checkpoints(tiny_args, tmp_path, sig, code):
    run = tmp_path / "run"
    proc = start([*tiny_args[:-1], f"output.dir={run}", *LONG])
    root = run / "checkpoints"
    wait_for_checkpoint(proc, root)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "resume with train.resume_from=latest" in errors[0], err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert_intact(root)
    assert not (run / "model.safetensors").exists()  # interrupted: no final model


def test_sigterm_during_a_checkpoint_write_finishes_that_checkpoint(tiny_args, tmp_path):
    """SIGTERM sent while ``.tmp-step-N`` is being written: step-N still completes, then exit 143."""
    run = tmp_path / "run"
    proc = start([*tiny_args[:-1], f"output.dir={run}", *LONG])
    root = run / "checkpoints"
    caught = None
    deadline = time.monotonic() + 300
    while caught is None and time.monotonic() < deadline and proc.poll() is None:
        tmp = next(root.glob(".tmp-step-*"), None) if root.is_dir() else None
        if tmp is not None:
            proc.send_signal(signal.SIGTERM)
            caught = int(tmp.name.rsplit("-", 1)[1])
    assert caught is not None, "never saw a checkpoint being written"
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert f"after step {caught}" in err or f"after step {caught + 1}" in err
    assert (root / f"step-{caught}").is_dir() and checkpoint_problem(root / f"step-{caught}", verify_hashes=True) is None
    assert_intact(root)
