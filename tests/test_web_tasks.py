"""The web page with a multi-label and a regression model in real headless Chromium: the jobs list,
job page and models list show each task's own metrics with their direction, and the try page shows
the labels above their thresholds (or none of them) and the predicted value, for one text and for a
file, and in the downloaded CSV. The models are ``task_jobs`` (conftest.py), trained once for this module
and test_service_tasks (conftest.SAME_WORKER runs both in one worker)."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest

from test_service_tasks import http, service  # noqa: F401  (fixtures: the shared service and its key)
from test_web import DESKTOP, Shots, browser, needs_chromium, wait_for_points  # noqa: F401


@pytest.fixture
def page(service, http, browser, tmp_path):  # noqa: F811  (the fixtures imported above)
    from playwright.sync_api import expect

    expect.set_options(timeout=60_000)
    context = browser.new_context(viewport=DESKTOP, accept_downloads=True)
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
    page.goto(service.url + "/")
    page.get_by_label("API key").fill(http.headers["Authorization"].removeprefix("Bearer "))
    page.get_by_label("API key").press("Enter")
    expect(page.get_by_role("heading", name="Jobs")).to_be_visible()
    yield page
    assert not [e for e in page.errors if not e.startswith("Failed to load resource")], page.errors
    context.close()


def nav(page, name: str):
    return page.get_by_role("navigation", name="Main").get_by_role("link", name=name, exact=True)


def metric_headers(table) -> list[str]:
    return table.locator("thead th").all_inner_texts()


def try_page(page, job_id: str, tmp_path) -> Shots:
    """The model's try page, and screenshots of it as the test goes."""
    shots = Shots(page, tmp_path / "screenshots")
    print(f"screenshots: {shots.folder}")
    page.goto(page.url.rsplit("#", 1)[0] + f"#/models/{job_id}")
    return shots


def predict_file(page, path) -> tuple:
    """Predict a file on the try page: (the result rows shown, the rows of the downloaded CSV)."""
    from playwright.sync_api import expect

    page.get_by_label("Texts file").set_input_files(str(path))
    page.get_by_role("button", name="Predict the file").click()
    results = page.locator("#batch-results tbody tr")
    expect(results).to_have_count(80, timeout=60_000)
    expect(page.locator("#batch-status")).to_contain_text("80 texts:")
    with page.expect_download() as download:
        page.get_by_role("button", name="Download results (CSV)").click()
    return results, list(csv.DictReader(io.StringIO(download.value.path().read_text())))


@needs_chromium
def test_jobs_and_models_show_each_tasks_own_metrics(page, http, task_jobs, tmp_path):  # noqa: F811
    from playwright.sync_api import expect

    shots = Shots(page, tmp_path / "screenshots")
    print(f"screenshots: {shots.folder}")
    multi, value = task_jobs["multi_label"]["id"], task_jobs["regression"]["id"]
    row = page.locator(f"#job-row-{value}")
    expect(row.locator('td[data-label="Best"]')).to_contain_text("rmse")
    expect(row.locator('td[data-label="Best"]')).to_contain_text("(lower is better, step")
    expect(page.locator(f"#job-row-{multi} td[data-label='Best']")).to_contain_text("macro-f1")
    expect(page.locator(f"#job-row-{multi} td[data-label='Best']")).to_contain_text("(higher is better, step")
    shots("task-jobs")

    page.locator(f"#job-row-{value} a").click()
    expect(page.locator("#job-state")).to_have_text("succeeded")
    table = page.locator("#job-metrics table")
    expect(table.locator("tbody tr")).to_have_count(2)
    assert metric_headers(table) == ["split", "examples", "MAE ↓", "RMSE ↓", "R² ↑", "Pearson ↑", "Spearman ↑", "loss ↓"]
    rmse = task_jobs["regression"]["metrics"]["splits"]["test"]["rmse"]
    test_row = table.locator("tbody tr", has_text="test")
    value_text, interval_text = test_row.locator('td[data-label="RMSE ↓"]').inner_text().split(" ", 1)
    assert float(value_text) == pytest.approx(rmse, abs=1e-3)
    low, high = task_jobs["regression"]["metrics"]["splits"]["test"]["intervals"]["rmse"]
    assert interval_text.startswith("[") and float(interval_text[1:].split(",")[0]) == pytest.approx(low, abs=1e-2)
    expect(page.locator("#job-metrics")).to_contain_text("↓ lower is better")
    expect(page.locator("#job-metrics")).to_contain_text("[low, high]: 95% bootstrap interval")
    expect(page.locator("#metric-title")).to_contain_text("lower is better")
    wait_for_points(page, "RMSE", 6)
    assert page.locator('#metric-chart path[data-series="accuracy"]').count() == 0
    shots("regression-job")

    page.goto(page.url.rsplit("#", 1)[0] + f"#/jobs/{multi}")
    expect(page.locator("#job-metrics table tbody tr")).to_have_count(2)
    assert metric_headers(page.locator("#job-metrics table"))[2:] == ["macro-F1 ↑", "micro-F1 ↑", "samples-F1 ↑",
                                                                      "subset accuracy ↑", "Hamming loss ↓", "loss ↓"]
    wait_for_points(page, "micro-F1", 6)

    nav(page, "Models").click()
    cards = page.locator("#model-list article")
    expect(cards).to_have_count(len(http.get("/v1/models").json()))  # the shared service has more models
    regression_card = cards.filter(has_text=value)
    expect(regression_card).to_contain_text("predicts score (a number)")
    assert "RMSE ↓" in metric_headers(regression_card.locator("table"))
    expect(cards.filter(has_text=multi)).to_contain_text("3 labels, any number per text")
    assert "–" not in regression_card.locator("table").inner_text()  # every number of the task is there
    shots("task-models")


@needs_chromium
def test_the_try_page_shows_the_labels_above_threshold_and_none(page, task_jobs, task_files, tmp_path):
    from playwright.sync_api import expect

    shots = try_page(page, task_jobs["multi_label"]["id"], tmp_path)
    expect(page.locator("#model-meta")).to_contain_text("3 labels, any number per text: acting, ending, music")
    expect(page.locator("#model-meta")).to_contain_text("thresholds chosen on validation")
    expect(page.locator("#model-metrics table")).to_be_visible()
    page.get_by_label("Text", exact=True).fill("the acting and the music")
    page.get_by_role("button", name="Predict", exact=True).click()
    prediction = page.locator("#prediction .prediction")
    chosen = prediction.locator("ol.chosen li")
    expect(chosen.first).to_be_visible()
    assert {"acting", "music"} <= set(chosen.locator(".topk-label").all_inner_texts())
    assert all(t.endswith("%") for t in chosen.locator(".topk-score").all_inner_texts())
    expect(chosen.first.locator(".bar-fill")).to_have_attribute("style", re.compile(r"width: [1-9]"))
    expect(prediction.locator(".threshold")).to_contain_text("reaches its threshold")
    expect(prediction.locator("ol.ranked li")).to_have_count(3)  # all 3 ranked, whatever the thresholds
    shots("multi-label-try")
    page.get_by_label("Text", exact=True).fill("the film was really a story")
    page.get_by_role("button", name="Predict", exact=True).click()
    expect(prediction.locator(".answer")).to_have_text("none of the labels")
    expect(prediction.locator("ol.chosen")).to_have_count(0)
    shots("multi-label-none")

    results, rows = predict_file(page, task_files["multi_label"]["test"])
    assert page.locator("#batch-results thead th").all_inner_texts()[:2] == ["text", "labels"]
    truth = [json.loads(line)["labels"] for line in task_files["multi_label"]["test"].read_text().splitlines()]
    shown = results.locator('td[data-label="labels"]').all_inner_texts()
    exact = sum(s == ("none" if not t else ", ".join(sorted(t))) for s, t in
                zip((", ".join(sorted(x.split(", "))) if x != "none" else x for x in shown), truth))
    assert exact >= 40, list(zip(shown, truth))[:10]
    expect(page.locator("#batch-status")).to_contain_text("none ")
    assert list(rows[0]) == ["text", "labels", "scores", "tokens"] and len(rows) == 80
    assert all(len(r["labels"].split(";")) == len(r["scores"].split(";")) for r in rows if r["labels"])
    assert any(r["labels"] == "" for r in rows) and any(";" in r["labels"] for r in rows)
    shots("multi-label-file")


@needs_chromium
def test_the_try_page_shows_the_predicted_value(page, task_jobs, task_files, tmp_path):
    from playwright.sync_api import expect

    shots = try_page(page, task_jobs["regression"]["id"], tmp_path)
    expect(page.locator("#model-meta")).to_contain_text("predicts score (a number)")
    expect(page.get_by_label("Labels shown")).to_be_hidden()  # a regression model ranks nothing
    page.get_by_label("Text", exact=True).fill("a great and superb film")
    page.get_by_role("button", name="Predict", exact=True).click()
    answer = page.locator("#prediction .prediction .value")
    expect(answer).to_be_visible()
    high = float(answer.inner_text())
    expect(page.locator("#prediction .prediction")).to_contain_text("predicted score")
    shots("regression-try")
    page.get_by_label("Text", exact=True).fill("the film was really a story")
    page.get_by_role("button", name="Predict", exact=True).click()
    expect(answer).not_to_have_text(str(high))
    assert float(answer.inner_text()) < high

    results, rows = predict_file(page, task_files["regression"]["test"])
    assert page.locator("#batch-results thead th").all_inner_texts()[:2] == ["text", "predicted score"]
    truth = [json.loads(line)["score"] for line in task_files["regression"]["test"].read_text().splitlines()]
    got = [float(v) for v in results.locator('td[data-label="predicted score"]').all_inner_texts()]
    assert sum(abs(g - t) for g, t in zip(got, truth)) / len(got) < 1.5
    expect(page.locator("#batch-status")).to_contain_text("80 texts: predicted score from")
    assert list(rows[0]) == ["text", "value", "tokens"] and len(rows) == 80
    assert [float(r["value"]) for r in rows] == pytest.approx(got, abs=1e-3)
    shots("regression-file")


@needs_chromium
@pytest.mark.parametrize("held,first", [("/v1/tasks", "#/jobs"), ("/v1/presets", "#/new")])
def test_a_view_left_while_it_loads_is_not_drawn_into_the_next(service, http, browser, held, first):  # noqa: F811
    """An answer is held back until the user has moved on from the first view (the tasks every view waits
    for, or the presets of the new-job form): only the second view is drawn, and the first leaves no error
    behind (it once drew into the second's page: a toast every 5 s, or "Something went wrong" over it)."""
    from playwright.sync_api import expect

    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    errors, routes = [], []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.add_init_script(f"sessionStorage.setItem('textft.key', {json.dumps(http.headers['Authorization'][7:])});"
                         """window.toasts = [];
                         document.addEventListener("DOMContentLoaded", () => {
                           const t = document.getElementById("toast");
                           new MutationObserver(() => { if (t.classList.contains("error")) toasts.push(t.textContent); })
                             .observe(t, { attributes: true, childList: true, characterData: true, subtree: true });
                         });""")
    page.route(f"**{held}", lambda route: routes.append(route))
    page.goto(f"{service.url}/{first}")
    while not routes:
        page.wait_for_timeout(50)
    page.evaluate("location.hash = '#/datasets'")
    page.wait_for_timeout(500)  # drawn by now, unless it waits for the same answer
    for route in routes:
        route.continue_()
    page.wait_for_timeout(1500)  # the first view's answer has arrived
    expect(page.get_by_role("heading", name="Upload a dataset")).to_be_visible()
    assert page.locator("#main h1").all_inner_texts() == ["Datasets"]
    assert page.evaluate("toasts") == [] and errors == []
    context.close()
