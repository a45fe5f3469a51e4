"""Writing the final model so that a reader never sees a half-written directory."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

from textft.errors import UserError
from textft.files import write_atomically

log = logging.getLogger("textft")


def check_output_dir(path: str | Path, overwrite: bool) -> str | None:
    """A problem with using ``path`` as a fresh output directory, or None."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        return f"'output.dir': '{path}' exists and is not a directory"
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        return (f"'output.dir': '{path}' exists and is not empty; choose another directory or set"
                " output.overwrite=true to replace it")
    return None


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
