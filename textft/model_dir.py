"""A saved model directory as textft reads it: the checks before any weights load (a sequence
classifier, safetensors unless pickle is allowed, a LoRA adapter with its base) and the training
config a textft run keeps beside the model."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from textft.errors import UserError, one_line
from textft.hub_download import download_model, is_hub_id
from textft.lora import adapter_classifier_config, is_adapter_dir

log = logging.getLogger("textft")


def check_model_dir(model: str | Path, allow_pickle: bool = False, trust_remote_code: bool = False,
                    key: str = "--model") -> tuple[Path, dict, bool]:
    """The model directory (a hub id is downloaded first), its config.json and whether its weights
    are safetensors; refuses anything that is not a sequence classifier, and pickle weights unless
    ``allow_pickle``."""
    path = Path(model).expanduser()
    if not path.exists() and is_hub_id(str(model)):
        path = download_model(str(model), allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, key=key)
    if not path.exists():
        raise UserError(f"'{key}': directory '{model}' does not exist")
    if not path.is_dir():
        raise UserError(f"'{key}': '{model}' is a file, not a model directory")
    if is_adapter_dir(path):  # a LoRA adapter: its base model is loaded with it
        return path, adapter_classifier_config(path, key), True
    if not (path / "config.json").is_file():
        raise UserError(f"'{key}': '{model}' is not a saved model directory (no config.json);"
                        " pass the output.dir of a textft train run")
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"'{key}': '{path / 'config.json'}' is not valid JSON: {one_line(e)}") from None
    if not isinstance(config, dict):
        raise UserError(f"'{key}': '{path / 'config.json'}' must hold a JSON object")
    archs = [str(a) for a in config.get("architectures") or []]
    if not any(a.endswith("ForSequenceClassification") for a in archs):
        raise UserError(f"'{key}': '{model}' is not a text classifier (architectures: {', '.join(archs) or 'none'});"
                        " expected a *ForSequenceClassification checkpoint such as textft train writes")
    safetensors = any((path / n).is_file() for n in ("model.safetensors", "model.safetensors.index.json"))
    pickled = any((path / n).is_file() for n in ("pytorch_model.bin", "pytorch_model.bin.index.json"))
    if not safetensors and not pickled:
        raise UserError(f"'{key}': '{model}' has no weights (model.safetensors)")
    if not safetensors and not allow_pickle:
        raise UserError(f"'{key}': '{model}' holds only pickle-format weights (pytorch_model.bin), which can"
                        " run arbitrary code when loaded; convert them to safetensors, or pass --allow-pickle"
                        " (allow_pickle=True) if you trust where they came from")
    return path, config, safetensors


def training_config(path: Path) -> dict:
    """The resolved config a textft run saved next to the model ({} for other checkpoints)."""
    import yaml

    file = path / "textft_config.yaml"
    if not file.is_file():
        return {}
    try:
        cfg = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        log.warning("ignoring unreadable %s: %s", file, one_line(e))
        return {}
    return cfg if isinstance(cfg, dict) else {}
