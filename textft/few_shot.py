"""The few-shot method (``model.transfer: few_shot``): what a classifier needs when each class has only a
handful of training examples, on an unchanged sequence-classification model.

Four parts, measured on Banking77 draws of 5-16 examples per intent (BENCHMARKS.md, "Few examples per
intent"):

- the head reads the encoder the way it was trained to be read: a sentence-transformers model declares
  its pooling (the bundled MiniLM: the mean of its token states), and ``textft.sentence_pooling`` writes
  that pooling into the model as a fixed extra layer (on frozen features at 8 per intent, the mean gave
  0.836 with a logistic regression against 0.735-0.756 through the [CLS] pooler);
- the head starts as a logistic regression fitted on the frozen features of the training examples, so
  the first step already classifies as well as a linear probe does (the probe SetFit ends with);
- batches are drawn as groups of a few examples of one class (``tokenization.class_grouped_order``), so
  that almost every example has partners of its class in its batch;
- a supervised contrastive loss (Khosla et al. 2020) on the head's input pulls the examples of a class
  together and pushes the others apart, added to the cross-entropy with ``weight``.

The model that comes out is the plain ``save_pretrained`` classifier (with the pooling layer, one more
encoder layer, when the model declares mean pooling), so ``pipeline`` reads it as any other.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from textft import sentence_pooling
from textft.modeling import resolve_model_path
from textft.tokenization import eval_loader, sort_by_length

log = logging.getLogger("textft")

PER_CLASS = 4
"""Examples of one class drawn together into a batch (batch 16: four classes of four), so that the
contrastive loss has positives for every example."""
HEAD_C = 10.0
"""Inverse L2 strength of the logistic regression the head starts as (features of about unit length)."""


def head_output_layer(model: nn.Module, num_labels: int) -> nn.Linear:
    """The head's last linear layer (one output per class): its input is the representation the
    classifier reads (BERT: the dropped-out pooler output; RoBERTa: the head's dense layer)."""
    found = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_labels]
    if not found:
        raise ValueError(f"{type(model).__name__} has no linear layer with {num_labels} outputs")
    return found[-1]


class FeatureTap:
    """Keeps the input of ``layer`` from the latest forward pass (with its autograd graph), for a loss on
    the features; ``close`` removes the hook."""

    def __init__(self, layer: nn.Module):
        self.features: torch.Tensor | None = None
        self._hook = layer.register_forward_hook(self._keep)

    def _keep(self, module, inputs, output) -> None:
        self.features = inputs[0]

    def take(self) -> torch.Tensor:
        features, self.features = self.features, None
        if features is None:
            raise RuntimeError("no forward pass went through the head since the last loss")
        return features

    def close(self) -> None:
        self._hook.remove()


def supervised_contrastive(features: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """SupCon loss (Khosla et al. 2020, L_out) of one batch: for each example with at least one other
    example of its class in the batch, the mean over those positives of -log softmax of its cosine
    similarities / ``temperature`` against all other examples; 0 (with a graph) when no example has one."""
    z = F.normalize(features.float(), dim=-1)
    n = z.shape[0]
    sim = z @ z.T / temperature
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    sim = sim.masked_fill(self_mask, torch.finfo(sim.dtype).min)
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    anchors = positives.any(dim=1)
    if not anchors.any():
        return z.sum() * 0.0
    log_prob = log_prob.masked_fill(~positives, 0.0)
    per_anchor = log_prob.sum(dim=1)[anchors] / positives.sum(dim=1)[anchors]
    return -per_anchor.mean()


def contrastive_loss_fn(base: Callable, tap: FeatureTap, weight: float, temperature: float) -> Callable:
    """``base(logits, labels)`` plus ``weight`` times the supervised contrastive loss of the features the
    tap saw in the same forward pass."""
    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        features = tap.take()
        return base(logits, labels) + weight * supervised_contrastive(features, labels, temperature)
    return loss


@torch.no_grad()
def head_features(model: nn.Module, loader, num_labels: int, accelerator) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, labels) of every example of ``loader``: the input of the head's last layer in eval mode,
    on the CPU in float64."""
    tap = FeatureTap(head_output_layer(model, num_labels))
    was_training = model.training
    model.eval()
    chunks, labels = [], []
    try:
        for batch in loader:
            labels.append(batch["labels"].cpu())
            inputs = {k: v.to(accelerator.device) for k, v in batch.items() if k != "labels"}
            with accelerator.autocast():
                model(**inputs)
            chunks.append(tap.take().double().cpu())
    finally:
        tap.close()
        model.train(was_training)
    if not chunks:
        return torch.zeros(0, 0, dtype=torch.float64), torch.zeros(0, dtype=torch.long)
    return torch.cat(chunks), torch.cat(labels)


@torch.no_grad()
def init_head_from_logistic_regression(model: nn.Module, loader, num_labels: int, c: float, accelerator) -> None:
    """Set the head's last layer to a multinomial logistic regression (L2, inverse strength ``c``) fitted on
    the frozen features of the training examples: the best a linear head can do before the encoder moves,
    and the reading SetFit ends with. Classes without an example keep a zero row and a bias below every
    other class's, so they are never predicted before training."""
    from sklearn.linear_model import LogisticRegression

    layer = head_output_layer(model, num_labels)
    z, y = head_features(model, loader, num_labels, accelerator)
    if len(torch.unique(y)) < 2:  # nothing to tell apart: the head keeps its starting weights
        return
    fit = LogisticRegression(C=c, max_iter=1000).fit(z.numpy(), y.numpy())
    weight = torch.zeros(num_labels, z.shape[1], dtype=torch.float64)
    bias = torch.full((num_labels,), float(fit.intercept_.min()) - 10.0, dtype=torch.float64)
    coef, intercept = torch.from_numpy(fit.coef_), torch.from_numpy(fit.intercept_)
    if len(fit.classes_) == 2:  # scikit-learn fits two classes as one row: the second class's log-odds
        coef, intercept = torch.cat([-coef, coef]) / 2, torch.cat([-intercept, intercept]) / 2
    weight[fit.classes_] = coef
    bias[fit.classes_] = intercept
    layer.weight.copy_(weight.to(layer.weight.dtype))
    if layer.bias is not None:
        layer.bias.copy_(bias.to(layer.bias.dtype))


def start(model: nn.Module, cfg, num_labels: int, train_set, tokenizer, train_loader, base_loss: Callable,
          accelerator) -> Callable:
    """Set a few_shot run up before ``accelerator.prepare``: the head reads the encoder through the
    sentence-transformers pooling the backbone declares (when it does), class-grouped batches, the head
    fitted as a logistic regression on the frozen features (computed on the device the run trains on) and
    the contrastive loss; returns the loss the loop uses."""
    weight, temperature = cfg.train.contrastive_weight, cfg.train.contrastive_temperature
    pooling = sentence_pooling.declared_pooling(resolve_model_path(cfg.model.name_or_path), cfg.model.revision)
    reason = sentence_pooling.unsupported_reason(model, pooling)
    if reason is None:
        sentence_pooling.apply(model, pooling)
        reading = f"the head reads the {pooling}-pooled sentence embedding (the model's own pooling)"
    else:
        reading = f"the head reads the pooler ({reason})"
    if weight:  # the contrastive loss needs partners of each example's class in its batch
        train_loader.sampler.group_classes(train_set["labels"], PER_CLASS)
    model.to(accelerator.device)
    features = eval_loader(sort_by_length(train_set), tokenizer, cfg.train.eval_batch(),
                           accelerator.mixed_precision != "no")
    init_head_from_logistic_regression(model, features, num_labels, HEAD_C, accelerator)
    log.info("few-shot method: %s; head fitted as a logistic regression (C=%g) on the frozen features%s", reading,
             HEAD_C, f", batches in groups of {PER_CLASS} examples of a class, supervised contrastive loss x {weight:g}"
             f" (temperature {temperature:g})" if weight else "; no contrastive loss")
    if not weight:
        return base_loss
    return contrastive_loss_fn(base_loss, FeatureTap(head_output_layer(model, num_labels)), weight, temperature)
