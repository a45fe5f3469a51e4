"""The model card (README.md) of a trained classifier: Hub metadata through ``huggingface_hub``'s
``ModelCardData`` and ``EvalResult`` (license, base model, datasets, model-index with the test
metrics), then a body built from the run report."""

from __future__ import annotations

import contextlib
import json
import logging
import re
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from markupsafe import escape

from textft.errors import UserError
from textft.hub_download import is_hub_id
from textft import task_reports
from textft.lora import ADAPTER_CONFIG, ADAPTER_DIR, RECORD
from textft.report import render_markdown, without_examples
from textft.report_parts import INTERVAL_NOTE, md_cell, md_code, shown
from textft.tasks import DEFAULT_TASK, METRIC_NAMES, from_model_config, task_class

log = logging.getLogger("textft")

# The Hub names of textft's builtin backbones, for the card's base_model.
BUILTIN_HUB_NAMES = {"builtin:minilm": "sentence-transformers/all-MiniLM-L6-v2"}


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        log.warning("ignoring unreadable %s", path)
        return None
    return data if isinstance(data, dict) else None


def run_report(model_dir: Path) -> tuple[dict | None, str | None]:
    """The run's report (report.json when present, else eval_report.json) and its Markdown twin."""
    for stem in ("report", "eval_report"):
        data = _read_json(model_dir / f"{stem}.json")
        if data is not None and isinstance(data.get("splits"), dict):
            md = model_dir / f"{stem}.md"
            return data, md.read_text(encoding="utf-8") if md.is_file() else None
    return None, None


def _base_model(name: str | None) -> str | None:
    if not name:
        return None
    name = BUILTIN_HUB_NAMES.get(name, name)
    return name if is_hub_id(name) and not name.startswith("builtin:") else None


def _base_license(name: str | None) -> str | None:
    """The licence in the base model's own card, when it is available locally."""
    if not name:
        return None
    from textft.modeling import resolve_model_path

    try:
        card = Path(resolve_model_path(name)) / "README.md"
        return str(ModelCard.load(card).data.license or "") or None if card.is_file() else None
    except (UserError, OSError, ValueError, yaml.YAMLError):
        return None


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "-" if value is None else str(value)


def _strings(value: Any) -> list[str]:
    """Every string inside a nested config (to find the local paths it names)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    return []


def _demote(markdown: str) -> str:
    """The report's headings one level down, under the card's own sections."""
    return re.sub(r"^(#{1,5}) ", r"#\1 ", markdown, flags=re.M)


def _training_config(path: Path) -> dict:
    trained: Any = {}
    if (path / "textft_config.yaml").is_file():
        with contextlib.suppress(yaml.YAMLError, UnicodeDecodeError):
            trained = yaml.safe_load((path / "textft_config.yaml").read_text(encoding="utf-8")) or {}
    return trained if isinstance(trained, dict) else {}


def local_paths(model_dir: Path) -> list[str]:
    """The absolute local paths a run directory's files may name (the run's own, its base model,
    data files, checkpoints), longest first: publishing them would show the training machine's
    directory layout, and their last part says as much to a reader."""
    path = Path(model_dir)
    report, _ = run_report(path)
    named = [path, *_strings(_training_config(path)), *_strings({k: (report or {}).get(k)
                                                                 for k in ("data_source", "resumed_from", "config")})]
    found = set()
    for p in named:
        if str(p).startswith(("/", "~")):
            p = Path(p).expanduser()
            found |= {str(p.absolute()), str(p.resolve())}
    return sorted((p for p in found if p != "/"), key=len, reverse=True)


def without_local_paths(text: str, paths: list[str]) -> str:
    """``text`` with each of ``paths`` (``local_paths``) replaced by its last part, wherever it
    stands as a path of its own (not inside a URL or a longer name), as written or as the reports
    write it (escaped for HTML in report.html, for Markdown in report.md and the card)."""
    for p in paths:
        name = Path(p).name
        for written, short in dict.fromkeys(((p, name), (md_cell(p), md_cell(name)), (str(escape(p)), str(escape(name))))):
            text = re.sub(rf"(?<![\w./:~-]){re.escape(written)}(?![\w-]|\.\w)", lambda _, short=short: short, text)
    return text


def run_of(path: Path) -> Path:
    """The run directory whose report describes ``path``: the run itself for the adapter a run wrote
    into its ``adapter/`` subdirectory, else ``path``."""
    parent = path.parent
    if path.name == ADAPTER_DIR and (path / ADAPTER_CONFIG).is_file() and run_report(parent)[0] is not None:
        return parent
    return path


def _run(path: Path, include_examples: bool = False) -> dict[str, Any]:
    """What the card is made of: the saved configs, the report and the names it may publish."""
    trained = _training_config(path)
    record = _read_json(path / RECORD) or {}  # a LoRA adapter directory: the classifier's config is here
    config = _read_json(path / "config.json") or record.get("classifier_config") or {}
    data_cfg = trained.get("data") or {}
    report, report_md = run_report(run_of(path))
    if report and not include_examples and any(isinstance(m, dict) and m.get("most_confident_mistakes")
                                               for m in report["splits"].values()):
        report_md = render_markdown(without_examples(report))
    base_name = (trained.get("model") or {}).get("name_or_path")
    base = _base_model(base_name)
    dataset = data_cfg.get("dataset")
    source = (report or {}).get("data_source") or dataset or data_cfg.get("train_file") or "local files"
    return {
        "trained": trained, "config": config, "report": report or {}, "report_md": report_md,
        "splits": (report or {}).get("splits") or {},
        "labels": [str(v) for _, v in sorted(((int(k), v) for k, v in (config.get("id2label") or {}).items()))],
        "task": task_class((report or {}).get("task") or from_config(config)),
        "pairs": bool((trained.get("data") or {}).get("text_pair_column")),
        "base_name": base_name, "base": base,
        "shown_base": base_name if not base_name or base or is_hub_id(base_name) or base_name.startswith("builtin:")
        else Path(base_name).name,
        "hub_dataset": dataset if is_hub_id(dataset) and not str(dataset).startswith("builtin:") else None,
        # A local path would publish the training machine's directory layout; its file name is enough.
        "source": str(source) if str(source).startswith(("hub:", "builtin:")) else Path(str(source)).name,
    }


def card_data(run: dict, name: str, license: str | None, adapter: bool = False) -> ModelCardData:
    """The card's metadata; the model-index holds the test metrics (validation without a test split)."""
    splits, hub_dataset = run["splits"], run["hub_dataset"]
    split = "test" if "test" in splits else "validation" if "validation" in splits else next(iter(splits), None)
    results = []
    if split is not None:
        m = splits[split]
        dataset_config = (run["trained"].get("data") or {}).get("dataset_config") if hub_dataset else None
        results = [EvalResult(task_type="text-classification", task_name="Text Classification",
                              dataset_type=hub_dataset or "custom", dataset_name=hub_dataset or run["source"],
                              dataset_config=dataset_config, dataset_split=split, metric_type=kind,
                              metric_value=round(float(m[key]), 4), metric_name=label, metric_args=args)
                   for key, kind, label, args in task_reports.sections(run["task"].name).CARD_METRICS if isinstance(m.get(key), (int, float))]
    return ModelCardData(license=license or _base_license(run["base_name"]) or "other",
                         library_name="peft" if adapter else "transformers",
                         base_model=run["base"], datasets=[hub_dataset] if hub_dataset else None,
                         pipeline_tag="text-classification",
                         tags=["text-classification", "textft", *(["lora", "peft"] if adapter else [])],
                         model_name=name, eval_results=results or None)


def from_config(config: dict) -> str:
    """The task of a checkpoint without a textft report, from its config.json."""
    try:
        return from_model_config(config).name
    except UserError:
        return DEFAULT_TASK


def _adapter_usage(run: dict, repo: str) -> list[str]:
    """How peft loads the adapter: on its base model, with the classifier's labels (the base has none)."""
    id2label = {int(k): v for k, v in (run["config"].get("id2label") or {}).items()}
    labels = f"num_labels={len(id2label)}, id2label={id2label!r}, label2id={ {v: k for k, v in id2label.items()}!r}"
    return ["## Usage", "", f"A LoRA adapter: it loads on top of its base model (`{run['shown_base']}`) with"
            " [peft](https://github.com/huggingface/peft). The base has no classification head of these labels,"
            " so they are passed along:", "", "```python",
            "from peft import AutoPeftModelForSequenceClassification", "from transformers import AutoTokenizer", "",
            f'model = AutoPeftModelForSequenceClassification.from_pretrained("{repo}", {labels})',
            f'tokenizer = AutoTokenizer.from_pretrained("{repo}")', "```", "",
            "`model.merge_and_unload()` gives a plain transformers classifier. textft finds the base and the"
            " labels itself, and merges the adapter in:", "", "```python", "import textft", "",
            f'model = textft.load("{repo}")', 'print(model.predict(["Replace me by any text you like."]))', "```", ""]


def _usage(run: dict, repo: str) -> list[str]:
    truncation = (run["trained"].get("data") or {}).get("truncation", "head")
    example = ('{"text": "The first text.", "text_pair": "The second text."}' if run["pairs"]
               else '"Replace me by any text you like."')
    lines = ["## Usage", "", "```python", "from transformers import pipeline", "",
             *task_reports.sections(run["task"].name).card_usage(repo, example), "```", ""]
    if truncation == "head+tail":
        lines += ["The model was trained on the head and the tail of long texts, which plain `pipeline` cannot"
                  " reproduce (it keeps the head); `textft.load` does, and also offers sliding windows:", ""]
    else:
        lines += ["or, with length-sorted batching, sliding windows over long texts and out-of-scope rejection:", ""]
    return lines + ["```python", "import textft", "", f'model = textft.load("{repo}")',
                    f"print(model.predict([{example}]))", "```", ""]


def _training_table(run: dict, path: Path) -> list[str]:
    t = run["trained"]
    data_cfg, model_cfg, train_cfg, report = t.get("data") or {}, t.get("model") or {}, t.get("train") or {}, run["report"]
    lora = model_cfg.get("transfer") == "lora"
    hp = [("base model", run["shown_base"]), ("transfer", model_cfg.get("transfer")),
          *[(f"LoRA {k}", model_cfg.get(f"lora_{k}")) for k in ("rank", "alpha", "dropout", "target_modules",
                                                                 "train_pooler") if lora],
          ("max_length", data_cfg.get("max_length")), ("truncation", data_cfg.get("truncation")),
          ("epochs", train_cfg.get("epochs")), ("batch_size", train_cfg.get("batch_size")), ("lr", train_cfg.get("lr")),
          ("head_lr", train_cfg.get("head_lr")), ("warmup_ratio", train_cfg.get("warmup_ratio")),
          ("weight_decay", train_cfg.get("weight_decay")), ("seed", train_cfg.get("seed")),
          ("precision", report.get("precision")), ("optimizer steps", report.get("optimizer_steps")),
          ("train seconds", report.get("train_seconds"))]
    hp = [(k, v) for k, v in hp if v is not None]
    if not hp:
        return []
    lines = ["## Training", "", "| setting | value |", "|---|---|", *[f"| {k} | {md_cell(v)} |" for k, v in hp], ""]
    if (path / "textft_config.yaml").is_file():
        lines += ["The full resolved configuration is in `textft_config.yaml`.", ""]
    return lines


def _out_of_scope(config: dict) -> list[str]:
    oos = config.get("textft_out_of_scope")
    if not isinstance(oos, dict):
        return []
    from textft.out_of_scope import METHOD_NAMES

    cal = oos.get("calibration") or {}
    score = METHOD_NAMES.get(oos.get("method"), "score")
    needs = (f" The score reads the training features saved in {md_code(oos['statistics']['file'])}."
             if isinstance(oos.get("statistics"), dict) and oos["statistics"].get("file") else "")
    return ["## Out-of-scope rejection", "",
            f"Predictions whose {score} score"
            f" is below {_fmt(oos.get('threshold'))} are answered {md_code(oos.get('label'))}"
            f" (calibrated for {json.dumps(oos.get('target'))}). On the calibration data: in-scope accuracy"
            f" {_fmt(cal.get('in_scope_accuracy'))}, out-of-scope recall {_fmt(cal.get('out_of_scope_recall'))}."
            f"{needs} `textft.load` and `textft serve` apply it; plain `transformers.pipeline` does not.", ""]


def _report_section(run: dict, path: Path) -> list[str]:
    if not run["report_md"]:
        return []
    body = run["report_md"].strip()
    if body.startswith("# "):  # the report's own title; the card has one
        body = body.split("\n", 1)[1].strip() if "\n" in body else ""
    return ["## Evaluation report", "", _demote(body), ""]


def model_card(model_dir: str | Path, license: str | None = None, repo_id: str | None = None,
               include_examples: bool = False) -> ModelCard:
    """README.md for the Hub: metadata (see ``card_data``), results, usage, training settings and the
    run report, without local paths, and without quoted evaluation texts unless ``include_examples``.
    For a LoRA adapter directory, the card of the adapter: peft's metadata and usage."""
    path = Path(model_dir)
    adapter = (path / ADAPTER_CONFIG).is_file()
    run = _run(path, include_examples)
    name = (repo_id or (run_of(path) if adapter else path).resolve().name).split("/")[-1]
    base, hub_dataset, labels = run["base"], run["hub_dataset"], run["labels"]
    what = f"fine-tuned from [{base}](https://huggingface.co/{base})" if base else \
        f"fine-tuned from {md_code(run['shown_base'])}" if run["base_name"] else "fine-tuned"
    on = f"[{hub_dataset}](https://huggingface.co/datasets/{hub_dataset})" if hub_dataset else md_code(run["source"])
    sections = task_reports.sections(run["task"].name)
    pairs = " It reads pairs of texts." if run["pairs"] else ""
    lines = [f"# {md_cell(name)}", "", f"A {sections.CARD_KIND} {what} on {on} with textft.{pairs} {sections.card_summary(labels)}", ""]
    if adapter:
        lines[2] = (f"A LoRA adapter (peft) that makes {md_code(run['shown_base'])} a {sections.CARD_KIND}, trained on"
                    f" {on} with textft.{pairs} {sections.card_summary(labels)}")
    if run["splits"]:
        keys = [key for key, *_ in sections.CARD_METRICS]
        lines += ["## Results", "", "| split | examples | " + " | ".join(METRIC_NAMES[k] for k in keys) + " |",
                  "|---|---:|" + "---:|" * len(keys)]
        lines += [f"| {md_cell(s)} | {_fmt(m.get('num_examples'))} | " + " | ".join(
            shown(m, k) if (m.get("intervals") or {}).get(k) else _fmt(m.get(k)) for k in keys) + " |"
            for s, m in run["splits"].items()]
        if any(m.get("intervals") for m in run["splits"].values()):
            lines += ["", INTERVAL_NOTE]
        lines.append("")
    usage = _adapter_usage if adapter else _usage
    lines += _out_of_scope(run["config"]) + usage(run, repo_id or f"<user>/{name}") + _training_table(run, path)
    lines += _report_section(run, path)
    lines += ["## Limitations", "",
              "The scores above hold for data like the evaluation splits; check the model on your own data"
              " before relying on it, and keep in mind the licences of the base model and the training data.", ""]
    text = f"---\n{card_data(run, name, license, adapter).to_yaml()}\n---\n\n" + "\n".join(lines)
    return ModelCard(without_local_paths(text, local_paths(path) + local_paths(run_of(path))))
