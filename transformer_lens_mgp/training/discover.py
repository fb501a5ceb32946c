"""discover(): what ``tl-mgp discover`` does, as one call a notebook can make.

1. fit the node circuit with the given (by default the best measured) settings;
2. measure it on held-out pairs beside a random circuit of the same size, with the
   node effects, the head roles, the attribution scores of the edges among its kept nodes
   (the circuit's graph; a HookedTransformer gives each head its own input) and, if asked,
   the faithfulness curve;
3. if asked, learn the edges among its kept nodes and measure them against attribution-ranked
   and random edges at the same count;
4. return everything as one frozen :class:`~..analysis.discovery.Discovery`.
"""

from __future__ import annotations

import time
from importlib.metadata import version

import torch

from ..analysis.discovery import Discovery, Timings, measure, peak_memory_mib
from ..analysis.edge_evaluation import measure_edges
from ..analysis.edges import edge_scores
from ..core.data import PairedDataset
from ..core.edge_graph import check_hooked
from ..core.errors import UsageError
from ..core.model_api import is_hooked_transformer
from .config import PruningConfig
from .edges import EdgeConfig, EdgePruner
from .pruner import CircuitPruner

EDGE_CHOICES = ("scored", "learned", "none")
VERSIONED = ("transformer-lens-mgp", "transformer-lens", "torch")
"""The packages whose versions a run records."""
SCORED_PAIRS = 256
"""Training pairs on which attribution ranks edges, for the comparison at equal count."""


def discover(
    model,
    train: PairedDataset,
    test: PairedDataset,
    config: PruningConfig | None = None,
    *,
    unseen: PairedDataset | None = None,
    node_effects: bool = True,
    curve: bool = False,
    edges: str = "scored",
    facts: dict | None = None,
    progress: bool = True,
) -> Discovery:
    """Fit a circuit on ``train`` and measure it on ``test``.

    Args:
        model: a TransformerLens model; never modified.
        train: the pairs the masks learn from.
        test: held-out pairs every reported number is measured on.
        unseen: pairs from frames and words ``train`` never used (``tasks.split_pairs``), on
            which the circuit is measured too: how far it generalises.
        config: the fit's settings (default: ``PruningConfig()``).
        node_effects: rank the kept nodes (each removed alone) and profile the top heads and
            neurons.
        curve: also measure faithfulness against size (MIB's CPR and CMD).
        edges: ``"scored"`` (the default): score the edges among the kept heads and MLPs by
            attribution, the circuit's graph; skipped, and said in ``facts``, on a model
            without per-head inputs (a TransformerBridge); ``"learned"``: also train edge
            masks among them (needs a HookedTransformer); ``"none"``: no edges.
        facts: what the run is about (task, model name, ...), recorded as given.
        progress: progress bars.
    """
    if edges not in EDGE_CHOICES:
        raise UsageError(f"edges is one of {EDGE_CHOICES}, got {edges!r}")
    config = config or PruningConfig()
    facts = {
        **(facts or {}),
        "seed": config.seed,
        "steps": config.steps,
        "ablation": config.ablation,
        "versions": ", ".join(f"{name} {version(name)}" for name in VERSIONED),
    }
    if config.per_role:
        if edges == "learned":
            raise UsageError(
                "edges are learned among nodes without token positions, and per_role gives "
                "every node one mask per role: use edges='scored' or 'none' with per_role"
            )
        if edges == "scored":
            edges = "none"
            facts["edges"] = "not scored: edge scores read nodes without token positions"
        if node_effects:
            node_effects = False
            facts["node effects"] = "not measured: they remove nodes without token positions"
    if edges == "learned":
        check_hooked(model)  # before the fit, not after it
    elif edges == "scored" and not is_hooked_transformer(model):
        edges = "none"
        facts["edges"] = "not scored: they need a HookedTransformer's per-head inputs"
    circuit = CircuitPruner(model, config).fit(train, progress=progress)
    fitted = time.perf_counter()
    run = measure(
        model,
        circuit,
        test,
        unseen=unseen,
        seed=config.seed,
        curve=curve,
        edges=edges != "none",
        node_effects=node_effects,
        facts={**facts, "n_train": len(train)},
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
