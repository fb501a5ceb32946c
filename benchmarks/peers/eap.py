"""Edge attribution patching (Syed et al. 2023) on a HookedTransformer, as a benchmark peer.

Upstream nodes write to the residual stream: the embeddings, each head's output (``hook_z``
times ``W_O``) and each MLP's output. Downstream nodes read from it: each head's query, key
and value input, each MLP's input and the final residual stream (the logits). One step is a
no-grad forward of the corrupted prompts and a forward and backward of the clean prompts,
both caching every upstream output, and one einsum over the stacked caches:

    score(u, v) = sum over prompts and positions of (a_u(corrupted) - a_u(clean)) . dM/dx_v

where M is the log-probability of the answer at the last position. Edges whose upstream node
writes after the downstream node reads are zero. The edge tensor is the whole point of the
method, so its cost (caches of ``[batch, seq, n_nodes, d_model]``) is measured as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class EdgeGraph:
    """Node names in the order of the stacked caches, and which pairs are edges."""

    upstream: list[str]
    downstream: list[str]
    valid: Tensor

    @property
    def n_edges(self) -> int:
        return int(self.valid.sum())


def prepare(model) -> EdgeGraph:
    """Give each head its own q/k/v input (EAP needs a gradient per head) and freeze weights."""
    model.set_use_split_qkv_input(True)
    model.set_use_hook_mlp_in(True)
    for p in model.parameters():
        p.requires_grad_(False)
    return graph(model.cfg)


def graph(cfg) -> EdgeGraph:
    """Nodes in residual-stream order; a node writes or reads at a fractional layer index."""
    up, writes = ["embed"], [-1.0]
    down, reads = [], []
    n_kv = _kv_heads(cfg)
    for layer in range(cfg.n_layers):
        for kind, heads in (("q", cfg.n_heads), ("k", n_kv), ("v", n_kv)):
            down += [f"{layer}.{kind}{h}" for h in range(heads)]
            reads += [layer - 0.25] * heads
        up += [f"{layer}.head{h}" for h in range(cfg.n_heads)]
        writes += [float(layer)] * cfg.n_heads
        if not cfg.attn_only:
            down.append(f"{layer}.mlp_in")
            reads.append(layer + 0.25)
            up.append(f"{layer}.mlp")
            writes.append(layer + 0.5)
    down.append("logits")
    reads.append(float(cfg.n_layers))
    valid = torch.tensor(writes)[:, None] < torch.tensor(reads)[None, :]
    return EdgeGraph(up, down, valid)


def edge_scores(model, graph: EdgeGraph, clean: Tensor, corrupted: Tensor, answers: Tensor):
    """``[n_upstream, n_downstream]`` EAP scores, summed over prompts and positions."""
    corrupted_out: dict[str, Tensor] = {}
    with torch.no_grad(), model.hooks(fwd_hooks=_upstream_hooks(model, corrupted_out)):
        model(corrupted)
    clean_out: dict[str, Tensor] = {}
    grads: dict[str, Tensor] = {}
    hooks = [("hook_embed", start_graph), *_upstream_hooks(model, clean_out)]
    hooks += _gradient_hooks(model.cfg, grads)
    with model.hooks(fwd_hooks=hooks):
        metric(model(clean), answers).backward()
    delta = _stack_upstream(model.cfg, corrupted_out) - _stack_upstream(model.cfg, clean_out)
    del corrupted_out, clean_out
    grad = _stack_downstream(model.cfg, grads)
    del grads
    return torch.einsum("bsud,bsvd->uv", delta, grad) * graph.valid


def metric(logits: Tensor, answers: Tensor) -> Tensor:
    """Summed log-probability of each prompt's answer at its last position."""
    rows = torch.arange(len(answers), device=logits.device)
    return logits[rows, -1].log_softmax(-1)[rows, answers].sum()


def start_graph(embedding: Tensor, *, hook) -> Tensor:
    """Let gradients flow from the metric back to the embeddings while weights stay frozen."""
    return embedding.detach().requires_grad_(True)


def _kv_heads(cfg) -> int:
    grouped = cfg.n_key_value_heads is not None and not cfg.ungroup_grouped_query_attention
    return cfg.n_key_value_heads if grouped else cfg.n_heads


def _upstream_hooks(model, out: dict[str, Tensor]) -> list:
    def save(name: str):
        def hook(act: Tensor, hook) -> None:
            out[name] = act.detach()

        return hook

    def head_outputs(layer: int):
        w_o = model.blocks[layer].attn.W_O

        def hook(z: Tensor, hook) -> None:
            out[f"{layer}.heads"] = torch.einsum("bshe,hed->bshd", z.detach(), w_o)

        return hook

    hooks = [("blocks.0.hook_resid_pre", save("embed"))]
    for layer in range(model.cfg.n_layers):
        hooks.append((f"blocks.{layer}.attn.hook_z", head_outputs(layer)))
        if not model.cfg.attn_only:
            hooks.append((f"blocks.{layer}.hook_mlp_out", save(f"{layer}.mlp")))
    return hooks


def _gradient_hooks(cfg, grads: dict[str, Tensor]) -> list:
    def keep(name: str):
        def store(grad: Tensor) -> None:
            grads[name] = grad

        def hook(act: Tensor, hook) -> None:
            act.register_hook(store)

        return hook

    names = []
    for layer in range(cfg.n_layers):
        names += [f"blocks.{layer}.hook_{kind}_input" for kind in "qkv"]
        if not cfg.attn_only:
            names.append(f"blocks.{layer}.hook_mlp_in")
    names.append(f"blocks.{cfg.n_layers - 1}.hook_resid_post")
    return [(name, keep(name)) for name in names]


def _stack_upstream(cfg, out: dict[str, Tensor]) -> Tensor:
    parts = [out["embed"][:, :, None]]
    for layer in range(cfg.n_layers):
        parts.append(out[f"{layer}.heads"])
        if not cfg.attn_only:
            parts.append(out[f"{layer}.mlp"][:, :, None])
    return torch.cat(parts, dim=2)


def _stack_downstream(cfg, grads: dict[str, Tensor]) -> Tensor:
    parts = []
    for layer in range(cfg.n_layers):
        parts += [grads[f"blocks.{layer}.hook_{kind}_input"] for kind in "qkv"]
        if not cfg.attn_only:
            parts.append(grads[f"blocks.{layer}.hook_mlp_in"][:, :, None])
    parts.append(grads[f"blocks.{cfg.n_layers - 1}.hook_resid_post"][:, :, None])
    return torch.cat(parts, dim=2)
