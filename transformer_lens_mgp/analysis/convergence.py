"""Whether a fit had settled: how much its circuit's size still moved at the end.

A fit records the kept fraction of the circuit extracted after every step (``size/<g>`` in
its history). If the counts still change over the last fifth of the steps, more steps would
give another circuit, and the one returned is a snapshot of a moving target.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from ..core.circuit import Circuit

LAST_SHARE = 0.2
"""The end of the fit whose size change is reported: the last fifth of the steps."""


@dataclass(frozen=True)
class Settling:
    """One granularity at the end of a fit.

    Args:
        granularity: the nodes.
        kept: kept fraction of the returned circuit.
        target: the kept fraction aimed at, if the fit had a target.
        change: relative change of the kept count over the last fifth of the steps,
            ``|end - start| / end``.
    """

    granularity: str
    kept: float
    target: float | None
    change: float

    def to_dict(self) -> dict:
        return asdict(self)


def relative_change(sizes: Sequence[float], share: float = LAST_SHARE) -> float:
    """``|end - start| / end`` of ``sizes`` over their last ``share`` (0 when constant, 1 when
    they fall to zero from something)."""
    start, end = sizes[-int(len(sizes) * share) - 1], sizes[-1]
    if end == 0:
        return float(start != 0)
    return abs(end - start) / end


def settling(circuit: Circuit) -> list[Settling]:
    """Per trained granularity with a recorded size: where the fit ended and how much its
    size moved over the last fifth (empty for circuits without a size history)."""
    targets = circuit.fit_info.get("target") or circuit.config.get("target") or {}
    out = []
    for g in circuit.granularities:
        sizes = circuit.history.get(f"size/{g}")
        if not sizes:
            continue
        out.append(Settling(g, circuit.fraction_kept(g), targets.get(g), relative_change(sizes)))
    return out
