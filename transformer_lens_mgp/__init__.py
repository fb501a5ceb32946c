"""Circuit discovery by multi-granular node pruning for TransformerLens models."""

from .circuit import Circuit
from .data import PairedDataset
from .granularity import GRANULARITIES, ModelDims
from .masks import HardConcrete
from .pruner import DEFAULT_SPARSITY, CircuitPruner, TrainingDivergedError

__all__ = [
    "GRANULARITIES",
    "DEFAULT_SPARSITY",
    "Circuit",
    "CircuitPruner",
    "HardConcrete",
    "ModelDims",
    "PairedDataset",
    "TrainingDivergedError",
]
__version__ = "0.1.0"
