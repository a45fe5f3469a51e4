"""Every page textft writes shows what it quotes as written: a label name, an evaluated text (and its pair),
a target column or a run name holding markup, an ampersand or quotes is escaped in report.html (each
task's sections), comparison.html, report.md and the model card, and never becomes part of the page."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from textft.compare import compare
from textft.config import load_config, save_config
from textft.model_card import local_paths, model_card, without_local_paths
from textft.report import render_html, render_markdown, write_run_report
from textft.report_data import build_report
from textft.report_parts import md_code
from textft.run_dir import write_predictions, write_reports
from textft.tasks.multi_label import MultiLabel
from textft.tasks.regression import Regression
from textft.tasks.single_label import SingleLabel

LABELS = ["<script>alert(1)</script>", "R&D", "\"quoted\" 'single'", "a|b `tick` *star*"]
TEXT = "<b>bold</b> & \"quotes\" 'apostrophes' <img src=x onerror=alert(2)> &amp; done"
PAIR = "</td></tr></table><script>alert(3)</script>"
DATA = "train <i>1 & 'q'.jsonl"
"""The data file's name: markup, an ampersand and a quote (a file name holds no slash)."""


def write_task_run(out: Path, task, labels, logits, n: int = 60, overrides: list[str] = ()) -> Path:
    """A finished run directory of ``task`` (its reports and predictions) whose every text is hostile."""
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config(None, ["data.train_file=train.jsonl", "model.name_or_path=builtin:tiny-bert",
                             f"output.dir={out}", *overrides])
    save_config(cfg, out / "textft_config.yaml")
    texts, pairs = [f"{TEXT} {i}" for i in range(n)], [PAIR] * n
    reports, predictions = {}, {}
    for split in ("validation", "test"):
        reports[split] = {**task.evaluate(logits, labels), "num_examples": n}
        predictions[split] = task.prediction_rows(texts, labels, logits, pairs)
    log = [{"step": 10, "epoch": 1.0, "loss": 0.5, "lr": 1e-4, "samples_per_s": 50.0},
           {"step": 10, "epoch": 1.0, "eval": reports["validation"]}]
    (out / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    # the data source is a local path holding markup: published files leave it out in every form they write
    write_reports(out, reports, task, {"label_names": task.label_names, "data_source": str(out / DATA),
                                       "optimizer_steps": 10, "train_seconds": 3.0, "config": cfg.to_dict()},
                  title=f"run {TEXT}")
    write_predictions(out / "predictions", predictions)
    (out / "config.json").write_text(json.dumps({"id2label": dict(enumerate(task.label_names)),
                                                 "problem_type": task.problem_type}))
    write_run_report(out)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root, rng, n = tmp_path_factory.mktemp("hostile"), np.random.default_rng(0), 60
    k = len(LABELS)
    y = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k)) + 3 * np.eye(k)[np.where(rng.random(n) < 0.6, y, (y + 1) % k)]
    multi = (rng.random((n, k)) < 0.4).astype(float)
    values = rng.normal(3, 1, n)
    return {"single_label": write_task_run(root / "run <i>1 & 'one'", SingleLabel(LABELS), y, logits),
            "single_label_2": write_task_run(root / 'run "2"', SingleLabel(LABELS), y, logits[:, ::-1]),
            "multi_label": write_task_run(root / "multi", MultiLabel(LABELS), multi, logits + 2 * multi - 1,
                                          overrides=["data.label_column=labels"]),
            "regression": write_task_run(root / "regression", Regression([TEXT]), values,
                                         (values + rng.normal(0, 0.5, n))[:, None],
                                         overrides=[f"data.label_column={TEXT}"])}


class Elements(HTMLParser):
    """The elements and the text of a page, as a browser reads them."""

    def __init__(self, page: str):
        super().__init__(convert_charrefs=True)
        self.tags, self.text = [], []
        self.feed(page)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def assert_escaped(page: str, quoted: list[str], foreign=("script", "b", "i")):
    """No element or attribute of the page comes from a quoted string (``foreign``: the elements the quoted
    strings hold, which the page itself never writes), and each one reads as written."""
    doc = Elements(page)
    assert not [t for t, _ in doc.tags if t in foreign], "a quoted string became markup"
    assert not [a for _, attrs in doc.tags for a in attrs if a.startswith("on")]
    assert [attrs for t, attrs in doc.tags if t == "img"] == [attrs for t, attrs in doc.tags if t == "img"
                                                              and attrs["src"].startswith("data:image/png;base64,")]
    text = "".join(doc.text)
    for s in quoted:
        assert s in text, f"{s!r} is not shown as written"


@pytest.mark.parametrize("task", ["single_label", "multi_label", "regression"])
def test_report_html_escapes_labels_and_texts(runs, task):
    page = (runs[task] / "report.html").read_text()  # as write_run_report wrote it, figures and all
    assert_escaped(page, [runs[task].name, TEXT, PAIR] + (LABELS if task != "regression" else []))
    if task == "regression":
        assert f"Values in the units of '{TEXT}'" in "".join(Elements(page).text)


def test_every_section_template_autoescapes_even_without_figures(runs):
    """The page template and each task's section template escape on their own (figures aside)."""
    for task in ("single_label", "multi_label", "regression"):
        report = build_report(runs[task])
        assert_escaped(render_html(report, {}), [TEXT] + (LABELS if task != "regression" else []))


def test_comparison_html_escapes_run_names(runs, tmp_path):
    _, table, written, _ = compare([str(runs["single_label"]), str(runs["single_label_2"])], output=str(tmp_path / "cmp"))
    shown = markdown_elements(table)  # comparison.md, as the terminal prints it and a Markdown viewer shows it
    assert {t for t, _ in shown.tags} <= {"table", "thead", "tbody", "tr", "th", "td", "p", "strong"}, shown.tags
    assert runs["single_label"].name in "".join(shown.text) and runs["single_label_2"].name in "".join(shown.text)
    page = (tmp_path / "cmp" / "comparison.html").read_text()
    assert tmp_path / "cmp" / "comparison.html" in written
    # the best value is bold: <b> is the page's own here, <i> comes only from the run name
    assert_escaped(page, [runs["single_label"].name, runs["single_label_2"].name], foreign=("script", "i"))
    links = [attrs["href"] for tag, attrs in Elements(page).tags if tag == "a"]
    assert [(tmp_path / "cmp" / link).resolve() for link in links] == [
        runs[k].resolve() / "report.html" for k in ("single_label", "single_label_2")]


def markdown_elements(markdown: str) -> Elements:
    """The page a Markdown file becomes on the Hub or GitHub (CommonMark with tables)."""
    from markdown_it import MarkdownIt

    return Elements(MarkdownIt("commonmark", {"html": True}).enable("table").render(markdown))


@pytest.mark.parametrize("task", ["single_label", "multi_label", "regression"])
def test_report_md_and_model_card_show_labels_and_texts_as_written(runs, task):
    report = build_report(runs[task])
    card = str(model_card(runs[task], include_examples=True))
    for markdown in (render_markdown(report), card.split("\n---\n", 1)[1]):
        page = markdown_elements(markdown)
        assert not [t for t, _ in page.tags if t in ("script", "b", "img", "em", "strong", "a")], page.tags
        text = "".join(page.text)
        for s in [TEXT] + (LABELS if task != "regression" else []):
            assert s in text, f"{s!r} is not shown as written"
    if task != "regression":  # the card's summary names the labels as code
        assert "It predicts" in card or "It tags" in card
        assert "`` a|b `tick` *star* ``" not in card and "``a|b `tick` *star*``" in card


@pytest.mark.parametrize("task", ["single_label", "multi_label"])
def test_published_files_name_no_local_path_however_a_report_escapes_it(runs, task):
    """The run's directory and its data file hold markup and quotes: report.md escapes them for Markdown,
    report.html for HTML, and the published copies still name neither directory."""
    run, root = runs[task], str(runs[task].parent)
    texts = {name: (run / name).read_text() for name in ("report.md", "report.html")}
    assert all(root in text for text in texts.values())  # the local files keep them
    for name, text in texts.items():
        assert root not in without_local_paths(text, local_paths(run)), name
    card = str(model_card(run, include_examples=True))
    assert root not in card
    assert md_code(DATA) in card  # the data file by its name, as code


@pytest.mark.parametrize("task", ["single_label", "multi_label", "regression"])
def test_eval_report_md_shows_labels_splits_and_title_as_written(runs, task):
    """eval_report.md (what train and evaluate print, and what a Markdown viewer shows): a label holding
    a table bar, code or emphasis stays one cell, read as written."""
    markdown = (runs[task] / "eval_report.md").read_text()
    page = markdown_elements(markdown)
    assert not [t for t, _ in page.tags if t in ("script", "b", "i", "img", "em", "strong", "a", "code")], page.tags
    text = "".join(page.text)
    for s in [f"run {TEXT}"] + (LABELS if task != "regression" else []):
        assert s in text, f"{s!r} is not shown as written"


def test_sweep_summary_md_shows_a_searched_value_as_written():
    """summary.md quotes the searched values (a model name or path can hold a bar or markup) as written."""
    from types import SimpleNamespace

    from textft.sweep import markdown_summary

    value = "org/a|b <i>x</i> *y*"
    rows = [{"trial": 0, "state": "complete", "accuracy": 0.5, "model.name_or_path": value, "test_accuracy": None,
             "seconds": 1.0, "best": True}]
    markdown = markdown_summary(rows, SimpleNamespace(metric="accuracy"))
    page = markdown_elements(markdown)
    assert [t for t, _ in page.tags if t not in ("table", "thead", "tbody", "tr", "th", "td")] == ["strong"]
    assert value in "".join(page.text)
