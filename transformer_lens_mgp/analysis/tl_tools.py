"""A circuit as TransformerLens's own analysis tools see it.

``transformer_lens.tools.analysis.faithfulness`` keeps a set of residual-stream edges
(writer -> reader, at one position) and gives every other edge the corrupted run's write.
A circuit of whole heads and MLPs is the edge set whose writers are the embedding and the kept
heads and MLPs, into every reader at every position: each reader then sees a pruned node's
corrupted write, which is what our ``"corrupted"`` ablation does at the node itself.

Where the two measurements differ by definition (see ``docs/api.md``):

- TransformerLens scores one pair at a time and normalises by the model run on the corrupted
  prompt; :func:`~transformer_lens_mgp.evaluate` averages over pairs first and normalises by
  the empty circuit (clean embeddings, every head and MLP corrupted).
- Its nodes are whole heads and MLPs: a circuit that keeps part of a head or MLP (attention or
  MLP neurons) has no exact edge set; ``coarse=True`` exports every head or MLP with a kept
  unit, a superset of the circuit.
- It ablates with corrupted (or mean) writes only; circuits trained with zero or mean
  ablation are refused.
"""

from __future__ import annotations

from typing import Any

import torch

from ..core.circuit import Circuit
from ..core.data import PairedDataset
from ..core.errors import UsageError
from ..core.metrics import task_metric


def tl_edges(circuit: Circuit, model, n_positions: int, *, coarse: bool = False) -> list[tuple]:
    """The circuit as ``(writer, reader)`` pairs of TransformerLens ``Node`` s over
    ``n_positions`` positions, for ``transformer_lens.tools.analysis.faithfulness``."""
    Node = _analysis().Node
    heads, mlps = _whole_nodes(circuit, coarse)
    parallel = bool(getattr(model.cfg, "parallel_attn_mlp", False))
    n_layers, n_heads = circuit.dims.n_layers, circuit.dims.n_heads
    edges = []
    for position in range(n_positions):
        kept = [Node("embed", position)]

        def read(reader: Node, writers: list) -> None:
            edges.extend((writer, reader) for writer in writers)

        for layer in range(n_layers):
            for kind in ("q_input", "k_input", "v_input"):
                for head in range(n_heads):
                    read(Node(kind, position, layer=layer, head=head), kept)
            layer_heads = [
                Node("attn_head_out", position, layer=layer, head=head)
                for head in range(n_heads)
                if heads[layer, head]
            ]
            mlp_in = Node("mlp_in", position, layer=layer)
            # A parallel block's MLP reads the layer's input, not its own heads' writes.
            read(mlp_in, kept if parallel else kept + layer_heads)
            kept = kept + layer_heads
            if mlps is not None and mlps[layer]:
                kept.append(Node("mlp_out", position, layer=layer))
        read(Node("logits", position, layer=n_layers - 1), kept)
    return edges


def tl_faithfulness(
    model, circuit: Circuit, dataset: PairedDataset, *, coarse: bool = False
) -> list[Any]:
    """TransformerLens's ``faithfulness`` of ``circuit`` on each pair of ``dataset`` (one
    ``FaithfulnessResult`` per pair), with the dataset's task metric at its answer position."""
    faithfulness = _analysis().faithfulness
    if circuit.ablation != "corrupted":
        raise UsageError(
            f"this circuit was trained with {circuit.ablation!r} ablation; TransformerLens's "
            "faithfulness ablates with the corrupted run's writes, so compare circuits "
            "trained with ablation='corrupted'"
        )
    circuit.check_model(model)
    edges = tl_edges(circuit, model, dataset.seq_len, coarse=coarse)
    device = next(model.parameters()).device
    results = []
    for i in range(len(dataset)):
        pair = dataset[i : i + 1].to(device)
        position = int(pair.answer_positions[0])

        def metric(logits: torch.Tensor, pair=pair, position=position) -> torch.Tensor:
            return task_metric(logits[:, position], pair)[0]

        results.append(faithfulness(model, pair.clean_tokens, pair.corrupted_tokens, metric, edges))
    return results


def _analysis():
    """TransformerLens's edge-level attribution module, which has ``faithfulness`` from 4.0."""
    from transformer_lens.tools.analysis import attribution_patching

    if not hasattr(attribution_patching, "faithfulness"):
        raise UsageError(
            "TransformerLens's edge faithfulness arrived in transformer-lens 4.0; this one is "
            "older: pip install 'transformer-lens>=4,<5'"
        )
    return attribution_patching


def _whole_nodes(circuit: Circuit, coarse: bool):
    """Kept heads ``[n_layers, n_heads]`` and MLPs ``[n_layers]`` (None without MLPs),
    refusing partly kept ones unless ``coarse``."""
    circuit.require_no_slots("TransformerLens's node graph")
    attn, mlp = circuit.site_masks()
    parts = [("heads", attn.bool())] + ([("MLPs", mlp.bool())] if mlp is not None else [])
    partial = {name: int((units.any(-1) & ~units.all(-1)).sum()) for name, units in parts}
    if not coarse and any(partial.values()):
        counts = " and ".join(f"{n} {name}" for name, n in partial.items() if n)
        raise UsageError(
            f"this circuit keeps only some units of {counts}; TransformerLens's edges join "
            "whole heads and MLPs, so pass coarse=True to export every head and MLP with a "
            "kept unit (a superset of the circuit)"
        )
    return attn.bool().any(-1), mlp.bool().any(-1) if mlp is not None else None
