"""Two circuits of one model side by side: how much they share at every granularity.

Useful to tell what two behaviours have in common (IOI against Gendered Pronouns) or how
stable a circuit is (two seeds, two sizes).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..core.circuit import Circuit
from ..core.errors import UsageError


@dataclass(frozen=True)
class GranularityOverlap:
    """Kept nodes of one granularity in two circuits.

    Args:
        kept_a: nodes kept by the first circuit.
        kept_b: nodes kept by the second.
        shared: nodes kept by both.
        jaccard: ``shared / (kept_a + kept_b - shared)``; 1.0 when both keep nothing.
    """

    kept_a: int
    kept_b: int
    shared: int
    jaccard: float


@dataclass(frozen=True)
class CircuitComparison:
    """What two circuits of one model share.

    Args:
        names: labels of the two circuits.
        overlap: per granularity the model has, the kept counts and their Jaccard overlap.
        shared_heads: heads both keep, by name (``L5.H3``).
        only_a_heads: heads only the first keeps.
        only_b_heads: heads only the second keeps.
    """

    names: tuple[str, str]
    overlap: dict[str, GranularityOverlap]
    shared_heads: list[str]
    only_a_heads: list[str]
    only_b_heads: list[str]

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        """A plain-text table of the overlap per granularity."""
        a, b = self.names
        lines = [f"{'granularity':<12} {a[:10]:>10} {b[:10]:>10} {'shared':>8} {'Jaccard':>8}"]
        for g, o in self.overlap.items():
            lines.append(f"{g:<12} {o.kept_a:>10} {o.kept_b:>10} {o.shared:>8} {o.jaccard:>8.3f}")
        return "\n".join(lines)


def compare(a: Circuit, b: Circuit, names: tuple[str, str] = ("A", "B")) -> CircuitComparison:
    """The overlap of circuits ``a`` and ``b`` of the same model."""
    if isinstance(names, str) or len(tuple(names)) != 2:
        raise UsageError(
            f"names labels the two circuits: give two, e.g. ('IOI', 'GP'); got {names!r}"
        )
    for circuit in (a, b):
        circuit.require_no_slots("compare")
    if a.dims != b.dims:
        raise UsageError(
            f"the circuits belong to models of different sizes ({a.dims} and {b.dims}); "
            "compare circuits found on one model"
        )
    overlap = {}
    for g in a.dims.available():
        kept_a, kept_b = a.kept(g), b.kept(g)
        shared = int((kept_a & kept_b).sum())
        union = int((kept_a | kept_b).sum())
        overlap[g] = GranularityOverlap(
            kept_a=int(kept_a.sum()),
            kept_b=int(kept_b.sum()),
            shared=shared,
            jaccard=shared / union if union else 1.0,
        )
    heads_a, heads_b = set(a.nodes("head")), set(b.nodes("head"))
    order = a.nodes("head") + [h for h in b.nodes("head") if h not in heads_a]
    return CircuitComparison(
        names=tuple(names),
        overlap=overlap,
        shared_heads=[h for h in order if h in heads_a and h in heads_b],
        only_a_heads=[h for h in order if h in heads_a and h not in heads_b],
        only_b_heads=[h for h in order if h in heads_b and h not in heads_a],
    )
