"""Circuit discovery by multi-granular node pruning for TransformerLens models.

The package is a stack of layers, each importing only from those below it:
``core`` (what a circuit is) -> ``runtime`` (how a model is run masked) -> ``analysis``
(what a circuit does) -> ``training`` (how masks are learned) -> ``models``, ``tasks``,
``testing`` -> ``cli``. This module only names the public API.
"""

from . import tasks
from .analysis.compare import CircuitComparison, compare
from .analysis.curves import (
    FaithfulnessCurve,
    ParetoAreas,
    SweepPoint,
    faithfulness_curve,
    pareto_areas,
)
from .analysis.discovery import Discovery
from .analysis.edge_evaluation import attribution_edges, evaluate_edges, random_edges
from .analysis.edges import edge_graph, edge_scores
from .analysis.evaluation import Evaluation, evaluate, evaluate_many
from .analysis.subcircuits import random_circuit
from .core.circuit import Circuit
from .core.data import PairedDataset
from .core.edge_circuit import EdgeCircuit
from .core.edge_graph import EdgeGraph, per_head_inputs
from .core.errors import TrainingDivergedError, UsageError
from .core.gates import HardConcrete
from .core.nodes import GRANULARITIES, ModelDims
from .models import load_model
from .training.config import Faithfulness, PruningConfig, Schedule
from .training.discover import discover
from .training.edges import EdgeConfig, EdgePruner
from .training.pruner import CircuitPruner
from .training.sparsity import DEFAULT_SPARSITY
from .training.sweeps import sweep

__all__ = [
    "DEFAULT_SPARSITY",
    "GRANULARITIES",
    "Circuit",
    "CircuitComparison",
    "CircuitPruner",
    "Discovery",
    "EdgeCircuit",
    "EdgeConfig",
    "EdgeGraph",
    "EdgePruner",
    "Evaluation",
    "Faithfulness",
    "FaithfulnessCurve",
    "HardConcrete",
    "ModelDims",
    "PairedDataset",
    "ParetoAreas",
    "PruningConfig",
    "Schedule",
    "SweepPoint",
    "TrainingDivergedError",
    "UsageError",
    "attribution_edges",
    "compare",
    "discover",
    "edge_graph",
    "edge_scores",
    "evaluate",
    "evaluate_edges",
    "evaluate_many",
    "faithfulness_curve",
    "load_model",
    "pareto_areas",
    "per_head_inputs",
    "random_circuit",
    "random_edges",
    "sweep",
    "tasks",
]
__version__ = "0.1.0"
