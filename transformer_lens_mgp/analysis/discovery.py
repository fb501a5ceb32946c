"""What a discovery found, measured: the circuit, its held-out faithfulness beside a random
circuit of the same size (on pairs of its training frames and, when given, on frames it never
saw), and what else was asked for (node effects, a faithfulness curve,
edges), as one frozen result that the report, ``metrics.json`` and a notebook all read."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from ..core.circuit import Circuit
from ..core.data import PairedDataset
from ..core.edge_circuit import EdgeCircuit
from .anatomy import CircuitAnatomy, dissect
from .convergence import Settling, settling
from .curves import FaithfulnessCurve, faithfulness_curve
from .edges import edge_graph
from .evaluation import Evaluation, evaluate_many
from .subcircuits import random_circuit

EDGE_PAIRS = 64
"""Held-out pairs the edge scores average over: one forward and backward pass per batch."""


@dataclass(frozen=True)
class ScoredEdge:
    """An edge between two kept nodes and its attribution score (``edge_graph``)."""

    source: str
    target: str
    score: float

    def to_dict(self) -> dict:
        return {"from": self.source, "to": self.target, "score": self.score}


@dataclass(frozen=True)
class Timings:
    """Where a discovery's time went, in seconds: loading the model and building the pairs
    (when the caller reports it), the fit's once-per-fit passes (the full model's answers,
    the empty circuit), its steps, and the measurements after it."""

    model_and_pairs: float
    prepare: float
    steps: float
    analysis: float

    @property
    def wall(self) -> float:
        return self.model_and_pairs + self.prepare + self.steps + self.analysis

    def parts(self, n_steps: int) -> dict[str, float]:
        return {
            "model and pairs": round(self.model_and_pairs, 1),
            "full model's answers and empty circuit": round(self.prepare, 1),
            f"{n_steps} steps": round(self.steps, 1),
            "evaluation and analysis": round(self.analysis, 1),
        }


@dataclass(frozen=True)
class Discovery:
    """A circuit measured on held-out pairs.

    Args:
        circuit: the circuit.
        evaluation: its faithfulness on the held-out pairs (None: not measured).
        random_baseline: a random circuit of the same size on the same pairs.
        unseen: the circuit's faithfulness on pairs from frames and words the fit never saw.
        unseen_random: the random circuit's on those pairs.
        settling: per pruned granularity, kept against target and how much it still moved.
        facts: what the run was about (task, model, corruption, pairs), for the record.
        anatomy: node effects and the top heads' and neurons' profiles, when measured.
        curve: faithfulness against size, when measured.
        edges: attribution scores of the edges among the kept nodes, when measured.
        learned_edges: the edge circuit learned among the kept nodes, when asked for.
        learned_summary: its held-out faithfulness against other edge choices.
        timings: where the time went, for a discovery that fitted the circuit.
        peak_rss_mib: the process's peak memory at the end.
    """

    circuit: Circuit
    evaluation: Evaluation | None = None
    random_baseline: Evaluation | None = None
    unseen: Evaluation | None = None
    unseen_random: Evaluation | None = None
    settling: tuple[Settling, ...] = ()
    facts: Mapping[str, str | int] = dataclasses.field(default_factory=dict)
    anatomy: CircuitAnatomy | None = None
    curve: FaithfulnessCurve | None = None
    edges: tuple[ScoredEdge, ...] | None = None
    learned_edges: EdgeCircuit | None = None
    learned_summary: Mapping | None = None
    timings: Timings | None = None
    peak_rss_mib: float | None = None

    @property
    def n_test(self) -> int | None:
        return None if self.evaluation is None else self.evaluation.n_pairs

    def test_sets(self) -> list[tuple[str, Evaluation, Evaluation]]:
        """(name, circuit, random circuit) per set of held-out pairs measured: "in-frame",
        then "unseen frames" when measured; what the printed table and the report show."""
        sets = [("in-frame", self.evaluation, self.random_baseline)]
        if self.unseen is not None:
            sets.append(("unseen frames", self.unseen, self.unseen_random))
        return sets

    def steps_trained(self) -> int:
        """Optimiser steps of the fit, every rung of a size search included."""
        info, config = self.circuit.fit_info, self.circuit.config
        return info.get("steps_trained", config.get("steps", 0))

    def replace(self, **changes) -> Discovery:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """``metrics.json``: the run's facts and every measured number."""
        out = {**dict(self.facts), "n_test": self.n_test}
        if self.evaluation is not None:
            out["circuit"] = self.evaluation.to_dict()
        if self.random_baseline is not None:
            out["random_circuit_same_size"] = self.random_baseline.to_dict()
        if self.unseen is not None:
            out["n_unseen"] = self.unseen.n_pairs
            out["circuit_unseen_frames"] = self.unseen.to_dict()
            out["random_circuit_unseen_frames"] = self.unseen_random.to_dict()
        out["fit_seconds"] = self.circuit.fit_info.get("seconds")
        if "sizing" in self.circuit.fit_info:
            out["target_scale"] = self.circuit.fit_info["target_scale"]
            out["sizing"] = self.circuit.fit_info["sizing"]
        out["settling"] = [row.to_dict() for row in self.settling]
        if self.curve is not None:
            out["faithfulness_curve"] = self.curve.to_dict()
        if self.edges is not None:
            out["n_edges_scored"] = len(self.edges)
        if self.learned_summary is not None:
            out["learned_edges"] = dict(self.learned_summary)
        if self.timings is not None:
            out["wall_seconds"] = round(self.timings.wall, 1)
            out["time_parts"] = self.timings.parts(self.steps_trained())
        if self.peak_rss_mib is not None:
            out["peak_rss_mib"] = self.peak_rss_mib
        return out


def measure(
    model,
    circuit: Circuit,
    test: PairedDataset,
    *,
    unseen: PairedDataset | None = None,
    seed: int = 0,
    curve: bool = False,
    edges: bool = False,
    node_effects: bool = False,
    facts: Mapping | None = None,
    progress: bool = False,
) -> Discovery:
    """Evaluate ``circuit`` and a random circuit of its size on ``test`` (and on ``unseen``,
    pairs of frames the fit never saw, when given) and, if asked, its
    faithfulness curve, edge scores and node effects with the top heads' and neurons'
    profiles. ``progress`` shows bars for the evaluation and the node effects."""
    rivals = [circuit, random_circuit(circuit, seed=seed)]
    result, baseline = evaluate_many(model, rivals, test, progress=progress)
    unseen_results = (None, None)
    if unseen is not None:
        unseen_results = evaluate_many(model, rivals, unseen, progress=progress)
    scored = None
    if edges:
        graph = edge_graph(model, circuit, test[:EDGE_PAIRS])
        scored = [ScoredEdge(u, v, d["weight"]) for u, v, d in graph.edges(data=True)]
        scored = tuple(sorted(scored, key=lambda e: -abs(e.score)))
    return Discovery(
        circuit=circuit,
        evaluation=result,
        random_baseline=baseline,
        unseen=unseen_results[0],
        unseen_random=unseen_results[1],
        settling=tuple(settling(circuit)),
        facts=dict(facts or {}),
        anatomy=dissect(model, circuit, test, progress=progress) if node_effects else None,
        curve=faithfulness_curve(model, circuit, test) if curve else None,
        edges=scored,
    )


def peak_memory_mib() -> float | None:
    """This process's peak resident memory, where the platform reports it (not on Windows)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / (1024 if sys.platform == "darwin" else 1)
