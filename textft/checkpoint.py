"""Writing the final model so that a reader never sees a half-written directory."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from textft.config import UserError

log = logging.getLogger("textft")


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


def write_atomically(out_dir: str | Path, write: Callable[[Path], None], keep: tuple[str, ...] = ()) -> Path:
    """Build the directory's new contents in a temporary sibling, then swap it into place.

    ``write(tmp)`` fills the new directory. Entries of the old directory named in ``keep`` (logs,
    resume checkpoints) are renamed across, which is instant at any size. Until the final rename
    the old model files stay whole, so an interrupted save leaves either the previous model or the
    complete new one, never a mix.
    """
    out_dir = Path(out_dir).resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        write(tmp)
        for name in keep:
            if (out_dir / name).exists() and not (tmp / name).exists():
                os.replace(out_dir / name, tmp / name)
        old = None
        if out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"could not write '{out_dir}': {e.strerror or e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def save_model(dst: Path, model, tokenizer) -> None:
    """The standard ``save_pretrained`` layout: safetensors weights, config with id2label, tokenizer."""
    model.save_pretrained(dst, safe_serialization=True)
    tokenizer.save_pretrained(dst)


# --- resumable checkpoints -------------------------------------------------------------------

MANIFEST = "textft_checkpoint.json"
STEP_DIR = re.compile(r"^step-(\d+)$")


def _manifest(path: Path) -> dict:
    files = {str(f.relative_to(path)): f.stat().st_size for f in sorted(path.rglob("*")) if f.is_file()}
    return {"files": files}


def checkpoint_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete checkpoint (missing manifest, missing or truncated file), or None."""
    manifest = path / MANIFEST
    if not manifest.is_file():
        return "no manifest (the save did not finish)"
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError):
        return "unreadable manifest"
    for name, size in files.items():
        f = path / name
        if not f.is_file():
            return f"missing file {name}"
        if f.stat().st_size != size:
            return f"file {name} has {f.stat().st_size} bytes, expected {size}"
    return None


def latest_checkpoint(root: Path) -> Path | None:
    """Newest complete ``step-N`` directory under ``root``; incomplete ones are skipped with a warning."""
    if not root.is_dir():
        return None
    steps = sorted(((int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name))), reverse=True)
    for _, path in steps:
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        log.warning("skipping checkpoint %s: %s", path, problem)
    return None


def save_checkpoint(accelerator, root: Path, step: int, keep: int) -> Path:
    """``accelerator.save_state`` into a temporary directory, a manifest last, then rename to ``step-N``.

    Every rank calls this (RNG states are per rank); only the main process renames and prunes.
    A write error leaves the earlier checkpoints untouched and surfaces as one UserError.
    """
    final, tmp = root / f"step-{step}", root / f".tmp-step-{step}"
    try:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            root.mkdir(parents=True, exist_ok=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            (tmp / MANIFEST).write_text(json.dumps(_manifest(tmp)))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            done = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)))
            for _, old in done[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"could not write checkpoint '{final}': {e.strerror or e}; earlier checkpoints are intact") \
            from None
    accelerator.wait_for_everyone()
    return final


def save_best(accelerator, model, root: Path, info: dict) -> None:
    """The best weights so far, in ``root/best`` (swapped in atomically), with what made them best."""
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)

        def write(tmp: Path) -> None:
            unwrapped.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
            (tmp / "best.json").write_text(json.dumps(info))

        write_atomically(root / "best", write)
    accelerator.wait_for_everyone()


def load_best(accelerator, model, root: Path) -> dict | None:
    """Load ``root/best`` weights into ``model`` on every rank; returns its info, or None if absent."""
    from safetensors.torch import load_file

    best = root / "best"
    if not (best / "best.json").is_file():
        return None
    unwrapped = accelerator.unwrap_model(model)
    missing, unexpected = unwrapped.load_state_dict(load_file(best / "model.safetensors"), strict=False)
    if unexpected or [k for k in missing if k in dict(unwrapped.named_parameters())]:
        raise RuntimeError(f"best checkpoint does not match the model: missing {missing}, unexpected {unexpected}")
    return json.loads((best / "best.json").read_text())
