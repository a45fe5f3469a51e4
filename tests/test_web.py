"""The service's web page in real headless Chromium (Debian's ``chromium``, driven by Playwright),
against a real ``textft service`` subprocess training the tiny model.

One test walks the page as a user would: a wrong key then the right one, uploads (a good file and
two bad ones), a job started from the form and followed to the end, its report, the download, a
prediction, a batch file, and a second job cancelled. Every page is saved as a screenshot at a
desktop and a phone size; the assertions read the DOM, never pixels.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import pair_rows, toy_rows, write_jsonl
from service_support import ServiceProcess, create_key

CHROMIUM = next((p for p in (os.environ.get("TEXTFT_CHROMIUM"), shutil.which("chromium"),
                             shutil.which("chromium-browser")) if p), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed (Debian: apt-get install"
                                                              " chromium); .ci/run installs it")

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def web_service(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("web")
    svc = ServiceProcess(root / "data", ["--local-models", str(tiny_model_dir), "--save-every-steps", "0",
                                         "--grace", "10"]).start()
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # --no-sandbox: CI and this container run as root, where Chromium's sandbox refuses to start.
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield b
        b.close()


class Shots:
    """Full-page screenshots of the current page at desktop and phone size."""

    def __init__(self, page, folder: Path):
        self.page, self.folder, self.taken = page, folder, []
        folder.mkdir(parents=True, exist_ok=True)

    def __call__(self, name: str) -> None:
        unlabelled = self.page.evaluate("""[...document.querySelectorAll('input, select, textarea, button')]
            .filter(e => e.offsetParent !== null && !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                         && !(e.tagName === 'BUTTON' && e.textContent.trim()))
            .map(e => e.outerHTML.slice(0, 80))""")
        assert not unlabelled, f"{name}: controls without a label: {unlabelled}"
        for size_name, size in (("desktop", DESKTOP), ("phone", PHONE)):
            self.page.set_viewport_size(size)
            self.page.wait_for_timeout(150)  # layout and chart redraws after the resize
            path = self.folder / f"{len(self.taken) // 2 + 1:02d}-{name}-{size_name}.png"
            self.page.screenshot(path=str(path), full_page=True)
            self.taken.append(path)
            if size_name == "phone":  # nothing sticks out sideways on a phone
                overflow = self.page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
                assert overflow <= 1, f"{name}: the page is {overflow}px wider than a {PHONE['width']}px phone"
        self.page.set_viewport_size(DESKTOP)


def wait_for_points(page, series: str, at_least: int) -> None:
    """The job's evaluations arrive after the page draws its tables: wait for the curve to hold them."""
    page.wait_for_function(
        """([series, n]) => {
            const path = document.querySelector(`#metric-chart path[data-series="${series}"]`);
            return path !== null && Number(path.getAttribute("data-points")) >= n;
        }""", arg=[series, at_least], timeout=30_000)


@needs_chromium
def test_the_web_page_end_to_end(web_service, browser, tiny_model_dir, toy_files, tmp_path):
    from playwright.sync_api import expect

    expect.set_options(timeout=60_000)  # generous: the machine may be busy, and the first recipe loads the model
    started = time.monotonic()
    svc = web_service
    key = create_key(svc.data_dir, "web-alice")
    context = browser.new_context(viewport=DESKTOP, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors, foreign = [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: foreign.append(r.url) if not r.url.startswith((svc.url, "blob:", "data:",
                                                                                 "about:")) else None)
    shots = Shots(page, tmp_path / "screenshots")
    nav = lambda name: page.get_by_role("navigation", name="Main").get_by_role("link", name=name, exact=True)
    print(f"screenshots: {shots.folder}")

    # -- sign in: a wrong key is refused with the server's reason, the right one is kept
    page.goto(svc.url + "/")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.get_by_label("API key").fill("tft_0123456789ab_" + "x" * 43)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#key-error")).to_contain_text("Wrong key: invalid API key")
    expect(page.get_by_label("API key")).to_have_attribute("aria-invalid", "true")
    shots("sign-in-wrong-key")
    page.get_by_label("API key").fill(key)
    page.get_by_label("API key").press("Enter")  # the keyboard is enough
    expect(page.locator("#who-name")).to_have_text("web-alice")
    expect(page.get_by_role("heading", name="Jobs")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('textft.key')") == key

    # -- datasets: columns come from the file's header, the upload shows its labels and first rows
    nav("Datasets").click()
    expect(page.get_by_role("heading", name="Upload a dataset")).to_be_visible()
    renamed = write_jsonl(tmp_path / "reviews.jsonl",
                          [{"review": r["text"], "stars": r["label"], "id": i} for i, r in enumerate(toy_rows(400, 1))])
    held_out = write_jsonl(tmp_path / "held-out.jsonl", [{"review": r["text"], "stars": r["label"]} for r in toy_rows(80, 2)])
    page.locator("#file").set_input_files(str(renamed))
    expect(page.get_by_label("Text column", exact=True)).to_have_value("review")
    expect(page.get_by_label("Label column", exact=True)).to_have_value("stars")
    assert page.locator("#text_column option").all_inner_texts() == ["review", "stars", "id"]
    expect(page.locator("#peek-preview tbody tr")).to_have_count(5)
    page.get_by_role("button", name="Upload and check").click()
    card = page.locator("article.dataset", has_text="reviews.jsonl")
    expect(card).to_contain_text("400 rows · 2 labels")
    expect(card.locator("ol.dist li")).to_have_count(2)
    assert "neg 200" in card.locator("ol.dist").get_attribute("aria-label")
    expect(card.locator("table tbody tr")).to_have_count(5)
    page.locator("#file").set_input_files(str(held_out))
    expect(page.get_by_label("Label column", exact=True)).to_have_value("stars")
    page.get_by_role("button", name="Upload and check").click()
    expect(page.locator("article.dataset", has_text="held-out.jsonl")).to_contain_text("80 rows")

    # a bad upload: the server's 422 is shown next to the field it concerns, and nothing is kept
    one_class = tmp_path / "one-class.csv"
    one_class.write_text("text,label\n" + "".join(f"a good film number {i},pos\n" for i in range(30)))
    page.locator("#file").set_input_files(str(one_class))
    page.get_by_role("button", name="Upload and check").click()
    expect(page.locator("#file-error")).to_contain_text("only one class ('pos'")
    expect(page.locator('[data-field="file"]')).to_have_class("field invalid")
    shots("datasets-422")
    wrong = tmp_path / "notes.txt"
    wrong.write_text("not a table\n")
    page.locator("#file").set_input_files(str(wrong))
    expect(page.locator("#file-error")).to_contain_text("unsupported extension '.txt'")
    expect(page.locator("article.dataset")).to_have_count(2)

    # -- new job: server did-you-mean messages, the recipe with its reasons, then a job that trains
    nav("New job").click()
    page.get_by_label("Training dataset").select_option(label=_option(page, "#dataset", "reviews.jsonl"))
    page.get_by_label("Validation dataset").select_option(label=_option(page, "#validation_dataset", "held-out.jsonl"))
    page.get_by_label("Preset").select_option("tiny")
    page.get_by_label("Backbone").fill(str(tiny_model_dir))
    expect(page.locator("#recipe .recipe-row").first).to_be_visible()
    auto = page.locator("#recipe .recipe-row:has(.tag)")
    assert auto.count() >= 1 and all(len(t) > 10 for t in auto.locator(".why").all_inner_texts())
    page.get_by_label("Other settings").fill("train.lrr=0.1")
    expect(page.locator("#overrides-error")).to_contain_text("did you mean 'train.lr'")
    expect(page.get_by_label("Transfer mode")).to_have_value("auto")
    # which recipe the upload gets, and why (the tiny preset starts from random weights: the ordinary one)
    expect(page.locator('#recipe .recipe-row[data-field="overrides.model.transfer"] .why')).to_contain_text(
        "the encoder starts from random weights")
    page.get_by_label("Other settings").fill("model.random_init=false\ndata.max_length=32\n"
                                           "train.epochs=6\ntrain.lr=0.003\ntrain.batch_size=16\n"
                                           "train.mixed_precision=no\ntrain.logging_steps=5")
    expect(page.locator("#plan")).to_contain_text("150 steps, 25 per epoch")
    expect(page.locator("#overrides-error")).to_be_empty()
    shots("new-job")
    page.get_by_role("button", name="Start job").click()
    page.wait_for_url(lambda url: "#/jobs/job_" in url)
    job_id = page.url.rsplit("/", 1)[1]

    progress = page.locator("#job-progress [role=progressbar]")
    expect(progress).to_have_attribute("aria-valuenow", "100", timeout=300_000)
    expect(page.locator("#job-state")).to_have_text("succeeded", timeout=180_000)  # after the final evaluation
    expect(progress).to_contain_text("done: 150 / 150 steps")
    loss = page.locator('#loss-chart path[data-series="training loss"]')
    expect(loss).to_have_attribute("data-points", "30")  # every logged step, streamed live
    wait_for_points(page, "macro-F1", 6)
    expect(page.locator("#job-stats")).to_contain_text("macro-f1")
    expect(page.locator("#job-log")).to_contain_text("model saved to")
    report = page.frame_locator("#report")
    expect(report.locator("body")).to_contain_text("macro", timeout=30_000)
    with page.expect_download() as download:
        page.get_by_role("button", name="Download model (.tar.gz)").click()
    saved = tmp_path / "model.tar.gz"
    download.value.save_as(saved)
    assert download.value.suggested_filename == f"{job_id}.tar.gz" and gzip.open(saved).read(512)
    shots("job-succeeded")

    # -- try the model, with an out-of-scope threshold calibrated on the validation file (the softmax
    # score: the feature scores reject texts unlike the toy rows, such as the two-adjective one below)
    calibrate = subprocess.run([sys.executable, "-m", "textft", "calibrate", "--model",
                                str(svc.data_dir / "jobs" / job_id / "run"), "--data", str(toy_files["validation"]),
                                "--target-rejection", "0.3", "--method", "msp"], capture_output=True, text=True,
                               timeout=300)
    assert calibrate.returncode == 0, calibrate.stderr
    page.get_by_role("link", name="Try the model").click()
    expect(page.locator("#model-meta")).to_contain_text("out-of-scope threshold")
    page.get_by_label("Text", exact=True).fill("a superb film and the acting was excellent")
    page.get_by_label("Text", exact=True).press("Control+Enter")
    prediction = page.locator("#prediction .prediction")
    expect(prediction.locator(".label-name")).to_have_text(["pos"], timeout=60_000)
    expect(prediction.locator(".topk li")).to_have_count(2)
    expect(prediction.locator(".verdict")).to_contain_text("scope: its ")
    expect(prediction.locator(".long-text")).to_contain_text("tokens: read whole")
    page.get_by_label("Text", exact=True).fill(" ".join(["the movie was boring and the plot was poor"] * 12))
    page.get_by_role("button", name="Predict", exact=True).click()
    expect(prediction.locator(".long-text")).to_contain_text("over the model's 32: head truncation")
    page.get_by_label("Texts file").set_input_files(str(toy_files["test"]))
    page.get_by_role("button", name="Predict the file").click()
    expect(page.locator("#batch-results tbody tr")).to_have_count(80, timeout=60_000)
    expect(page.locator("#batch-status")).to_contain_text("80 texts:")
    shots("try-model")

    # -- a second job, cancelled from its page after a confirmation
    nav("New job").click()
    page.get_by_label("Training dataset").select_option(label=_option(page, "#dataset", "reviews.jsonl"))
    page.get_by_label("Preset").select_option("tiny")
    page.get_by_label("Backbone").fill(str(tiny_model_dir))
    page.get_by_label("Transfer mode").select_option("top_k")
    page.get_by_label("Other settings").fill("model.unfreeze_top_k=1\ndata.max_length=32\ntrain.epochs=500\n"
                                           "train.logging_steps=5")
    expect(page.locator("#plan")).to_contain_text("steps")
    page.get_by_role("button", name="Start job").click()
    page.wait_for_url(lambda url: "#/jobs/job_" in url and job_id not in url)
    expect(page.locator("#job-overrides")).to_contain_text("model.transfer=top_k")
    expect(page.locator("#job-progress")).to_contain_text("ETA", timeout=120_000)
    page.get_by_role("button", name="Cancel job").click()
    expect(page.locator("#cancel-dialog")).to_be_visible()
    shots("cancel-dialog")
    page.locator("#confirm-cancel").click()
    expect(page.locator("#job-state")).to_have_text("cancelled", timeout=120_000)
    expect(page.get_by_role("button", name="Cancel job")).to_be_hidden()

    # -- the jobs list and the models
    nav("Jobs").click()
    rows = page.locator("table.jobs tbody tr")
    expect(rows).to_have_count(2)
    first = page.locator(f"#job-row-{job_id}")
    expect(first.locator("[role=progressbar]")).to_have_attribute("aria-valuenow", "100")
    expect(first).to_contain_text("macro-f1")
    expect(rows.first.locator(".badge")).to_have_text("cancelled")
    shots("jobs")
    nav("Models").click()
    expect(page.locator("#model-list article")).to_have_count(1)
    shots("models")
    nav("Datasets").click()
    expect(page.locator("article.dataset")).to_have_count(2)
    shots("datasets")

    # -- sign out forgets the key
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('textft.key')") is None
    assert not foreign, f"the page requested other origins: {foreign[:5]}"
    # 4xx answers are part of the walk (a wrong key, refused uploads); script errors are not
    assert not [e for e in errors if not e.startswith("Failed to load resource")], errors
    context.close()
    print(f"web walk-through: {time.monotonic() - started:.0f} s, {len(shots.taken)} screenshots in {shots.folder}")


@needs_chromium
def test_the_web_page_reads_sentence_pairs(web_service, browser, tiny_model_dir, tmp_path):
    """A pair dataset chosen and previewed on the datasets page, and a pair model tried with two text
    boxes and a two-column file."""
    import csv

    import httpx
    from playwright.sync_api import expect

    from test_service import tiny_job

    expect.set_options(timeout=60_000)
    svc = web_service
    key = create_key(svc.data_dir, "web-pairs")
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    shots = Shots(page, tmp_path / "screenshots")
    print(f"screenshots: {shots.folder}")
    page.goto(svc.url + "/")
    page.get_by_label("API key").fill(key)
    page.get_by_label("API key").press("Enter")
    expect(page.locator("#who-name")).to_have_text("web-pairs")

    # -- the second text column is suggested from the header, refused when it repeats the first
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Datasets", exact=True).click()
    rename = lambda rows: [{"sentence1": r["text"], "sentence2": r["text_pair"], "label": r["label"]} for r in rows]
    train = write_jsonl(tmp_path / "paraphrase.jsonl", rename(pair_rows(400, 1)))
    page.locator("#file").set_input_files(str(train))
    expect(page.get_by_label("Text column", exact=True)).to_have_value("sentence1")
    expect(page.get_by_label("Second text (pairs)")).to_have_value("sentence2")
    assert page.locator("#text_pair_column option").all_inner_texts() == ["none: single texts", "sentence1",
                                                                           "sentence2", "label"]
    expect(page.locator("#peek-preview thead th.hl")).to_have_count(3)
    page.get_by_label("Second text (pairs)").select_option("sentence1")
    page.get_by_role("button", name="Upload and check").click()
    expect(page.locator("#text_pair_column-error")).to_contain_text("'sentence1' is also the text_column")
    shots("pairs-upload-422")
    page.get_by_label("Second text (pairs)").select_option("sentence2")
    page.get_by_role("button", name="Upload and check").click()
    card = page.locator("article.dataset", has_text="paraphrase.jsonl")
    expect(card).to_contain_text("400 rows · 2 labels")
    expect(card).to_contain_text("text pairs: sentence1 + sentence2")
    assert card.locator("table thead th").all_inner_texts() == ["text", "text_pair", "label"]
    expect(card.locator("table tbody tr")).to_have_count(5)
    shots("pairs-dataset")

    # -- a pair model (trained through the API: the job form is walked in the test above)
    http = httpx.Client(base_url=svc.url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    ds = next(d for d in http.get("/v1/datasets").json() if d["name"] == "paraphrase.jsonl")
    job = http.post("/v1/jobs", json={"dataset": ds["id"], "config": "tiny", "overrides": tiny_job(tiny_model_dir)})
    assert job.status_code == 201, job.text
    job_id = job.json()["id"]
    page.goto(f"{svc.url}/#/jobs/{job_id}")
    expect(page.locator("#job-state")).to_have_text("succeeded", timeout=300_000)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Models", exact=True).click()
    expect(page.locator("#model-list article").first).to_contain_text("reads text pairs")
    page.get_by_role("link", name="Try it").first.click()
    expect(page.get_by_role("heading", name="A pair of texts")).to_be_visible()
    expect(page.locator("#model-meta")).to_contain_text("reads pairs of texts (the second from column sentence2)")
    page.get_by_label("First text", exact=True).fill("a superb film")
    page.get_by_role("button", name="Predict", exact=True).click()
    expect(page.locator("#text_pair-error")).to_contain_text("type the second text too")
    # the answer is in the second text (conftest.pair_rows): the first one says the opposite
    page.get_by_label("Second text", exact=True).fill("the acting was awful and the plot terrible")
    page.get_by_label("Second text", exact=True).press("Control+Enter")
    expect(page.locator("#prediction .label-name")).to_have_text(["neg"], timeout=60_000)
    expect(page.locator("#prediction .long-text")).to_contain_text("tokens: read whole")

    rows = pair_rows(20, 7)
    with open(tmp_path / "pairs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["id", "question", "answer"])
        writer.writeheader()
        writer.writerows({"id": i, "question": r["text"], "answer": r["text_pair"]} for i, r in enumerate(rows))
    page.get_by_label("Pairs file").set_input_files(str(tmp_path / "pairs.csv"))
    expect(page.locator("#batch-status")).to_contain_text("20 pairs in pairs.csv")
    page.get_by_label("First text column").select_option("question")
    page.get_by_label("Second text column").select_option("answer")
    page.get_by_role("button", name="Predict the file").click()
    results = page.locator("#batch-results tbody tr")
    expect(results).to_have_count(20, timeout=60_000)
    expect(page.locator("#batch-status")).to_contain_text("20 pairs:")
    assert page.locator("#batch-results thead th").all_inner_texts()[:3] == ["text", "second text", "label"]
    labels = results.locator('td[data-label="label"]').all_inner_texts()
    assert sum(got == r["label"] for got, r in zip(labels, rows)) >= 17
    assert results.first.locator('td[data-label="second text"]').inner_text() == rows[0]["text_pair"]
    shots("pairs-try-model")
    assert not errors, errors
    context.close()


def _option(page, select: str, contains: str) -> str:
    """The text of the option of ``select`` that names ``contains``, once the form has loaded it."""
    from playwright.sync_api import expect

    option = page.locator(f"{select} option", has_text=contains)
    expect(option).to_have_count(1)
    return option.inner_text()


def test_the_page_and_its_files_are_served_without_a_key_and_without_outside_assets(web_service):
    import httpx

    page = httpx.get(web_service.url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "http://" not in page.text and "https://" not in page.text
    static = Path(__file__).resolve().parent.parent / "textft" / "service" / "static"
    names = sorted(str(p.relative_to(static)) for p in static.rglob("*") if p.is_file())
    assert {"js/main.js", "app.css", "favicon.svg"} <= set(names) and len([n for n in names if n.endswith(".js")]) > 10
    for name in names:  # every module of the script, the style sheet and the icon
        resp = httpx.get(f"{web_service.url}/static/{name}")
        assert resp.status_code == 200 and resp.headers["x-content-type-options"] == "nosniff", name
        assert "https://" not in resp.text and "http://" not in resp.text.replace("http://www.w3.org/", ""), name
        if name.endswith(".js"):  # a module script runs only with a JavaScript type, nosniff holds browsers to it
            assert resp.headers["content-type"] == "text/javascript; charset=utf-8", name
            assert resp.headers["cache-control"] == "no-cache", name
    assert '<script type="module" src="/static/js/main.js"></script>' in page.text
    assert httpx.get(web_service.url + "/static/../app.py").status_code == 404
    assert httpx.get(web_service.url + "/v1/jobs").status_code == 401  # the API still wants its key
    spec = httpx.get(web_service.url + "/openapi.json").json()
    assert "/" not in spec["paths"]
    assert json.loads(httpx.get(web_service.url + "/health").text)["status"] == "ok"


@needs_chromium
def test_the_api_docs_render_offline_and_try_a_request_with_a_key(web_service, browser, tmp_path):
    """/docs in a browser that may reach nothing but the service: the operations of the OpenAPI 3.1
    schema are listed, Authorize takes a key, and "Try it out" calls the API with it."""
    key = create_key(web_service.data_dir, "docs-reader")
    page = browser.new_page(viewport=DESKTOP)
    outside = []
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(web_service.url)
               else (outside.append(route.request.url), route.abort()))
    page.goto(web_service.url + "/docs")
    page.wait_for_selector('.opblock-summary-path[data-path="/v1/me"]', timeout=30_000)
    assert "Unable to render" not in page.content()
    assert page.locator(".opblock").count() >= 20
    page.locator("button.authorize").first.click()
    page.locator(".modal-ux input").fill(key)
    page.locator(".modal-ux button.authorize").click()
    page.locator(".modal-ux button.btn-done").click()
    page.locator('.opblock-summary-path[data-path="/v1/me"]').click()
    page.locator("button.try-out__btn").first.click()
    page.locator("button.execute").first.click()
    page.wait_for_selector(".live-responses-table tbody .response-col_status", timeout=30_000)
    status = page.locator(".live-responses-table tbody .response-col_status").first.inner_text().strip()
    body = page.locator(".live-responses-table .microlight").first.inner_text()
    page.screenshot(path=str(tmp_path / "docs.png"), full_page=False)
    assert status == "200" and '"docs-reader"' in body, (status, body)
    assert outside == []  # nothing fetched from anywhere but the service
    page.close()
