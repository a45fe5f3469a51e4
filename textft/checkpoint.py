"""Writing the final model so that a reader never sees a half-written directory."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from textft.config import UserError


def check_output_dir(path: str | Path, overwrite: bool) -> str | None:
    """A problem with using ``path`` as a fresh output directory, or None."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        return f"'output.dir': '{path}' exists and is not a directory"
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        return (f"'output.dir': '{path}' exists and is not empty; choose another directory or set"
                " output.overwrite=true to replace it")
    return None


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
