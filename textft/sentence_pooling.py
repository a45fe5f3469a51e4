"""Read a sentence-transformers encoder through its own pooling inside a plain sequence classifier.

A sentence-transformers model (all-MiniLM-L6-v2, the bundled one) was trained to be read through the
mean of its last token states (or its last [CLS] state), not through the [CLS] pooler that
``BertForSequenceClassification``'s head reads: on Banking77 with 8 examples per intent, a logistic
regression on the frozen mean scored 0.836 against 0.735-0.756 on the pooler output
(benchmarks/few_shot_features.py). A sequence classifier has no mean-pooling option, so the mean is
written as one more encoder layer with fixed weights:

- queries and keys are zero, so every token attends uniformly to the unmasked tokens ([CLS] and [SEP]
  included, as sentence-transformers pools), and the values are the identity: the attention output of
  every position is the mean of the last token states;
- the attention output dense is ``MEAN_SCALE`` x identity, so after the residual the [CLS] state weighs
  1 / ``MEAN_SCALE`` of the mean and the LayerNorm gives LayerNorm(mean) up to that share;
- the feed-forward block is zero, so its residual LayerNorm keeps that.

The pooler's dense then becomes identity / sqrt(hidden size): LayerNorm(mean) has unit variance per
dimension, so the pooler's tanh sees values around 1 / sqrt(hidden size), where it is nearly linear, and
the head reads a close to unit-length copy of the sentence embedding (cosine to sentence-transformers'
own mean 0.9993 or more on the bundled model). The checkpoint stays a plain ``save_pretrained``
classifier with one more layer: ``pipeline`` and ``AutoModelForSequenceClassification`` read it as any
other.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import torch
from torch import nn

MEAN_SCALE = 1000.0
"""Weight of the mean against the [CLS] state's residual in the added layer."""
POOLING_FILE = "1_Pooling/config.json"


def declared_pooling(path: str, revision: str | None = None) -> str | None:
    """``mean`` or ``cls`` when the model at ``path`` (directory or hub name) is a sentence-transformers
    model pooled that way, else None (not one, another pooling, or its pooling file cannot be read)."""
    local = Path(path) / POOLING_FILE
    try:
        if local.is_file():
            text = local.read_text(encoding="utf-8")
        elif Path(path).is_dir():
            return None
        else:
            from huggingface_hub import hf_hub_download

            text = Path(hf_hub_download(path, POOLING_FILE, revision=revision)).read_text(encoding="utf-8")
        modes = json.loads(text)
    except Exception:  # unreadable, not JSON, not on the hub, offline: the model declares no pooling
        return None
    if not isinstance(modes, dict):
        return None
    chosen = [key for key, on in modes.items() if key.startswith("pooling_mode_") and on]
    return {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}.get(chosen[0]) \
        if len(chosen) == 1 else None


def _bert_parts(model: nn.Module):
    """(encoder layers, pooler dense) of a BERT-shaped classifier, or None."""
    base = getattr(model, getattr(model, "base_model_prefix", ""), None)
    encoder, pooler = getattr(base, "encoder", None), getattr(base, "pooler", None)
    layers = getattr(encoder, "layer", None)
    dense = getattr(pooler, "dense", None)
    if not isinstance(layers, nn.ModuleList) or not len(layers) or not isinstance(dense, nn.Linear):
        return None
    last = layers[-1]
    try:
        attention = last.attention
        needed = (attention.self.query, attention.self.key, attention.self.value, attention.output.dense,
                  attention.output.LayerNorm, last.intermediate.dense, last.output.dense, last.output.LayerNorm)
    except AttributeError:
        return None
    if not all(isinstance(m, (nn.Linear, nn.LayerNorm)) for m in needed):
        return None
    return layers, dense


def unsupported_reason(model: nn.Module, pooling: str | None) -> str | None:
    """Why ``apply`` cannot read ``model`` through ``pooling``, or None."""
    if pooling is None:
        return "the model declares no sentence-transformers pooling (mean or cls)"
    if _bert_parts(model) is None:
        return f"{type(model).__name__} is not BERT-shaped (encoder layers with attention and a pooler dense)"
    return None


@torch.no_grad()
def _mean_layer(template: nn.Module, hidden: int) -> nn.Module:
    layer = copy.deepcopy(template)
    attention = layer.attention
    eye = torch.eye(hidden, dtype=attention.self.value.weight.dtype)
    for linear in (attention.self.query, attention.self.key, layer.intermediate.dense, layer.output.dense):
        linear.weight.zero_()
        if linear.bias is not None:
            linear.bias.zero_()
    attention.self.value.weight.copy_(eye)
    attention.output.dense.weight.copy_(MEAN_SCALE * eye)
    for linear in (attention.self.value, attention.output.dense):
        if linear.bias is not None:
            linear.bias.zero_()
    for norm in (attention.output.LayerNorm, layer.output.LayerNorm):
        norm.weight.fill_(1.0)
        norm.bias.zero_()
    return layer


@torch.no_grad()
def apply(model: nn.Module, pooling: str) -> None:
    """Make ``model``'s head read its sentence embedding (``pooling`` as declared: mean or cls), in place:
    the mean layer (mean only) and the near-identity pooler. Both are frozen: they are the reading, not
    something to learn from a handful of examples."""
    parts = _bert_parts(model)
    if parts is None or pooling not in ("mean", "cls"):
        raise ValueError(unsupported_reason(model, pooling) or f"unknown pooling {pooling!r}")
    layers, dense = parts
    hidden = dense.in_features
    frozen = [dense]
    if pooling == "mean":
        layers.append(_mean_layer(layers[-1], hidden))
        model.config.num_hidden_layers = len(layers)
        frozen.append(layers[-1])
    dense.weight.copy_(torch.eye(hidden, dtype=dense.weight.dtype) / math.sqrt(hidden))
    if dense.bias is not None:
        dense.bias.zero_()
    for module in frozen:
        module.requires_grad_(False)
