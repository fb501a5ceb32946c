"""Node scores to compare pruning with: attribution patching, integrated gradients, exact
patching of single heads and MLPs, and activation size.

Attribution patching (Nanda 2023; Syed et al. 2023) estimates the effect of patching a node's
corrupted activation into the clean run by a first-order Taylor term,
``grad(metric) . (corrupted - clean)``, summed over positions. Integrated gradients (the
node-level form of EAP-IG, Hanna et al. 2024) averages that gradient over inputs on the
straight line from the corrupted prompt's embeddings to the clean one's. A parent's estimate is
the sum of its children's (the effect is linear in the site activation), and the score is its
size. Exact patching measures each head's and MLP's effect with one patched run each.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from ..analysis.node_effects import node_effects
from ..core.checks import check_positive_int
from ..core.circuit import Circuit
from ..core.data import PairedDataset
from ..core.errors import UsageError
from ..core.hooks import site_activations
from ..core.metrics import task_metric
from ..core.model_api import attached, model_device
from ..core.nodes import ModelDims, attn_hook_name, mlp_hook_name
from ..runtime.forward import answer_logits


def attribution_scores(
    model,
    dataset: PairedDataset,
    dims: ModelDims,
    batch_size: int = 32,
    gradient_at: str = "clean",
    per_role: bool = False,
) -> dict[str, Float[Tensor, "*nodes"]]:
    """|grad(task metric) . (corrupted - clean)| per node of every granularity the model has.

    The gradient is taken on the clean run (the noising estimate), or with
    ``gradient_at="corrupted"`` on the corrupted run (the denoising estimate, the convention
    of TransformerLens 4's ``attribution_patch``). With ``per_role``, one score per node and
    role slot (:meth:`PairedDataset.role_slots`), shaped ``[slot, *nodes]``."""
    alphas = {"clean": (1.0,), "corrupted": (0.0,)}
    if gradient_at not in alphas:
        raise UsageError(f"gradient_at must be 'clean' or 'corrupted', got {gradient_at!r}")
    return _gradient_scores(model, dataset, dims, alphas[gradient_at], batch_size, per_role)


def integrated_gradients_scores(
    model,
    dataset: PairedDataset,
    dims: ModelDims,
    steps: int = 5,
    batch_size: int = 32,
    per_role: bool = False,
) -> dict[str, Float[Tensor, "*nodes"]]:
    """|mean over the path of grad(task metric) . (corrupted - clean)| per node: the gradient
    taken at ``steps`` inputs between the corrupted and the clean embeddings (midpoints).
    ``per_role`` as in :func:`attribution_scores`."""
    check_positive_int("steps", steps)
    alphas = tuple((k + 0.5) / steps for k in range(steps))
    return _gradient_scores(model, dataset, dims, alphas, batch_size, per_role)


def _gradient_scores(
    model,
    dataset: PairedDataset,
    dims: ModelDims,
    alphas: tuple[float, ...],
    batch_size: int,
    per_role: bool = False,
) -> dict[str, Tensor]:
    """Gradient times activation difference per node (and role slot), the gradient averaged
    over inputs ``corrupted + alpha * (clean - corrupted)`` at the token embeddings (alpha 1:
    the clean run)."""
    if dataset.wrong_answer_tokens is None:
        raise UsageError("attribution patching needs a task metric: give wrong answers")
    n_slots = len(dataset.roles) + 1 if per_role else 0
    if per_role:
        dataset.role_slots()  # raises for pairs without roles
    device = model_device(model)
    sums: dict[str, Tensor] = {}
    clean: dict[str, Tensor] = {}
    corrupted_embed: dict[str, Tensor] = {}

    def keep_as(key: str):
        def keep(activation, *, hook):
            activation.retain_grad()
            clean[key] = activation
            return activation  # a bridge then runs on this very tensor, not on a copy of it

        return keep

    def store_embed(embedding, *, hook):
        corrupted_embed["e"] = embedding.detach()

    def start_graph_at(alpha: float):
        def start_graph(embedding, *, hook):
            if alpha != 1.0:  # corrupted + alpha (clean - corrupted), exact at alpha = 1
                embedding = embedding - (1 - alpha) * (embedding - corrupted_embed["e"])
            return embedding.detach().requires_grad_(True)

        return start_graph

    for batch in dataset.batches(batch_size):
        batch = batch.to(device)
        with attached(model, [("hook_embed", store_embed)]):
            corrupted = site_activations(model, batch.corrupted_tokens, dims)
        grads: dict[str, Tensor] = {}
        for alpha in alphas:
            clean.clear()
            hooks = [("hook_embed", start_graph_at(alpha))]
            hooks += [(n, keep_as(n)) for n in dims.hook_names()]
            with torch.enable_grad(), attached(model, hooks):
                logits = answer_logits(model, batch.clean_tokens, batch.answer_positions)
                task_metric(logits, batch).sum().backward()
            for name, activation in clean.items():
                grads[name] = grads.get(name, 0) + activation.grad / len(alphas)
        if alphas == (1.0,):  # the graph ran on the clean prompts: its activations are theirs
            clean_acts = {name: activation.detach() for name, activation in clean.items()}
        else:
            clean_acts = site_activations(model, batch.clean_tokens, dims)
        slots = F.one_hot(batch.role_slots(), n_slots).float() if per_role else None
        for name, grad in grads.items():
            effect = grad * (corrupted[name] - clean_acts[name])
            if slots is None:
                effect = effect.sum((0, 1))
            else:
                effect = torch.einsum("bp...,bps->s...", effect.float(), slots.to(effect.device))
            sums[name] = sums.get(name, 0) + effect
    return _per_granularity(sums, dims, lambda x: x, per_role)


def patching_scores(
    model, dataset: PairedDataset, dims: ModelDims, batch_size: int = 32, progress: bool = False
) -> dict[str, Float[Tensor, "*nodes"]]:
    """|change of the mean task metric| when one head (or one MLP) alone takes its corrupted
    activation in the clean run: exact activation patching, one patched run per node."""
    whole = [g for g in ("head", "mlp") if g in dims.available()]
    full = Circuit.from_kept(dims, {g: torch.ones(dims.shape(g), dtype=torch.bool) for g in whole})
    effects = node_effects(
        model, full, dataset, top_neurons=0, batch_size=batch_size, progress=progress
    )
    scores = {g: torch.zeros(dims.shape(g)) for g in full.granularities}
    for effect in effects.effects:
        scores[effect.granularity][effect.index] = abs(effect.delta_metric)
    return scores


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


def _per_granularity(
    sums: dict[str, Tensor], dims: ModelDims, finish, per_role: bool = False
) -> dict[str, Tensor]:
    """Neuron-level signed sums per site (per role slot first, with ``per_role``) -> |score|
    per node of every granularity (and slot)."""
    layers = range(dims.n_layers)
    layer_dim = int(per_role)
    attn = torch.stack([finish(sums[attn_hook_name(layer)]) for layer in layers], layer_dim)
    scores = {"attn_neuron": attn.abs().cpu(), "head": attn.sum(-1).abs().cpu()}
    block = attn.sum((-1, -2))
    if dims.has_mlp:
        mlp = torch.stack([finish(sums[mlp_hook_name(layer)]) for layer in layers], layer_dim)
        scores.update(mlp_neuron=mlp.abs().cpu(), mlp=mlp.sum(-1).abs().cpu())
        block = block + mlp.sum(-1)
    scores["block"] = block.abs().cpu()
    return scores
