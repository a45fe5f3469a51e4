"""Padding-free (flattened) training batches for BERT classifiers: every text of a batch laid end
to end in one row, attention restricted to each text by variable-length attention, and the pooled
first token gathered per text.

On CUDA the attention is ``torch.nn.attention.varlen.varlen_attn`` (FlashAttention's varlen kernel);
elsewhere each text's attention runs as its own ``scaled_dot_product_attention`` call, which is
exact but slow and exists so that the equivalence with padded batches can be checked on any
machine. varlen_attn has no dropout on the attention probabilities, so padding-free training runs
without it (the hidden-state dropout is unchanged).
"""

from __future__ import annotations

import types

import torch

ATTENTION = "textft_varlen"
_registered = False


def unavailable_reason(model=None, device: torch.device | None = None) -> str | None:
    """Why padding-free batches cannot run for ``model`` on ``device``, or None when they can."""
    if model is not None and getattr(model.config, "model_type", None) != "bert":
        return f"padding-free batches support BERT classifiers only, not {model.config.model_type}"
    if device is not None and device.type != "cuda":
        return "padding-free batches need a CUDA GPU (varlen attention); on a CPU padding is already small"
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return f"this torch ({torch.__version__}) has no torch.nn.attention.varlen"
    return None


def _varlen(query, key, value, cu, max_len, scaling):
    """Attention within each segment of a flattened batch; tensors are (tokens, heads, dim)."""
    if query.is_cuda:
        from torch.nn.attention.varlen import varlen_attn

        return varlen_attn(query, key, value, cu, cu, max_len, max_len, scale=scaling)
    out = torch.empty_like(query)
    bounds = cu.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        q, k, v = (t[start:end].transpose(0, 1) for t in (query, key, value))
        out[start:end] = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scaling).transpose(0, 1)
    return out


def _attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:  # an ordinary padded batch (evaluation): plain SDPA with its mask
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    # BERT hands (1, heads, tokens, dim); varlen attention wants (tokens, heads, dim)
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))
    out = _varlen(q, k, v, cu, int(kwargs["max_length_q"]), scaling)
    return out.unsqueeze(0), None


def _mask(*args, attention_mask=None, **kwargs):
    if attention_mask is None:  # flattened batch: the segments are the mask
        return None
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def register() -> None:
    global _registered
    if not _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface

        AttentionInterface.register(ATTENTION, _attention)
        AttentionMaskInterface.register(ATTENTION, _mask)
        _registered = True


def enable(model) -> None:
    """Let ``model`` take flattened batches (``flatten`` output) as well as padded ones."""
    register()
    model.config._attn_implementation = ATTENTION
    padded_forward = model.forward

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, **kwargs):
        if "cu_seq_lens_q" not in kwargs:
            return padded_forward(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                                  position_ids=position_ids, **kwargs)
        from transformers.modeling_outputs import SequenceClassifierOutput

        cu = kwargs["cu_seq_lens_q"]
        base = self.base_model
        hidden = base(input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids,
                      **kwargs).last_hidden_state[0]
        first = hidden[cu[:-1].long()].unsqueeze(1)  # each text's [CLS], as (texts, 1, hidden)
        pooled = base.pooler(first) if base.pooler is not None else first[:, 0]
        return SequenceClassifierOutput(logits=self.classifier(self.dropout(pooled)))

    model.forward = types.MethodType(forward, model)


def flatten(features: list[dict]) -> dict:
    """Collate tokenized examples into one row: ids end to end, positions restarting per text,
    cumulative lengths for the attention, and the labels of the texts."""
    lengths = [len(f["input_ids"]) for f in features]
    cu = torch.zeros(len(features) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(lengths).cumsum(0)
    batch = {"input_ids": torch.tensor([t for f in features for t in f["input_ids"]]).unsqueeze(0),
             "position_ids": torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0),
             "cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": max(lengths), "max_length_k": max(lengths)}
    if "token_type_ids" in features[0]:
        batch["token_type_ids"] = torch.tensor([t for f in features for t in f["token_type_ids"]]).unsqueeze(0)
    if "labels" in features[0]:
        batch["labels"] = torch.tensor([f["labels"] for f in features])
    return batch
