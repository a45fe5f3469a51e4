"""Models named by a Hugging Face Hub id: telling an id from a local path, and downloading the files
a classifier needs into the Hugging Face cache (``textft.hub`` shares a trained one)."""

from __future__ import annotations

import re
from pathlib import Path

from huggingface_hub import snapshot_download
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import LocalEntryNotFoundError

from textft.errors import UserError, one_line

MODEL_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "textft_config.yaml", "README.md"]
"""What a classifier needs from its repository (weights, config, tokenizer, textft's run config)."""


def is_hub_id(name: str | None) -> bool:
    """A plausible Hub repository id (``name`` or ``owner/name``), not a local path."""
    return bool(name) and not name.startswith((".", "/", "~")) and not Path(name).exists() \
        and re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name) is not None


def download_model(repo_id: str, allow_pickle: bool = False, trust_remote_code: bool = False,
                   key: str = "--model") -> Path:
    """The local snapshot of a model repository (from the Hugging Face cache when it is there).

    Pickle weights are fetched only with ``allow_pickle`` and model code only with
    ``trust_remote_code``: what is not downloaded cannot run.
    """
    patterns = MODEL_FILES + (["*.bin"] if allow_pickle else []) + (["*.py"] if trust_remote_code else [])
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except LocalEntryNotFoundError as e:
        if hub_constants.is_offline_mode():
            raise UserError(f"'{key}': '{repo_id}' is not a local directory and not in the Hugging Face cache,"
                            " and HF_HUB_OFFLINE=1 forbids downloading it from the Hub; unset HF_HUB_OFFLINE"
                            " (or download it where the Hub is reachable) or pass a model directory", key,
                            "unavailable") from None
        raise UserError(f"'{key}': '{repo_id}' is not a local directory, and the Hugging Face Hub could not be"
                        f" reached to download it: {one_line(e)}", key, "upstream") from None
    except Exception as e:  # huggingface_hub raises HTTP, validation and repository errors alike
        raise hub_error(f"download '{repo_id}' (not a local directory) from the Hugging Face Hub", e,
                         prefix=f"'{key}': ", field=key) from None


def hub_error(action: str, e: Exception, prefix: str = "", field: str | None = None) -> UserError:
    """A failure of the Hub (``upstream``), worded as what could not be done."""
    # A library error message could quote a request header; never let a token reach the terminal.
    message = re.sub(r"hf_[A-Za-z0-9]{8,}", "hf_***", one_line(e))
    return UserError(f"{prefix}could not {action}: {message}", field, "upstream")
