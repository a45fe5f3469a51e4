"""`textft serve` against hostile and careless clients: a bad text fails only its own request, a
busy or slow server sheds load with 503 instead of queueing without end, clients that gave up cost
nothing, and nothing a client sees carries a trace or a local path."""

import json
import threading

import httpx
import pytest

from conftest import toy_rows
from live_server import serve_process
from tiny_classifier import trained_run

LONE_SURROGATE = b'{"inputs": "the film was \\ud800 good"}'


@pytest.fixture(scope="module")
def run(tiny_model_dir, toy_files, tmp_path_factory):
    return trained_run(tiny_model_dir, toy_files, tmp_path_factory)


@pytest.fixture(scope="module")
def batching_server(run, tmp_path_factory):
    """A server that waits 100 ms to fill a batch, so that concurrent requests share forward passes."""
    log = tmp_path_factory.mktemp("serve-hardening") / "server.log"
    with serve_process(run, log, "--precision", "fp32", "--max-batch-size", "64", "--max-wait-ms", "100") as url:
        yield url, log


def post_raw(http: httpx.Client, body: bytes) -> httpx.Response:
    return http.post("/predict", content=body, headers={"content-type": "application/json"})


@pytest.mark.parametrize("trial", range(3))
def test_one_invalid_text_fails_only_its_own_request(batching_server, trial):
    """15 good requests and one with a lone surrogate arrive together: 15 answers, one 422 naming the item."""
    url, log = batching_server
    texts = [r["text"] for r in toy_rows(15, 40 + trial)]
    barrier = threading.Barrier(16)
    answers: dict[int, httpx.Response] = {}

    def client(i):
        with httpx.Client(base_url=url, timeout=60) as http:
            barrier.wait()
            answers[i] = post_raw(http, LONE_SURROGATE) if i == 15 else http.post("/predict", json={"inputs": texts[i]})

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    good = [answers[i].status_code for i in range(15)]
    assert good == [200] * 15, [answers[i].text[:200] for i in range(15)]
    bad = answers[15]
    assert bad.status_code == 422, bad.text
    assert "inputs" in bad.json()["error"] and "surrogate" in bad.json()["error"]
    assert "Traceback" not in bad.text
    served = httpx.get(url + "/metadata").json()["served"]
    assert served["batches"] < served["texts"]  # the good requests were batched together
