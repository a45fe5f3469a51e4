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
from textft.plots import img_tag, plot_learning_curves
from textft.report_data import DEFAULT_MISTAKES, build_report
from textft.report_parts import METRIC_NAMES, escape, fmt, html_table, md_cell
from textft.tasks import DEFAULT_TASK

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
    lines = [f"# {report['title']}", "", "| split | examples | " + " | ".join(headline_names(report)) + " |",
             "|---|---:|" + "---:|" * len(keys)]
    for split, m in report["splits"].items():
        lines.append(f"| {split} | {m.get('num_examples')} | " + " | ".join(fmt(m.get(k)) for k in keys) + " |")
    lines += ["", "## Run", ""] + [f"- {k}: {v}" for k, v in run_facts(report)]
    for w in report["warnings"]:
        lines.append(f"- warning: {w}")
    evals, curves = report["history"]["eval"], eval_columns(report)
    if evals:
        lines += ["", "## Validation during training", "", "| step | epoch | " + " | ".join(
            METRIC_NAMES[k] for k in curves) + " |", "|---:|---:|" + "---:|" * len(curves)]
        lines += [f"| {r['step']} | {fmt(r['epoch'], 2)} | " + " | ".join(fmt(r.get(k)) for k in curves) + " |"
                  for r in evals]
    for split, m in report["splits"].items():
        lines += ["", f"## {split}", *sections.markdown_split(split, m)]
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

CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,"DejaVu Sans",Helvetica,Arial,sans-serif;color:#1d2330;
 margin:0;background:#f4f5f7;line-height:1.45}
main{max-width:1260px;margin:0 auto;padding:24px 32px 64px;background:#fff;min-height:100vh}
h1{font-size:26px;margin:8px 0 4px}h2{font-size:21px;margin:40px 0 10px;padding-top:12px;border-top:2px solid #e3e6eb}
h3{font-size:16px;margin:26px 0 8px;color:#33415c}
nav{font-size:14px;margin:6px 0 18px}nav a{margin-right:14px;color:#2457a6;text-decoration:none}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:16px 0}
.card{border:1px solid #dfe3ea;border-radius:8px;padding:10px 16px;min-width:120px;background:#fafbfc}
.card .v{font-size:24px;font-weight:600}.card .k{font-size:12px;color:#5b6577;text-transform:uppercase;letter-spacing:.04em}
table{border-collapse:collapse;font-size:14px;margin:8px 0}
th,td{padding:4px 10px;border-bottom:1px solid #e6e8ec;text-align:left;vertical-align:top}
th{background:#f0f2f5;font-weight:600}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
tr:nth-child(even) td{background:#fafbfc}
.facts td:first-child{color:#5b6577;white-space:nowrap}
img{max-width:100%;height:auto;display:block;margin:8px 0;border:1px solid #eceef2}
.note{color:#5b6577;font-size:13px}.warn{color:#a33}
details{margin:10px 0}summary{cursor:pointer;color:#2457a6}
pre{background:#f6f8fa;padding:10px 14px;font-size:12.5px;overflow:auto;border-radius:6px}
td.text{max-width:560px;font-size:13px}.pair{color:#33415c;margin-top:3px}
"""


def _anchor(split: str) -> str:
    return "split-" + "".join(c if c.isalnum() else "-" for c in split)


def _summary_html(report: dict) -> list[str]:
    splits, primary, keys = report["splits"], report.get("primary_split"), report["headline"]
    out = ["<section id='summary'>"]
    if primary:
        m = splits[primary]
        cards = "".join(f"<div class='card'><div class='k'>{escape(primary)} {METRIC_NAMES[k]}</div>"
                        f"<div class='v'>{fmt(m.get(k))}</div></div>" for k in keys if m.get(k) is not None)
        out.append(f"<div class='cards'>{cards}</div>")
    out.append(html_table(["split", "examples", *headline_names(report)],
                          [[s, m.get("num_examples"), *(fmt(m.get(k)) for k in keys)] for s, m in splits.items()],
                          numeric=set(range(1, len(keys) + 2))))
    facts = "".join(f"<tr><td>{escape(k)}</td><td>{escape(v)}</td></tr>" for k, v in run_facts(report))
    out.append(f"<table class='facts'>{facts}</table>")
    out += [f"<p class='warn'>warning: {escape(w)}</p>" for w in report["warnings"]]
    return out + ["</section>"]


def _training_html(report: dict, figures: dict[str, bytes]) -> list[str]:
    if "learning_curves" not in figures:
        return []
    out = ["<section id='training'><h2>Training</h2>", img_tag(figures["learning_curves"], "learning curves")]
    evals, columns = report["history"]["eval"], eval_columns(report)
    if evals:
        rows = [[r["step"], fmt(r["epoch"], 2), *(fmt(r.get(k)) for k in columns)] for r in evals]
        header = ["step", "epoch", *(f"validation {METRIC_NAMES[k]}" if k == "loss" else METRIC_NAMES[k]
                                     for k in columns)]
        table = html_table(header, rows, numeric=set(range(len(header))))
        out.append(f"<details><summary>validation after each evaluation ({len(evals)})</summary>{table}</details>")
    return out + ["</section>"]


def _split_html(report: dict, split: str, m: dict, figures: dict[str, bytes]) -> list[str]:
    out = [f"<section id='{_anchor(split)}'><h2>{escape(split)} split"
           f" <span class='note'>({m.get('num_examples')} examples)</span></h2>"]
    out += task_reports.sections(report["task"]).html_split(split, m, figures)
    if report.get("examples_withheld"):
        out.append(f"<p class='note'>{escape(WITHHELD)}</p>")
    elif "predictions_file" not in m:
        out.append(f"<p class='note'>No predictions/{escape(split)}.jsonl in the run directory: the examples"
                   " behind the numbers are not available.</p>")
    return out + ["</section>"]


def _settings_html(report: dict) -> list[str]:
    out = []
    if report.get("recipe"):
        out.append("<section id='recipe'><h2>Settings chosen automatically</h2><p class='note'>These keys were"
                   " left at <code>auto</code>; textft picked the values from the backbone and the data.</p>")
        out.append(html_table(["setting", "value", "why"],
                          [[r["key"], _setting(r["value"]), r["why"]] for r in report["recipe"]], numeric={1}))
        out.append("</section>")
    if report.get("config"):
        out.append("<section id='config'><h2>Configuration</h2><pre>"
                   f"{escape(yaml.safe_dump(report['config'], sort_keys=False))}</pre></section>")
    return out


def render_html(report: dict, figures: dict[str, bytes]) -> str:
    """One self-contained page: summary, training curves, one section per split, the settings."""
    splits = report["splits"]
    links = ["<a href='#summary'>summary</a>"]
    if "learning_curves" in figures:
        links.append("<a href='#training'>training</a>")
    links += [f"<a href='#{_anchor(s)}'>{escape(s)}</a>" for s in splits]
    if report.get("out_of_scope"):
        links.append("<a href='#out-of-scope'>out of scope</a>")
    if report.get("recipe"):
        links.append("<a href='#recipe'>auto settings</a>")
    if report.get("config"):
        links.append("<a href='#config'>configuration</a>")
    out = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{escape(report['title'])}</title>"
           f"<meta name='viewport' content='width=device-width, initial-scale=1'><style>{CSS}</style></head>"
           f"<body><main><h1>{escape(report['title'])}</h1>", f"<nav>{''.join(links)}</nav>"]
    out += _summary_html(report) + _training_html(report, figures)
    for split, m in splits.items():
        out += _split_html(report, split, m, figures)
    if report.get("out_of_scope"):
        sections = task_reports.sections(report["task"])
        out += sections.html_out_of_scope(report["out_of_scope"], figures.get("out_of_scope"))
    out += _settings_html(report)
    out.append(f"<p class='note'>textft report of {escape(report['run'])}; re-render with"
               f" <code>textft report {escape(report['run'])}</code>.</p></main></body></html>")
    return "\n".join(out)


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
