"""Circuit discovery by multi-granular node pruning for TransformerLens models."""

from . import tasks
from .circuit import Circuit
from .data import PairedDataset
from .edges import edge_graph, edge_scores
from .evaluation import (
    Evaluation,
    FaithfulnessCurve,
    evaluate,
    evaluate_many,
    faithfulness_curve,
    random_circuit,
)
from .granularity import GRANULARITIES, ModelDims
from .masks import HardConcrete
from .models import load_model
from .pruner import CircuitPruner, TrainingDivergedError
from .sparsity import DEFAULT_SPARSITY
from .sweeps import ParetoAreas, pareto_areas, sweep

__all__ = [
    "DEFAULT_SPARSITY",
    "GRANULARITIES",
    "Circuit",
    "CircuitPruner",
    "Evaluation",
    "FaithfulnessCurve",
    "HardConcrete",
    "ModelDims",
    "PairedDataset",
    "ParetoAreas",
    "TrainingDivergedError",
    "edge_graph",
    "edge_scores",
    "evaluate",
    "evaluate_many",
    "faithfulness_curve",
    "load_model",
    "pareto_areas",
    "random_circuit",
    "sweep",
    "tasks",
]
__version__ = "0.1.0"
