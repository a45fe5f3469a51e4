"""The Hugging Face Hub: share a trained classifier (``textft.hub_download`` fetches one by its hub id).

``push_to_hub(DIR, NAME)`` writes README.md (the model card, ``textft.model_card``) into the model
directory and uploads the directory with ``huggingface_hub``. The token comes from the environment
(``HF_TOKEN``) or ``hf auth login``; textft never reads it into its own variables, prints it or
writes it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Iterator

from huggingface_hub import HfApi, get_token

from textft.model_dir import check_model_dir
from textft.errors import Problem, UserError
from textft.files import link_or_copy, replace_file
from textft.hub_download import hub_error, is_hub_id
from textft.lora import ADAPTER_CONFIG, ADAPTER_DIR, RECORD, is_adapter_dir
from textft.model_card import BUILTIN_HUB_NAMES, local_paths, model_card, without_local_paths
from textft.report import render_run_report, without_examples

log = logging.getLogger("textft")

# Resume states (optimizer moments), per-example predictions (they quote the evaluation texts,
# whose licence may not allow redistribution), the ONNX export cache (rebuilt wherever the model is
# loaded) and hidden temporary files stay local.
# A LoRA run's adapter/ is pushed on its own (textft push --adapter), never inside the merged model.
IGNORE_PATTERNS = ["checkpoints/*", "predictions/*", "onnx/*", "adapter/*", ".*", "**/.*"]


def repo_id_problems(repo_id: str | None, key: str = "--repo-id") -> list[Problem]:
    """Whether ``repo_id`` is a Hub repository id (owner/name or name)."""
    rid = repo_id or ""
    if not re.fullmatch(r"[\w.-]+/[\w.-]+|[\w.-]+", rid) or "--" in rid or ".." in rid:
        return [Problem(f"'{key}' must look like owner/name (letters, digits, '-', '_', '.'), got '{repo_id}'", key)]
    return []


def push_problems(repo_id: str | None, key: str = "--repo-id", token: str | None = None) -> list[Problem]:
    """What would stop a push, found without contacting the Hub (training checks this before it starts)."""
    problems = repo_id_problems(repo_id, key)
    if token is None and get_token() is None:  # only asks whether one exists; its value stays inside huggingface_hub
        problems.append(Problem("no Hugging Face token: set HF_TOKEN in the environment or run `hf auth login`",
                                kind="unavailable"))
    return problems


def write_model_card(model_dir: Path, license: str | None = None, repo_id: str | None = None,
                     include_examples: bool = False) -> str:
    """README.md (the model card) written into the model directory, atomically; returns its text."""
    text = str(model_card(model_dir, license=license, repo_id=repo_id, include_examples=include_examples))
    replace_file(Path(model_dir) / "README.md", text)
    return text


# Files read as text when published, to take the local paths out.
TEXT_SUFFIXES = (".json", ".jsonl", ".md", ".html", ".yaml", ".yml", ".txt", ".csv")


@contextlib.contextmanager
def publishable_copy(model_dir: Path, include_examples: bool = False) -> Iterator[Path]:
    """What ``push_to_hub`` uploads, as a hidden directory inside ``model_dir`` (removed afterwards):
    its files less ``IGNORE_PATTERNS``, text files without local paths (``local_paths``), and the
    run report without the evaluation texts it quotes unless ``include_examples``. Other files
    are hard links, so the weights are not copied; symbolic links are left out, so nothing outside
    the directory is published. The local files stay as they are."""
    from huggingface_hub.utils import filter_repo_objects

    paths = local_paths(model_dir)
    names = {}
    for folder, _, files in os.walk(model_dir):  # does not enter linked directories
        for f in files:
            names[(Path(folder) / f).relative_to(model_dir).as_posix()] = Path(folder) / f
    tmp = Path(tempfile.mkdtemp(prefix=".publish-", dir=model_dir))
    try:
        for name in filter_repo_objects(sorted(names), ignore_patterns=IGNORE_PATTERNS):
            src, dst = names[name], tmp / name
            if not stat.S_ISREG(src.lstat().st_mode):
                log.warning("not publishing %s: not a regular file (a symbolic link?)", src)
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.suffix.lower() in TEXT_SUFFIXES:
                dst.write_text(without_local_paths(src.read_text(encoding="utf-8", errors="replace"), paths),
                               encoding="utf-8")
            else:
                link_or_copy(src, dst)
        report = tmp / "report.json"
        if report.is_file() and not include_examples:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                texts = render_run_report(without_examples(json.loads(report.read_text(encoding="utf-8"))))
                for name, text in texts.items():
                    (tmp / name).write_text(without_local_paths(text, paths), encoding="utf-8")
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def adapter_to_push(model_dir: Path, key: str = "--model") -> Path:
    """The LoRA adapter directory of a run directory (its ``adapter/``), or ``model_dir`` itself when it is one."""
    for candidate in (model_dir, model_dir / ADAPTER_DIR):
        if is_adapter_dir(candidate):
            return candidate
    raise UserError(f"'{key}': '{model_dir}' has no LoRA adapter ({ADAPTER_DIR}/adapter_config.json): only runs with"
                    " model.transfer=lora write one (unless output.save_adapter=false); push the merged model"
                    " without --adapter")


def publish_base(adapter_copy: Path) -> None:
    """The adapter's base model as its Hub users reach it: a builtin base by its Hub name, a hub id as
    it is; a local directory keeps only its name (as every published path), with a warning."""
    file = adapter_copy / ADAPTER_CONFIG
    config = json.loads(file.read_text(encoding="utf-8"))
    record = json.loads((adapter_copy / RECORD).read_text(encoding="utf-8")) if (adapter_copy / RECORD).is_file() \
        else {}
    named = str((record.get("base_model") or {}).get("name_or_path") or config.get("base_model_name_or_path") or "")
    base = BUILTIN_HUB_NAMES.get(named, named)
    if is_hub_id(base) and not base.startswith("builtin:"):
        config["base_model_name_or_path"] = base
        file.write_text(json.dumps(config, indent=2), encoding="utf-8")
    else:
        log.warning("the adapter's base model is the local directory '%s': users of the adapter need it; train on"
                    " a Hub model to publish an adapter that loads anywhere", Path(named).name)


def push_to_hub(model_dir: str | Path, repo_id: str, private: bool = False, commit_message: str | None = None,
                write_card: bool = True, license: str | None = None, include_examples: bool = False,
                adapter: bool = False, repo_key: str = "--repo-id", token: str | None = None) -> str:
    """Create ``repo_id`` on the Hub if needed and upload the model directory; returns the commit URL.

    ``token`` pushes as its holder instead of with the environment's token (HF_TOKEN or a login).

    README.md (the model card) is written into the directory first unless ``write_card`` is False.
    What is uploaded names no local path and, unless ``include_examples``, quotes no evaluation
    text (see ``publishable_copy``). ``adapter``: upload the LoRA adapter instead of the merged model
    (``adapter_to_push``); so does a ``model_dir`` that is an adapter directory.
    """
    path, _, _ = check_model_dir(model_dir, allow_pickle=True)
    if adapter or is_adapter_dir(path):
        path = adapter_to_push(path)
    problems = push_problems(repo_id, key=repo_key, token=token)
    if problems:
        raise UserError(problems)
    if write_card:
        write_model_card(path, license=license, repo_id=repo_id, include_examples=include_examples)
    elif not (path / "README.md").is_file():
        log.warning("%s has no README.md: the Hub page will have no model card", path)
    api = HfApi(**({"token": token} if token else {}))  # none given: huggingface_hub finds HF_TOKEN / the login
    try:
        repo = api.create_repo(repo_id=repo_id, private=private, exist_ok=True, repo_type="model")
    except Exception as e:  # huggingface_hub raises HTTP, connection and validation errors alike
        raise hub_error(f"create the repository '{repo_id}'", e) from None
    with publishable_copy(path, include_examples) as folder:
        if is_adapter_dir(folder):
            publish_base(folder)
        try:
            commit = api.upload_folder(repo_id=getattr(repo, "repo_id", repo_id), folder_path=str(folder),
                                       repo_type="model", commit_message=commit_message or f"Upload {path.name} with textft",
                                       ignore_patterns=IGNORE_PATTERNS)
        except Exception as e:  # as above
            raise hub_error(f"upload '{path}' to '{repo_id}'", e) from None
    return str(getattr(commit, "commit_url", None) or getattr(repo, "url", None) or repo_id)
