"""`textft serve` against hostile and careless clients: a bad text fails only its own request, a
busy or slow server sheds load with 503 instead of queueing without end, clients that gave up cost
nothing, and nothing a client sees carries a trace or a local path."""

import re
import threading
import time
from pathlib import Path

import httpx
import pytest

from conftest import toy_rows
from live_server import serve_app, serve_process
from tiny_classifier import copy_run, trained_run

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


# (raw JSON body, expected status, expected words in the error). Bodies are raw bytes: a JSON
# encoder refuses lone surrogates, a hostile client does not.
TEXT_CASES = [
    ("lone high surrogate", b'{"inputs": "\\ud800"}', 422, ["inputs:", "lone surrogate", "U+D800"]),
    ("lone low surrogate in a list", b'{"inputs": ["good", "fine", "x\\udfff"]}', 422, ["inputs[2]", "character 1"]),
    ("two bad items named at once", b'{"inputs": ["\\ud800", "good", "\\u0000\\u0001"]}', 422,
     ["inputs[0]", "inputs[2]", "control"]),
    ("control characters only", b'{"inputs": "\\u0000\\u0007\\u001b"}', 422, ["control or format"]),
    ("zero-width characters only", b'{"inputs": "\\u200b\\u2060\\ufeff"}', 422, ["control or format"]),
    ("whitespace of every kind only", b'{"inputs": "\\t\\n\\u00a0\\u2003\\u3000"}', 422, ["empty"]),
    ("NUL inside a real text", b'{"inputs": "the film\\u0000 was good"}', 200, []),
    ("surrogate pair (an emoji)", b'{"inputs": "great \\ud83d\\ude00"}', 200, []),
    ("noncharacter U+FFFF", b'{"inputs": "great \\uffff"}', 200, []),
    ("right-to-left override", b'{"inputs": "\\u202egood film"}', 200, []),
]


@pytest.mark.parametrize("name,body,status,words", TEXT_CASES, ids=[c[0] for c in TEXT_CASES])
def test_invalid_texts_are_refused_at_the_edge(batching_server, name, body, status, words):
    url, _ = batching_server
    with httpx.Client(base_url=url, timeout=60) as http:
        resp = post_raw(http, body)
    assert resp.status_code == status, resp.text
    if status != 200:
        error = resp.json()["error"]
        assert all(w in error for w in words), error


@pytest.fixture(scope="module")
def poisoned_server(run, tmp_path_factory):
    """A model whose tokenizer knows one token more than its embedding table: that token breaks the
    forward pass (IndexError) of any batch it is in, like a real tokenizer/weights mismatch."""
    from transformers import AutoTokenizer

    model = copy_run(run, tmp_path_factory.mktemp("poisoned") / "model")
    tok = AutoTokenizer.from_pretrained(model)
    tok.add_tokens(["zzpoison"])
    tok.save_pretrained(model)
    log = model.parent / "server.log"
    with serve_process(model, log, "--precision", "fp32", "--max-batch-size", "64", "--max-wait-ms", "100") as url:
        yield url, log


def test_a_failing_batch_is_rerun_so_only_the_guilty_request_fails(poisoned_server):
    url, log = poisoned_server
    texts = [r["text"] for r in toy_rows(15, 50)]
    barrier = threading.Barrier(16)
    answers: dict[int, httpx.Response] = {}

    def client(i):
        with httpx.Client(base_url=url, timeout=60) as http:
            barrier.wait()
            answers[i] = http.post("/predict", json={"inputs": "zzpoison film" if i == 15 else texts[i]})

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert [answers[i].status_code for i in range(15)] == [200] * 15
    bad = answers[15]
    assert bad.status_code == 500
    body = bad.json()["error"]
    assert "prediction failed for this request" in body
    assert "Traceback" not in bad.text and "IndexError" not in bad.text and ".py" not in bad.text
    served = httpx.get(url + "/metadata").json()["served"]
    assert served["failed"] == 1
    text = log.read_text()
    assert "running them one by one" in text and "Traceback" in text and "IndexError" in text  # the log keeps it
    other = httpx.post(url + "/predict", json={"inputs": "an excellent film"}, timeout=60)
    assert other.status_code == 200


def test_docs_use_no_cdn_and_metadata_no_local_path(batching_server, run):
    url, _ = batching_server
    page = httpx.get(url + "/docs", timeout=30)
    assert page.status_code == 200
    links = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)""", page.text) + re.findall(r"url:\s*'([^']+)'", page.text)
    assert links and all(link.startswith("/") for link in links), links
    assert "cdn" not in page.text and "https://" not in page.text
    for link in links:
        assert httpx.get(url + link, timeout=30).status_code == 200, link
    assert httpx.get(url + "/redoc", timeout=30).status_code == 404  # ReDoc has no local assets: off
    assert "/predict" in httpx.get(url + "/openapi.json", timeout=30).json()["paths"]
    meta = httpx.get(url + "/metadata", timeout=30).text
    assert str(run) not in meta and str(Path(run).parent) not in meta


class Gate:
    """Holds the model's worker thread inside a forward pass until opened."""

    def __init__(self, clf):
        # outputs is what every forward pass goes through (logits, predict and the server's batches).
        self.open, self.entered, self.real = threading.Event(), threading.Event(), clf.outputs
        clf.outputs = self.outputs

    def outputs(self, texts, batch_size=32, pairs=None, **kwargs):
        if list(texts) != ["warm up"]:
            self.entered.set()
            self.open.wait(60)
        return self.real(texts, batch_size, pairs, **kwargs)


@pytest.fixture
def gated(run):
    import textft

    clf = textft.load(run, precision="fp32")
    return clf, Gate(clf)


def background_post(url, body, timeout=60):
    result = {}

    def go():
        try:
            result["resp"] = httpx.post(url + "/predict", json=body, timeout=timeout)
        except httpx.HTTPError as e:
            result["error"] = e

    thread = threading.Thread(target=go)
    thread.start()
    return thread, result


def wait_for(predicate, timeout=30):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_a_full_queue_answers_503_with_retry_after(gated):
    from textft.serving import create_app

    clf, gate = gated
    with serve_app(create_app(clf, max_wait_ms=1, max_queue=2)) as url:
        first, r1 = background_post(url, {"inputs": "the film was good"})
        assert gate.entered.wait(30)  # the model is busy with the first request
        waiting = [background_post(url, {"inputs": f"the film was bad {i}"}) for i in range(2)]
        wait_for(lambda: httpx.get(url + "/metadata").json()["served"]["waiting"] == 2)
        refused = httpx.post(url + "/predict", json={"inputs": "one more"}, timeout=30)
        assert refused.status_code == 503 and "busy" in refused.json()["error"]
        assert int(refused.headers["Retry-After"]) >= 1
        gate.open.set()
        for thread, result in [(first, r1), *waiting]:
            thread.join(60)
            assert result["resp"].status_code == 200
        served = httpx.get(url + "/metadata").json()["served"]
        assert served["rejected_queue_full"] == 1 and served["texts"] == 3


def test_a_request_that_waits_too_long_gets_503(gated):
    from textft.serving import create_app

    clf, gate = gated
    with serve_app(create_app(clf, max_wait_ms=1, request_timeout_s=0.5)) as url:
        first, r1 = background_post(url, {"inputs": "the film was good"})
        assert gate.entered.wait(30)
        start = time.monotonic()
        late = httpx.post(url + "/predict", json={"inputs": "the film was bad"}, timeout=30)
        assert late.status_code == 503 and "did not finish within 0.5 s" in late.json()["error"]
        assert time.monotonic() - start < 5 and "Retry-After" in late.headers
        gate.open.set()
        first.join(60)
        assert r1["resp"].status_code == 503  # its forward pass outlived its limit too
        wait_for(lambda: httpx.get(url + "/metadata").json()["served"]["dropped_before_run"] == 1)
        assert httpx.post(url + "/predict", json={"inputs": "good"}, timeout=30).status_code == 200


def test_a_client_that_disconnects_costs_no_forward_pass(gated):
    from textft.serving import create_app

    clf, gate = gated
    with serve_app(create_app(clf, max_wait_ms=1)) as url:
        first, r1 = background_post(url, {"inputs": "the film was good"})
        assert gate.entered.wait(30)
        impatient, r2 = background_post(url, {"inputs": "the film was bad"}, timeout=0.3)
        impatient.join(30)
        assert isinstance(r2.get("error"), httpx.TimeoutException)  # the client hung up
        time.sleep(0.5)  # the server notices the closed connection
        gate.open.set()
        first.join(60)
        assert r1["resp"].status_code == 200
        wait_for(lambda: httpx.get(url + "/metadata").json()["served"]["dropped_before_run"] == 1)
        served = httpx.get(url + "/metadata").json()["served"]
        assert served["texts"] == 1 and served["batches"] == 1
