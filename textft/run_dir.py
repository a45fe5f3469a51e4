"""The output directory of a run: which directories textft may write into, replace or resume in, and
the evaluation files a run (or ``textft evaluate --output``) leaves there.

A directory textft train made carries a marker file; ``output.overwrite`` replaces only such a
directory (or an empty one), and a run resumes only inside one. Nothing above the working, home or
root directory is ever used, so a mistyped ``output.dir=.`` cannot empty a project.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from textft.errors import UserError
from textft.files import replace_file, write_jsonl

RUN_MARKER = ".textft-run"
"""File that marks a directory textft train created: the only kind output.overwrite may delete."""


def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` is a directory textft train made: its marker, or the config plus model or
    training log that runs of earlier versions (before the marker) left."""
    path = Path(path)
    if (path / RUN_MARKER).is_file():
        return True
    return (path / "textft_config.yaml").is_file() and any(
        (path / name).exists() for name in ("config.json", "train_log.jsonl", "checkpoints"))


def protected_dir_problem(path: str | Path, key: str = "output.dir") -> str | None:
    """A problem when ``path`` is, or contains, the current, the home or the root directory."""
    target = Path(path).expanduser().resolve()
    for name, place in (("the root directory", Path(target.anchor)), ("your home directory", Path.home()),
                        ("the current directory", Path.cwd())):
        place = place.resolve()
        if target == place or target in place.parents:
            what = "is" if target == place else "contains"
            return (f"'{key}': '{path}' {what} {name} ({place}); textft writes its runs into a directory"
                    " of their own, such as runs/NAME")
    return None


def check_output_dir(path: str | Path, overwrite: bool, resuming: bool = False) -> str | None:
    """A problem with using ``path`` as the output directory of a run, or None.

    A fresh run needs a new or empty directory; ``overwrite`` also allows one textft made (it is
    replaced), and a resumed run continues in one textft made. A directory of anything else is
    never deleted or written into.
    """
    if problem := protected_dir_problem(path):
        return problem
    path = Path(path)
    if path.exists() and not path.is_dir():
        return f"'output.dir': '{path}' exists and is not a directory"
    if not path.is_dir() or not any(path.iterdir()):
        return None
    if resuming and not is_run_dir(path):
        return (f"'train.resume_from': output.dir '{path}' is not a textft run directory (it has no {RUN_MARKER}"
                " nor textft_config.yaml with a model or training log); a run resumes only in the output.dir"
                " of the run that wrote its checkpoints")
    if resuming:
        return None
    if not overwrite:
        return (f"'output.dir': '{path}' exists and is not empty; choose another directory or set"
                " output.overwrite=true to replace it")
    if not is_run_dir(path):
        return (f"'output.overwrite': '{path}' is not a directory textft train created (it has no {RUN_MARKER}"
                " nor textft_config.yaml with a model or training log), so it is not deleted; choose another"
                " output.dir or empty it yourself")
    return None


def prepare_output_dir(path: str | Path, overwrite: bool, resuming: bool) -> None:
    """Check ``path`` once more (it may have changed since the preflight), replace it when asked, and
    mark it as textft's own."""
    if problem := check_output_dir(path, overwrite, resuming):
        raise UserError(problem)
    path = Path(path)
    if overwrite and not resuming and path.is_dir() and any(path.iterdir()):
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / RUN_MARKER).write_text(json.dumps({"created_by": "textft train"}) + "\n")


def write_reports(out_dir: str | Path, reports: dict[str, dict[str, Any]], task, extra: dict[str, Any] | None = None,
                  title: str = "Evaluation") -> None:
    """``eval_report.json`` (all numbers, and the task they describe) and ``eval_report.md`` (tables) in
    ``out_dir``."""
    out_dir = Path(out_dir)
    replace_file(out_dir / "eval_report.json", json.dumps({"splits": reports, "task": task.name, **(extra or {})},
                                                          indent=2))
    replace_file(out_dir / "eval_report.md", task.markdown_report(reports, title))


def write_predictions(out_dir: Path, predictions: dict[str, list[dict]]) -> None:
    """``predictions/<split>.jsonl``: the per-example record behind every number in the report."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, rows in predictions.items():
        write_jsonl(out_dir / f"{split}.jsonl", rows)
