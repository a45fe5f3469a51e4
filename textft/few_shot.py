"""The few-shot method (``model.transfer: few_shot``): what a classifier needs when each class has only a
handful of training examples, on an unchanged sequence-classification model.

Three parts, each measured on Banking77 draws of 5-16 examples per intent (benchmarks/recipes.md):

- the head starts from the classes' prototypes: each class's row of the head's last layer points at the
  mean of its examples' features (the input of that layer), centred on the mean of all of them, so
  the first step already ranks classes by similarity instead of at random;
- batches are drawn as groups of a few examples of one class (``tokenization.class_grouped_order``), so
  that almost every example has partners of its class in its batch;
- a supervised contrastive loss (Khosla et al. 2020) on the same features pulls the examples of a
  class together and pushes the others apart, added to the cross-entropy with ``weight``.

The model that comes out is the plain ``save_pretrained`` classifier: the method only changes how the
head starts and what the loss sees, never the architecture, so ``pipeline`` reads it as any other.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger("textft")

PER_CLASS = 4
"""Examples of one class drawn together into a batch (batch 16: four classes of four), so that the
contrastive loss has positives for every example."""
PROTOTYPE_SCALE = 10.0
"""Largest starting logit, roughly: a feature of average norm lying on its class's prototype direction."""


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
def init_head_from_prototypes(model: nn.Module, loader, num_labels: int, scale: float, accelerator) -> None:
    """Point each class's row of the head's last layer at its centred class mean.

    The features are the input of that layer in eval mode. Row c becomes ``scale`` x the unit vector of
    (mean of class c - mean of all), divided by the mean norm of the features, with a bias that centres
    the input: a logit is then at most about ``scale`` times the feature's similarity to the class."""
    layer = head_output_layer(model, num_labels)
    tap = FeatureTap(layer)
    was_training = model.training
    model.eval()
    sums, counts, chunks = None, torch.zeros(num_labels, dtype=torch.float64), []
    try:
        for batch in loader:
            labels = batch["labels"]
            inputs = {k: v.to(accelerator.device) for k, v in batch.items() if k != "labels"}
            with accelerator.autocast():
                model(**inputs)
            z = tap.take().double().cpu()
            chunks.append(z)
            sums = (torch.zeros(num_labels, z.shape[1], dtype=torch.float64) if sums is None else sums)
            sums.index_add_(0, labels.cpu(), z)
            counts += torch.bincount(labels.cpu(), minlength=num_labels).double()
    finally:
        tap.close()
        model.train(was_training)
    if sums is None:
        return
    z = torch.cat(chunks)
    center = z.mean(dim=0)
    means = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], center)
    # Divided by the mean norm of the features, not their spread around the centre: features that barely
    # vary (an encoder that has not learnt anything yet) would otherwise get huge weights, and the
    # dropout noise of training steps huge logits.
    size = z.norm(dim=-1).mean().clamp(min=1e-6)
    weight = F.normalize(means - center, dim=-1) * (scale / size)
    layer.weight.copy_(weight.to(layer.weight.dtype))
    if layer.bias is not None:
        layer.bias.copy_((-(weight @ center)).to(layer.bias.dtype))



def start(model: nn.Module, train_cfg, num_labels: int, train_labels: list[int], train_loader, prototype_loader,
          base_loss: Callable, accelerator) -> Callable:
    """Set a few_shot run up before ``accelerator.prepare``: class-grouped batches, the prototype head
    (computed on the device the run trains on) and the contrastive loss; returns the loss the loop uses."""
    weight, temperature = train_cfg.contrastive_weight, train_cfg.contrastive_temperature
    if weight:  # the contrastive loss needs partners of each example's class in its batch
        train_loader.sampler.group_classes(train_labels, PER_CLASS)
    model.to(accelerator.device)
    init_head_from_prototypes(model, prototype_loader, num_labels, PROTOTYPE_SCALE, accelerator)
    if not weight:
        log.info("few-shot method: head from class prototypes (scale %g); no contrastive loss", PROTOTYPE_SCALE)
        return base_loss
    log.info("few-shot method: head from class prototypes (scale %g), batches in groups of %d examples of a"
             " class, supervised contrastive loss x %g (temperature %g)", PROTOTYPE_SCALE, PER_CLASS, weight,
             temperature)
    return contrastive_loss_fn(base_loss, FeatureTap(head_output_layer(model, num_labels)), weight, temperature)
