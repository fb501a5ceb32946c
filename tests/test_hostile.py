"""Hostile input: every bad call gets one clear error naming the problem and the fix, and the
user's model comes out of it untouched (no hooks, same weights, same requires_grad flags).

One table per entry point; each row is (what is wrong, the call, the error, a regex that the
message must match). Failures inside a fit (exceptions, NaN, Ctrl-C) are in test_pruner.py,
interruption and resume in test_checkpoint.py, the command line in test_cli.py.
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from conftest import VARIANTS, assert_untouched, model_state, needs_hooked_transformer
from safetensors.torch import save_file

from transformer_lens_mgp import Circuit, CircuitPruner, PairedDataset, edge_graph, evaluate, tasks
from transformer_lens_mgp.core.model_api import has_hooked_transformer
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
        lambda m, p: fit(m, dict(schedule={"warmup": 2})),
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
    (
        "prompts longer than the model's context",
        lambda m, p: fit(m, data=dataset(m, clean_tokens=long_ids(), corrupted_tokens=long_ids())),
        ValueError,
        "longer than the model's context of 16",
    ),
    (
        "token ids beyond the vocabulary in evaluate",
        lambda m, p: evaluate(m, fit(m, steps=1), dataset(m, clean_tokens=ids(m) + 1000)),
        ValueError,
        "outside the model's vocabulary",
    ),
    (
        "answer ids beyond the vocabulary in edge scores",
        lambda m, p: edge_graph(
            m, fit(m, steps=1), dataset(m, answer_tokens=torch.full((6,), 1000))
        ),
        ValueError,
        "output vocabulary",
    ),
    (
        "a seed that is not an integer",
        lambda m, p: fit(m, dict(seed=1.5)),
        ValueError,
        "seed must be an integer",
    ),
    (
        "a seed beyond 64 bits",
        lambda m, p: fit(m, dict(seed=2**70)),
        ValueError,
        "seed must be an integer",
    ),
    ("no seed", lambda m, p: fit(m, dict(seed=None)), ValueError, "seed must be an integer"),
    (
        "a fractional batch size",
        lambda m, p: fit(m, dict(batch_size=2.5)),
        ValueError,
        "batch_size must be a positive integer",
    ),
    ("steps=True", lambda m, p: fit(m, dict(steps=True)), ValueError, "steps must be a positive"),
    (
        "targets as a string",
        lambda m, p: fit(m, dict(target="mlp_neuron=0.05")),
        TypeError,
        "mapping",
    ),
    (
        "a target for a granularity that is not trained",
        lambda m, p: fit(m, dict(granularities=["head"], target={"mlp_neuron": 0.1})),
        ValueError,
        "does not prune",
    ),
    (
        "answers of shape [N, 0]",
        lambda m, p: dataset(m, answer_tokens=torch.zeros(6, 0, dtype=torch.long)),
        ValueError,
        r"\[6, K\]",
    ),
    (
        "a checkpoint_dir that is a file",
        lambda m, p: fit(m, steps=1, checkpoint_dir=touch(p / "file")),
        ValueError,
        "checkpoint_dir .* is a file",
    ),
    (
        "saving a circuit onto a folder",
        lambda m, p: fit(m, steps=1).save(p),
        ValueError,
        "is a folder",
    ),
    (
        "a circuit file whose metadata lacks a field",
        lambda m, p: Circuit.load(
            tamper(
                saved_circuit(m, p),
                lambda t, meta: (t, {k: v for k, v in meta.items() if k != "hard_concrete"}),
            )
        ),
        ValueError,
        "damaged circuit metadata",
    ),
    (
        "a circuit file with NaN masks",
        lambda m, p: Circuit.load(
            tamper(
                saved_circuit(m, p),
                lambda t, meta: ({**t, "head": torch.full_like(t["head"], float("nan"))}, meta),
            )
        ),
        ValueError,
        "NaN or infinite",
    ),
    (
        "evaluate on a model with a NaN weight",
        lambda m, p: evaluate(nan_weight(build_model()), fit(m, steps=1), dataset(m)),
        ValueError,
        "NaN or infinite logits",
    ),
    (
        "hooks of one batch used on another",
        lambda m, p: m.run_with_hooks(
            dataset(m).clean_tokens[:5],
            fwd_hooks=fit(m, steps=1).fwd_hooks(dataset(m), model=m),
        ),
        ValueError,
        "the same batch of corrupted prompts",
    ),
    (
        "hooks used on a model of other dimensions",
        lambda m, p: build_model(d_head=4, n_heads=8).run_with_hooks(
            dataset(m).clean_tokens,
            fwd_hooks=fit(m, steps=1).fwd_hooks(dataset(m), model=m),
        ),
        ValueError,
        "built for units of shape",
    ),
    (
        "a model on the meta device",
        lambda m, p: fit(on_meta(), data=dataset(m)),
        ValueError,
        "meta device",
    ),
]


def ids(model) -> torch.Tensor:
    return dataset(model).clean_tokens


def long_ids() -> torch.Tensor:
    """Six prompts of 18 tokens, two more than the tiny model's context."""
    return torch.randint(0, 40, (6, 18), generator=torch.Generator().manual_seed(0))


def touch(path):
    path.write_text("")
    return path


def nan_weight(model):
    """``model`` with one NaN weight."""
    with torch.no_grad():
        model.blocks[0].mlp.W_out[0, 0] = float("nan")
    return model


def on_meta():
    return build_model().to("meta")


@pytest.mark.parametrize("what, call, error, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_named_and_model_untouched(what, call, error, message, tmp_path):
    if "edge scores" in what and not has_hooked_transformer():
        pytest.skip("edge scores need HookedTransformer, which TransformerLens 4.x removed")
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


# --- the user's model and work are never harmed ---------------------------------------------


def test_a_pending_graph_still_backpropagates_after_fit_and_evaluate():
    """The weight layout rewrites weights in place and back; autograd's version counters
    come back too, so a loss built before the call can still be backpropagated."""
    model = build_model()
    data = dataset(model)
    loss = model(data.clean_tokens).sum()
    circuit = fit(model, steps=2)
    evaluate(model, circuit, data)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_a_model_of_inference_tensors_is_refused_and_untouched():
    with torch.inference_mode():
        model = build_model()
    data = dataset(build_model())
    before = {k: (v.clone(), v.stride()) for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    for call in (lambda: fit(model, data=data), lambda: evaluate(model, fit(build_model()), data)):
        with pytest.raises(ValueError, match="inference tensors"):
            call()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k][0]) and v.stride() == before[k][1], k
    assert [p.requires_grad for p in model.parameters()] == flags


def test_a_second_concurrent_use_of_a_model_is_refused_at_once():
    """Fits attach hooks to the model and re-lay its weights: a second fit from another
    thread gets a clear error instead of corrupting the first, which ends as it would alone."""
    import threading

    model = build_model()
    data = build_dataset(model, n=64)
    alone = CircuitPruner(model, steps=40).fit(data, progress=False)
    before = model_state(model)
    started, results, errors = threading.Event(), [], []

    def first():
        def signal(activation, hook):
            started.set()

        model.blocks[0].hook_resid_pre.add_hook(signal)  # the first fit is under way
        try:
            results.append(CircuitPruner(model, steps=40).fit(data, progress=False))
        finally:
            model.blocks[0].hook_resid_pre.remove_hooks()

    thread = threading.Thread(target=first)
    thread.start()
    started.wait(timeout=60)
    for call in (
        lambda: CircuitPruner(model, steps=2).fit(data, progress=False),
        lambda: evaluate(model, alone, data),
    ):
        try:
            call()
        except ValueError as err:
            errors.append(str(err))
    thread.join()
    if len(errors) < 2:  # the first fit ended before both calls: nothing to check
        pytest.skip("the first fit finished before the concurrent calls were made")
    assert all("busy with a fit or an evaluation in another thread" in e for e in errors)
    for g in alone.granularities:
        assert torch.equal(results[0].log_alpha[g], alone.log_alpha[g]), g
    assert_untouched(model, before)


# --- models in every dtype, in any grad mode ---------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_models_in_other_dtypes_fit_evaluate_patch_and_score_edges(dtype):
    model = build_model(dtype=dtype)
    data = build_dataset(model)
    before = model_state(model)
    circuit = CircuitPruner(model, steps=5).fit(data, progress=False)
    result = evaluate(model, circuit, data)
    assert math.isfinite(result.kl) and math.isfinite(result.recovered)
    logits = model.run_with_hooks(data.clean_tokens, fwd_hooks=circuit.fwd_hooks(data, model=model))
    assert logits.dtype == dtype and torch.isfinite(logits).all()
    if has_hooked_transformer():  # edge scores need one
        graph = edge_graph(model, circuit, data[:8])
        assert all(math.isfinite(w) for _, _, w in graph.edges(data="weight"))
    assert_untouched(model, before)


def test_a_float64_default_dtype_works():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        model = build_model(dtype=torch.float64)
        data = build_dataset(model)
        circuit = CircuitPruner(model, steps=3).fit(data, progress=False)
        assert math.isfinite(evaluate(model, circuit, data).kl)
    finally:
        torch.set_default_dtype(previous)


@needs_hooked_transformer
@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_edges_work_inside_a_no_grad_context(context):
    model = build_model()
    data = build_dataset(model, n=8)
    circuit = fit(model, steps=2)
    expected = edge_graph(model, circuit, data)
    with context():
        graph = edge_graph(model, circuit, data)
    assert dict(graph.edges) == dict(expected.edges)


# --- input: every plausible form works or gets one clear error -------------------------------


@pytest.mark.parametrize("dtype", [torch.int16, torch.int32, torch.uint8, torch.uint16])
def test_token_ids_of_any_integer_dtype_fit_like_int64(dtype):
    model = build_model()
    data = build_dataset(model, n=16)
    narrow = PairedDataset(
        data.clean_tokens.to(dtype),
        data.corrupted_tokens.to(dtype),
        data.answer_tokens.to(dtype),
        wrong_answer_tokens=data.wrong_answer_tokens.to(dtype),
    )
    assert narrow.clean_tokens.dtype == torch.int64
    a = CircuitPruner(model, steps=3).fit(narrow, progress=False)
    b = CircuitPruner(model, steps=3).fit(data, progress=False)
    assert all(torch.equal(a.log_alpha[g], b.log_alpha[g]) for g in a.granularities)


def test_answers_beyond_a_smaller_output_vocabulary_are_refused():
    model = build_model(d_vocab_out=30)
    data = dataset(model, answer_tokens=torch.full((6,), 35))
    with pytest.raises(ValueError, match="output vocabulary of 30"):
        fit(model, data=data)


def test_resume_refuses_another_model_of_the_same_size(tmp_path):
    data = dataset(build_model())
    fit(build_model(), steps=2, data=data, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="model"):
        fit(build_model(seed=1), steps=2, data=data, checkpoint_dir=tmp_path, resume=True)


@pytest.mark.parametrize(
    "clean, corrupted, answers, message",
    [
        ("abc", "abd", "xyz", "single string"),
        ([""], [""], [" a"], "prompt is empty"),
    ],
)
def test_prompts_given_as_a_string_or_empty_are_refused(
    clean, corrupted, answers, message, tokenizer_model
):
    with pytest.raises((ValueError, TypeError), match=message):
        PairedDataset.from_prompts(tokenizer_model, clean, corrupted, answers)


def test_prompts_longer_than_the_context_are_not_cut(tokenizer_model):
    long = " ".join(["word"] * (tokenizer_model.cfg.n_ctx + 10))
    data = PairedDataset.from_prompts(tokenizer_model, [long], [long], [" a"])
    assert data.seq_len > tokenizer_model.cfg.n_ctx
    with pytest.raises(ValueError, match="longer than the model's context"):
        fit(tokenizer_model, data=data)


def test_pareto_areas_of_no_circuit_is_an_error():
    from transformer_lens_mgp import pareto_areas

    with pytest.raises(ValueError, match="at least one sweep point"):
        pareto_areas([])


def test_a_model_left_in_train_mode_runs_in_eval_mode_and_gets_its_modes_back():
    """Dropout left on would make every pass random: a fit and an evaluation run the model
    in eval mode, and each module's own mode comes back afterwards."""
    model = build_model()
    model.train()
    model.blocks[1].eval()  # a mixed setting must come back as it was
    data = build_dataset(model)
    before = model_state(model)
    seen = []
    model.blocks[0].hook_resid_pre.add_hook(lambda a, hook: seen.append(hook.training))
    try:
        a = CircuitPruner(model, steps=3).fit(data, progress=False)
        b = CircuitPruner(model, steps=3).fit(data, progress=False)
        evaluate(model, a, data)
    finally:
        model.blocks[0].hook_resid_pre.remove_hooks()
    assert seen and not any(seen)
    assert_untouched(model, before)
    for g in a.granularities:
        assert torch.equal(a.log_alpha[g], b.log_alpha[g]), g


def test_the_weight_fingerprint_sees_two_heads_swapped():
    from transformer_lens_mgp.core.model_api import model_fingerprint

    model = build_model()
    original = model_fingerprint(model)
    name, weight = next(  # a weight matrix (the embeddings may have equal rows)
        (n, p) for n, p in model.named_parameters() if p.dim() >= 2 and "W_E" not in n
    )
    with torch.no_grad():
        weight[[0, 1]] = weight[[1, 0]].clone()  # two heads' rows: the same sum and norm
    assert model_fingerprint(model) != original, name


def test_a_circuit_of_other_weights_is_run_with_a_warning(tmp_path):
    model = build_model()
    path = saved_circuit(model, tmp_path)
    other = build_model(seed=1)  # the same sizes, other weights
    with pytest.warns(UserWarning, match="other weights"):
        circuit = Circuit.load(path, model=other)
    with pytest.warns(UserWarning, match="other weights"):
        evaluate(other, circuit, dataset(other))


def test_another_thread_s_pass_during_a_fit_gets_a_clear_error():
    """The fit's hooks act on the fit's own passes only: another thread's pass meanwhile
    gets a UsageError saying why, and the fit ends as it would alone."""
    import threading

    from transformer_lens_mgp.core.model_api import attached

    model = build_model()
    tokens = build_dataset(model).clean_tokens
    errors = []

    def other_thread():
        try:
            model(tokens)
        except ValueError as err:
            errors.append(str(err))

    with attached(model, [("blocks.0.hook_resid_pre", lambda a, hook: a)]):
        model(tokens)  # the attaching thread's own pass runs the hooks
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
    assert errors and "in another thread" in errors[0]
    model(tokens)  # with the hooks off, any thread runs the model


def test_mean_ablation_runs_on_right_padding_past_the_context():
    """Positions after the answer are never run, so padding past ``n_ctx`` works for mean
    ablation as it does for interchange ablation."""
    model = build_model()
    n_ctx = model.cfg.n_ctx
    ds = build_dataset(model, n=4, seq_len=5)
    pad = torch.zeros(4, n_ctx + 3 - ds.clean_tokens.shape[1], dtype=torch.long)
    padded = PairedDataset(
        clean_tokens=torch.cat([ds.clean_tokens, pad], 1),
        corrupted_tokens=torch.cat([ds.corrupted_tokens, pad], 1),
        answer_tokens=ds.answer_tokens,
        answer_positions=ds.answer_positions,
    )
    for ablation in ("corrupted", "mean"):
        CircuitPruner(model, steps=1, ablation=ablation).fit(padded, progress=False)
