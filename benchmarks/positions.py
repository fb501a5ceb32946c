"""Position-aware nodes against position-agnostic ones, at equal (node x position) count.

    python -m benchmarks.positions --task ioi --out runs/positions-ioi

A position-aware circuit gives each node one mask per token role the task records (IOI: IO,
S1, S1+1, S2, END) and one for every other position ("other"), all trained in one run. A
position-agnostic node counts once per slot: the default circuit of k heads holds 6k
(head, slot) pairs on IOI. On in-frame and unseen-frame test pairs (as ``tl-mgp discover``
builds them):

- **pruning**: one fit at the default targets, every node at every position;
- **pruning per position**: one fit at the same targets over (node, slot) pairs;
- **integrated gradients per position**: node-level EAP-IG scores summed per slot, the best
  (node, slot) pairs at the per-position fit's counts, granularity by granularity; and
  integrated gradients per node at the agnostic fit's counts;
- **random per position** at the per-position fit's counts.

The slots are laid out as extra layers (slot first: layer ``s * n_layers + l``), so a
position-aware circuit is an ordinary :class:`Circuit` of a model with ``slots x n_layers``
layers: counts, hierarchy and choices at equal size work unchanged. Writes
``positions.json`` and ``positions.html`` (kept heads and MLP neurons per slot and layer) and
prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch
from einops import rearrange, repeat
from jaxtyping import Int
from torch import Tensor

from transformer_lens_mgp import Circuit, CircuitPruner, ModelDims, PruningConfig, load_model, tasks
from transformer_lens_mgp.analysis.evaluation import Evaluation, FaithfulnessSums
from transformer_lens_mgp.analysis.subcircuits import random_circuit, scored_circuit
from transformer_lens_mgp.core.hooks import AblationSource, interpolate_hook, site_activations
from transformer_lens_mgp.core.model_api import FwdHooks, attached, model_device
from transformer_lens_mgp.core.nodes import SiteMasks, attn_hook_name, mlp_hook_name, site_masks
from transformer_lens_mgp.runtime.forward import (
    answer_logits,
    batches_with_rows,
    masked_answer_logits,
    reference_logits,
)
from transformer_lens_mgp.testing.baselines import integrated_gradients_scores
from transformer_lens_mgp.training.config import DEFAULT_TARGET
from transformer_lens_mgp.training.run import NO_GRAD_BATCHES, PruningRun
from transformer_lens_mgp.training.steps import step_to_end

COUNTED = ("head", "attn_neuron", "mlp_neuron")
TESTS = {"in-frame": "test", "unseen frames": "unseen"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(tasks.TASKS), default="ioi")
    parser.add_argument("--model", default=None, help="default: the embedded SmolLM2")
    parser.add_argument("--n", type=int, default=2000, help="pairs from the training frames")
    parser.add_argument("--test-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="default: the default's")
    parser.add_argument("--score-pairs", type=int, default=128)
    parser.add_argument("--ig-steps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("runs/positions"))
    return parser.parse_args(argv)


def slotted(dims: ModelDims, n_slots: int) -> ModelDims:
    """The node sizes of a position-aware circuit: one copy of every layer per slot."""
    return replace(dims, n_layers=n_slots * dims.n_layers)


def empty_masks(dims: ModelDims) -> SiteMasks:
    return site_masks({"block": torch.zeros(dims.n_layers)}, dims)


def slot_hooks(
    dims: ModelDims, masks: SiteMasks, slots: Int[Tensor, "batch pos"], ablated
) -> FwdHooks:
    """Hooks that mask every token with its slot's masks (``masks`` of :func:`slotted` dims,
    ``dims`` the model's)."""
    n_slots = masks.attn.shape[0] // dims.n_layers
    sites = [(attn_hook_name, masks.attn)]
    if masks.mlp is not None:
        sites.append((mlp_hook_name, masks.mlp))
    hooks = []
    for hook_name, mask in sites:
        per_layer = rearrange(mask, "(s l) ... -> l s ...", s=n_slots)
        for layer in range(dims.n_layers):
            name = hook_name(layer)
            values = ablated[name]
            per_token = per_layer[layer].to(values.device)[slots.to(values.device)]
            hooks.append((name, partial(interpolate_hook, mask=per_token, ablated=values)))
    return hooks


class PositionRun(PruningRun):
    """A fit whose nodes are (node, slot) pairs: ``self.dims`` are :func:`slotted` dims,
    ``site_dims`` the model's, and each token is masked with its slot's masks."""

    def __init__(self, model, config: PruningConfig, dims: ModelDims, train, n_slots: int):
        super().__init__(model, config, slotted(dims, n_slots), train)
        self.site_dims = dims

    def prepare(self, progress: bool = False) -> None:
        batch_size = NO_GRAD_BATCHES * self.config.batch_size
        self.reference = reference_logits(self.model, self.train, batch_size, progress)
        self.ablation = AblationSource.for_dataset(
            self.model, self.config.ablation, self.train, self.site_dims
        )
        self.kl_empty, self.metric_scale = self._empty_circuit()
        self.sparsity.kl_scale = self.kl_empty

    def empty_masks(self) -> SiteMasks:
        return empty_masks(self.site_dims).to(self.placement.inputs)

    def masked(self, masks, batch, ablated) -> FwdHooks:
        return slot_hooks(self.site_dims, site_masks(masks, self.dims), batch.role_slots(), ablated)


def fit_per_position(model, config: PruningConfig, train, progress: bool = True) -> Circuit:
    dims = ModelDims.from_cfg(model.cfg)
    config = config.resolved(dims, model_device(model), has_wrong_answers=True)
    start = time.perf_counter()
    with CircuitPruner(model, config).execution(config):
        run = PositionRun(model, config, dims, train, len(train.roles) + 1)
        run.prepare(progress)
        step_to_end(run, None, {}, progress, "pruning per position")
    return run.circuit({"seconds": round(time.perf_counter() - start, 2)})


def spread(circuit: Circuit, n_slots: int) -> Circuit:
    """A position-agnostic circuit as a position-aware one: the same nodes in every slot."""
    return Circuit(
        dims=slotted(circuit.dims, n_slots),
        log_alpha={
            g: repeat(t, "l ... -> (s l) ...", s=n_slots) for g, t in circuit.log_alpha.items()
        },
        hard_concrete=circuit.hard_concrete,
        config=circuit.config,
        fit_info=circuit.fit_info,
    )


@torch.no_grad()
def evaluate_slotted(
    model, circuits: list[Circuit], dataset, batch_size: int = 32
) -> list[Evaluation]:
    """KL, recovered logit difference and accuracy of position-aware circuits on ``dataset``."""
    dims = ModelDims.from_cfg(model.cfg)
    device = model_device(model)
    masks = [c.site_masks().to(device) for c in circuits]
    empty = empty_masks(dims).to(device)
    full = reference_logits(model, dataset, batch_size)
    sums = FaithfulnessSums(len(circuits), has_metric=True)
    for batch, rows in batches_with_rows(dataset, batch_size, device):
        ablated = site_activations(model, batch.corrupted_tokens, dims)
        slots = batch.role_slots()
        sums.add_reference(
            full[rows], masked_answer_logits(model, batch, dims, empty, ablated), batch
        )
        for i, m in enumerate(masks):
            with attached(model, slot_hooks(dims, m, slots, ablated)):
                logits = answer_logits(model, batch.clean_tokens, batch.answer_positions)
            sums.add(i, full[rows], logits, batch)
    kept = [{g: c.n_kept(g) for g in COUNTED} for c in circuits]
    total = [{g: c.n_total(g) for g in COUNTED} for c in circuits]
    return sums.evaluations(kept, total)


def per_slot(circuit: Circuit, slot_names: list[str]) -> dict[str, dict[str, int]]:
    """Kept heads and MLP neurons in each slot."""
    n = len(slot_names)
    out = {}
    for g in ("head", "mlp_neuron"):
        kept = rearrange(circuit.kept(g), "(s l) ... -> s (l ...)", s=n).sum(-1)
        out[g] = dict(zip(slot_names, kept.tolist(), strict=True))
    return out


def distinct_heads(circuit: Circuit, n_slots: int) -> int:
    """Heads kept at one slot at least."""
    return int(rearrange(circuit.kept("head"), "(s l) h -> s l h", s=n_slots).any(0).sum())


def candidates(model, train, agnostic: Circuit, positional: Circuit, args) -> dict[str, Circuit]:
    """Every method's position-aware circuit."""
    dims = ModelDims.from_cfg(model.cfg)
    n_slots = len(train.roles) + 1
    scoring = train[: args.score_pairs]
    by_role = integrated_gradients_scores(model, scoring, dims, args.ig_steps, by_role=True)
    by_role = {g: rearrange(s, "s l ... -> (s l) ...") for g, s in by_role.items()}
    per_node = integrated_gradients_scores(model, scoring, dims, args.ig_steps)
    return {
        "pruning": spread(agnostic, n_slots),
        "integrated gradients": spread(scored_circuit(agnostic, per_node), n_slots),
        "pruning per position": positional,
        "integrated gradients per position": scored_circuit(positional, by_role),
        "random per position": random_circuit(positional, seed=0),
    }


def markdown(rows: list[dict], slot_names: list[str]) -> str:
    lines = [
        "| method | head x slot (heads) | attn neuron x slot | MLP neuron x slot | "
        "KL in-frame / unseen | recovered in-frame / unseen |",
        "|" + "---|" * 6,
    ]
    for r in rows:
        k, a, b = r["kept"], r["in-frame"], r["unseen frames"]
        lines.append(
            f"| {r['method']} | {k['head']:,} ({r['distinct_heads']}) | {k['attn_neuron']:,} | "
            f"{k['mlp_neuron']:,} | {a['kl']:.3f} / {b['kl']:.3f} | "
            f"{a['recovered']:.2f} / {b['recovered']:.2f} |"
        )
    lines += ["", "| method | nodes | " + " | ".join(slot_names) + " |"]
    lines.append("|" + "---|" * (2 + len(slot_names)))
    for r in rows:
        for g, counts in r["per_slot"].items():
            cells = " | ".join(f"{counts[s]:,}" for s in slot_names)
            lines.append(f"| {r['method']} | {g} | {cells} |")
    return "\n".join(lines)


def figure(circuit: Circuit, slot_names: list[str], path: Path, title: str) -> None:
    """Kept heads and MLP neurons per slot and layer of the position-aware fit."""
    from plotly.subplots import make_subplots

    n = len(slot_names)
    fig = make_subplots(rows=1, cols=2, subplot_titles=["heads", "MLP neurons"])
    for col, g in enumerate(("head", "mlp_neuron"), start=1):
        counts = rearrange(circuit.kept(g), "(s l) u -> s l u", s=n).sum(-1)
        fig.add_heatmap(
            z=counts.tolist(), y=slot_names, colorscale="Blues", showscale=False, row=1, col=col
        )
        fig.update_xaxes(title_text="layer", row=1, col=col)
    fig.update_layout(title=title, height=380, width=1100)
    fig.write_html(path, include_plotlyjs=True)


def main(argv=None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    model = load_model(args.model)
    pairs = tasks.split_pairs(args.task, model, args.n, args.seed, None, args.test_fraction)
    train, tests = pairs.train, {"test": pairs.test, "unseen": pairs.unseen}
    slot_names = [*train.roles, "other"]
    dims = ModelDims.from_cfg(model.cfg)
    target = {g: t for g, t in DEFAULT_TARGET.items() if g in dims.available()}
    steps = {} if args.steps is None else {"steps": args.steps}
    config = PruningConfig(target=target, seed=args.seed, **steps)
    agnostic = CircuitPruner(model, config).fit(train)
    positional = fit_per_position(model, config, train)
    chosen = candidates(model, train, agnostic, positional, args)
    results = {k: evaluate_slotted(model, list(chosen.values()), d) for k, d in tests.items()}
    rows = []
    for i, (method, c) in enumerate(chosen.items()):
        row = {
            "method": method,
            "kept": {g: c.n_kept(g) for g in COUNTED},
            "total": {g: c.n_total(g) for g in COUNTED},
            "distinct_heads": distinct_heads(c, len(slot_names)),
            "per_slot": per_slot(c, slot_names),
        }
        for name, key in TESTS.items():
            r = results[key][i]
            row[name] = {"kl": r.kl, "recovered": r.recovered, "accuracy": r.accuracy_circuit}
        rows.append(row)
    args.out.mkdir(parents=True, exist_ok=True)
    record = {
        "task": args.task,
        "slots": slot_names,
        "n_train": len(train),
        "n_test": {k: len(v) for k, v in tests.items()},
        "fit_seconds": {
            "pruning": agnostic.fit_info["seconds"],
            "pruning per position": positional.fit_info["seconds"],
        },
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "seconds": time.perf_counter() - start,
        "rows": rows,
    }
    (args.out / "positions.json").write_text(json.dumps(record, indent=2))
    figure(positional, slot_names, args.out / "positions.html", f"{args.task}: kept per slot")
    print(markdown(rows, slot_names))
    print(f"\n{len(train)} training pairs; {record['seconds'] / 60:.1f} min; {args.out}")


if __name__ == "__main__":
    main()
