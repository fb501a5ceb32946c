"""Edges among the nodes a circuit keeps, and the hooks that run a model with only some of them.

Writers are the kept heads and MLPs and the embeddings (``input``); readers are each kept
head's query, key and value inputs (per query head in grouped-query models), each kept MLP's
input and the final residual stream (``logits``). An edge ``u -> v`` exists where ``u`` writes
before ``v`` reads. With edge masks ``m``, reader ``v`` sees

    input_v = resid - sum_u (1 - m[u, v]) * (write_u - corrupted_write_u)

that is, the clean residual stream in which the writes along its dropped edges are replaced by
their corrupted values, while the stream itself (and every other reader) is untouched. Nodes
the node circuit drops write their ablated value already and have no edges. With every edge
kept the model runs exactly as the node circuit; with none, every reader sees the corrupted
stream, which is the corrupted run.

Per-head inputs need a HookedTransformer with ``use_split_qkv_input`` (and ``use_hook_mlp_in``,
and ``ungroup_grouped_query_attention`` for grouped-query models): :func:`per_head_inputs`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import cached_property, partial

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor

from .errors import UsageError, UsageTypeError
from .hooks import mask_hooks, storing_hooks
from .model_api import FwdHooks, attached, is_hooked_transformer
from .nodes import NODE_NAMES, ModelDims, SiteMasks, attn_hook_name

INPUT, LOGITS = "input", "logits"
HEAD_INPUTS = ("q", "k", "v")
INPUT_HOOK = "blocks.0.hook_resid_pre"


def head_name(layer: int, head: int) -> str:
    return NODE_NAMES["head"].format(layer, head)


def mlp_name(layer: int) -> str:
    return NODE_NAMES["mlp"].format(layer)


def reader_node(reader: str) -> tuple[str, str]:
    """The node a reader belongs to and which of its inputs it is: ``L3.H2.q`` -> (``L3.H2``,
    ``q``), ``L3.mlp`` -> (``L3.mlp``, "")."""
    node, _, last = reader.rpartition(".")
    return (node, last) if last in HEAD_INPUTS else (reader, "")


def mlp_out_hook(layer: int) -> str:
    return f"blocks.{layer}.hook_mlp_out"


@dataclass(frozen=True)
class EdgeGraph:
    """The possible edges among a node circuit's kept heads and MLPs.

    Args:
        n_layers: layers of the model.
        heads: kept heads as ``(layer, head)``, in order.
        mlps: layers whose MLP is kept, in order.
        parallel_attn_mlp: whether a block's MLP reads the block's input (GPT-J, Pythia) rather
            than the stream after its attention.
    """

    n_layers: int
    heads: tuple[tuple[int, int], ...]
    mlps: tuple[int, ...]
    parallel_attn_mlp: bool = False

    @classmethod
    def of(cls, circuit, parallel_attn_mlp: bool = False) -> EdgeGraph:
        """The graph among ``circuit``'s kept heads and MLPs."""
        heads = tuple(tuple(i) for i in circuit.kept("head").nonzero().tolist())
        mlps = ()
        if circuit.dims.has_mlp:
            mlps = tuple(i for (i,) in circuit.kept("mlp").nonzero().tolist())
        return cls(circuit.dims.n_layers, heads, mlps, parallel_attn_mlp)

    @classmethod
    def from_dict(cls, data: dict) -> EdgeGraph:
        return cls(
            n_layers=int(data["n_layers"]),
            heads=tuple((int(a), int(b)) for a, b in data["heads"]),
            mlps=tuple(int(i) for i in data["mlps"]),
            parallel_attn_mlp=bool(data.get("parallel_attn_mlp", False)),
        )

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    # --- writers and readers ------------------------------------------------------------

    @cached_property
    def writers(self) -> tuple[str, ...]:
        """``input``, then per layer its kept heads and its MLP."""
        return tuple(name for name, _, _ in self._writer_rows)

    @cached_property
    def readers(self) -> tuple[str, ...]:
        """Per layer each kept head's ``.q``, ``.k``, ``.v`` and the MLP, then ``logits``."""
        return tuple(name for name, _, _ in self._reader_rows)

    @cached_property
    def _writer_rows(self) -> list[tuple[str, int, int]]:
        """(name, layer, order): ``order`` is when the write happens in the forward pass."""
        rows = [(INPUT, -1, -1)]
        for layer in range(self.n_layers):
            rows += [(head_name(at, h), at, 2 * at) for at, h in self.heads if at == layer]
            if layer in self.mlps:
                rows.append((mlp_name(layer), layer, 2 * layer + 1))
        return rows

    @cached_property
    def _reader_rows(self) -> list[tuple[str, int, int]]:
        """(name, layer, order): ``order`` is when the read happens in the forward pass."""
        mlp_order = 0 if self.parallel_attn_mlp else 1
        rows = []
        for layer in range(self.n_layers):
            for at, h in self.heads:
                if at == layer:
                    rows += [(f"{head_name(at, h)}.{k}", layer, 2 * layer) for k in HEAD_INPUTS]
            if layer in self.mlps:
                rows.append((mlp_name(layer), layer, 2 * layer + mlp_order))
        rows.append((LOGITS, self.n_layers, 2 * self.n_layers))
        return rows

    @cached_property
    def edge_index(self) -> Int[Tensor, "edge 2"]:
        """(writer, reader) index of every edge: every writer before every reader."""
        pairs = [
            (w, r)
            for r, (_, _, read_at) in enumerate(self._reader_rows)
            for w, (_, _, written_at) in enumerate(self._writer_rows)
            if written_at < read_at
        ]
        return torch.tensor(pairs, dtype=torch.long).view(-1, 2)

    @property
    def n_edges(self) -> int:
        return self.edge_index.shape[0]

    @cached_property
    def edge_names(self) -> list[tuple[str, str]]:
        return [(self.writers[w], self.readers[r]) for w, r in self.edge_index.tolist()]

    def edges_into(self, reader: str) -> list[int]:
        """Indices of the edges that end at ``reader``."""
        return [i for i, (_, v) in enumerate(self.edge_names) if v == reader]

    def dense(self, values: Float[Tensor, " edge"], fill: float = 1.0) -> Float[Tensor, "w r"]:
        """Edge values as a ``[writer, reader]`` matrix, ``fill`` where there is no edge."""
        out = torch.full(
            (len(self.writers), len(self.readers)), fill, dtype=values.dtype, device=values.device
        )
        return out.index_put((self.edge_index[:, 0], self.edge_index[:, 1]), values)

    # --- the forward pass ---------------------------------------------------------------

    @cached_property
    def _head_writers(self) -> dict[int, tuple[list[int], list[int]]]:
        """Per layer with kept heads: (head indices, their writer indices)."""
        out: dict[int, tuple[list[int], list[int]]] = {}
        for layer, head in self.heads:
            heads, rows = out.setdefault(layer, ([], []))
            heads.append(head)
            rows.append(self.writers.index(head_name(layer, head)))
        return out

    def check_model(self, model) -> None:
        """Raise unless ``model`` gives every head its own inputs (see :func:`per_head_inputs`)."""
        check_hooked(model)
        cfg = model.cfg
        needed = ["use_split_qkv_input"] + (["use_hook_mlp_in"] if self.mlps else [])
        if cfg.n_key_value_heads not in (None, cfg.n_heads):
            needed.append("ungroup_grouped_query_attention")
        off = [name for name in needed if not getattr(cfg, name)]
        if off:
            raise UsageError(
                f"edge hooks need model.cfg.{' and '.join(off)} switched on (each head reads its "
                "own copy of the stream); run inside `with per_head_inputs(model):` or use "
                "EdgeCircuit.applied(model, ...), which does it"
            )

    def hooks(
        self,
        model,
        masks: SiteMasks,
        edge_masks: Float[Tensor, " edge"],
        corrupted: dict[str, Tensor],
    ) -> FwdHooks:
        """``fwd_hooks`` running ``model`` as the node circuit ``masks`` with the edges
        interpolated by ``edge_masks`` (1 keeps an edge); ``corrupted`` is
        :func:`corrupted_activations` of the same batch."""
        self.check_model(model)
        dims = ModelDims.from_cfg(model.cfg)
        dropped = 1 - self.dense(edge_masks.float())
        written: list[tuple[list[int], Tensor]] = []  # (writer rows, their writes' deltas)
        readers = {name: i for i, name in enumerate(self.readers)}
        writers = {name: i for i, name in enumerate(self.writers)}

        def removed(reader_rows: list[int]) -> Float[Tensor, "batch pos r d"] | None:
            """What each reader's dropped edges take away from its input (None: nothing
            written yet)."""
            total = None
            for rows, delta in written:
                weights = dropped[rows][:, reader_rows].to(delta)
                part = einops.einsum(delta, weights, "b p w d, w r -> b p r d")
                total = part if total is None else total + part
            return total

        def on_input(resid, *, hook):
            written.clear()
            delta = resid - corrupted[INPUT_HOOK].to(resid)
            written.append(([0], delta[:, :, None]))

        def on_z(z, *, hook, layer):
            heads, rows = self._head_writers[layer]
            W_O = model.blocks[layer].attn.W_O[heads]
            delta = z[:, :, heads] - corrupted[attn_hook_name(layer)][:, :, heads].to(z)
            written.append((rows, einops.einsum(delta, W_O.to(z), "b p k h, k h d -> b p k d")))

        def on_mlp_out(out, *, hook, layer):
            delta = out - corrupted[mlp_out_hook(layer)].to(out)
            written.append(([writers[mlp_name(layer)]], delta[:, :, None]))

        pending: dict[str, Tensor] = {}

        def on_head_input(x, *, hook, layer, kind):
            heads = self._head_writers[layer][0]
            if kind == "q":  # q, k and v of a layer in one pass, while the stream is the same
                names = [head_name(layer, h) for h in heads]
                rows = [readers[f"{n}.{k}"] for k in HEAD_INPUTS for n in names]
                parts = removed(rows)
                pending.clear()
                if parts is not None:
                    for i, k in enumerate(HEAD_INPUTS):
                        pending[k] = parts[:, :, i * len(heads) : (i + 1) * len(heads)]
            part = pending.pop(kind, None)
            if part is None:
                return x
            index = torch.tensor(heads, device=x.device)
            return x.index_add(2, index, -part.to(x))

        def on_single_reader(x, *, hook, reader):
            part = removed([readers[reader]])
            return x if part is None else x - part[:, :, 0].to(x)

        hooks = mask_hooks(dims, masks, corrupted)  # node masks first: writes are read after
        hooks.append((INPUT_HOOK, on_input))
        for layer in range(self.n_layers):
            if layer in self._head_writers:
                for k in HEAD_INPUTS:
                    read = partial(on_head_input, layer=layer, kind=k)
                    hooks.append((f"blocks.{layer}.hook_{k}_input", read))
                hooks.append((attn_hook_name(layer), partial(on_z, layer=layer)))
            if layer in self.mlps:
                read = partial(on_single_reader, reader=mlp_name(layer))
                hooks.append((f"blocks.{layer}.hook_mlp_in", read))
                hooks.append((mlp_out_hook(layer), partial(on_mlp_out, layer=layer)))
        last = f"blocks.{self.n_layers - 1}.hook_resid_post"
        hooks.append((last, partial(on_single_reader, reader=LOGITS)))
        return hooks

    def corrupted_hook_names(self, dims: ModelDims) -> list[str]:
        """Sites whose corrupted activations the hooks need: every masked site (the node
        circuit's ablation), the embeddings and the kept MLPs' outputs."""
        return [*dims.hook_names(), INPUT_HOOK, *(mlp_out_hook(layer) for layer in self.mlps)]


@torch.no_grad()
def corrupted_activations(
    model, graph: EdgeGraph, tokens: Int[Tensor, "batch pos"]
) -> dict[str, Tensor]:
    """One pass over the corrupted prompts: every activation :meth:`EdgeGraph.hooks` needs."""
    dims = ModelDims.from_cfg(model.cfg)
    cache: dict[str, Tensor] = {}
    with attached(model, storing_hooks(graph.corrupted_hook_names(dims), cache)):
        model(tokens, stop_at_layer=dims.n_layers)
    return cache


def check_hooked(model) -> None:
    """Edges need a HookedTransformer: only it gives each head its own residual input."""
    if not is_hooked_transformer(model):
        raise UsageTypeError(
            "edges need per-head residual inputs, which a HookedTransformer provides; got "
            f"{type(model).__name__}. On TransformerLens 3.x load one with load_model() or "
            "build one with transformer_lens_mgp.models.hooked_from_hf (same weights); "
            "TransformerLens 4.x has none, so there circuits stop at nodes"
        )


@contextmanager
def per_head_inputs(model) -> Iterator[None]:
    """Give every head its own copy of the residual stream (grouped-query attention
    ungrouped) and the MLP input its hook, so each can be patched alone; the model's settings
    come back on exit."""
    check_hooked(model)
    names = ("use_split_qkv_input", "ungroup_grouped_query_attention", "use_hook_mlp_in")
    saved = {name: getattr(model.cfg, name) for name in names}
    try:
        for name in names:
            setattr(model.cfg, name, True)
        yield
    finally:
        for name, value in saved.items():
            setattr(model.cfg, name, value)
