"""A circuit taken apart: which nodes matter most, what role the top heads play, and what the
top heads and neurons do."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.circuit import Circuit
from ..core.data import PairedDataset
from .heads import HeadProfiles, head_profiles
from .neurons import NeuronProfiles, neuron_profiles
from .node_effects import NodeEffects, node_effects
from .roles import HeadRole, head_roles

MAX_PAIRS = 32
"""Held-out pairs the node effects are measured on: one masked pass over them per node."""

MAX_PROFILE_PAIRS = 128
"""Held-out pairs the head and neuron profiles average over (one clean pass each)."""


@dataclass(frozen=True)
class CircuitAnatomy:
    """Node effects of a circuit and profiles of its most important heads and neurons.

    Args:
        effects: every kept head and MLP (and the top MLP neurons) removed alone.
        heads: profiles of the heads with the largest effects (None when no head is kept).
        neurons: profiles of the MLP neurons with the largest effects (None when none was
            measured).
        roles: the role of each profiled head, with its evidence.
    """

    effects: NodeEffects
    heads: HeadProfiles | None
    neurons: NeuronProfiles | None
    roles: tuple[HeadRole, ...] = ()

    def to_dict(self) -> dict:
        return {
            "effects": self.effects.to_dict(),
            "heads": None if self.heads is None else self.heads.to_dict(),
            "neurons": None if self.neurons is None else self.neurons.to_dict(),
            "roles": [r.to_dict() for r in self.roles],
        }

    @classmethod
    def from_dict(cls, data: dict) -> CircuitAnatomy:
        return cls(
            NodeEffects.from_dict(data["effects"]),
            None if data["heads"] is None else HeadProfiles.from_dict(data["heads"]),
            None if data["neurons"] is None else NeuronProfiles.from_dict(data["neurons"]),
            tuple(HeadRole(**r) for r in data.get("roles", ())),
        )


def dissect(
    model,
    circuit: Circuit,
    dataset: PairedDataset,
    *,
    n_heads: int = 10,
    n_neurons: int = 10,
    top_neurons: int = 20,
    max_pairs: int = MAX_PAIRS,
    progress: bool = False,
) -> CircuitAnatomy:
    """Node effects on the first ``max_pairs`` pairs of ``dataset`` (held-out pairs), then
    profiles of the ``n_heads`` heads and ``n_neurons`` MLP neurons that matter most, on its
    first ``MAX_PROFILE_PAIRS``, and the profiled heads' roles (with ``progress``, a bar over
    the node effects' runs)."""
    effects = node_effects(
        model, circuit, dataset[:max_pairs], top_neurons=top_neurons, progress=progress
    )
    heads = [e.index for e in _mattering(effects, n_heads, "head")]
    neurons = [e.index for e in _mattering(effects, n_neurons, "mlp_neuron")]
    profiled = dataset[:MAX_PROFILE_PAIRS]
    profiles = head_profiles(model, profiled, heads) if heads else None
    first_token = int(dataset.clean_tokens[0, 0])
    return CircuitAnatomy(
        effects,
        profiles,
        neuron_profiles(model, profiled, neurons) if neurons else None,
        head_roles(model, profiles.heads, effects, first_token) if profiles else (),
    )


def _mattering(effects: NodeEffects, n: int, granularity: str) -> list:
    """The ``n`` largest effects of one granularity, leaving out nodes whose removal changes
    nothing (unless nothing else is left)."""
    top = effects.top(n, granularity)
    return [e for e in top if e.delta_kl != 0 or e.delta_metric != 0] or top
