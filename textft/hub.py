"""Share a trained classifier on the Hugging Face Hub with a model card built from its run report.

``textft push --model DIR --repo-id NAME`` (or ``push_to_hub(DIR, NAME)``) writes README.md (the
model card: YAML metadata the Hub indexes, then the report) into the model directory and uploads
the directory with ``huggingface_hub``. The token comes from the environment (``HF_TOKEN``) or
``hf auth login``; textft never reads it into its own variables, prints it or writes it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import yaml

from textft.config import UserError

log = logging.getLogger("textft")

try:
    from huggingface_hub import HfApi, get_token
except ImportError:  # reported when used, so that other commands work without it
    HfApi = get_token = None

# Resume states (optimizer moments), per-example predictions (they quote the evaluation texts,
# whose licence may not allow redistribution) and hidden temporary files stay local.
IGNORE_PATTERNS = ["checkpoints/*", "predictions/*", ".*", "**/.*"]
# The Hub names of textft's builtin backbones, for the card's base_model.
BUILTIN_HUB_NAMES = {"builtin:minilm": "sentence-transformers/all-MiniLM-L6-v2"}
HEADLINE = (("accuracy", "accuracy", "Accuracy", None), ("macro_f1", "f1", "Macro F1", {"average": "macro"}),
            ("weighted_f1", "f1", "Weighted F1", {"average": "weighted"}))


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


def _is_hub_id(name: str | None) -> bool:
    """A plausible Hub repository id (``name`` or ``owner/name``), not a local path."""
    return bool(name) and not name.startswith((".", "/", "~")) and not Path(name).exists() \
        and re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name) is not None


def _base_model(name: str | None) -> str | None:
    if not name:
        return None
    name = BUILTIN_HUB_NAMES.get(name, name)
    return name if _is_hub_id(name) and not name.startswith("builtin:") else None


def _base_license(name: str | None) -> str | None:
    """The licence in the base model's own card, when it is available locally."""
    if not name:
        return None
    try:
        from textft.modeling import resolve_model_path

        path = Path(resolve_model_path(name))
    except (UserError, OSError, ValueError):
        return None
    card = path / "README.md"
    if not card.is_file():
        return None
    text = card.read_text(encoding="utf-8", errors="replace")
    match = re.match(r"---\n(.*?)\n---", text, re.S)
    try:
        meta = yaml.safe_load(match.group(1)) if match else None
    except yaml.YAMLError:
        return None
    return str(meta["license"]) if isinstance(meta, dict) and meta.get("license") else None


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


def model_card(model_dir: str | Path, license: str | None = None, repo_id: str | None = None) -> str:
    """README.md for the Hub: YAML metadata (license, base_model, datasets, pipeline_tag,
    model-index with the test metrics, or validation without a test split) and a body from
    the run report."""
    path = Path(model_dir)
    config = _read_json(path / "config.json") or {}
    trained = {}
    if (path / "textft_config.yaml").is_file():
        with contextlib.suppress(yaml.YAMLError, UnicodeDecodeError):
            trained = yaml.safe_load((path / "textft_config.yaml").read_text(encoding="utf-8")) or {}
    data_cfg = trained.get("data") or {}
    model_cfg = trained.get("model") or {}
    train_cfg = trained.get("train") or {}
    report, report_md = run_report(path)
    splits = (report or {}).get("splits") or {}
    labels = [str(v) for _, v in sorted(((int(k), v) for k, v in (config.get("id2label") or {}).items()))]
    base_name = model_cfg.get("name_or_path")
    base = _base_model(base_name)
    shown_base = base_name if not base_name or base or _is_hub_id(base_name) or base_name.startswith("builtin:") \
        else Path(base_name).name
    dataset = data_cfg.get("dataset")
    hub_dataset = dataset if _is_hub_id(dataset) and not str(dataset).startswith("builtin:") else None
    source = (report or {}).get("data_source") or dataset or data_cfg.get("train_file") or "local files"
    # A local path would publish the training machine's directory layout; its file name is enough.
    source = str(source) if str(source).startswith(("hub:", "builtin:")) else Path(str(source)).name
    name = (repo_id or path.resolve().name).split("/")[-1]

    meta: dict[str, Any] = {"license": license or _base_license(base_name) or "other", "library_name": "transformers"}
    if base:
        meta["base_model"] = base
    if hub_dataset:
        meta["datasets"] = [hub_dataset]
    meta["pipeline_tag"] = "text-classification"
    meta["tags"] = ["text-classification", "textft"]
    split = "test" if "test" in splits else "validation" if "validation" in splits else next(iter(splits), None)
    if split is not None:
        m = splits[split]
        metrics = [{"type": kind, "value": round(float(m[key]), 4), "name": label, **({"args": args} if args else {})}
                   for key, kind, label, args in HEADLINE if isinstance(m.get(key), (int, float))]
        ds = {"name": hub_dataset or source, "type": hub_dataset or "custom", "split": split}
        if hub_dataset and data_cfg.get("dataset_config"):
            ds["config"] = data_cfg["dataset_config"]
        meta["model-index"] = [{"name": name, "results": [{
            "task": {"type": "text-classification", "name": "Text Classification"},
            "dataset": ds, "metrics": metrics}]}]

    lines = [f"# {name}", ""]
    what = f"fine-tuned from [{base}](https://huggingface.co/{base})" if base else \
        f"fine-tuned from `{shown_base}`" if base_name else "fine-tuned"
    lines += [f"A text classifier {what} on {f'[{hub_dataset}](https://huggingface.co/datasets/{hub_dataset})' if hub_dataset else f'`{source}`'}"
              f" with textft. It predicts one of {len(labels)} labels"
              + (f": {', '.join(f'`{x}`' for x in labels)}." if len(labels) <= 20 else
                 f" (first 20: {', '.join(f'`{x}`' for x in labels[:20])}, ...)."), ""]
    if splits:
        lines += ["## Results", "", "| split | examples | accuracy | macro-F1 | weighted-F1 |", "|---|---:|---:|---:|---:|"]
        for s, m in splits.items():
            lines.append(f"| {s} | {_fmt(m.get('num_examples'))} | {_fmt(m.get('accuracy'))} | {_fmt(m.get('macro_f1'))} |"
                         f" {_fmt(m.get('weighted_f1'))} |")
        lines.append("")
    oos = config.get("textft_out_of_scope")
    if isinstance(oos, dict):
        cal = oos.get("calibration") or {}
        lines += ["## Out-of-scope rejection", "",
                  f"Predictions whose {'maximum softmax probability' if oos.get('method') == 'msp' else 'energy score'}"
                  f" is below {_fmt(oos.get('threshold'))} are answered `{oos.get('label')}`"
                  f" (calibrated for {json.dumps(oos.get('target'))}). On the calibration data: in-scope accuracy"
                  f" {_fmt(cal.get('in_scope_accuracy'))}, out-of-scope recall {_fmt(cal.get('out_of_scope_recall'))}."
                  " `textft.load` and `textft serve` apply it; plain `transformers.pipeline` does not.", ""]
    repo = repo_id or f"<user>/{name}"
    lines += ["## Usage", "", "```python", "from transformers import pipeline", "",
              f'classifier = pipeline("text-classification", model="{repo}")',
              'print(classifier("Replace me by any text you like."))', "```", "",
              "or, with length-sorted batching, long-text windows and out-of-scope rejection:", "",
              "```python", "import textft", "from huggingface_hub import snapshot_download", "",
              f'model = textft.load(snapshot_download("{repo}"))',
              'print(model.predict(["Replace me by any text you like."]))', "```", ""]
    hp = [("base model", shown_base), ("transfer", model_cfg.get("transfer")), ("max_length", data_cfg.get("max_length")),
          ("truncation", data_cfg.get("truncation")), ("epochs", train_cfg.get("epochs")),
          ("batch_size", train_cfg.get("batch_size")), ("lr", train_cfg.get("lr")), ("head_lr", train_cfg.get("head_lr")),
          ("warmup_ratio", train_cfg.get("warmup_ratio")), ("weight_decay", train_cfg.get("weight_decay")),
          ("seed", train_cfg.get("seed")), ("precision", (report or {}).get("precision")),
          ("optimizer steps", (report or {}).get("optimizer_steps")),
          ("train seconds", (report or {}).get("train_seconds"))]
    hp = [(k, v) for k, v in hp if v is not None]
    if hp:
        lines += ["## Training", "", "| setting | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in hp], ""]
        if (path / "textft_config.yaml").is_file():
            lines += ["The full resolved configuration is in `textft_config.yaml`.", ""]
    if report_md:
        body = report_md.strip()
        if body.startswith("# "):  # the report's own title; the card has one
            body = body.split("\n", 1)[1].strip() if "\n" in body else ""
        local = [base_name, (report or {}).get("data_source"), str(path.resolve()), *_strings(trained)]
        for p in sorted({str(x) for x in local if x and Path(str(x)).is_absolute()}, key=len, reverse=True):
            body = body.replace(p, Path(p).name)
        lines += ["## Evaluation report", "", _demote(body), ""]
    lines += ["## Limitations", "",
              "The scores above hold for data like the evaluation splits; check the model on your own data"
              " before relying on it, and keep in mind the licences of the base model and the training data.", ""]
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    return f"---\n{front}---\n\n" + "\n".join(lines)


def _write_text_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _hub_error(action: str, e: Exception) -> UserError:
    message = " ".join(str(e).split())[:300]
    # A library error message could quote a request header; never let a token reach the terminal.
    message = re.sub(r"hf_[A-Za-z0-9]{8,}", "hf_***", message)
    return UserError(f"could not {action}: {message}")


def push_problems(repo_id: str | None, key: str = "--repo-id") -> list[str]:
    """What would stop a push, found without contacting the Hub (training checks this before it starts)."""
    problems = []
    if HfApi is None:
        return ["pushing to the Hub needs huggingface_hub: pip install 'textft[hub]'"]
    rid = repo_id or ""
    if not re.fullmatch(r"[\w.-]+/[\w.-]+|[\w.-]+", rid) or "--" in rid or ".." in rid:
        problems.append(f"'{key}' must look like owner/name (letters, digits, '-', '_', '.'), got '{repo_id}'")
    if get_token() is None:  # only asks whether one exists; its value stays inside huggingface_hub
        problems.append("no Hugging Face token: set HF_TOKEN in the environment or run `hf auth login`")
    return problems


def push_to_hub(model_dir: str | Path, repo_id: str, private: bool = False, commit_message: str | None = None,
                write_card: bool = True, license: str | None = None) -> str:
    """Create ``repo_id`` on the Hub if needed and upload the model directory; returns the commit URL.

    README.md (the model card) is written into the directory first unless ``write_card`` is False.
    """
    from textft.inference import check_model_dir

    path, _, _ = check_model_dir(model_dir, allow_pickle=True)
    problems = push_problems(repo_id)
    if problems:
        raise UserError(problems)
    if write_card:
        _write_text_atomically(path / "README.md", model_card(path, license=license, repo_id=repo_id))
    elif not (path / "README.md").is_file():
        log.warning("%s has no README.md: the Hub page will have no model card", path)
    api = HfApi()
    try:
        repo = api.create_repo(repo_id=repo_id, private=private, exist_ok=True, repo_type="model")
    except Exception as e:  # huggingface_hub raises HTTP, connection and validation errors alike
        raise _hub_error(f"create the repository '{repo_id}'", e) from None
    try:
        commit = api.upload_folder(repo_id=getattr(repo, "repo_id", repo_id), folder_path=str(path), repo_type="model",
                                   commit_message=commit_message or f"Upload {path.name} with textft",
                                   ignore_patterns=IGNORE_PATTERNS)
    except Exception as e:  # as above
        raise _hub_error(f"upload '{path}' to '{repo_id}'", e) from None
    return str(getattr(commit, "commit_url", None) or getattr(repo, "url", None) or repo_id)


def push_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="textft push", description="Upload a trained classifier to the Hugging Face Hub with a model card.",
        epilog="The token comes from HF_TOKEN or `hf auth login`. Resume checkpoints and predictions/ stay local.")
    parser.add_argument("--model", required=True, help="output.dir of a textft train run")
    parser.add_argument("--repo-id", required=True, help="owner/name on the Hub (created if missing)")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--commit-message")
    parser.add_argument("--license", help="licence for the card (default: the base model's, else 'other')")
    parser.add_argument("--no-card", action="store_true", help="keep the directory's README.md as it is")
    parser.add_argument("--card-only", action="store_true", help="write README.md and print it; upload nothing")
    args = parser.parse_args(argv)
    if args.card_only:
        from textft.inference import check_model_dir

        path, _, _ = check_model_dir(args.model, allow_pickle=True)
        card = model_card(path, license=args.license, repo_id=args.repo_id)
        _write_text_atomically(path / "README.md", card)
        print(card)
        return 0
    url = push_to_hub(args.model, args.repo_id, private=args.private, commit_message=args.commit_message,
                      write_card=not args.no_card, license=args.license)
    print(f"pushed {args.model} to https://huggingface.co/{args.repo_id} ({url})")
    return 0
