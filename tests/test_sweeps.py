"""Sweeps: one circuit per target, resumable on disk, the same in worker processes and on a
Dask cluster; Pareto areas."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import pytest
import torch
from conftest import assert_untouched, model_state

import transformer_lens_mgp.training.sweeps as sweep_module
from transformer_lens_mgp import Circuit, ModelDims, PruningConfig
from transformer_lens_mgp.analysis.curves import SweepPoint, pareto_areas
from transformer_lens_mgp.analysis.plotting import plot_pareto
from transformer_lens_mgp.analysis.run_folder import point_name
from transformer_lens_mgp.core.model_api import is_hooked_transformer
from transformer_lens_mgp.testing.tiny import build_dataset, build_model
from transformer_lens_mgp.training.sweeps import sweep

TARGETS = [{"attn_neuron": 0.1, "mlp_neuron": 0.05}, {"attn_neuron": 0.6, "mlp_neuron": 0.6}]
FIT = PruningConfig(steps=30)


@pytest.fixture(scope="module")
def setup():
    model = build_model()
    return model, build_dataset(model, n=24), build_dataset(model, n=12, seed=1)


def same(a: SweepPoint, b: SweepPoint) -> bool:
    a, b = a.circuit, b.circuit
    return all(torch.equal(a.log_alpha[g], b.log_alpha[g]) for g in a.granularities)


def test_one_circuit_per_target_in_order_with_held_out_metrics(setup, tmp_path):
    model, train, validation = setup
    before = model_state(model)
    points = sweep(
        model,
        train,
        TARGETS,
        FIT,
        validation=validation,
        out_dir=tmp_path,
        progress=False,
    )
    assert [p.circuit.config["target"] for p in points] == [p.target for p in points] == TARGETS
    assert points[0].circuit.size() < points[1].circuit.size()
    for point in points:
        assert set(point.numbers()) >= {"kl", "recovered", "accuracy"}
        assert point.evaluation.n_pairs == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(point_name(t) for t in TARGETS)
    assert_untouched(model, before)


def test_a_second_call_reuses_finished_points(setup, tmp_path, monkeypatch):
    model, train, validation = setup
    first = sweep(model, train, TARGETS[:1], FIT, out_dir=tmp_path, progress=False)

    def no_fit(*args, **kwargs):
        raise AssertionError("a finished point was trained again")

    monkeypatch.setattr(sweep_module.CircuitPruner, "fit", no_fit)
    again = sweep(model, train, TARGETS[:1], FIT, out_dir=tmp_path, progress=False)
    assert same(first[0], again[0])


WORKER_SHAPE = dict(n_layers=3, d_model=64, d_mlp=256, n_ctx=32)


def test_worker_processes_give_the_same_circuits():
    """Long enough that the workers' fits overlap: workers read one shared copy of the
    weights, which none of them may re-lay while another reads it. Each worker computes on
    one thread; the serial sweep does too, since on some CPUs a matrix product's rounding
    depends on the thread count."""
    model = build_model(**WORKER_SHAPE)
    train = build_dataset(model, n=64, seq_len=12)
    targets = [{"head": t} for t in (0.2, 0.3, 0.4, 0.5)]
    weights = {k: (v.clone(), v.stride()) for k, v in model.state_dict().items()}
    config = PruningConfig(steps=150)
    # A HookedTransformer is sent to the workers; a bridge cannot be, so they build it.
    load = None if is_hooked_transformer(model) else partial(build_model, **WORKER_SHAPE)
    parallel = sweep(model, train, targets, config, workers=2, load_model=load, progress=False)
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[k][0]) and v.stride() == weights[k][1], k
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads // 2))  # what each of the 2 workers uses
    try:
        serial = sweep(model, train, targets, config, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert all(same(a, b) for a, b in zip(serial, parallel, strict=True))


def dies_once(marker: Path, **shape):
    """Builds the model, except the first time anywhere: then it kills its own process."""
    if not marker.exists():
        marker.touch()
        os._exit(1)
    return build_model(**shape)


class Counting:
    """An executor that counts the tasks given to it."""

    def __init__(self, inner):
        self.inner, self.submitted = inner, 0

    def submit(self, fn, *args, **kwargs):
        self.submitted += 1
        return self.inner.submit(fn, *args, **kwargs)


def test_a_dask_cluster_gives_the_same_circuits_and_redoes_only_what_is_missing(tmp_path):
    """Points run as tasks on a LocalCluster of two worker processes that load the model
    themselves. The first load kills its worker: Dask retries the task on a fresh worker.
    A second sweep submits only the point whose circuit was deleted."""
    distributed = pytest.importorskip("distributed")
    shape = dict(n_layers=2, d_model=32, d_mlp=64)
    model = build_model(**shape)
    train = build_dataset(model, n=24)
    targets = [{"head": t} for t in (0.25, 0.5, 0.75)]
    config = PruningConfig(steps=20)
    out = tmp_path / "sweep"
    load = partial(dies_once, tmp_path / "died", **shape)
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    with cluster, distributed.Client(cluster) as client:

        def on_cluster(executor):
            kwargs = dict(executor=executor, load_model=load, out_dir=out, progress=False)
            return sweep(model, train, targets, config, **kwargs)

        executor = Counting(client.get_executor())
        found = on_cluster(executor)
        assert (tmp_path / "died").exists() and executor.submitted == 3
        (out / point_name(targets[1]) / "circuit.safetensors").unlink()
        executor = Counting(client.get_executor())
        again = on_cluster(executor)
        assert executor.submitted == 1
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what a Dask worker's torch computes on
    try:
        serial = sweep(model, train, targets, config, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert all(same(a, b) for a, b in zip(serial, found, strict=True))
    assert all(same(a, b) for a, b in zip(serial, again, strict=True))


def test_any_executor_runs_the_points_and_a_loader_must_build_the_same_model(setup):
    model, train, _ = setup
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        load = None if is_hooked_transformer(model) else build_model  # a bridge is built there
        found = sweep(model, train, TARGETS, FIT, executor=pool, load_model=load, progress=False)
        other = partial(build_model, seed=1)
        with pytest.raises(ValueError, match="other weights"):
            sweep(model, train, TARGETS, FIT, executor=pool, load_model=other, progress=False)
    serial = sweep(model, train, TARGETS, FIT, progress=False)
    assert all(same(a, b) for a, b in zip(serial, found, strict=True))


def test_pareto_areas_add_the_empty_circuit_and_the_full_model():
    from transformer_lens_mgp import Evaluation

    dims = ModelDims(n_layers=1, n_heads=2, d_head=2, d_mlp=None)
    points = []
    for kept, faithfulness in ((1, 0.5), (2, 0.9)):
        mask = torch.arange(4).view(1, 2, 2) < kept
        c = Circuit(dims=dims, log_alpha={"attn_neuron": torch.where(mask, 10.0, -10.0)})
        measured = Evaluation(0.1, 1.0, faithfulness, 0.0, faithfulness, 1.0, 1.0, {}, {}, 4)
        points.append(SweepPoint({"attn_neuron": kept / 4}, c, measured))
    areas = pareto_areas(points[::-1])
    assert areas.sizes == [0.0, 0.25, 0.5, 1.0]
    # trapezoids: (0 + .5)/2 * .25 + (.5 + .9)/2 * .25 + (.9 + 1)/2 * .5
    assert areas.cpr == pytest.approx(0.0625 + 0.175 + 0.475)
    assert areas.cmd == pytest.approx((1 + 0.5) / 2 * 0.25 + (0.5 + 0.1) / 2 * 0.25 + 0.1 / 2 * 0.5)
    figure = plot_pareto(points)
    assert len(figure.data) == 2 and "CPR 0.71" in figure.layout.title.text
    points[0] = SweepPoint(points[0].target, points[0].circuit)
    with pytest.raises(ValueError, match="no measured faithfulness"):
        pareto_areas(points)


@pytest.mark.parametrize(
    "targets, kwargs, message",
    [
        ([], {}, "at least one target"),
        ([{"head": 0.1}, {"head": 0.1}], {}, "targets repeat"),
        ([{"head": 2.0}], {}, "kept fraction"),
        ([{"neuron": 0.1}], {}, "unknown granularity"),
        ([{"head": 0.1}], {"config": PruningConfig(target={"head": 0.2})}, "leave target"),
        ([{"head": 0.1}], {"workers": 0}, "workers must be a positive integer"),
        ([{"head": 0.1}], {"workers": 2, "executor": object()}, "not both"),
        ([{"head": 0.1}], {"executor": object()}, "submit"),
        ([{"head": 0.1}], {"load_model": "gpt2"}, "function returning the model"),
        ("head=0.5", {}, "list of"),
        ({"head": 0.5}, {}, "list of"),
    ],
)
def test_bad_sweeps_are_explained_before_any_training(setup, targets, kwargs, message):
    model, train, _ = setup
    with pytest.raises(ValueError, match=message):
        sweep(model, train, targets, progress=False, **kwargs)


@pytest.mark.parametrize(
    "change",
    [
        PruningConfig(steps=31),
        PruningConfig(steps=30, seed=1),
        PruningConfig(steps=30, ablation="zero"),
    ],
    ids=["steps", "seed", "ablation"],
)
def test_a_finished_point_of_other_settings_is_never_reused(setup, tmp_path, change):
    model, train, _ = setup
    sweep(model, train, TARGETS[:1], FIT, out_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="other settings, pairs or model weights"):
        sweep(model, train, TARGETS[:1], change, out_dir=tmp_path, progress=False)
