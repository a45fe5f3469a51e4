"""Operating ``textft service``, against a real service on loopback: webhooks received by a real HTTP
server, /metrics scraped and parsed with prometheus_client's parser, time estimates from the jobs it
ran, and a backup taken while it runs restored into an empty directory and served again.

One service (webhooks to loopback allowed, metrics on a port of their own) runs one tiny job for the
whole module; the restored service runs without --allow-private-webhooks.
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service_support import ServiceProcess, free_port, upload, wait_for, wait_state
from textft.service import webhooks
from textft.service.keys import create_key
from textft.service.layout import DataDir
from textft.service.store import Store

TINY = {"model.random_init": False, "data.max_length": 32, "train.epochs": 3, "train.lr": 3e-3,
        "train.batch_size": 16, "train.mixed_precision": "no", "train.logging_steps": 5}


class Receiver:
    """A webhook receiver on loopback: records every POST; answers 500 to the first one (a retry follows)."""

    def __init__(self):
        self.received: list[dict] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    first = not receiver.received
                    receiver.received.append({"headers": dict(self.headers), "body": body, "path": self.path})
                self.send_response(500 if first else 204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/textft?team=nlp"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def states(self) -> list[str]:
        """The job states received, once each (a retried delivery has the same id)."""
        seen, out = set(), []
        for r in self.received:
            body = json.loads(r["body"])
            if body["id"] not in seen and r is not self.received[0]:
                seen.add(body["id"])
                out.append(body["state"])
        return out


def make_key(data_dir: Path, name: str, admin: bool = False) -> tuple[str, str]:
    store = Store(DataDir(data_dir).create().db)
    try:
        key, record = create_key(store, name, admin)
    finally:
        store.close()
    return key, record["webhook_secret"]


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    yield r
    r.server.shutdown()


@pytest.fixture(scope="module")
def ops(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("ops")
    metrics_port = free_port()
    svc = ServiceProcess(root / "data", ["--local-models", str(tiny_model_dir), "--save-every-steps", "0",
                                         "--grace", "10", "--allow-private-webhooks", "--webhook-attempts", "4",
                                         "--metrics-port", str(metrics_port)]).start()
    svc.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    yield svc
    assert svc.stop() in (0, -15), svc.tail()


@pytest.fixture(scope="module")
def alice(ops):
    key, secret = make_key(ops.data_dir, "alice")
    client = ops.client(key)
    client.webhook_secret = secret
    return client


@pytest.fixture(scope="module")
def ran(ops, alice, receiver, toy_files, tiny_model_dir):
    """One job with a webhook, run to success; its record and its datasets."""
    sets = {}
    for split in ("train", "validation"):
        resp = upload(alice, toy_files[split])
        assert resp.status_code == 201, resp.text
        sets[split] = resp.json()
    body = {"dataset": sets["train"]["id"], "validation_dataset": sets["validation"]["id"], "config": "tiny",
            "overrides": {"model.name_or_path": str(tiny_model_dir), **TINY}, "webhook_url": receiver.url}
    resp = alice.post("/v1/jobs", json=body)
    assert resp.status_code == 201, resp.text
    assert resp.json()["webhook_url"] == receiver.url
    job = wait_state(alice, resp.json()["id"], ("succeeded", "failed"))
    assert job["state"] == "succeeded", alice.get(f"/v1/jobs/{job['id']}/log").text
    return {"job": job, "sets": sets, "body": body}


# --- webhooks ---------------------------------------------------------------------------------


def test_every_state_change_is_posted_signed_in_order_and_retried(alice, ran, receiver):
    job = ran["job"]
    wait_for(lambda: receiver.states()[-1:] == ["succeeded"], 60, "the succeeded webhook")
    assert receiver.states() == ["queued", "running", "succeeded"]
    first, retry = receiver.received[0], receiver.received[1]
    assert first["body"] == retry["body"] and retry["headers"]["X-Textft-Attempt"] == "2"
    for r in receiver.received:
        body = json.loads(r["body"])
        assert r["path"] == "/hooks/textft?team=nlp" and body["job_id"] == job["id"] and body["type"] == "job.state"
        assert r["headers"]["X-Textft-Delivery"] == body["id"]
        signature = r["headers"][webhooks.SIGNATURE_HEADER]
        assert webhooks.verify(alice.webhook_secret, r["body"], signature)
        # what a receiver must catch: another body, another secret, no signature
        assert not webhooks.verify(alice.webhook_secret, r["body"].replace(b"job.state", b"job.stat3"), signature)
        assert not webhooks.verify(webhooks.new_secret(), r["body"], signature)
        assert not webhooks.verify(alice.webhook_secret, r["body"], None)
    final = json.loads(receiver.received[-1]["body"])
    assert final["data"]["metrics"]["splits"]["validation"]  # the outcome travels with the change

    # the attempts are visible on the job
    deliveries = alice.get(f"/v1/jobs/{job['id']}/deliveries").json()
    assert [d["state"] for d in deliveries] == ["delivered"] * 3
    assert deliveries[0]["attempts"] == 2 and deliveries[0]["history"][0]["status"] == 500
    assert deliveries[0]["history"][0]["error"] == "answered 500" and deliveries[0]["history"][1]["status"] == 204
    assert alice.get(f"/v1/jobs/{job['id']}").json()["webhook_deliveries"] == {"pending": 0, "delivered": 3,
                                                                                "failed": 0}


def test_webhook_urls_are_checked_at_submission(ops, alice, ran):
    body = {k: v for k, v in ran["body"].items() if k != "webhook_url"}
    for url, expected in (("ftp://example.com/hook", "got scheme 'ftp'"), ("file:///etc/passwd", "got scheme 'file'"),
                          ("http://user:pw@127.0.0.1/x", "user name or password"),
                          ("http://0.0.0.0:9/x", "not a host address"), ("http://no.such.host.invalid/", "does not resolve")):
        resp = alice.post("/v1/jobs", json={**body, "webhook_url": url})
        assert resp.status_code == 422, (url, resp.text)
        (problem,) = resp.json()["problems"]
        assert problem["field"] == "webhook_url" and expected in problem["message"], problem


def test_a_delivery_checks_the_address_it_connects_to(monkeypatch):
    """A name that resolved to a public address when the job was created and to a private one at
    delivery time (DNS rebinding) is refused then, before any connection."""
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, port, **kw: [(socket.AF_INET, socket.SOCK_STREAM, 6, "",
                                                                          ("169.254.169.254", port))])
    with pytest.raises(webhooks.Refused, match="resolves to 169.254.169.254, which is a link-local address"):
        webhooks.post("http://hooks.example.com/x", b"{}", {}, 1.0, allow_private=False)
    assert webhooks.address_problem("::ffff:10.1.2.3", False).startswith("is a private address")
    assert webhooks.address_problem("93.184.216.34", False) is None


# --- metrics ----------------------------------------------------------------------------------


def scrape(text: str) -> dict[str, list]:
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def test_metrics_in_the_prometheus_format(ops, alice, ran):
    job_id = ran["job"]["id"]
    resp = alice.post(f"/v1/models/{job_id}/predict", json={"inputs": ["good movie", "bad movie", "fine"]})
    assert resp.status_code == 200, resp.text
    assert alice.get("/metrics").status_code == 403
    assert ops.client(None).get("/metrics").status_code == 401
    admin_key, _ = make_key(ops.data_dir, "ops-admin", admin=True)
    resp = ops.client(admin_key).get("/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    families = scrape(resp.text)
    separate = httpx.get(ops.metrics_url, timeout=30)  # no key on the metrics port
    assert separate.status_code == 200 and set(scrape(separate.text)) == set(families)

    jobs = {s.labels["state"]: s.value for s in families["textft_jobs"]}
    assert jobs["succeeded"] >= 1 and set(jobs) == {"queued", "running", "succeeded", "failed", "cancelled"}
    assert families["textft_queue_length"][0].value == jobs["queued"]
    assert families["textft_predictions"][0].name == "textft_predictions_total"
    assert families["textft_predictions"][0].value == 3
    assert families["textft_models_loaded"][0].value == 1
    requests = families["textft_http_requests"]
    routes = {s.labels["route"] for s in requests}
    assert "/v1/jobs/{job_id}" in routes and "/v1/models/{model_id}/predict" in routes
    assert not any(job_id in s.labels["route"] for s in requests)  # templates, not raw paths
    assert any(s.labels == {"route": "/metrics", "method": "GET", "status": "403"} for s in requests)
    latency = [s for s in families["textft_http_request_duration_seconds"]
               if s.name.endswith("_count") and s.labels["route"] == "/v1/jobs/{job_id}"]
    assert latency and latency[0].value >= 1
    (beat,) = [s for s in families["textft_worker_heartbeat_age_seconds"] if s.labels["kind"] == "service"]
    assert 0 <= beat.value < 30 and families["textft_workers_alive"][0].value >= 1
    delivered = {s.labels["state"]: s.value for s in families["textft_webhook_deliveries"]}
    assert delivered["delivered"] >= 3


# --- estimates --------------------------------------------------------------------------------


def test_the_recipe_estimates_the_time_from_earlier_jobs(alice, ran):
    job = ran["job"]
    body = {k: v for k, v in ran["body"].items() if k != "webhook_url"}
    resp = alice.post("/v1/recipe", json=body)
    assert resp.status_code == 200, resp.text
    estimate = resp.json()["estimate"]
    assert estimate["method"] == "measured" and estimate["jobs"] == [job["id"]]
    assert "samples/s" in estimate["how"] and "max_length 32" in estimate["how"]
    from datetime import datetime

    actual = (datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(job["started_at"])).total_seconds()
    # the same job again: the estimate is its measured time (to the second the timestamps keep)
    assert abs(estimate["seconds"] - actual) <= 2.5, (estimate, actual)
    # Each answer is rounded (training_s to 0.1 s, samples_per_s to 0.01), so a multiple of one rounded answer
    # can miss another by more than the rounding: check each answer against its own plan and rate instead.
    plan = resp.json()["plan"]

    def trains(answer: dict) -> float:
        return answer["plan"]["total_steps"] * answer["plan"]["global_batch"] / answer["estimate"]["samples_per_s"]

    longer = alice.post("/v1/recipe", json={**body, "overrides": {**body["overrides"], "train.epochs": 9}}).json()
    assert longer["plan"]["total_steps"] == 3 * plan["total_steps"]
    assert longer["estimate"]["samples_per_s"] == estimate["samples_per_s"]
    assert longer["estimate"]["training_s"] == pytest.approx(trains(longer), abs=0.06)
    scaled = alice.post("/v1/recipe", json={**body, "overrides": {**body["overrides"], "data.max_length": 64}}).json()
    assert scaled["estimate"]["method"] == "scaled" and "scaled to 64" in scaled["estimate"]["how"]
    assert scaled["plan"]["total_steps"] == plan["total_steps"]
    assert scaled["estimate"]["samples_per_s"] == pytest.approx(estimate["samples_per_s"] / 2, abs=0.011)
    assert scaled["estimate"]["training_s"] == pytest.approx(trains(scaled), abs=0.06)


# --- backup and restore -----------------------------------------------------------------------


def textft(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "textft", "service", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_backup_while_running_and_restore_into_an_empty_directory(ops, alice, ran, tmp_path, tiny_model_dir):
    archive = tmp_path / "textft-backup.tar"
    made = textft("backup", "--data-dir", str(ops.data_dir), "--to", str(archive))
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith("backed up ") and "2 dataset(s), 1 job(s) (1 succeeded)" in made.stdout
    again = textft("backup", "--data-dir", str(ops.data_dir), "--to", str(archive))
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr

    # a damaged archive is refused, and leaves the target empty
    damaged = tmp_path / "damaged.tar"
    with tarfile.open(archive) as src, tarfile.open(damaged, "w") as dst:
        for member in src:
            data = src.extractfile(member).read() if member.isfile() else None
            if member.name.endswith("data.jsonl"):
                data = data.replace(b"good", b"evil")
            dst.addfile(member, None if data is None else __import__("io").BytesIO(data))
    refused = textft("restore", "--from", str(damaged), "--data-dir", str(tmp_path / "bad"))
    assert refused.returncode == 2 and "does not match the manifest" in refused.stderr, refused.stderr
    assert list((tmp_path / "bad").iterdir()) == []

    target = tmp_path / "restored"
    done = textft("restore", "--from", str(archive), "--data-dir", str(target))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("restored ") and str(target) in done.stdout
    busy = textft("restore", "--from", str(archive), "--data-dir", str(target))
    assert busy.returncode == 2 and "not an empty directory" in busy.stderr

    restored = ServiceProcess(target, ["--workers", "0", "--local-models", str(tiny_model_dir)]).start()
    try:
        again = restored.client(alice.headers["Authorization"].split()[1])  # the same key works
        for path in ("/v1/datasets", "/v1/jobs", "/v1/models"):
            before, after = alice.get(path).json(), again.get(path).json()
            assert [r["id"] for r in after] == [r["id"] for r in before], path
        texts = {"inputs": ["good movie", "terrible plot", "fine"]}
        job_id = ran["job"]["id"]
        assert again.post(f"/v1/models/{job_id}/predict", json=texts).json() == \
            alice.post(f"/v1/models/{job_id}/predict", json=texts).json()
        body = {**ran["body"], "webhook_url": ran["body"]["webhook_url"].replace("127.0.0.1", "localhost")}
        resp = again.post("/v1/jobs", json={**body, "config": "no-such-preset"})  # no --allow-private-webhooks here
        problems = {p["field"]: p["message"] for p in resp.json()["problems"]}
        assert resp.status_code == 422 and set(problems) == {"config", "webhook_url"}, problems
        assert "'localhost' resolves to 127.0.0.1, which is a loopback address" in problems["webhook_url"]
    finally:
        assert restored.stop() in (0, -15), restored.tail()


# --- the dispatcher on its own: failures, redirects, a restart ------------------------------------


def queued_job(store: Store, url: str) -> tuple[str, str]:
    """A key and a queued job of it with a webhook (rows as POST /v1/jobs writes them); (job id, secret)."""
    import time

    from textft.service.store import add_event

    _, record = create_key(store, f"k{time.monotonic_ns()}")
    job_id = f"job_{time.monotonic_ns():x}"
    with store.transaction() as db:
        db.execute("INSERT INTO jobs (id, owner, state, config, overrides, dataset, created_at)"
                   " VALUES (?, ?, 'queued', 'tiny', '{}', 'ds_x', ?)", (job_id, record["id"], time.time()))
        add_event(db, job_id, "state", {"state": "queued", "attempt": 1})
    store.set_webhook(job_id, url)
    return job_id, record["webhook_secret"]


def test_undeliverable_webhooks_are_retried_then_given_up_and_redirects_not_followed(tmp_path, receiver):
    store = Store(tmp_path / "textft.db")
    dead = f"http://127.0.0.1:{free_port()}/gone"  # nothing listens there
    dead_job, _ = queued_job(store, dead)
    settings = webhooks.WebhookSettings(allow_private=True, timeout_s=2, max_attempts=3, retry_s=0.3)
    dispatcher = webhooks.Dispatcher(store, settings)
    dispatcher.start()
    try:
        wait_for(lambda: store.deliveries(dead_job)[0]["state"] == "failed", 30, "the delivery to be given up")
    finally:
        dispatcher.stop()
    (delivery,) = store.deliveries(dead_job)
    assert delivery["attempts"] == 3 and all("ConnectionRefusedError" in a["error"] for a in delivery["history"])
    gaps = [b["at"] - a["at"] for a, b in zip(delivery["history"], delivery["history"][1:])]
    assert gaps[0] >= 0.9 * 0.3 and gaps[1] >= 0.9 * 0.6  # 0.3 s, then twice that (±10% jitter)

    class Redirect(BaseHTTPRequestHandler):
        def do_POST(self):
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        job, _ = queued_job(store, f"http://127.0.0.1:{server.server_address[1]}/hook")
        dispatcher = webhooks.Dispatcher(store, settings)
        dispatcher.dispatch()
        wait_for(lambda: store.deliveries(job)[0]["state"] != "pending", 30, "the redirected delivery")
        dispatcher.stop()
    finally:
        server.shutdown()
    (delivery,) = store.deliveries(job)
    assert delivery["state"] == "failed" and delivery["attempts"] == 1
    assert delivery["last_error"] == "answered 302: redirects are not followed"


def test_pending_deliveries_survive_a_restart_and_are_signed_with_the_current_secret(tmp_path):
    got = []

    class Ok(BaseHTTPRequestHandler):
        def do_POST(self):
            got.append((self.rfile.read(int(self.headers["Content-Length"])), self.headers[webhooks.SIGNATURE_HEADER]))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        store = Store(tmp_path / "textft.db")
        job, old_secret = queued_job(store, f"http://127.0.0.1:{server.server_address[1]}/hook")
        owner = store.row("SELECT owner FROM jobs WHERE id = ?", job)["owner"]
        store.close()  # the service stops before sending it
        store = Store(tmp_path / "textft.db")  # ... and starts again
        new_secret = webhooks.new_secret()
        store.set_webhook_secret(owner, new_secret)
        dispatcher = webhooks.Dispatcher(store, webhooks.WebhookSettings(allow_private=True))
        dispatcher.start()
        try:
            wait_for(lambda: got, 30, "the pending delivery")
        finally:
            dispatcher.stop()
    finally:
        server.shutdown()
    (body, signature), = got
    assert json.loads(body)["state"] == "queued"
    assert webhooks.verify(new_secret, body, signature) and not webhooks.verify(old_secret, body, signature)
    assert store.deliveries(job)[0]["state"] == "delivered"


def test_a_receiver_that_trickles_its_answer_is_cut_off():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    stop = threading.Event()

    def trickle():
        conn, _ = listener.accept()
        conn.recv(65536)
        for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 1000:
            if stop.wait(0.2):  # within the per-read timeout, for ever
                break
            conn.sendall(bytes([byte]))
        conn.close()

    threading.Thread(target=trickle, daemon=True).start()
    import time

    started = time.monotonic()
    try:
        with pytest.raises((OSError, http.client.HTTPException)):  # what the dispatcher records as a failed attempt
            webhooks.post(f"http://127.0.0.1:{listener.getsockname()[1]}/", b"{}", {}, 0.5, allow_private=True)
    finally:
        stop.set()
        listener.close()
    assert time.monotonic() - started < 3


def test_workers_heartbeats_are_files_the_service_reads(tmp_path):
    """A textft worker (another process, maybe another machine) has no port to scrape: it rewrites a
    heartbeat file in the shared data directory, which the service's /metrics reports."""
    import os
    import time

    from textft.service.beacons import Beacon, read_beacons

    data = DataDir(tmp_path / "data").create()
    running = {"job_a"}
    beacon = Beacon(data, "worker", 2, ["0", "1"], lambda: len(running)).start()
    (record,) = read_beacons(data)
    assert record["kind"] == "worker" and record["slots"] == 2 and record["busy"] == 1 and record["alive"]
    assert record["worker"].endswith(f":{os.getpid()}") and record["gpus"] == ["0", "1"]
    beacon.stop()
    assert read_beacons(data) == []  # a worker that stops says so
    gone = tmp_path / "data" / "workers" / "other-host-42.json"  # one killed an hour ago says nothing
    gone.write_text(json.dumps({"worker": "other-host:42", "kind": "worker", "slots": 1, "busy": 1,
                                "time": time.time() - 3600}))
    (stale,) = read_beacons(data)
    assert not stale["alive"] and stale["age_s"] >= 3600


def test_jobs_of_different_sizes_give_a_fixed_part_and_a_speed():
    from textft.service.estimates import Measured, line_through

    def job(samples, wall):
        return Measured("job", "m", 64, samples / (wall - 40), 40.0, samples, wall)

    fit = line_through([job(320, 50 + 0.1 * 320), job(640, 50 + 0.1 * 640), job(1280, 50 + 0.1 * 1280)])
    assert fit == pytest.approx((50.0, 0.1))
    assert line_through([job(320, 80.0), job(400, 90.0)]) is None  # too close in size to tell apart
    assert line_through([job(320, 90.0), job(960, 80.0)]) is None  # a larger job was faster: noise, not a line
