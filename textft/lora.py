"""LoRA through Hugging Face peft: which layers get adapters, the wrapped model that trains them,
the best-so-far adapter state, and the adapter directory (peft's format) with its base reference.

A LoRA run trains a ``PeftModelForSequenceClassification``: low-rank adapters in the encoder's
linear layers, and the head (with ``lora_train_pooler`` the pooler too) trained in full through
peft's ``modules_to_save``. Its exported model has the adapters merged in, so it is a plain
``save_pretrained`` classifier; ``write_adapter`` also writes the adapter alone, which
``load_adapter_model`` puts back on the base model named in it.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

from torch import nn

from textft.config_schema import ModelConfig
from textft.config_checks import LORA_ALL_LINEAR, lora_targets
from textft.errors import UserError, closest, one_line
from textft.modeling import core_model, encoder_parts, resolve_model_path

log = logging.getLogger("textft")

ADAPTER_DIR = "adapter"
"""Subdirectory of a run directory that holds the adapter alone (``output.save_adapter``)."""
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
RECORD = "textft_adapter.json"
"""textft's record of an adapter: the base model it belongs on and the classifier's config (labels,
task settings). Not named config.json: transformers would then take the directory for a full model."""
RECORD_FORMAT = 1
INSTALL_HINT = "pip install 'textft[lora]'"


def import_peft():
    try:
        import peft
    except ImportError:
        raise UserError(f"LoRA (model.transfer=lora, adapter directories) needs the peft library; install it"
                        f" with: {INSTALL_HINT}") from None
    return peft


def is_peft_model(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


# --- which layers ------------------------------------------------------------------------------


def layer_linear_names(model: nn.Module) -> list[str]:
    """Names of the linear layers inside one encoder layer (BERT: attention.self.query, ..., output.dense)."""
    _, layers = encoder_parts(model)
    return [name for name, mod in layers[0].named_modules() if isinstance(mod, nn.Linear)]


def shown_names(names: list[str]) -> list[str]:
    """Each name by its shortest ending that no other name shares (query, attention.output.dense, ...)."""
    shown = []
    for name in names:
        parts = name.split(".")
        endings = [".".join(parts[i:]) for i in range(len(parts) - 1, -1, -1)]
        shown.append(next((e for e in endings if sum(n == e or n.endswith("." + e) for n in names) == 1), name))
    return shown


def target_problems(model: nn.Module, targets: list[str] | str) -> list[str]:
    """Every name of ``model.lora_target_modules`` that matches no linear layer of the encoder."""
    if targets == LORA_ALL_LINEAR:
        return []
    names = layer_linear_names(model)
    endings = {".".join(n.split(".")[i:]) for n in names for i in range(len(n.split(".")))}
    listed = ", ".join(shown_names(names))
    return [f"'model.lora_target_modules': the encoder layers of {type(model).__name__} have no linear layer"
            f" named '{t}'{closest(t, sorted(endings))}; they have: {listed} (or use {LORA_ALL_LINEAR})"
            for t in targets if t not in endings]


def target_module_names(model: nn.Module, targets: list[str] | str) -> list[str]:
    """Full names of the encoder's linear layers that ``targets`` selects: given to peft one by one, so
    that a name like ``dense`` cannot also catch the pooler or the head."""
    prefix = {id(m): name for name, m in model.named_modules()}
    _, layers = encoder_parts(model)
    selected = []
    for layer in layers:
        for name, mod in layer.named_modules():
            if isinstance(mod, nn.Linear) and (targets == LORA_ALL_LINEAR or any(
                    name == t or name.endswith("." + t) for t in targets)):
                selected.append(f"{prefix[id(layer)]}.{name}")
    return selected


def full_modules(model: nn.Module, train_pooler: bool) -> list[str]:
    """Modules trained in full: the classifier's modules outside its encoder (the head) and, with
    ``train_pooler``, the encoder's own modules besides its embeddings and layer stack (the pooler)."""
    embeddings, layers = encoder_parts(model)
    inside = {id(p) for layer in layers for p in layer.parameters()}
    if embeddings is not None:
        inside |= {id(p) for p in embeddings.parameters()}
    names = []
    for name, child in model.named_children():
        if name != model.base_model_prefix:
            names += [name] if any(True for _ in child.parameters()) else []
        elif train_pooler:
            names += [f"{name}.{sub}" for sub, mod in child.named_children()
                      if any(True for _ in mod.parameters()) and not any(id(p) in inside for p in mod.parameters())]
    return names


# --- training ---------------------------------------------------------------------------------


def wrap(model: nn.Module, cfg: ModelConfig, base_name: str):
    """``model`` with adapters on the targeted layers, everything else frozen but the head (peft).
    ``base_name``: where the base model is, as the adapter will name it (a local one absolute)."""
    peft = import_peft()
    base_name = str(Path(base_name).resolve()) if Path(base_name).is_dir() else base_name
    targets = lora_targets(cfg.lora_target_modules)
    if problems := target_problems(model, targets):
        raise UserError(problems)
    hidden = getattr(model.config, "hidden_size", None)
    if hidden and cfg.lora_rank > hidden:
        raise UserError(f"'model.lora_rank' {cfg.lora_rank} exceeds the encoder's hidden size ({hidden}): an"
                        " adapter of that rank is a full matrix; use a rank below it (8-64 is typical)")
    config = peft.LoraConfig(task_type=peft.TaskType.SEQ_CLS, r=cfg.lora_rank, lora_alpha=cfg.lora_alpha,
                             lora_dropout=cfg.lora_dropout, target_modules=target_module_names(model, targets),
                             modules_to_save=(full := full_modules(model, cfg.lora_train_pooler)),
                             base_model_name_or_path=base_name, revision=cfg.revision)
    wrapped = peft.get_peft_model(model, config)
    log.info("LoRA: rank %d, alpha %g, dropout %g on %d linear layers (%s); trained in full: %s", cfg.lora_rank,
             cfg.lora_alpha, cfg.lora_dropout, len(config.target_modules), cfg.lora_target_modules,
             ", ".join(full))
    return wrapped


def adapter_state(model, state_dict: dict | None = None) -> dict:
    """The adapter's tensors (LoRA matrices and the modules trained in full), as peft saves them."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(model, state_dict=state_dict)


def load_adapter_state(model, tensors: dict) -> None:
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, tensors)
    unexpected = getattr(result, "unexpected_keys", None) or []
    if unexpected:
        raise RuntimeError(f"adapter state does not match the model: unexpected {unexpected[:3]}")


def merge(model):
    """The plain classifier with the adapters added into its weights (the wrapper is gone)."""
    if not is_peft_model(model):
        return model
    with warnings.catch_warnings():  # merged already for the final evaluation: peft says so
        warnings.filterwarnings("ignore", message="All adapters are already merged")
        return model.merge_and_unload()


# --- the adapter directory --------------------------------------------------------------------


def write_adapter(model, dst: Path, tokenizer, base: dict) -> None:
    """``dst``: the adapter in peft's format (adapter_config.json, adapter_model.safetensors with the
    head), the tokenizer, and textft's record (``base``: the base model's name as configured, its
    revision; the classifier's config). ``model`` is the peft model; its base weights may hold the
    adapters merged in already (merge_adapter): only the adapter's own tensors are written."""
    model.save_pretrained(dst, safe_serialization=True)
    (dst / "README.md").unlink(missing_ok=True)  # peft's empty template; textft push writes a card
    tokenizer.save_pretrained(dst)
    classifier = core_model(model).config.to_dict()
    record = {"format": RECORD_FORMAT, "base_model": base, "classifier_config": classifier}
    (dst / RECORD).write_text(json.dumps(record, indent=1, default=str))


def is_adapter_dir(path: Path) -> bool:
    return (path / ADAPTER_CONFIG).is_file()


def check_adapter_dir(path: Path, key: str = "--model") -> None:
    """An adapter textft loads has safetensors weights: peft reads adapter_model.bin with torch.load,
    and a crafted pickle runs code."""
    if not (path / ADAPTER_WEIGHTS).is_file():
        pickled = " (only adapter_model.bin, a pickle: convert it to safetensors)" \
            if (path / "adapter_model.bin").is_file() else ""
        raise UserError(f"'{key}': the adapter '{path}' has no {ADAPTER_WEIGHTS}{pickled}")


def read_record(path: Path, key: str = "--model") -> dict:
    """textft's record of the adapter in ``path``; one written by other tools has none (empty dict)."""
    file = path / RECORD
    if not file.is_file():
        return {}
    try:
        record = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"'{key}': '{file}' is not valid JSON: {one_line(e)}") from None
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        raise UserError(f"'{key}': '{file}' is not a textft adapter record of format {RECORD_FORMAT}")
    return record


def base_reference(path: Path, key: str = "--model") -> tuple[str, str | None]:
    """Where the base model of the adapter in ``path`` is: a local directory or hub id, and its revision.
    A builtin base (``builtin:minilm``) is found wherever textft is installed; otherwise the
    adapter_config.json's base_model_name_or_path, as peft and transformers read it."""
    try:
        config = json.loads((path / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise UserError(f"'{key}': '{path / ADAPTER_CONFIG}' cannot be read: {one_line(e)}") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        raise UserError(f"'{key}': '{path}' holds a {config.get('peft_type') if isinstance(config, dict) else '?'}"
                        " adapter; textft loads LoRA adapters")
    named = (read_record(path, key).get("base_model") or {}).get("name_or_path")
    if isinstance(named, str) and named.startswith("builtin:"):
        return resolve_model_path(named), None
    base = config.get("base_model_name_or_path")
    if not base:
        raise UserError(f"'{key}': '{path / ADAPTER_CONFIG}' names no base model (base_model_name_or_path)")
    return base, config.get("revision")


def adapter_classifier_config(path: Path, key: str = "--model") -> dict:
    """The config of the classifier an adapter directory makes (labels, task settings): textft's
    record of it, else (an adapter from other tools) its base model's config."""
    check_adapter_dir(path, key)
    if classifier := read_record(path, key).get("classifier_config"):
        return classifier
    from transformers import AutoConfig

    base, revision = base_reference(path, key)
    try:
        return AutoConfig.from_pretrained(base, revision=revision).to_dict() | {
            "architectures": ["AutoModelForSequenceClassification"]}
    except (OSError, ValueError) as e:
        raise UserError(f"'{key}': could not read the config of the adapter's base model '{base}':"
                        f" {one_line(e)}") from None


def load_adapter_model(path: Path, key: str = "--model"):
    """The classifier of an adapter directory: its base model with the adapter merged in, and the
    tokenizer saved with the adapter (else the base's)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    peft = import_peft()
    base, revision = base_reference(path, key)
    classifier = read_record(path, key).get("classifier_config")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the base lacks the head the adapter brings: that report is noise
    try:
        if classifier:
            config = AutoConfig.for_model(**classifier)
            model = AutoModelForSequenceClassification.from_pretrained(base, config=config, revision=revision,
                                                                       ignore_mismatched_sizes=True)
        else:  # an adapter from elsewhere: the base's config, and peft's head shape must agree with it
            model = AutoModelForSequenceClassification.from_pretrained(base, revision=revision)
        model = peft.PeftModel.from_pretrained(model, str(path)).merge_and_unload()
        tokenizer = AutoTokenizer.from_pretrained(path if (path / "tokenizer_config.json").is_file() else base)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise UserError(f"'{key}': could not load the adapter '{path}' on its base model '{base}':"
                        f" {one_line(e)}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    return model.eval(), tokenizer
