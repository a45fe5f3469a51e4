"""The images and the compose files, checked without a Docker daemon: hadolint on both Dockerfiles,
the compose files against the compose-spec JSON schema (as vendored by check-jsonschema), what each
promises (non-root, port, health check, data volume, Redis behind a password and no published port),
the entry point's dispatch with stand-ins for textft and accelerate, and the health check against a
real HTTP server. The images install textft with docker/install.sh, which the wheel-install test runs."""

from __future__ import annotations

import http.server
import json
import os
import re
import subprocess
import sys
import threading
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILES = ["Dockerfile", "Dockerfile.cpu"]
COMPOSE_FILES = ["docker-compose.yml", "docker-compose.gpu.yml"]
INSTALL = "RUN sh /opt/textft/install.sh /tmp/wheels/textft-*.whl"


def instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / name).read_text())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip()) for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_passes(name):
    hadolint = Path(sys.executable).parent / "hadolint"
    proc = subprocess.run([str(hadolint), "--no-color", str(ROOT / name)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("name", DOCKERFILES)
def test_each_image_runs_unprivileged_serves_8080_and_keeps_its_data_in_a_volume(name):
    steps = instructions(name)
    final = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM"):]
    ops = dict(final)
    assert ops["USER"] == "${TEXTFT_UID}" and ("ARG", "TEXTFT_UID=1000") in final
    assert "useradd" in ops["RUN"] and "chown textft:textft /data" in ops["RUN"]
    assert ops["EXPOSE"] == "8080" and ops["VOLUME"] == '["/data"]' and ops["WORKDIR"] == "/data"
    assert "TEXTFT_DATA_DIR=/data" in ops["ENV"] and "TEXTFT_PORT=8080" in ops["ENV"]
    assert ops["HEALTHCHECK"].endswith('CMD ["python", "/opt/textft/healthcheck.py"]')
    assert json.loads(ops["ENTRYPOINT"]) == ["/opt/textft/entrypoint.sh"]
    assert json.loads(ops["CMD"])[0] == "train"
    # installed as the wheel-install test installs: the wheel built in the first stage, by the same script
    assert f"RUN {ops['RUN']}".startswith(INSTALL)
    assert ("COPY", "--from=wheel /wheels /tmp/wheels") in final
    assert ("COPY", "docker/install.sh docker/entrypoint.sh docker/healthcheck.py /opt/textft/") in final
    assert ("RUN", "pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .") in steps


def test_the_cpu_image_gets_the_cpu_torch_and_the_gpu_image_a_torch_accelerate_accepts():
    cpu = dict(instructions("Dockerfile.cpu"))
    assert ("ARG", "TORCH_SPEC=torch==2.13.0") in instructions("Dockerfile.cpu")
    assert ("ARG", "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu") in instructions("Dockerfile.cpu")
    assert cpu["FROM"].startswith("${PYTHON_IMAGE}")
    base = next(a for op, a in instructions("Dockerfile") if op == "ARG" and a.startswith("BASE_IMAGE="))
    version = re.match(r"BASE_IMAGE=pytorch/pytorch:(\d+)\.(\d+)\.\d+-cuda[\d.]+-cudnn\d+-runtime$", base)
    assert version and tuple(map(int, version.groups())) >= (2, 6), base  # accelerate>=1.x needs torch>=2.6


def compose_schema() -> dict:
    source = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    return json.loads(source.read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_compose_files_match_the_compose_spec(name):
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in validator.iter_errors(yaml.safe_load((ROOT / name).read_text()))]
    assert errors == []
    # the check sees mistakes: a misspelt key and a wrong type are reported
    bad = {"services": {"service": {"imagee": "x", "ports": "8080"}}}
    assert len(list(validator.iter_errors(bad))) >= 2


def test_compose_runs_service_worker_and_a_private_redis_on_one_volume():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"service", "worker", "redis"} and set(compose["volumes"]) == {"data"}
    for name in ("service", "worker"):
        s = services[name]
        assert s["volumes"] == ["data:/data"] and s["build"]["dockerfile"] == "Dockerfile.cpu"
        assert s["environment"]["TEXTFT_BROKER"].startswith("redis://:${REDIS_PASSWORD:?")
        assert s["environment"]["TEXTFT_BROKER"].endswith("@redis:6379/0")
    assert services["service"]["environment"]["HF_TOKEN"] == "${HF_TOKEN:-}"  # for pushes; jobs never see it
    assert "HF_TOKEN" not in services["worker"]["environment"]
    assert services["service"]["command"] == ["service", "--workers", "0"]
    assert services["worker"]["command"] == ["worker"]
    assert services["service"]["ports"] == ["127.0.0.1:8080:8080"]  # a TLS proxy in front, never bare
    redis = services["redis"]
    assert "ports" not in redis and "expose" not in redis
    assert redis["environment"]["REDIS_PASSWORD"].startswith("${REDIS_PASSWORD:?")
    assert "requirepass" in redis["command"][-1] and "$$REDIS_PASSWORD" in redis["command"][-1]
    assert "REDISCLI_AUTH" in redis["healthcheck"]["test"][1]
    gpu = yaml.safe_load((ROOT / "docker-compose.gpu.yml").read_text())["services"]["worker"]
    assert gpu["build"]["dockerfile"] == "Dockerfile"
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()


@pytest.fixture
def stand_ins(tmp_path):
    """``textft`` and ``accelerate`` that print the arguments they were given."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("textft", "accelerate"):
        path = bin_dir / name
        path.write_text(f'#!/bin/sh\necho "{name} $*"\n')
        path.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "TEXTFT_ROLE_FILE": str(tmp_path / "role"), "TEXTFT_PORT": "8080"}


@pytest.mark.parametrize("args, ran, role", [
    (["service", "--workers", "0"], "textft service --host 0.0.0.0 --port 8080 --workers 0", "service"),
    (["keys", "create", "--name", "alice"], "textft service keys create --name alice", "keys"),
    (["worker"], "textft worker", "worker"),
    (["serve", "--model", "/data/m"], "textft serve --host 0.0.0.0 --port 8080 --model /data/m", "serve"),
    (["train", "--config", "imdb"], "accelerate launch -m textft.train --config imdb", "train"),
    (["--config", "imdb", "output.dir=/data/x"], "accelerate launch -m textft.train --config imdb output.dir=/data/x",
     "train"),
    (["configs", "list"], "textft configs list", "configs"),
    (["textft", "predict", "--help"], "textft predict --help", "textft"),
    (["echo", "plain"], "plain", "echo"),
])
def test_the_entrypoint_dispatches_on_its_first_word(stand_ins, tmp_path, args, ran, role):
    out = subprocess.run(["sh", str(ROOT / "docker" / "entrypoint.sh"), *args], capture_output=True, text=True,
                         env=stand_ins, timeout=30)
    assert out.returncode == 0 and out.stdout.strip() == ran, out
    assert (tmp_path / "role").read_text().strip() == role


def test_the_scripts_parse_as_posix_sh():
    for script in ("install.sh", "entrypoint.sh"):
        assert subprocess.run(["sh", "-n", str(ROOT / "docker" / script)], timeout=30).returncode == 0


class Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):
        self.send_response(self.status if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.slow
def test_the_health_check_probes_servers_and_passes_other_roles(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {**os.environ, "TEXTFT_ROLE_FILE": str(tmp_path / "role"), "TEXTFT_PORT": str(server.server_port)}

    def check(role: str | None) -> int:
        (tmp_path / "role").unlink(missing_ok=True)
        if role:
            (tmp_path / "role").write_text(role + "\n")
        return subprocess.run([sys.executable, str(ROOT / "docker" / "healthcheck.py")], env=env, timeout=30,
                              capture_output=True).returncode

    try:
        assert check("service") == 0 and check("serve") == 0
        Health.status = 503  # stopping: refuses new work
        assert check("service") == 1
        assert check("train") == 0 and check("worker") == 0 and check(None) == 0  # no port to probe
    finally:
        Health.status = 200
        server.shutdown()
    assert check("service") == 1  # nothing listens any more
