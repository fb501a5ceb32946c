"""How the nodes of a circuit talk to each other: attribution scores of the edges between them.

Node pruning says which heads and MLPs a behaviour needs, not which of them feed which. An
edge ``u -> v`` carries what ``u`` writes to the residual stream into what ``v`` reads from
it. Its score is attribution patching restricted to the circuit: with the model run as the
circuit on the clean prompts,

    score(u -> v) = mean over pairs, sum over positions of (out_u - out_u_ablated) . dm/d in_v

where ``out_u`` is the node's write (``z @ W_O`` of a head, ``post @ W_out`` of an MLP, the
embeddings for ``input``), ``out_u_ablated`` the same under the circuit's ablation (the
corrupted prompt's, by default), ``in_v`` the residual stream as ``v`` reads it before its
layer norm (per-head query, key and value inputs; the MLP input; the final stream for
``logits``), and ``m`` the task metric of the circuit. A positive score means that the
clean information along the edge pushes the metric up. Nodes the circuit drops write their
ablated value, so they have no edges.
"""

from __future__ import annotations

from dataclasses import dataclass

import einops
import torch
from jaxtyping import Float
from torch import Tensor

from ..core.checks import check_positive_int
from ..core.circuit import Circuit
from ..core.data import PairedDataset
from ..core.edge_graph import (
    HEAD_INPUTS,
    INPUT,
    LOGITS,
    check_hooked,
    per_head_inputs,
    reader_node,
)
from ..core.errors import UsageError
from ..core.hooks import AblationSource, mask_hooks
from ..core.metrics import task_metric
from ..core.model_api import attached, check_model_and_pairs, model_device
from ..core.nodes import NODE_NAMES, attn_hook_name, mlp_hook_name
from ..runtime.guard import exclusive, frozen


def edge_scores(
    model,
    circuit: Circuit,
    dataset: PairedDataset,
    *,
    batch_size: int = 16,
    ablation: str | None = None,
    by_input: bool = False,
) -> dict[tuple[str, str], float]:
    """``{(upstream, downstream): score}`` for every pair of kept nodes (heads, MLPs, plus
    ``input`` and ``logits``) where the upstream node writes before the downstream one reads.
    With ``by_input`` a head's query, key and value inputs are readers of their own
    (``L5.H3.q``, as in :class:`~transformer_lens_mgp.EdgeCircuit`). Needs a
    HookedTransformer: per-head inputs are switched on inside, and off again after."""
    check_positive_int("batch_size", batch_size)
    circuit.check_model(model)
    circuit.require_no_slots("edge_scores")
    check_hooked(model)
    check_model_and_pairs(model, circuit.dims, dataset=dataset)
    device = model_device(model)
    totals: dict[tuple[str, str], float] = {}
    with (
        exclusive(model, "edge scoring"),
        torch.inference_mode(False),  # gradients are needed even in a caller's no-grad block
        frozen(model),
        per_head_inputs(model),
    ):
        kind = ablation or circuit.ablation
        source = AblationSource.for_dataset(model, kind, dataset, circuit.dims)
        for batch in dataset.batches(batch_size):
            batch = batch.to(device)
            ablated = source.values(model, batch)
            for edge, value in _batch_scores(model, circuit, batch, ablated, by_input).items():
                totals[edge] = totals.get(edge, 0.0) + value
    kept = {name for name, _, _ in kept_nodes(circuit)} | {INPUT, LOGITS}
    return {
        (u, v): value / len(dataset)
        for (u, v), value in totals.items()
        if u in kept and reader_node(v)[0] in kept
    }


def edge_graph(
    model,
    circuit: Circuit,
    dataset: PairedDataset,
    *,
    batch_size: int = 16,
    ablation: str | None = None,
    min_share: float = 0.0,
):
    """The circuit as a ``networkx.DiGraph``: kept heads and MLPs plus ``input`` and
    ``logits`` as nodes (attributes ``layer`` and ``kind``), edges weighted by
    :func:`edge_scores` (attribute ``weight``, signed). Edges whose ``|weight|`` is below
    ``min_share`` of the largest are left out."""

    if not 0 <= min_share <= 1:
        raise UsageError(f"min_share is a share of the largest |score|, in [0, 1]; got {min_share}")
    scores = edge_scores(model, circuit, dataset, batch_size=batch_size, ablation=ablation)
    largest = max((abs(v) for v in scores.values()), default=0.0)
    graph = node_graph(circuit)
    for (u, v), weight in scores.items():
        if weight != 0 and abs(weight) >= min_share * largest:
            graph.add_edge(u, v, weight=weight)
    return graph


def node_graph(circuit: Circuit):
    """A ``networkx.DiGraph`` of ``input``, the kept heads and MLPs and ``logits``
    (attributes ``layer`` and ``kind``; for a per-role circuit, ``kept_at``: the token roles
    a node is kept at), without edges."""
    import networkx as nx

    graph = nx.DiGraph()
    graph.add_node(INPUT, layer=-1, kind="input")
    for name, layer, kind in kept_nodes(circuit.any_position()):
        graph.add_node(name, layer=layer, kind=kind)
    if circuit.slots:
        for name, slots in _slots_kept(circuit).items():
            graph.nodes[name]["kept_at"] = ", ".join(slots)
    graph.add_node(LOGITS, layer=circuit.dims.n_layers, kind="logits")
    return graph


def _slots_kept(circuit: Circuit) -> dict[str, list[str]]:
    """Per kept head and MLP of a per-role circuit, the slots it is kept in."""
    out: dict[str, list[str]] = {}
    for g in ("head", "mlp") if circuit.dims.has_mlp else ("head",):
        for slot, *index in circuit.kept(g).nonzero().tolist():
            out.setdefault(NODE_NAMES[g].format(*index), []).append(circuit.slots[slot])
    return out


def kept_nodes(circuit: Circuit) -> list[tuple[str, int, str]]:
    """(name, layer, kind) of the kept heads and MLPs."""
    nodes = [
        (NODE_NAMES["head"].format(layer, head), layer, "head")
        for layer, head in circuit.kept("head").nonzero().tolist()
    ]
    if circuit.dims.has_mlp:
        nodes += [
            (NODE_NAMES["mlp"].format(layer), layer, "mlp")
            for (layer,) in circuit.kept("mlp").nonzero().tolist()
        ]
    return nodes


@dataclass
class _Stage:
    """Nodes that write to (or read from) the residual stream at one point of the forward
    pass: ``order`` is that point, ``values`` one vector per node and position."""

    names: list[str]
    order: int
    values: Float[Tensor, "batch pos node d_model"]


def _batch_scores(
    model, circuit: Circuit, batch: PairedDataset, ablated: dict[str, Tensor], by_input: bool
) -> dict[tuple[str, str], float]:
    """Edge scores summed over one batch, for every node (kept or not)."""
    dims, cfg = circuit.dims, model.cfg
    device = model_device(model)
    masks = mask_hooks(dims, circuit.site_masks().to(device), ablated)
    last = f"blocks.{dims.n_layers - 1}.hook_resid_post"
    layers = range(dims.n_layers)
    read_names = [f"blocks.{i}.hook_{k}_input" for i in layers for k in "qkv"]
    if dims.has_mlp:
        read_names += [f"blocks.{i}.hook_mlp_in" for i in layers]
    read_names.append(last)
    written, read = {}, {}

    def store_into(cache: dict):
        def store(activation, *, hook):
            cache[hook.name] = activation

        return store

    def grad_leaf(activation, *, hook):
        """Gradients flow from the embeddings on: the weights are frozen."""
        written[INPUT] = activation.detach()
        return written[INPUT].clone().requires_grad_(True)

    hooks = [("blocks.0.hook_resid_pre", grad_leaf)] + masks
    hooks += [(name, store_into(written)) for name in dims.hook_names()]
    hooks += [(name, store_into(read)) for name in read_names]
    with torch.enable_grad(), attached(model, hooks):
        logits = model(batch.clean_tokens)
        rows = torch.arange(len(batch), device=device)
        metric = _metric(logits[rows, batch.answer_positions.to(device)], batch).sum()
        grads = torch.autograd.grad(metric, [read[n] for n in read_names], allow_unused=True)
    grad = {
        n: torch.zeros_like(read[n]) if g is None else g
        for n, g in zip(read_names, grads, strict=True)
    }
    with torch.no_grad():
        corrupted_input = model(batch.corrupted_tokens, stop_at_layer=0)
    writers = [_Stage([INPUT], -1, (written[INPUT] - corrupted_input)[:, :, None])]
    readers = [_Stage([LOGITS], 2 * dims.n_layers, grad[last][:, :, None])]
    mlp_order = 0 if cfg.parallel_attn_mlp else 1
    for layer in range(dims.n_layers):
        block = model.blocks[layer]
        heads = [NODE_NAMES["head"].format(layer, h) for h in range(dims.n_heads)]
        z = attn_hook_name(layer)
        delta_z = written[z].detach() - ablated[z].to(written[z].dtype)
        writers.append(
            _Stage(
                heads,
                2 * layer,
                einops.einsum(delta_z, block.attn.W_O, "b p h dh, h dh d -> b p h d"),
            )
        )
        inputs = [grad[f"blocks.{layer}.hook_{k}_input"] for k in HEAD_INPUTS]
        if by_input:
            for k, values in zip(HEAD_INPUTS, inputs, strict=True):
                readers.append(_Stage([f"{h}.{k}" for h in heads], 2 * layer, values))
        else:
            readers.append(_Stage(heads, 2 * layer, sum(inputs)))
        if dims.has_mlp:
            mlp = [NODE_NAMES["mlp"].format(layer)]
            post = mlp_hook_name(layer)
            delta_post = written[post].detach() - ablated[post].to(written[post].dtype)
            out = einops.einsum(delta_post, block.mlp.W_out, "b p n, n d -> b p d")
            writers.append(_Stage(mlp, 2 * layer + 1, out[:, :, None]))
            readers.append(
                _Stage(mlp, 2 * layer + mlp_order, grad[f"blocks.{layer}.hook_mlp_in"][:, :, None])
            )
    scores = {}
    for writer in writers:
        for reader in readers:
            if writer.order >= reader.order:
                continue
            pair = einops.einsum(writer.values, reader.values, "b p u d, b p v d -> u v")
            for i, u in enumerate(writer.names):
                for j, v in enumerate(reader.names):
                    scores[(u, v)] = float(pair[i, j])
    return scores


def _metric(
    logits: Float[Tensor, "batch d_vocab"], batch: PairedDataset
) -> Float[Tensor, " batch"]:
    """The task metric, or the answer's log-probability where the pairs have no wrong answer."""
    if batch.wrong_answer_tokens is not None:
        return task_metric(logits, batch)
    answers = batch.answer_tokens.view(len(batch), -1)[:, :1]
    return logits.log_softmax(-1).gather(-1, answers)[:, 0]
