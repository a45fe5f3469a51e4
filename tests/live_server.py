"""``textft serve`` started by a test: a real uvicorn process (or thread) on a free loopback port."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, alive, log: Path | None = None, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while True:
        tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
        assert alive(), "server exited:\n" + tail
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "server did not start:\n" + tail
        time.sleep(0.25)


@contextlib.contextmanager
def serve_process(model: Path, log: Path, *options: str):
    """``python -m textft serve --model MODEL OPTIONS`` on loopback; yields (url, log path)."""
    port = free_port()
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "textft", "serve", "--model", str(model), "--port", str(port),
                                 *options], stdout=f, stderr=subprocess.STDOUT,
                                env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, lambda: proc.poll() is None, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def serve_app(app):
    """A FastAPI app under a real uvicorn server in a thread of this process; yields its URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, thread.is_alive, timeout=60)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)
