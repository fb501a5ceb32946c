"""discover(): what ``tl-mgp discover`` does, as one call a notebook can make.

1. fit the node circuit with the given (by default the best measured) settings;
2. measure it on held-out pairs beside a random circuit of the same size, with the
   node effects and, if asked, the faithfulness curve and attribution edge scores;
3. if asked, learn the edges among its kept nodes and measure them against attribution-ranked
   and random edges at the same count;
4. return everything as one frozen :class:`~..analysis.discovery.Discovery`.
"""

from __future__ import annotations

import time

import torch

from ..analysis.discovery import Discovery, Timings, measure, peak_memory_mib
from ..analysis.edge_evaluation import measure_edges
from ..analysis.edges import edge_scores
from ..core.data import PairedDataset
from ..core.edge_graph import check_hooked
from ..core.errors import UsageError
from .config import PruningConfig
from .edges import EdgeConfig, EdgePruner
from .pruner import CircuitPruner

EDGE_CHOICES = ("scored", "learned")
SCORED_PAIRS = 256
"""Training pairs on which attribution ranks edges, for the comparison at equal count."""


def discover(
    model,
    train: PairedDataset,
    test: PairedDataset,
    config: PruningConfig | None = None,
    *,
    node_effects: bool = True,
    curve: bool = False,
    edges: str | None = None,
    facts: dict | None = None,
    progress: bool = True,
) -> Discovery:
    """Fit a circuit on ``train`` and measure it on ``test``.

    Args:
        model: a TransformerLens model; never modified.
        train: the pairs the masks learn from.
        test: held-out pairs every reported number is measured on.
        config: the fit's settings (default: ``PruningConfig()``).
        node_effects: rank the kept nodes (each removed alone) and profile the top heads and
            neurons.
        curve: also measure faithfulness against size (MIB's CPR and CMD).
        edges: ``"scored"``: rank the edges among the kept heads and MLPs by attribution;
            ``"learned"``: train edge masks among them (both need a HookedTransformer).
        facts: what the run is about (task, model name, ...), recorded as given.
        progress: progress bars.
    """
    if edges not in (None, *EDGE_CHOICES):
        raise UsageError(f"edges is one of {EDGE_CHOICES} or None, got {edges!r}")
    if edges is not None:
        check_hooked(model)  # before the fit, not after it
    config = config or PruningConfig()
    circuit = CircuitPruner(model, config).fit(train, progress=progress)
    fitted = time.perf_counter()
    run = measure(
        model,
        circuit,
        test,
        seed=config.seed,
        curve=curve,
        edges=edges == "scored",
        node_effects=node_effects,
        facts={**(facts or {}), "n_train": len(train)},
        progress=progress,
    )
    if edges == "learned":
        learned, summary = fit_edges(model, run.circuit, train, test, EdgeConfig(seed=config.seed))
        run = run.replace(learned_edges=learned, learned_summary=summary)
    fit, prepare = circuit.fit_info["seconds"], circuit.fit_info["prepare_seconds"]
    timings = Timings(0.0, prepare, fit - prepare, time.perf_counter() - fitted)
    return run.replace(timings=timings, peak_rss_mib=peak_memory_mib())


def fit_edges(model, circuit, train, test, config: EdgeConfig, progress: bool = True):
    """Learn the edges among ``circuit``'s kept nodes on ``train``; measure them on ``test``
    against attribution-ranked and random edges at equal count. Returns the edge circuit and
    its measurements (``learned_edges.json``)."""
    pruner = EdgePruner(model, circuit, config)  # refuses a bridge or a mean-ablated circuit
    learned = pruner.fit(train, progress=progress)
    scored = train[torch.arange(min(SCORED_PAIRS, len(train)))]
    scores = edge_scores(model, circuit, scored, by_input=True)
    return learned, measure_edges(model, learned, test, scores, seed=config.seed)
