"""Faithfulness against size: one fit per target, in worker processes, resumable on disk.

Each sweep point is a :class:`CircuitPruner` fit with one ``target``. With ``out_dir``, a point
checkpoints into its own folder and leaves ``circuit.safetensors`` there when done, so a
sweep that is stopped and started again skips finished points and resumes unfinished ones.
With ``validation``, every circuit is measured on it and the numbers go to ``circuit.metrics``,
which :func:`pareto_areas` and :func:`transformer_lens_mgp.plotting.plot_pareto` read.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .circuit import Circuit
from .data import PairedDataset
from .interventions import model_device
from .layout import forward_layout
from .pruner import CircuitPruner
from .sparsity import check_sparsity

CIRCUIT_FILE = "circuit.safetensors"


@dataclass(frozen=True)
class ParetoAreas:
    """MIB's areas over the sweep's circuits, sizes running from the empty circuit
    (faithfulness 0 by definition) to the full model (1 by definition).

    Args:
        cpr: area under faithfulness against size (higher is better).
        cmd: area under ``|1 - faithfulness|`` (lower is better).
        sizes: the sizes, endpoints included.
        faithfulness: the faithfulness at each size.
    """

    cpr: float
    cmd: float
    sizes: list[float]
    faithfulness: list[float]

    def to_dict(self) -> dict:
        return asdict(self)


def point_name(target: Mapping[str, float]) -> str:
    """A folder name for a target, stable across runs: ``head=0.1,mlp_neuron=0.05``."""
    text = ",".join(f"{g}={target[g]:g}" for g in sorted(target)) or "default"
    return re.sub(r"[^A-Za-z0-9_.,=-]", "_", text)


def sweep(
    model,
    dataset: PairedDataset,
    targets: Sequence[Mapping[str, float]],
    *,
    validation: PairedDataset | None = None,
    out_dir: str | Path | None = None,
    workers: int = 1,
    fit_kwargs: Mapping | None = None,
    progress: bool = True,
    **pruner_kwargs,
) -> list[Circuit]:
    """One circuit per target, in the order given.

    Args:
        model: the TransformerLens model; never modified.
        dataset: the pairs every fit trains on.
        targets: one ``{granularity: kept fraction}`` per sweep point.
        validation: held-out pairs; each circuit's KL, faithfulness and accuracy on them go to
            ``circuit.metrics``.
        out_dir: where each point checkpoints and leaves its circuit; a second call with the
            same folder skips finished points and resumes the others.
        workers: points trained at once, each in its own process (CPU only; the cores are
            shared among them). On a GPU, points run one after another.
        fit_kwargs: passed to every :meth:`CircuitPruner.fit` (``steps``, ``batch_size``, ...).
        pruner_kwargs: passed to every :class:`CircuitPruner` (``sparsity``, ``seed``, ...).
    """
    targets = [dict(t) for t in targets]
    if not targets:
        raise ValueError("give at least one target, e.g. targets=[{'mlp_neuron': 0.05}]")
    for target in targets:
        check_sparsity({}, target)
    names = [point_name(t) for t in targets]
    if len(set(names)) < len(names):
        raise ValueError(f"targets repeat: {names}; give each sweep point once")
    if "target" in pruner_kwargs or "max_kl" in pruner_kwargs:
        raise ValueError("the sweep sets each point's target; leave target/max_kl out")
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    if workers > 1 and model_device(model).type != "cpu":
        raise ValueError(
            f"workers={workers} trains points in parallel CPU processes, but the model is on "
            f"{model_device(model)}; use workers=1 to run the points one after another there"
        )
    CircuitPruner(model, **pruner_kwargs)  # argument errors now, not inside a worker
    folders = [Path(out_dir) / name if out_dir else None for name in names]
    jobs = [
        _Job(target, folder, dict(fit_kwargs or {}), pruner_kwargs)
        for target, folder in zip(targets, folders, strict=True)
    ]
    done = [_finished(job, model) for job in jobs]
    todo = [i for i, c in enumerate(done) if c is None]
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc="sweep", disable=not progress)
    with bar:
        for i, circuit in _run(jobs, todo, model, dataset, validation, workers):
            done[i] = circuit
            bar.update()
    return done


@dataclass
class _Job:
    target: dict[str, float]
    folder: Path | None
    fit_kwargs: dict
    pruner_kwargs: dict


def _finished(job: _Job, model) -> Circuit | None:
    path = job.folder / CIRCUIT_FILE if job.folder else None
    return Circuit.load(path, model=model) if path and path.is_file() else None


def _fit(job: _Job, model, dataset, validation) -> Circuit:
    """One sweep point: fit (resuming from its folder), measure, save."""
    from .evaluation import evaluate

    pruner = CircuitPruner(model, target=job.target, **job.pruner_kwargs)
    checkpoint = dict(checkpoint_dir=job.folder, resume=True) if job.folder else {}
    circuit = pruner.fit(dataset, progress=False, **checkpoint, **job.fit_kwargs)
    if validation is not None:
        result = evaluate(model, circuit, validation)
        circuit.metrics = {
            "kl": result.kl,
            "recovered": result.recovered,
            "accuracy": result.accuracy_circuit,
            "n_validation": result.n_pairs,
        }
    if job.folder:
        circuit.save(job.folder / CIRCUIT_FILE)
    return circuit


_SHARED: dict = {}
"""A worker's model and pairs, received once when the worker starts."""


def _start_worker(model, dataset, validation, threads: int) -> None:
    torch.set_num_threads(threads)
    _SHARED.update(model=model, dataset=dataset, validation=validation)


def _worker(args: tuple[int, _Job]) -> tuple[int, Circuit]:
    index, job = args
    return index, _fit(job, _SHARED["model"], _SHARED["dataset"], _SHARED["validation"])


def _run(jobs, todo, model, dataset, validation, workers):
    """Yield ``(index, circuit)`` as points finish. Workers are spawned, not forked (a fork
    of a process that has run OpenMP threads can hang), and get the model's tensors through
    shared memory, already in the layout the forward pass reads: a worker must not re-lay
    weights that the others are reading."""
    if workers == 1 or len(todo) <= 1:
        for i in todo:
            yield i, _fit(jobs[i], model, dataset, validation)
        return
    workers = min(workers, len(todo))
    threads = max(1, torch.get_num_threads() // workers)
    context = torch.multiprocessing.get_context("spawn")
    start = (model, dataset, validation, threads)
    with (
        forward_layout(model, include_shared=True),
        context.Pool(workers, initializer=_start_worker, initargs=start) as pool,
    ):
        yield from pool.imap_unordered(_worker, [(i, jobs[i]) for i in todo])
        pool.close()  # let the workers exit on their own: terminating them leaks semaphores
        pool.join()


def pareto_areas(circuits: Sequence[Circuit]) -> ParetoAreas:
    """CPR and CMD over the circuits' sizes (:meth:`Circuit.size`), from their
    ``metrics["recovered"]`` (set by :func:`sweep` with ``validation``)."""
    missing = [i for i, c in enumerate(circuits) if "recovered" not in c.metrics]
    if missing:
        raise ValueError(
            f"circuits {missing} have no measured faithfulness; run sweep(..., validation=...) "
            "or set circuit.metrics['recovered'] from evaluate()"
        )
    points = sorted((c.size(), c.metrics["recovered"]) for c in circuits)
    sizes = [0.0] + [s for s, _ in points] + [1.0]
    faithfulness = [0.0] + [f for _, f in points] + [1.0]
    x, f = np.asarray(sizes), np.asarray(faithfulness)
    return ParetoAreas(
        cpr=float(np.trapezoid(f, x)),
        cmd=float(np.trapezoid(np.abs(1 - f), x)),
        sizes=sizes,
        faithfulness=faithfulness,
    )
