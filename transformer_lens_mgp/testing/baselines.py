"""One-pass node scores to compare pruning with: attribution patching and activation size.

Attribution patching (Nanda 2023; Syed et al. 2023) estimates the effect of patching a node's
corrupted activation into the clean run by a first-order Taylor term,
``grad(metric) . (corrupted - clean)``, summed over positions. A parent's estimate is the sum
of its children's (the effect is linear in the site activation), and the score is its size.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from ..core.data import PairedDataset
from ..core.errors import UsageError
from ..core.hooks import site_activations
from ..core.metrics import task_metric
from ..core.model_api import model_device
from ..core.nodes import ModelDims, attn_hook_name, mlp_hook_name
from ..runtime.forward import answer_logits


def attribution_scores(
    model, dataset: PairedDataset, dims: ModelDims, batch_size: int = 32
) -> dict[str, Float[Tensor, "*nodes"]]:
    """|grad(task metric) . (corrupted - clean)| per node of every granularity the model has."""
    if dataset.wrong_answer_tokens is None:
        raise UsageError("attribution patching needs a task metric: give wrong answers")
    device = model_device(model)
    sums: dict[str, Tensor] = {}
    clean: dict[str, Tensor] = {}

    def keep_as(key: str):
        def keep(activation, *, hook):
            activation.retain_grad()
            clean[key] = activation

        return keep

    def start_graph(embedding, *, hook):
        return embedding.detach().requires_grad_(True)

    hooks = [("hook_embed", start_graph)] + [(n, keep_as(n)) for n in dims.hook_names()]
    for batch in dataset.batches(batch_size):
        batch = batch.to(device)
        corrupted = site_activations(model, batch.corrupted_tokens, dims)
        clean.clear()
        with torch.enable_grad(), model.hooks(fwd_hooks=hooks):
            logits = answer_logits(model, batch.clean_tokens, batch.answer_positions)
            task_metric(logits, batch).sum().backward()
        for name, activation in clean.items():
            effect = (activation.grad * (corrupted[name] - activation.detach())).sum((0, 1))
            sums[name] = sums.get(name, 0) + effect
    return _per_granularity(sums, dims, lambda x: x)


@torch.no_grad()
def activation_scores(
    model, dataset: PairedDataset, dims: ModelDims, batch_size: int = 32
) -> dict[str, Float[Tensor, "*nodes"]]:
    """Mean |clean activation| per node (parents: the sum over their children)."""
    device = model_device(model)
    sums: dict[str, Tensor] = {}
    for batch in dataset.batches(batch_size):
        for name, activation in site_activations(
            model, batch.clean_tokens.to(device), dims
        ).items():
            sums[name] = sums.get(name, 0) + activation.abs().sum((0, 1))
    return _per_granularity(sums, dims, lambda x: x / len(dataset))


def _per_granularity(sums: dict[str, Tensor], dims: ModelDims, finish) -> dict[str, Tensor]:
    """Neuron-level signed sums per site -> |score| per node of every granularity."""
    layers = range(dims.n_layers)
    attn = torch.stack([finish(sums[attn_hook_name(layer)]) for layer in layers])
    scores = {"attn_neuron": attn.abs().cpu(), "head": attn.sum(-1).abs().cpu()}
    block = attn.sum((-1, -2))
    if dims.has_mlp:
        mlp = torch.stack([finish(sums[mlp_hook_name(layer)]) for layer in layers])
        scores.update(mlp_neuron=mlp.abs().cpu(), mlp=mlp.sum(-1).abs().cpu())
        block = block + mlp.sum(-1)
    scores["block"] = block.abs().cpu()
    return scores
