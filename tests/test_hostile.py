"""Hostile input: every bad call gets one clear error naming the problem and the fix, and the
user's model comes out of it untouched (no hooks, same weights, same requires_grad flags).

One table per entry point; each row is (what is wrong, the call, the error, a regex that the
message must match). Failures inside a fit (exceptions, NaN, Ctrl-C) are in test_pruner.py,
interruption and resume in test_checkpoint.py, the command line in test_cli.py.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from conftest import VARIANTS, assert_untouched, model_state
from safetensors.torch import save_file

from transformer_lens_mgp import Circuit, CircuitPruner, PairedDataset, evaluate, tasks
from transformer_lens_mgp.testing.tiny import build_dataset, build_model


def dataset(model, **overrides) -> PairedDataset:
    ds = build_dataset(model, n=6, seq_len=5)
    kwargs = dict(
        clean_tokens=ds.clean_tokens,
        corrupted_tokens=ds.corrupted_tokens,
        answer_tokens=ds.answer_tokens,
    )
    kwargs.update(overrides)
    return PairedDataset(**kwargs)


FIT_ARGUMENTS = ("validation", "checkpoint_dir", "resume")


def fit(model, pruner_kwargs=None, data=None, **kwargs):
    """A fit with settings in ``pruner_kwargs`` or ``kwargs``; ``fit()``'s own arguments
    (validation, checkpoint_dir, resume) go to it."""
    data = data if data is not None else dataset(model)
    fit_kwargs = {k: kwargs.pop(k) for k in FIT_ARGUMENTS if k in kwargs}
    settings = {**(pruner_kwargs or {}), **kwargs}
    return CircuitPruner(model, **settings).fit(data, progress=False, **fit_kwargs)


def saved_circuit(model, tmp_path) -> torch.Tensor:
    return fit(model, steps=1).save(tmp_path / "c.safetensors")


def tamper(path, edit):
    """Rewrite a circuit file with its metadata JSON passed through ``edit``."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors, meta_json = edit(tensors, json.loads(meta["transformer_lens_mgp"]))
    meta["transformer_lens_mgp"] = json.dumps(meta_json)
    save_file(tensors, str(path), metadata=meta)
    return path


def truncated(path):
    path.write_bytes(path.read_bytes()[:100])
    return path


LONG = torch.long
CASES = [
    # PairedDataset
    (
        "clean/corrupted lengths differ",
        lambda m, p: dataset(m, corrupted_tokens=torch.zeros(6, 4, dtype=LONG)),
        ValueError,
        "same token length",
    ),
    (
        "float token ids",
        lambda m, p: dataset(m, clean_tokens=torch.zeros(6, 5)),
        TypeError,
        r"integer token ids.*\.long\(\)",
    ),
    (
        "token ids as a list",
        lambda m, p: dataset(m, clean_tokens=[[1, 2]]),
        TypeError,
        "torch.Tensor",
    ),
    (
        "1-D token ids",
        lambda m, p: dataset(m, clean_tokens=torch.zeros(6, dtype=LONG)),
        ValueError,
        "n_pairs, seq_len",
    ),
    (
        "one answer too few",
        lambda m, p: dataset(m, answer_tokens=torch.zeros(5, dtype=LONG)),
        ValueError,
        r"shape \[6\]",
    ),
    (
        "answer position past the end",
        lambda m, p: dataset(m, answer_positions=torch.full((6,), 5)),
        ValueError,
        "out of range",
    ),
    (
        "negative answer id",
        lambda m, p: dataset(m, answer_tokens=torch.full((6,), -3)),
        ValueError,
        "negative",
    ),
    (
        "unknown metric",
        lambda m, p: dataset(m, metric="accuracy"),
        ValueError,
        "unknown metric.*choose",
    ),
    (
        "empty dataset",
        lambda m, p: dataset(
            m,
            clean_tokens=torch.zeros(0, 5, dtype=LONG),
            corrupted_tokens=torch.zeros(0, 5, dtype=LONG),
            answer_tokens=torch.zeros(0, dtype=LONG),
        ),
        ValueError,
        "empty.*add some pairs",
    ),
    (
        "split of one pair",
        lambda m, p: dataset(m)[[0]].split(0.5),
        ValueError,
        "at least two pairs",
    ),
    (
        "test fraction of 1",
        lambda m, p: dataset(m).split(1.0),
        ValueError,
        r"test_fraction must be in \(0, 1\)",
    ),
    # CircuitPruner(...)
    (
        "unknown granularity",
        lambda m, p: fit(m, dict(granularities=["neurons"])),
        ValueError,
        "unknown granularity.*choose from",
    ),
    (
        "no granularity",
        lambda m, p: fit(m, dict(granularities=[])),
        ValueError,
        "at least one granularity",
    ),
    (
        "unknown ablation",
        lambda m, p: fit(m, dict(ablation="resample")),
        ValueError,
        "unknown ablation.*choose from",
    ),
    (
        "negative lambda",
        lambda m, p: fit(m, dict(sparsity={"head": -1.0})),
        ValueError,
        "finite number >= 0",
    ),
    (
        "NaN lambda",
        lambda m, p: fit(m, dict(sparsity={"head": float("nan")})),
        ValueError,
        "finite number >= 0",
    ),
    (
        "lambda for a misspelt granularity",
        lambda m, p: fit(m, dict(sparsity={"heads": 1.0})),
        ValueError,
        "unknown granularity 'heads'",
    ),
    (
        "target above 1",
        lambda m, p: fit(m, dict(target={"head": 1.5})),
        ValueError,
        r"kept fraction and must be in \[0, 1\]",
    ),
    (
        "both a lambda and a target",
        lambda m, p: fit(m, dict(sparsity={"head": 1.0}, target={"head": 0.1})),
        ValueError,
        "give each granularity one of them",
    ),
    (
        "warm-up longer than the fit",
        lambda m, p: fit(m, dict(target_warmup=2)),
        ValueError,
        "share of the steps",
    ),
    (
        "infinite init_log_alpha",
        lambda m, p: fit(m, dict(init_log_alpha=float("inf"))),
        ValueError,
        "init_log_alpha must be finite",
    ),
    (
        "a device setting (masks live where the model's activations are)",
        lambda m, p: fit(m, dict(device="meta")),
        TypeError,
        r"unknown setting\(s\) \['device'\]",
    ),
    (
        "MLP granularity on an attention-only model",
        lambda m, p: fit(build_model(**VARIANTS["attn_only"]), dict(granularities=["mlp_neuron"])),
        ValueError,
        "attention-only",
    ),
    # fit(...)
    ("zero steps", lambda m, p: fit(m, steps=0), ValueError, "steps must be a positive integer"),
    (
        "fractional steps",
        lambda m, p: fit(m, steps=2.5),
        ValueError,
        "steps must be a positive integer",
    ),
    (
        "zero batch size",
        lambda m, p: fit(m, batch_size=0),
        ValueError,
        "batch_size must be a positive integer",
    ),
    (
        "infinite learning rate",
        lambda m, p: fit(m, lr=float("inf")),
        ValueError,
        "lr must be a finite number > 0",
    ),
    (
        "negative learning rate",
        lambda m, p: fit(m, lr=-0.1),
        ValueError,
        "lr must be a finite number > 0",
    ),
    (
        "token ids beyond the vocabulary",
        lambda m, p: fit(m, data=dataset(m, clean_tokens=torch.full((6, 5), 10_000))),
        ValueError,
        "vocabulary.*tokenizer",
    ),
    (
        "a dict instead of a dataset",
        lambda m, p: fit(m, data={"clean": [1]}),
        TypeError,
        "PairedDataset.*tasks.ioi",
    ),
    (
        "resume without a checkpoint folder",
        lambda m, p: fit(m, resume=True),
        ValueError,
        "resume=True needs the checkpoint_dir",
    ),
    (
        "checkpoint_every of zero",
        lambda m, p: fit(m, checkpoint_dir=p, checkpoint_every=0),
        ValueError,
        "checkpoint_every must be a positive integer",
    ),
    (
        "a plain torch module",
        lambda m, p: CircuitPruner(torch.nn.Linear(2, 2)).fit(dataset(m), progress=False),
        TypeError,
        "TransformerLens model",
    ),
    (
        "a model without hook points",
        lambda m, p: CircuitPruner(SimpleNamespace(cfg=m.cfg, hook_dict={}, hooks=None)).fit(
            dataset(m), progress=False
        ),
        ValueError,
        "no hook points.*hook_z",
    ),
    # Circuit.load and using a circuit
    (
        "missing circuit file",
        lambda m, p: Circuit.load(p / "missing.safetensors"),
        FileNotFoundError,
        "no circuit file",
    ),
    (
        "truncated circuit file",
        lambda m, p: Circuit.load(truncated(saved_circuit(m, p))),
        ValueError,
        "not a readable circuit file",
    ),
    (
        "circuit of a newer schema",
        lambda m, p: Circuit.load(
            tamper(saved_circuit(m, p), lambda t, j: (t, {**j, "schema_version": 99}))
        ),
        ValueError,
        "schema 99.*upgrade",
    ),
    (
        "tampered mask shape",
        lambda m, p: Circuit.load(
            tamper(saved_circuit(m, p), lambda t, j: ({**t, "head": torch.zeros(3)}, j))
        ),
        ValueError,
        "log_alpha\\['head'\\] has shape",
    ),
    (
        "unknown tensor in the file",
        lambda m, p: Circuit.load(
            tamper(saved_circuit(m, p), lambda t, j: ({**t, "edges": torch.zeros(3)}, j))
        ),
        ValueError,
        "unknown granularities.*written by",
    ),
    (
        "safetensors file that is not a circuit",
        lambda m, p: Circuit.load(
            save_file({"x": torch.zeros(2)}, str(p / "x.safetensors")) or p / "x.safetensors"
        ),
        ValueError,
        "not a circuit",
    ),
    (
        "circuit loaded for a model of another size",
        lambda m, p: Circuit.load(saved_circuit(m, p), model=build_model(d_mlp=16)),
        ValueError,
        "model with.*discovered on",
    ),
    (
        "circuit evaluated on a model of another size",
        lambda m, p: evaluate(
            build_model(n_layers=3), fit(m, steps=1), build_dataset(build_model(n_layers=3))
        ),
        ValueError,
        "model with",
    ),
    (
        "patching hooks without a model",
        lambda m, p: fit(m, steps=1).fwd_hooks(dataset(m)),
        ValueError,
        "model=",
    ),
]


@pytest.mark.parametrize("what, call, error, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_named_and_model_untouched(what, call, error, message, tmp_path):
    model = build_model()
    before = model_state(model)
    with pytest.raises(error, match=message):
        call(model, tmp_path)
    assert_untouched(model, before)


TEXT_CASES = [
    (
        "multi-token answer",
        lambda m: PairedDataset.from_prompts(
            m,
            ["When Mary and John went, John gave it to"],
            ["When Anna and Paul went, Paul gave it to"],
            [" Maryanne-Louise"],
        ),
        ValueError,
        "not one; use a single-token answer",
    ),
    (
        "corruption of another token length",
        lambda m: PairedDataset.from_prompts(
            m, ["Mary and John"], ["Mary-Kate and Ellen-Jo"], [" Mary"]
        ),
        ValueError,
        "same token length",
    ),
    (
        "wrong answers for fewer pairs",
        lambda m: PairedDataset.from_prompts(
            m, ["a b", "c d"], ["a c", "c b"], [" a", " b"], [" c"]
        ),
        ValueError,
        "wrong answers for 2 pairs",
    ),
    (
        "no pairs asked of a task",
        lambda m: tasks.ioi(m, n=0),
        ValueError,
        "n must be a positive integer",
    ),
    (
        "a negative count of pairs",
        lambda m: tasks.greater_than(m, n=-5),
        ValueError,
        "n must be a positive integer",
    ),
    (
        "IOI without templates",
        lambda m: tasks.ioi(m, n=4, templates=[]),
        ValueError,
        "templates is empty",
    ),
]


@pytest.mark.parametrize("what, call, error, message", TEXT_CASES, ids=[c[0] for c in TEXT_CASES])
def test_bad_text_input_is_named(what, call, error, message, tokenizer_model):
    before = model_state(tokenizer_model)
    with pytest.raises(error, match=message):
        call(tokenizer_model)
    assert_untouched(tokenizer_model, before)
