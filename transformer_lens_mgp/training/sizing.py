"""The size a task needs: the smallest circuit that meets a faithfulness level.

The fit at the default targets is the first rung. Its circuit is measured on validation
pairs against the level (:class:`~.config.Faithfulness`). If it meets it, further, shorter
fits halve the targets (all of them: a rung that misses, e.g. by overshooting the model's
logit difference, is often followed by a smaller one that meets it again); if it misses,
they double the targets until one meets it. Each continues from the last rung's masks and
multipliers, its targets moving from the last rung's to its own over its warm-up.
The model's answers, the ablation values and the empty circuit are computed once. The fit
returns the smallest circuit that met the level: an easy behaviour ends small, a hard one
larger, where a fixed share would fit both the same.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..core.circuit import Circuit
from ..core.metrics import kl_divergence, recovered, task_metric
from ..runtime.forward import masked_answer_batches
from .config import PruningConfig
from .run import NO_GRAD_BATCHES, PruningRun

RUNG_SHARE = 0.4
"""Steps of each further rung, as a share of the fit's steps (the first rung takes them all)."""
MAX_RUNGS = 3
"""The first fit and at most two further ones: the fit costs at most 1.8 times one fit."""
FACTOR = 2.0
"""Each rung's targets are the last one's halved (or doubled)."""


@dataclass(frozen=True)
class Rung:
    """One measured circuit of the search: its targets' scale, its faithfulness on the
    validation pairs (KL as a share of the empty circuit's), its size, and the step (counted
    over every rung) it ended at."""

    scale: float
    kl_share: float
    recovered: float | None
    size: float
    met: bool
    end: int
    log_alpha: dict[str, Tensor] = field(repr=False, compare=False)

    def to_dict(self, with_masks: bool = False) -> dict:
        out = {
            "scale": self.scale,
            "kl_share": round(self.kl_share, 6),
            "recovered": None if self.recovered is None else round(self.recovered, 6),
            "size": round(self.size, 6),
            "met": self.met,
            "end": self.end,
        }
        return {**out, "log_alpha": self.log_alpha} if with_masks else out


class Ladder:
    """The rungs of one fit; ``run`` is the rung being trained.

    Call :meth:`climb` when ``run`` is done: it measures the rung and starts the next one,
    or sets ``done``. Without a faithfulness level (resolved ``config.faithfulness`` None)
    the first rung is the fit.
    """

    def __init__(self, first: PruningRun):
        self.first = self.run = first
        self.base: PruningConfig = first.config
        self.level = first.config.faithfulness if first.config.sizes_by_faithfulness() else None
        self.rungs: list[Rung] = []
        self.done = False
        self._empty: tuple[float, float | None] | None = None

    @property
    def scale(self) -> float:
        """The scale of the rung being trained, on the first rung's targets."""
        return self.rungs[-1].scale * self._direction() if self.rungs else 1.0

    def climb(self) -> None:
        if self.level is None:
            self.done = True
            return
        self.rungs.append(self._measure())
        scale = self._next_scale()
        if scale is None:
            self.done = True
            return
        self.run = self.run.continued(self.config_at(scale))

    def config_at(self, scale: float) -> PruningConfig:
        """The settings of the rung at ``scale`` times the first rung's targets."""
        if not self.rungs:
            return self.base
        return self.base.replace(
            target={g: min(1.0, t * scale) for g, t in self.base.target.items()},
            steps=max(1, round(RUNG_SHARE * self.base.steps)),
            seed=self.base.seed + len(self.rungs),
        )

    def _next_scale(self) -> float | None:
        last = self.rungs[-1]
        if len(self.rungs) >= MAX_RUNGS:
            return None
        if self.rungs[0].met:  # on down, past a miss: a smaller circuit may meet it again
            return last.scale / FACTOR
        return None if last.met else last.scale * FACTOR

    @torch.no_grad()
    def _measure(self) -> Rung:
        """The circuit the masks describe now, measured on the validation pairs."""
        run = self.run
        circuit = run.circuit()
        masks = [circuit.site_masks()]
        if self._empty is None:
            masks.append(run.empty_masks())
        kl, metric = [0.0] * len(masks), [[] for _ in range(len(masks) + 1)]
        validation = run.validation
        scored = validation.wrong_answer_tokens is not None
        batches = masked_answer_batches(
            run.model,
            validation,
            masks,
            run.ablation,
            NO_GRAD_BATCHES * run.config.batch_size,
        )
        for batch, rows, logits in batches:
            reference = run.validation_reference[rows].to(logits[0].device)
            for i, circuit_logits in enumerate(logits):
                kl[i] += kl_divergence(reference, circuit_logits).item() * len(batch)
            if scored:
                for i, values in enumerate([reference, *logits]):
                    metric[i].append(task_metric(values, batch).float().cpu())
        n = len(validation)
        means = [torch.cat(m).mean().item() if m else None for m in metric]
        if self._empty is None:
            self._empty = (max(kl[1] / n, 1e-12), means[2])
        kl_empty, metric_empty = self._empty
        kl_share = kl[0] / n / kl_empty
        kept = recovered(means[1], means[0], metric_empty) if scored else None
        return Rung(
            scale=self.scale,
            kl_share=kl_share,
            recovered=kept,
            size=circuit.size(),
            met=self.level.met(kl_share, kept),
            end=len(run.history["kl"]),
            log_alpha=circuit.log_alpha,
        )

    def _direction(self) -> float:
        return 1 / FACTOR if self.rungs[0].met else FACTOR

    def chosen(self) -> Rung | None:
        """The smallest rung that met the level; the most faithful one (with a warning) if
        none did; None without a level."""
        if not self.rungs:
            return None
        met = [r for r in self.rungs if r.met]
        if met:
            return min(met, key=lambda r: r.size)
        best = min(self.rungs, key=lambda r: r.kl_share)
        low, high = self.level.recovered
        tried = ", ".join(f"x{r.scale:g}" for r in self.rungs)
        warnings.warn(
            f"no circuit met the faithfulness level (KL at most {self.level.kl:g} of the empty "
            f"circuit's, recovered in [{low:g}, {high:g}]) on the validation pairs at the "
            f"default targets {tried}; the most faithful one (x{best.scale:g}, KL share "
            f"{best.kl_share:.3g}) is returned. Train longer (steps=...), give more pairs, or "
            "set a level it can meet (faithfulness=Faithfulness(...))",
            stacklevel=4,
        )
        return best

    def result(self, fit_info: dict) -> Circuit:
        """The fit's circuit: the chosen rung's masks and history up to its end, the settings
        asked for (``config``), and what the search chose and measured (``fit_info``: the
        chosen ``target`` and its ``target_scale``, every rung in ``sizing``, the steps
        trained in all)."""
        circuit = self.run.result(fit_info)
        rung = self.chosen()
        if rung is None:
            return circuit
        circuit.log_alpha = {g: t.clone() for g, t in rung.log_alpha.items()}
        circuit.config = self.base.to_dict()
        circuit.history = {k: v[: rung.end] for k, v in circuit.history.items()}
        circuit.fit_info.update(
            target_scale=rung.scale,
            target=dict(self.config_at(rung.scale).target),
            steps_trained=len(self.run.history["kl"]),
            sizing=[r.to_dict() for r in self.rungs],
        )
        return circuit

    def circuits(self, circuit: Circuit) -> tuple[Circuit, ...]:
        """Every rung's circuit, as ``circuit`` (the fit's result) with that rung's masks."""
        return tuple(
            dataclasses.replace(circuit, log_alpha={g: t.clone() for g, t in r.log_alpha.items()})
            for r in self.rungs
        )

    # --- checkpoints --------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "rungs": [r.to_dict(with_masks=True) for r in self.rungs],
            "run": self.run.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.rungs = [Rung(**r) for r in state["rungs"]]
        if self.rungs:
            start = self.config_at(self.rungs[-1].scale).target
            self.run = self.first.continued(self.config_at(self.scale), start)
        self.run.load_state_dict(state["run"])
