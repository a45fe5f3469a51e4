"""Side-by-side comparison of finished runs: a Markdown table on the terminal, and with
``--output DIR`` the same table as HTML and CSV plus a plot of the metric and of metric vs training time.

    textft compare RUN_DIR RUN_DIR ... [--output DIR] [--metric macro_f1] [--split test]
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

from textft.errors import UserError, closest
from textft.files import read_jsonl, replace_file
from textft.plots import figure, png
from textft.report import duration
from textft.report_data import build_report, check_run_dir
from textft.report_parts import METRIC_NAMES, fmt, md_cell
from textft.significance import ALPHA, PAIRED_RESAMPLES, paired_test
from textft.tasks import DEFAULT_TASK, LOWER_IS_BETTER, task_class
from textft.templating import render

HTML_TEMPLATE = "compare.html.j2"
"""The template of comparison.html (``textft/templates``)."""
METRICS = tuple(METRIC_NAMES)
"""Every metric a comparison can rank by; each task's runs show and rank by their own (its headline)."""
HYPER = (("lr", "train", "lr"), ("head_lr", "train", "head_lr"), ("epochs", "train", "epochs"),
         ("batch_size", "train", "batch_size"), ("max_length", "data", "max_length"),
         ("layer_lr_decay", "model", "layer_lr_decay"))


def run_names(run_dirs: list[str]) -> list[str]:
    """Directory names, lengthened with their parents where two would read the same."""
    paths = [Path(d).resolve() for d in run_dirs]
    depth = 1
    while depth < 6:
        names = ["/".join(p.parts[-depth:]) for p in paths]
        if len(set(names)) == len(names):
            return names
        depth += 1
    return [str(p) for p in paths]


def _model_name(name: str | None) -> str:
    if not name:
        return "-"
    return Path(name).name if "/" in name and Path(name).exists() else name


def comparison_row(report: dict, name: str, run_dir: str, split: str, metrics: tuple[str, ...]) -> dict[str, Any]:
    cfg = report.get("config") or {}
    m = report["splits"][split]
    params = report.get("parameters") or {}
    row: dict[str, Any] = {"run": name, "run_dir": str(run_dir), "model": _model_name(report.get("model")),
                           "transfer": report.get("transfer"), "unfreeze_top_k": report.get("unfreeze_top_k"),
                           "lora_rank": (report.get("lora") or {}).get("rank")}
    for key, section, field in HYPER:
        row[key] = (cfg.get(section) or {}).get(field)
    row["trainable_params"] = params.get("trainable")
    row["total_params"] = params.get("total")
    row["split"] = split
    intervals = m.get("intervals") or {}
    for key in metrics:
        row[key] = m.get(key)
        ci = intervals.get(key)
        if ci:
            row[f"{key}_low"], row[f"{key}_high"] = ci
    row["train_seconds"] = report["timings"].get("train_seconds")
    row["samples_per_s"] = report["throughput"].get("samples_per_s")
    best = report.get("best") or {}
    row["best_step"] = best.get("step")
    return row


def _sci(v) -> str:
    return f"{v:.1e}" if isinstance(v, (int, float)) else "-"


def _params(row: dict) -> str:
    t, total = row.get("trainable_params"), row.get("total_params")
    if not t:
        return "-"
    short = f"{t / 1e6:.2f}M" if t >= 1e5 else f"{t:,}"
    return f"{short} ({100 * t / total:.1f}%)" if total else short


def _transfer(row: dict) -> str:
    transfer = row.get("transfer") or "-"
    if transfer == "lora" and row.get("lora_rank"):
        return f"lora (rank {row['lora_rank']})"
    return f"top_k ({row['unfreeze_top_k']})" if transfer == "top_k" and row.get("unfreeze_top_k") else transfer


SETTINGS = ("model", "transfer", "lr", "head_lr", "epochs", "batch", "max_len", "lr decay")


def metric_columns(rows: list[dict]) -> list[str]:
    return [k for k in rows[0] if k in METRIC_NAMES] if rows else []


def display_table(rows: list[dict], metric: str) -> tuple[list[str], list[list[str]], int | None, dict[str, str]]:
    """Header, formatted cells, the index of the best run on ``metric``, and the settings all runs share.

    A setting that is the same for every run moves out of the table into the shared line, so the
    columns left are the ones that explain the differences.
    """
    metrics, tested = metric_columns(rows), tested_metrics(rows)
    header = ["run", *SETTINGS, "trainable", *(METRIC_NAMES[k] for k in metrics),
              *(f"{METRIC_NAMES[k]} vs best" for k in tested), "train time", "samples/s"]
    cells = []
    for r in rows:
        cells.append([r["run"], r["model"], _transfer(r), _sci(r["lr"]), _sci(r["head_lr"]), fmt(r["epochs"], 1),
                      fmt(r["batch_size"]), fmt(r["max_length"]), fmt(r["layer_lr_decay"], 2), _params(r),
                      *(_metric_cell(r, k, k == metric) for k in metrics), *(_test_cell(r, k) for k in tested),
                      duration(r["train_seconds"]), fmt(r["samples_per_s"], 1)])
    shared = {}
    if len(rows) > 1:
        for name in SETTINGS:
            j = header.index(name)
            if len({row[j] for row in cells}) == 1:
                shared[name] = cells[0][j]
        keep = [j for j, h in enumerate(header) if h not in shared]
        header = [header[j] for j in keep]
        cells = [[row[j] for j in keep] for row in cells]
    return header, cells, best_run(rows, metric), shared


def best_run(rows: list[dict], metric: str) -> int | None:
    """Index of the best run on ``metric`` (the first of equals), None if no run has it."""
    scored = [i for i, r in enumerate(rows) if isinstance(r.get(metric), (int, float))]
    if not scored:
        return None
    pick = min if metric in LOWER_IS_BETTER else max
    return pick(scored, key=lambda i: rows[i][metric])


def _metric_cell(row: dict, key: str, with_interval: bool) -> str:
    """The value, and for the ranking metric its 95% interval."""
    low, high = row.get(f"{key}_low"), row.get(f"{key}_high")
    if not with_interval or low is None or row.get(key) is None:
        return fmt(row.get(key))
    return f"{fmt(row[key])} [{low:.2f}, {high:.2f}]"


def tested_metrics(rows: list[dict]) -> list[str]:
    """The metrics each run was tested on against the best run, in order."""
    return list(next((r["vs_best"] for r in rows if r.get("vs_best")), {}))


def _p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p {p:.3f}"


def _test_cell(row: dict, key: str) -> str:
    if "vs_best" not in row:
        return "-"
    test = row["vs_best"].get(key)
    if test is None:
        return "best"
    if test["p_value"] is None:
        return "not tested"
    return f"{test['difference']:+.4f} ({_p(test['p_value'])}){' *' if test['significant'] else ''}"


def significance_notes(rows: list[dict], metric: str) -> list[str]:
    """What the "vs best" columns mean, and why a run was not tested."""
    tested = tested_metrics(rows)
    best = best_run(rows, metric)
    if not tested or best is None:
        return []
    tests = [t for r in rows for t in (r.get("vs_best") or {}).values() if t["p_value"] is not None]
    used = {t["metric"]: t["test"] for t in tests}
    named = {"McNemar exact": "McNemar's exact test",
             "paired bootstrap": f"a paired bootstrap ({PAIRED_RESAMPLES:,} resamples)"}
    how = ", ".join(f"{named[used[k]]} for {METRIC_NAMES[k]}" for k in tested if k in used)
    notes = []
    if tests:
        examples = tests[0]["examples"]
        notes.append(f"vs best: difference to {rows[best]['run']} (best {METRIC_NAMES[metric]}) on the same"
                     f" {examples:,} examples and its two-sided p-value ({how}); * significant at"
                     f" {100 * ALPHA:.0f}%, otherwise the runs are not separable on this split.")
    interval = any(r.get(f"{metric}_low") is not None for r in rows)
    if interval:
        notes.append(f"[low, high]: 95% bootstrap interval of {METRIC_NAMES[metric]} over the examples.")
    for r in rows:
        reasons = {t["reason"] for t in (r.get("vs_best") or {}).values() if t["p_value"] is None and t["reason"]}
        if reasons:
            notes.append(f"{r['run']}: not tested against {rows[best]['run']}: {'; '.join(sorted(reasons))}.")
    return notes


def tests_against_best(rows: list[dict], split: str, task, metric: str) -> None:
    """Each run's paired test against the best one on ``metric`` (and on the task's right-or-wrong
    metric) over the saved predictions of ``split``, as ``row["vs_best"]`` ({} for the best run)."""
    best = best_run(rows, metric)
    if best is None or len(rows) < 2:
        return
    tested = [metric] + ([task.exact_test] if task.exact_test not in (None, metric) and task.exact_test in rows[0]
                         else [])
    predictions = [_predictions(r["run_dir"], split) for r in rows]
    for i, r in enumerate(rows):
        r["vs_best"] = {} if i == best else {
            k: paired_test(task, k, predictions[best], predictions[i]).to_dict() for k in tested}


def _predictions(run_dir: str, split: str) -> list[dict] | None:
    path = Path(run_dir) / "predictions" / f"{split}.jsonl"
    return read_jsonl(path) if path.is_file() else None


def _shared_line(shared: dict[str, str]) -> str:
    return "shared by all runs: " + ", ".join(f"{k} {v}" for k, v in shared.items()) if shared else ""


def markdown_table(rows: list[dict], metric: str) -> str:
    header, cells, best, shared = display_table(rows, metric)
    col = header.index(METRIC_NAMES[metric])
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if h in ("run", "model", "transfer") else "---:" for h in header) + "|"]
    for i, row in enumerate(cells):
        # the names are the user's (escaped to read as written); the numbers and marks are textft's
        row = [md_cell(c) if header[j] in ("run", "model") else c.replace("|", "\\|") for j, c in enumerate(row)]
        if i == best:
            row[col] = f"**{row[col]}**"
        lines.append("| " + " | ".join(row) + " |")
    if shared:
        lines += ["", md_cell(_shared_line(shared))]
    notes = significance_notes([{**r, "run": md_cell(r["run"])} for r in rows], metric)  # names as written
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def plot_comparison(rows: list[dict], metric: str) -> bytes | None:
    scored = [r for r in rows if isinstance(r.get(metric), (int, float))]
    if not scored:
        return None
    timed = [r for r in scored if isinstance(r.get("train_seconds"), (int, float))]
    fig = figure(12, max(3.2, 0.42 * len(scored) + 1.6))
    ax_bar, ax_time = fig.subplots(1, 2) if timed else (fig.add_subplot(), None)
    name = METRIC_NAMES[metric]
    pick = min if metric in LOWER_IS_BETTER else max
    best = pick(scored, key=lambda r: r[metric])
    ys = range(len(scored))[::-1]  # the first run on top, as in the table
    ax_bar.barh(list(ys), [r[metric] for r in scored],
                color=["#2ca02c" if r is best else "#1f77b4" for r in scored], height=0.6)
    ax_bar.set_yticks(list(ys), [r["run"] for r in scored], fontsize=9)
    top = max(r[metric] for r in scored)
    for y, r in zip(ys, scored):
        ax_bar.text(r[metric] + 0.01 * max(top, 1e-9), y, f"{r[metric]:.4f}", va="center", fontsize=9)
    ax_bar.set_xlim(0, (1.0 if metric not in LOWER_IS_BETTER and top <= 1 else top) * 1.15)
    ax_bar.set_xlabel(f"{name} ({scored[0]['split']})")
    ax_bar.set_title(f"{name}, best in green", loc="left")
    ax_bar.grid(axis="x", alpha=0.3)
    if ax_time is not None:
        minutes = max(r["train_seconds"] for r in timed) >= 180
        scale, unit = (60, "min") if minutes else (1, "s")
        ax_time.scatter([r["train_seconds"] / scale for r in timed], [r[metric] for r in timed], s=60,
                        color=["#2ca02c" if r is best else "#1f77b4" for r in timed], zorder=3)
        for r in timed:
            ax_time.annotate(r["run"], (r["train_seconds"] / scale, r[metric]), xytext=(6, 4),
                             textcoords="offset points", fontsize=9)
        ax_time.set_xlabel(f"training time ({unit})")
        ax_time.set_ylabel(name)
        # Room on the right for the run names written next to the points.
        ax_time.set_xlim(0, 1.35 * max(r["train_seconds"] for r in timed) / scale)
        ax_time.margins(y=0.2)
        ax_time.set_title(f"{name} against training time", loc="left")
        ax_time.grid(alpha=0.3)
    return png(fig)


def _report_link(run_dir: str, out_dir: Path) -> str | None:
    """The run's report.html relative to the comparison's directory, when the run has one."""
    page = Path(run_dir).resolve() / "report.html"
    return os.path.relpath(page, out_dir.resolve()) if page.is_file() else None


def render_html(rows: list[dict], metric: str, plot: bytes | None, out_dir: Path) -> str:
    header, cells, best, shared = display_table(rows, metric)
    page = render(HTML_TEMPLATE, header=header, rows=cells, best=best, column=header.index(METRIC_NAMES[metric]),
                  numeric={j for j, h in enumerate(header) if h not in ("run", "model", "transfer")},
                  links=[_report_link(r["run_dir"], out_dir) for r in rows], split=rows[0]["split"] if rows else "-",
                  metric=METRIC_NAMES[metric], shared=_shared_line(shared), notes=significance_notes(rows, metric),
                  plot=plot)
    return str(page)


def write_csv(rows: list[dict]) -> str:
    """One line per run; each test against the best run as flat columns (``<metric>_vs_best_p`` ...)."""
    flat = []
    for r in rows:
        row = {k: v for k, v in r.items() if k != "vs_best"}
        for key in tested_metrics(rows):
            test = (r.get("vs_best") or {}).get(key) or {}
            for field in ("difference", "p_value", "significant", "test", "reason"):
                row[f"{key}_vs_best_{field}"] = test.get(field)
        flat.append(row)
    fields = list(dict.fromkeys(k for row in flat for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(flat)
    return buf.getvalue()


def pick_split(reports: list[dict], names: list[str], requested: str | None) -> str:
    have = [set(r["splits"]) for r in reports]
    if requested is not None:
        missing = [f"run '{n}' has no '{requested}' split{closest(requested, h)} (it has: {', '.join(sorted(h))})"
                   for n, h in zip(names, have) if requested not in h]
        if missing:
            raise UserError(missing)
        return requested
    for split in ("test", "validation", "evaluation"):
        if all(split in h for h in have):
            return split
    common = set.intersection(*have)
    if not common:
        raise UserError("the runs share no evaluated split: " + "; ".join(
            f"{n}: {', '.join(sorted(h))}" for n, h in zip(names, have)))
    return sorted(common)[0]


def run_task(reports: list[dict], names: list[str], metric: str | None) -> tuple[tuple[str, ...], str]:
    """The metrics the runs share (their task's headline) and the one to rank by (default: the task's)."""
    kinds = {r.get("task") or DEFAULT_TASK for r in reports}
    if len(kinds) > 1:
        raise UserError("the runs solve different tasks, whose metrics do not compare: " + ", ".join(
            f"{n} ({r.get('task') or DEFAULT_TASK})" for n, r in zip(names, reports)))
    task = task_class(kinds.pop())
    metrics = tuple(task.headline)
    metric = metric or task.default_metric
    if metric not in metrics:
        raise UserError(f"'--metric': {metric} is not a {task.name} metric{closest(metric, metrics)}; choose from"
                        f" {', '.join(metrics)}")
    return metrics, metric


def compare(run_dirs: list[str], metric: str | None = None, split: str | None = None,
            output: str | None = None) -> tuple[list[dict], str, list[Path], str]:
    """Rows of the comparison, its Markdown table, the files written to ``output`` (if given):
    comparison.md, .csv, .html and .png, and the metric the runs are ranked by (default: their task's)."""
    problems = [p for d in run_dirs if (p := check_run_dir(d))]
    if metric is not None and metric not in METRICS:
        problems.append(f"unknown metric '{metric}'{closest(metric, METRICS)}; choose from {', '.join(METRICS)}")
    if output and Path(output).exists() and not Path(output).is_dir():
        problems.append(f"'--output': '{output}' exists and is not a directory")
    if problems:
        raise UserError(problems)
    names = run_names(run_dirs)
    reports = [build_report(d, mistakes=0) for d in run_dirs]
    metrics, metric = run_task(reports, names, metric)
    split = pick_split(reports, names, split)
    rows = [comparison_row(r, n, d, split, metrics) for r, n, d in zip(reports, names, run_dirs)]
    tests_against_best(rows, split, task_class(reports[0].get("task") or DEFAULT_TASK), metric)
    table = markdown_table(rows, metric)
    written = []
    if output:
        out = Path(output)
        out.mkdir(parents=True, exist_ok=True)
        plot = plot_comparison(rows, metric)
        files = {"comparison.md": table, "comparison.csv": write_csv(rows),
                 "comparison.html": render_html(rows, metric, plot, out)}
        if plot:
            files["comparison.png"] = plot
        for name, data in files.items():
            replace_file(out / name, data)
            written.append(out / name)
    return rows, table, written, metric
