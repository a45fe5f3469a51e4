"""Keys, HTTP and Hub pushes under a hostile tenant, against a real ``textft service`` on loopback.

A key check costs the same for an unknown key id as for a wrong secret, and failed checks are
limited per client address; slow or idle clients are cut off and one address holds a bounded
number of connections; every error is JSON naming no server path; a key pushes to the Hub only
into the namespaces it was created for, or with its own token, which is never stored; a model name
never reads a directory of the service's own.
"""

from __future__ import annotations

import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from service_support import ServiceProcess, create_key, upload, wait_for, wait_state

SERVICE_TOKEN = "hf_SERVICE0token0of0the0operator0only"
USER_TOKEN = "hf_USER0token0of0one0tenant0only"


class FakeHub(BaseHTTPRequestHandler):
    """The Hugging Face Hub's stand-in: records who asks (the bearer token) and refuses everything."""

    seen: list[tuple[str, str, str | None]] = []

    def _refuse(self):
        FakeHub.seen.append((self.command, self.path, self.headers.get("authorization")))
        body = b'{"error": "the test hub refuses every request"}'
        self.send_response(403)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_HEAD = _refuse

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def hub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_model_dir):
    """The service's working directory, holding a model no tenant was given."""
    import shutil

    root = tmp_path_factory.mktemp("cwd")
    shutil.copytree(tiny_model_dir, root / "stash-model")
    (root / "allowed").mkdir()
    return root


@pytest.fixture(scope="module")
def service(tmp_path_factory, hub, workdir):
    root = tmp_path_factory.mktemp("access")
    svc = ServiceProcess(root / "data", ["--grace", "5", "--max-auth-failures", "0", "--header-timeout", "2",
                                         "--body-timeout", "2", "--max-connections-per-client", "8",
                                         "--local-models", str(workdir / "allowed")],
                         env={"HF_TOKEN": SERVICE_TOKEN, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": hub},
                         cwd=workdir).start()
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def alice_key(service):
    return create_key(service.data_dir, "alice", hub_namespaces=["alice-org"])


@pytest.fixture(scope="module")
def alice(service, alice_key):
    return service.client(alice_key)


@pytest.fixture(scope="module")
def dataset(alice, toy_files):
    resp = upload(alice, toy_files["train"])
    assert resp.status_code == 201, resp.text
    return resp.json()


@pytest.fixture(scope="module")
def model(alice, dataset):
    job = alice.post("/v1/jobs", json={"dataset": dataset["id"], "config": "tiny",
                                       "overrides": {"train.epochs": 1, "data.max_length": 32}}).json()
    done = wait_state(alice, job["id"], ("succeeded", "failed"))
    assert done["state"] == "succeeded", alice.get(f"/v1/jobs/{job['id']}/log").text
    return done["id"]


# --- keys -------------------------------------------------------------------------------------


def test_an_unknown_key_id_costs_what_a_wrong_secret_costs(service, alice_key):
    key_id = alice_key.split("_")[1]
    keys = {"unknown id": "tft_0123456789ab_" + "x" * 43, "wrong secret": f"tft_{key_id}_" + "y" * 43}
    took = {what: [] for what in keys}
    with httpx.Client(base_url=service.url) as http:
        for i in range(60):
            for what in (list(keys) if i % 2 else list(keys)[::-1]):  # interleaved: both see the same load
                started = time.perf_counter()
                resp = http.get("/v1/me", headers={"Authorization": f"Bearer {keys[what]}"})
                took[what].append(time.perf_counter() - started)
                assert resp.status_code == 401 and resp.json()["error"] == "invalid API key"
    median = {what: statistics.median(t) for what, t in took.items()}
    slow, fast = max(median.values()), min(median.values())
    assert slow < 2 * fast, {k: f"{v * 1000:.2f} ms" for k, v in median.items()}


def test_failed_key_checks_are_limited_per_client_address(tmp_path):
    svc = ServiceProcess(tmp_path / "data", ["--workers", "0", "--max-auth-failures", "5"]).start()
    try:
        good = create_key(svc.data_dir, "alice")
        wrong = {"Authorization": "Bearer tft_0123456789ab_" + "z" * 43}
        here = svc.client(None)
        assert [here.get("/v1/me", headers=wrong).status_code for _ in range(5)] == [401] * 5
        blocked = here.get("/v1/me", headers=wrong)
        assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) > 0
        assert "failed key checks from this address" in blocked.json()["error"]
        # no more guesses from there, right or wrong, until the minute has passed
        assert here.get("/v1/me", headers={"Authorization": f"Bearer {good}"}).status_code == 429
        assert here.get("/health").status_code == 200
        there = httpx.Client(base_url=svc.url, transport=httpx.HTTPTransport(local_address="127.0.0.2"))
        assert there.get("/v1/me", headers={"Authorization": f"Bearer {good}"}).status_code == 200
        assert there.get("/v1/me", headers=wrong).status_code == 401
    finally:
        svc.stop()


def test_the_keys_command_records_hub_namespaces(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "textft", "service", "keys", *a, "--data-dir",
                                     str(tmp_path / "data")], capture_output=True, text=True, timeout=60)
    made = run("create", "--name", "ci", "--hub-namespace", "my-org", "--hub-namespace", "me")
    assert made.returncode == 0, made.stderr
    (record,) = json.loads(run("list", "--json").stdout)
    assert record["hub_namespaces"] == ["my-org", "me"]
    assert "my-org, me" in run("list").stdout
    bad = run("create", "--name", "x", "--hub-namespace", "no/slashes")
    assert bad.returncode == 2 and "'--hub-namespace'" in bad.stderr


# --- HTTP -------------------------------------------------------------------------------------


def raw(port: int, data: bytes, then: bytes = b"", every: float = 0.5, wait: float = 15.0) -> tuple[bytes, float]:
    """Send ``data``, then ``then`` a byte at a time every ``every`` s: the answer, and when the
    server closed the connection (``wait`` if it never did)."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(data)
        started, got, rest = time.monotonic(), b"", list(then)
        s.settimeout(every)
        while time.monotonic() - started < wait:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                if rest:
                    try:
                        s.sendall(bytes([rest.pop(0)]))
                    except OSError:
                        return got, time.monotonic() - started
                continue
            except ConnectionResetError:
                return got, time.monotonic() - started
            if not chunk:
                return got, time.monotonic() - started
            got += chunk
        return got, wait


def body_of(answer: bytes) -> dict:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"application/json" in head.lower(), answer
    return json.loads(body)


def test_slow_clients_are_cut_off(service):
    # headers trickled a byte every half second (slowloris) never complete
    answer, took = raw(service.port, b"GET /health HTTP/1.1\r\nHost: x\r\n", then=b"X-Slow: " + b"a" * 100)
    assert 1.5 < took < 6, took
    assert answer.startswith(b"HTTP/1.1 408") and "headers" in body_of(answer)["error"], answer
    # a connection that never says anything
    answer, took = raw(service.port, b"")
    assert 1.5 < took < 6 and answer.startswith(b"HTTP/1.1 408"), (took, answer)
    # a body that stops arriving
    _, took = raw(service.port, b"POST /v1/recipe HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                b"Content-Length: 1000\r\n\r\n{\"dat")
    assert 1.5 < took < 6, took


def test_connections_per_client_address_are_capped(service, alice):
    held = [socket.create_connection(("127.0.0.1", service.port)) for _ in range(8)]
    try:
        answer, took = raw(service.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", wait=5)
        assert answer.startswith(b"HTTP/1.1 429") and took < 2, answer
        assert "connections from this address" in body_of(answer)["error"]
        there = httpx.Client(base_url=service.url, transport=httpx.HTTPTransport(local_address="127.0.0.2"))
        assert there.get("/health").status_code == 200
    finally:
        for s in held:
            s.close()
    time.sleep(0.3)
    assert alice.get("/health").status_code == 200


def test_every_error_is_json_and_names_no_server_path(service, alice, model, workdir):
    data = str(service.data_dir)
    answers = [alice.get("/v1/no-such-thing"), alice.delete("/v1/me"), alice.get("/static/no-such-module.js"),
               alice.get("/v1/jobs", params={"state": "done"}), alice.post("/v1/jobs", content=b"{not json")]
    for resp in answers:
        assert resp.status_code in (400, 404, 405, 422) and resp.headers["content-type"] == "application/json", resp
        assert resp.json()["error"] and data not in resp.text
    answer, _ = raw(service.port, b"GET /health HTTP/1.1\r\nHost: x\r\nno colon in this header\r\n\r\n", wait=5)
    assert answer.startswith(b"HTTP/1.1 400") and body_of(answer)["error"], answer
    # a fault inside the service (the job's log replaced by a directory): 500, JSON, nothing of the server
    log = service.data_dir / "jobs" / model / "job.log"
    saved = log.read_bytes()
    log.unlink()
    log.mkdir()
    try:
        resp = alice.get(f"/v1/jobs/{model}/log")
    finally:
        log.rmdir()
        log.write_bytes(saved)
    assert resp.status_code == 500 and resp.headers["content-type"] == "application/json", resp.text
    assert "Traceback" not in resp.text and data not in resp.text and "Error" not in resp.json()["error"]
    wait_for(lambda: "IsADirectoryError" in service.tail(200_000), 10, "the fault in the log")  # the operator's details
    # a local model outside the allowed directories: refused without naming the server's directories
    resp = alice.post("/v1/recipe", json={"dataset": model and alice.get("/v1/datasets").json()[0]["id"],
                                          "config": "tiny", "overrides": {"model.name_or_path": "/etc/models/x"}})
    assert resp.status_code == 422 and str(workdir) not in resp.text, resp.text


@pytest.mark.parametrize("header", ["99999999999999999999999", "-1", "12abc"])
def test_a_last_event_id_out_of_range_is_400(service, alice, model, header):
    resp = alice.get(f"/v1/jobs/{model}/events", headers={"Last-Event-ID": header})
    assert resp.status_code == 400 and "'Last-Event-ID'" in resp.json()["error"], resp.text
    resp = alice.get(f"/v1/jobs/{model}/events", params={"after": header})
    assert resp.status_code in (400, 422) and "'after'" in resp.json()["error"], resp.text
    events = [line for line in alice.get(f"/v1/jobs/{model}/events", headers={"Last-Event-ID": "2"}).text.splitlines()
              if line.startswith("id: ")]
    assert events and int(events[0][4:]) == 3
    assert "OverflowError" not in service.tail(200_000)


# --- the Hub ----------------------------------------------------------------------------------


def authorizations() -> set[str]:
    """The tokens the test hub was sent (huggingface_hub also asks a few things of it without one)."""
    return {auth for _, _, auth in FakeHub.seen if auth}


def test_a_key_pushes_only_into_its_namespaces_or_with_its_own_token(service, alice, model):
    FakeHub.seen.clear()
    resp = alice.post(f"/v1/models/{model}/push", json={"repo_id": "someone-else/model"})
    assert resp.status_code == 403 and "alice-org" in resp.json()["error"], resp.text
    assert FakeHub.seen == []
    resp = alice.post(f"/v1/models/{model}/push", json={"repo_id": "alice-org/model"})
    assert resp.status_code == 502, resp.text  # the test hub refuses, but the push was allowed
    assert authorizations() == {f"Bearer {SERVICE_TOKEN}"}, FakeHub.seen
    assert SERVICE_TOKEN not in resp.text

    FakeHub.seen.clear()
    resp = alice.post(f"/v1/models/{model}/push", json={"repo_id": "someone-else/model", "token": USER_TOKEN})
    assert resp.status_code == 502, resp.text
    assert authorizations() == {f"Bearer {USER_TOKEN}"}, FakeHub.seen
    assert USER_TOKEN not in resp.text and USER_TOKEN not in service.tail(1_000_000)
    for path in service.data_dir.rglob("*"):
        if path.is_file():
            assert USER_TOKEN.encode() not in path.read_bytes(), path

    admin = service.client(create_key(service.data_dir, "root", admin=True))
    FakeHub.seen.clear()
    resp = admin.post(f"/v1/models/{model}/push", json={"repo_id": "alice-org/model"})
    assert resp.status_code == 403 and "--hub-namespace" in resp.json()["error"] and FakeHub.seen == []
    assert alice.get("/v1/me").json()["hub_namespaces"] == ["alice-org"]


# --- what a job may name ----------------------------------------------------------------------


def test_a_model_name_never_reads_the_service_directory(service, alice, dataset):
    for name in ("stash-model", "stash-model/", "stash-model/../stash-model"):
        body = {"dataset": dataset["id"], "config": "tiny",
                "overrides": {"model.name_or_path": name, "model.random_init": False}}
        for route in ("/v1/recipe", "/v1/jobs"):
            resp = alice.post(route, json=body)
            assert resp.status_code == 422, (route, name, resp.text)
            (problem,) = resp.json()["problems"]
            assert problem["field"] == "overrides.model.name_or_path", problem


def test_a_long_file_name_keeps_its_extension(alice, toy_files):
    name = "reviews-" + "a" * 250 + ".jsonl"
    resp = alice.post("/v1/datasets", files={"file": (name, Path(toy_files["validation"]).read_bytes())})
    assert resp.status_code == 201, resp.text
    stored = resp.json()["filename"]
    assert stored.endswith(".jsonl") and stored.startswith("reviews-aaa") and len(stored) <= 200, stored
