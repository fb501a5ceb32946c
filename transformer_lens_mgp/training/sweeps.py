"""Faithfulness against size: one fit per target, in worker processes or on any executor,
resumable on disk.

Each sweep point is a :class:`CircuitPruner` fit of the sweep's config with one ``target``.
With ``out_dir``, a point checkpoints into its own folder and leaves ``circuit.safetensors``
there when done, so a sweep that is stopped and started again skips finished points and
resumes unfinished ones.
With ``validation``, every circuit is measured on it; the points
(:class:`~transformer_lens_mgp.analysis.curves.SweepPoint`) are what
:func:`~transformer_lens_mgp.analysis.curves.pareto_areas` and
:func:`~transformer_lens_mgp.analysis.plotting.plot_pareto` read. A finished point is reused
only if it was fitted with the same config on the same pairs.

Points run one after another, in ``workers`` local processes, or as tasks of any
``concurrent.futures``-style executor (``submit(fn, *args)`` returning something with
``result()``): a process pool, Dask (``Client.get_executor()``), submitit (Slurm) or Ray.
A task receives the model, or loads it itself with ``load_model`` (a TransformerBridge
cannot be pickled, and a remote worker had better read weights from its own disk).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import pickle
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..analysis.curves import SweepPoint
from ..analysis.evaluation import evaluate
from ..analysis.run_folder import CIRCUIT_FILE, point_name
from ..core.checks import check_positive_int
from ..core.circuit import Circuit
from ..core.data import PairedDataset
from ..core.errors import UsageError
from ..core.model_api import (
    check_model_and_pairs,
    is_hooked_transformer,
    model_device,
    model_dims,
)
from ..runtime.guard import exclusive
from ..runtime.layout import forward_layout
from .checkpoint import dataset_fingerprint, model_fingerprint
from .config import PruningConfig
from .pruner import CircuitPruner


def sweep(
    model,
    dataset: PairedDataset,
    targets: Sequence[Mapping[str, float]],
    config: PruningConfig | None = None,
    *,
    validation: PairedDataset | None = None,
    out_dir: str | Path | None = None,
    workers: int = 1,
    executor=None,
    load_model: Callable[[], object] | None = None,
    progress: bool = True,
) -> list[SweepPoint]:
    """One point (target, circuit, held-out evaluation) per target, in the order given.

    Args:
        model: the TransformerLens model; never modified.
        dataset: the pairs every fit trains on.
        targets: one ``{granularity: kept fraction}`` per sweep point.
        config: the settings every point shares (steps, seed, ablation, ...); each point
            sets its own ``target``.
        validation: held-out pairs; each point's circuit is evaluated on them.
        out_dir: where each point checkpoints and leaves its circuit; a second call with the
            same folder and the same settings skips finished points and resumes the others.
        workers: points trained at once, each in its own process (CPU only; the cores are
            shared among them). On a GPU, points run one after another.
        executor: runs each unfinished point as a task instead, e.g. a Dask
            ``Client(address).get_executor()``, a submitit executor or a
            ``ProcessPoolExecutor``. With ``out_dir`` on a disk the workers share, a task
            whose worker dies is resumed from its checkpoint when the executor retries it.
        load_model: a picklable function returning the model (e.g.
            ``functools.partial(load_model, name)``), called once per worker process
            instead of sending it the model; needed for a TransformerBridge. The model it
            returns must have the same weights as ``model`` (checked).
    """
    config = config or PruningConfig()
    if not isinstance(config, PruningConfig):
        raise UsageError(f"config must be a PruningConfig, got {type(config).__name__}")
    if config.target or config.max_kl is not None:
        raise UsageError("the sweep sets each point's target; leave target and max_kl unset")
    if isinstance(targets, str | Mapping) or not all(isinstance(t, Mapping) for t in targets):
        raise UsageError(
            f"targets is a list of {{granularity: kept fraction}} points, e.g. "
            f"[{{'head': 0.1}}, {{'head': 0.2}}]; got {targets!r}"
        )
    targets = [dict(t) for t in targets]
    if not targets:
        raise UsageError("give at least one target, e.g. targets=[{'mlp_neuron': 0.05}]")
    # Errors in a point's settings or in the pairs now, not inside a worker.
    dims = model_dims(model)
    wrong = dataset.wrong_answer_tokens is not None
    device = model_device(model)
    configs = [config.replace(target=t).resolved(dims, device, wrong) for t in targets]
    check_model_and_pairs(model, dims, dataset=dataset, validation_pairs=validation)
    names = [point_name(t) for t in targets]
    if len(set(names)) < len(names):
        raise UsageError(f"targets repeat: {names}; give each sweep point once")
    check_positive_int("workers", workers)
    if executor is not None and workers > 1:
        raise UsageError("give either workers (local processes) or an executor, not both")
    if executor is not None and not callable(getattr(executor, "submit", None)):
        raise UsageError(
            f"executor must have a submit(fn, *args) method (concurrent.futures style), got "
            f"{type(executor).__name__}"
        )
    if load_model is not None and not callable(load_model):
        raise UsageError(f"load_model must be a function returning the model, got {load_model!r}")
    remote = executor is not None or workers > 1
    if remote and load_model is None and not is_hooked_transformer(model):
        raise UsageError(
            f"a {type(model).__name__} cannot be sent to other processes; pass "
            "load_model=, a picklable function that builds the same model there"
        )
    if workers > 1 and model_device(model).type != "cpu":
        raise UsageError(
            f"workers={workers} trains points in parallel CPU processes, but the model is on "
            f"{model_device(model)}; use workers=1 to run the points one after another there"
        )
    folders = [Path(out_dir) / name if out_dir else None for name in names]
    jobs = [_Job(c, folder) for c, folder in zip(configs, folders, strict=True)]
    made_from = {
        "fingerprint": dataset_fingerprint(dataset),
        "model_fingerprint": model_fingerprint(model),
    }
    done = [_finished(job, model, made_from, validation) for job in jobs]
    todo = [i for i, c in enumerate(done) if c is None]
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc="sweep", disable=not progress)
    source = _Source(model if load_model is None else load_model, made_from["model_fingerprint"])
    with bar, exclusive(model, "a sweep"):
        if executor is not None:
            points = _submit(executor, jobs, todo, source, dataset, validation)
        else:
            points = _run(jobs, todo, model, source, dataset, validation, workers)
        for i, point in points:
            done[i] = point
            bar.update()
    return done


@dataclass(frozen=True)
class _Job:
    config: PruningConfig
    folder: Path | None

    def point(self, circuit: Circuit, model, validation) -> SweepPoint:
        held_out = None if validation is None else evaluate(model, circuit, validation)
        return SweepPoint(dict(self.config.target), circuit, held_out)


def _finished(job: _Job, model, made_from: dict[str, str], validation) -> SweepPoint | None:
    """The point's saved circuit, if it was fitted with the same settings on the same pairs."""
    path = job.folder / CIRCUIT_FILE if job.folder else None
    if not (path and path.is_file()):
        return None
    circuit = Circuit.load(path, model=model)
    if circuit.config != job.config.to_dict() or any(
        circuit.fit_info.get(key) != value for key, value in made_from.items()
    ):
        raise UsageError(
            f"{path} was fitted with other settings, pairs or model weights than this sweep "
            "asks for; use "
            "another out_dir, or delete the folder to fit the point again"
        )
    return job.point(circuit, model, validation)


def _fit(job: _Job, model, dataset, validation) -> SweepPoint:
    """One sweep point: fit (resuming from its folder), save, measure."""
    pruner = CircuitPruner(model, job.config)
    checkpoint = dict(checkpoint_dir=job.folder, resume=True) if job.folder else {}
    circuit = pruner.fit(dataset, progress=False, **checkpoint)
    if job.folder:
        circuit.save(job.folder / CIRCUIT_FILE)
    return job.point(circuit, model, validation)


@dataclass(frozen=True)
class _Source:
    """How a task gets the model: the model itself, or a function that loads it."""

    model_or_loader: object
    fingerprint: str

    def model(self):
        if isinstance(self.model_or_loader, torch.nn.Module):
            return self.model_or_loader
        key = (self.fingerprint, pickle.dumps(self.model_or_loader))
        if key not in _LOADED:
            model = self.model_or_loader()
            if model_fingerprint(model) != self.fingerprint:
                raise UsageError(
                    "load_model returned a model with other weights than the sweep's model; "
                    "it must build the same model"
                )
            _LOADED.clear()  # one model per worker process
            _LOADED[key] = model
        return _LOADED[key]


_LOADED: dict[tuple[str, bytes], object] = {}
"""The model a worker process loaded, kept for its next points."""


def run_point(job: _Job, source: _Source, dataset, validation) -> SweepPoint:
    """One sweep point as an executor task."""
    return _fit(job, source.model(), dataset, validation)


def _submit(executor, jobs, todo, source, dataset, validation):
    """Yield ``(index, point)`` as the executor's tasks finish."""
    futures = {executor.submit(run_point, jobs[i], source, dataset, validation): i for i in todo}
    if all(isinstance(f, concurrent.futures.Future) for f in futures):
        done = concurrent.futures.as_completed(futures)
    else:  # e.g. submitit's jobs: wait for each in turn
        done = iter(futures)
    for future in done:
        yield futures[future], future.result()


_SHARED: dict = {}
"""A worker's model source and pairs, received once when the worker starts."""


def _start_worker(source, dataset, validation, threads: int) -> None:
    torch.set_num_threads(threads)
    _SHARED.update(source=source, dataset=dataset, validation=validation)


def _worker(args: tuple[int, _Job]) -> tuple[int, SweepPoint]:
    index, job = args
    return index, run_point(job, _SHARED["source"], _SHARED["dataset"], _SHARED["validation"])


def _run(jobs, todo, model, source, dataset, validation, workers):
    """Yield ``(index, point)`` as points finish. Workers are spawned, not forked (a fork
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
    start = (source, dataset, validation, threads)
    with (
        forward_layout(model, include_shared=True),
        context.Pool(workers, initializer=_start_worker, initargs=start) as pool,
    ):
        yield from pool.imap_unordered(_worker, [(i, jobs[i]) for i in todo])
        pool.close()  # let the workers exit on their own: terminating them leaks semaphores
        pool.join()


@contextlib.contextmanager
def dask_executor(address: str | None):
    """The executor of the Dask cluster at ``address`` while the block runs (None without an
    address), with a clear error when Dask is missing or nothing answers there."""
    if address is None:
        yield None
        return
    try:
        from distributed import Client
    except ImportError:
        raise UsageError(
            "a Dask scheduler needs Dask's distributed package: pip install 'dask[distributed]'"
        ) from None
    try:
        client = Client(address, timeout="10s")
    except OSError as err:
        raise UsageError(f"no Dask scheduler answers at {address} ({err})") from None
    with client:
        yield client.get_executor()
