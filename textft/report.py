"""Run reports a person wants to read: ``report.md`` and one self-contained ``report.html`` (plots
embedded), next to ``report.json``. ``write_run_report(RUN_DIR)`` (re-)writes all three from what a
finished run directory holds; ``textft report RUN_DIR`` calls it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

from textft import task_reports
from textft.files import replace_file
from textft.plots import plot_learning_curves
from textft.report_data import DEFAULT_MISTAKES, build_report
from textft.report_parts import INTERVAL_NOTE, METRIC_NAMES, fmt, md_cell, shown
from textft.tasks import DEFAULT_TASK
from textft.templating import render

WITHHELD = ("The examples behind the numbers (most confident mistakes, largest errors) quote evaluation texts,"
            " so the published report leaves them out (textft push --include-examples keeps them).")
EXAMPLE_KEYS = ("most_confident_mistakes", "most_wrong", "largest_errors")
"""Report entries that quote evaluation texts, per task."""


# --- text ------------------------------------------------------------------------------------


def _setting(v) -> str:
    return f"{v:g}" if isinstance(v, float) else fmt(v)


def duration(seconds) -> str:
    if not isinstance(seconds, (int, float)):
        return "-"
    if seconds < 90:
        return f"{seconds:.1f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def run_facts(report: dict) -> list[tuple[str, str]]:
    """(name, value) lines describing the run, shared by the Markdown and HTML reports."""
    facts = []
    if report.get("model"):
        transfer = report.get("transfer") or "-"
        if report.get("unfreeze_top_k") is not None:
            transfer += f" (top {report['unfreeze_top_k']} layers)"
        if lora := report.get("lora"):
            targets = lora["target_modules"] if isinstance(lora["target_modules"], str) else \
                ",".join(lora["target_modules"])
            transfer += f" (rank {lora['rank']}, alpha {lora['alpha']:g} on {targets})"
        facts += [("model", report["model"]), ("transfer", transfer)]
    facts.append(("data", f"{report.get('data_source') or '-'} ({report['num_labels']} labels)"))
    p = report.get("parameters") or {}
    if p.get("total"):
        facts.append(("trainable parameters", f"{p['trainable']:,} of {p['total']:,}"
                                              f" ({100 * p['trainable'] / p['total']:.1f}%)"))
    t, tp = report["timings"], report["throughput"]
    if t.get("train_seconds") is not None:
        per = f", {t['seconds_per_step']:.3f} s/step" if t.get("seconds_per_step") else ""
        exact = f"{t['train_seconds']:.1f} s, " if t["train_seconds"] >= 90 else ""
        facts.append(("training time", f"{duration(t['train_seconds'])} ({exact}{t.get('optimizer_steps')}"
                                       f" optimizer steps{per})"))
    if tp.get("samples_per_s"):
        tokens = f", {tp['tokens_per_s']:,.0f} tokens/s" if tp.get("tokens_per_s") else ""
        facts.append(("throughput", f"{tp['samples_per_s']:,.1f} samples/s{tokens} (training)"))
    if report.get("precision"):
        facts.append(("precision / processes", f"{report['precision']} / {report.get('num_processes') or 1}"))
    if report.get("best"):
        b = report["best"]
        name = METRIC_NAMES.get(b.get("metric"), b.get("metric"))
        epoch = f" (epoch {b['epoch']:.2f})" if isinstance(b.get("epoch"), (int, float)) else ""
        facts.append(("best validation", f"{name} {fmt(b.get('value'))} at step {b.get('step')}{epoch}"))
    if report.get("stop_reason"):
        facts.append(("stopped", str(report["stop_reason"])))
    return facts


def headline_names(report: dict) -> list[str]:
    return [METRIC_NAMES[k] for k in report["headline"]]


def render_markdown(report: dict) -> str:
    sections = task_reports.sections(report["task"])
    keys = report["headline"]
    lines = [f"# {md_cell(report['title'])}", "", "| split | examples | " + " | ".join(headline_names(report)) + " |",
             "|---|---:|" + "---:|" * len(keys)]
    for split, m in report["splits"].items():
        lines.append(f"| {md_cell(split)} | {m.get('num_examples')} | " + " | ".join(shown(m, k) for k in keys) + " |")
    if any(m.get("intervals") for m in report["splits"].values()):
        lines += ["", INTERVAL_NOTE]
    lines += ["", "## Run", ""] + [f"- {k}: {md_cell(v)}" for k, v in run_facts(report)]
    for w in report["warnings"]:
        lines.append(f"- warning: {md_cell(w)}")
    evals, curves = report["history"]["eval"], eval_columns(report)
    if evals:
        lines += ["", "## Validation during training", "", "| step | epoch | " + " | ".join(
            METRIC_NAMES[k] for k in curves) + " |", "|---:|---:|" + "---:|" * len(curves)]
        lines += [f"| {r['step']} | {fmt(r['epoch'], 2)} | " + " | ".join(fmt(r.get(k)) for k in curves) + " |"
                  for r in evals]
    for split, m in report["splits"].items():
        lines += ["", f"## {md_cell(split)}", *sections.markdown_split(split, m)]
        if report.get("examples_withheld"):
            lines += ["", WITHHELD]
    if report.get("out_of_scope"):
        lines += sections.markdown_out_of_scope(report["out_of_scope"])
    if report.get("recipe"):
        lines += ["", "## Settings chosen automatically", "", "| setting | value | why |", "|---|---:|---|"]
        lines += [f"| {r['key']} | {_setting(r['value'])} | {md_cell(r['why'])} |" for r in report["recipe"]]
    if report.get("config"):
        lines += ["", "## Configuration", "", "```yaml", yaml.safe_dump(report["config"], sort_keys=False).rstrip(),
                  "```"]
    return "\n".join(lines) + "\n"


def eval_columns(report: dict) -> list[str]:
    """The validation metrics listed for each evaluation during training: the loss, then the curves."""
    return ["loss", *report["curves"]]


# --- HTML ------------------------------------------------------------------------------------

HTML_TEMPLATE = "report.html.j2"
"""The page's template (``textft/templates``); each split's section comes from its task's template."""


def _anchor(split: str) -> str:
    return "split-" + "".join(c if c.isalnum() else "-" for c in split)


def _summary(report: dict) -> dict:
    """The headline cards of the primary split, and the headline table of every split."""
    splits, primary, keys = report["splits"], report.get("primary_split"), report["headline"]
    cards = []
    if primary:
        m = splits[primary]
        cards = [{"name": f"{primary} {METRIC_NAMES[k]}", "value": fmt(m.get(k)), "interval": _card_interval(m, k)}
                 for k in keys if m.get(k) is not None]
    return {"cards": cards, "summary": {
        "header": ["split", "examples", *headline_names(report)], "numeric": range(1, len(keys) + 2),
        "rows": [[s, m.get("num_examples"), *(shown(m, k) for k in keys)] for s, m in splits.items()],
        "note": INTERVAL_NOTE if any(m.get("intervals") for m in splits.values()) else None}}


def _card_interval(m: dict, key: str) -> str | None:
    """A headline card's 95% interval, '[low, high]', when the split has one."""
    return shown(m, key).split(" ", 1)[1] if (m.get("intervals") or {}).get(key) else None


def _evals(report: dict) -> dict:
    """The validation metrics after each evaluation during training."""
    columns = eval_columns(report)
    header = ["step", "epoch", *(f"validation {METRIC_NAMES[k]}" if k == "loss" else METRIC_NAMES[k] for k in columns)]
    return {"header": header, "numeric": range(len(header)),
            "rows": [[r["step"], fmt(r["epoch"], 2), *(fmt(r.get(k)) for k in columns)] for r in report["history"]["eval"]]}


def render_html(report: dict, figures: dict[str, bytes]) -> str:
    """One self-contained page: summary, training curves, one section per split, the settings."""
    sections = task_reports.sections(report["task"])
    splits = [{"name": split, "anchor": _anchor(split), "examples": m.get("num_examples"),
               "predictions": "predictions_file" in m, "section": sections.html_split(split, m, figures)}
              for split, m in report["splits"].items()]
    page = render(HTML_TEMPLATE, title=report["title"], run=report["run"], **_summary(report), facts=run_facts(report),
                  warnings=report["warnings"], curves=figures.get("learning_curves"), evals=_evals(report),
                  splits=splits, withheld=WITHHELD if report.get("examples_withheld") else None,
                  out_of_scope=sections.html_out_of_scope(report["out_of_scope"], figures.get("out_of_scope"))
                  if report.get("out_of_scope") else None,
                  recipe=[[r["key"], _setting(r["value"]), r["why"]] for r in report.get("recipe") or []],
                  config=yaml.safe_dump(report["config"], sort_keys=False) if report.get("config") else None)
    return str(page)


# --- writing ---------------------------------------------------------------------------------


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def without_examples(report: dict) -> dict:
    """The report without the evaluation texts it quotes (mistakes and largest errors), for
    publishing: the evaluation data's licence may not allow redistributing them."""
    splits = {split: {k: v for k, v in m.items() if k not in EXAMPLE_KEYS}
              for split, m in (report.get("splits") or {}).items()}
    return {**report, "splits": splits, "examples_withheld": True}


def render_figures(report: dict) -> dict[str, bytes]:
    """PNG images by name: the learning curves, then the figures of the task's sections per split."""
    figures = {}
    if (curves := plot_learning_curves(report)) is not None:
        figures["learning_curves"] = curves
    sections = task_reports.sections(report.get("task") or DEFAULT_TASK)
    for split, m in report["splits"].items():
        figures.update(sections.figures(split, m))
    if report.get("out_of_scope"):
        figures["out_of_scope"] = sections.out_of_scope_figure(report["out_of_scope"])
    return figures


def render_run_report(report: dict) -> dict[str, str]:
    """``report.json``, ``report.md`` and ``report.html`` of a built report, by file name."""
    return {"report.json": json.dumps(_json_safe(report), indent=2, ensure_ascii=False) + "\n",
            "report.md": render_markdown(report),
            "report.html": render_html(report, render_figures(report))}


def write_run_report(run_dir: Path, mistakes: int = DEFAULT_MISTAKES) -> None:
    """Write ``report.json``, ``report.md`` and ``report.html`` into a finished run directory.

    All three are rendered in memory first and each replaces its old version in one rename, so a
    failure leaves the previous report whole.
    """
    run_dir = Path(run_dir)
    for name, text in render_run_report(build_report(run_dir, mistakes)).items():
        replace_file(run_dir / name, text)
