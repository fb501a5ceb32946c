import pytest
import torch
from conftest import assert_untouched, model_state

from transformer_lens_mgp import GRANULARITIES, Circuit, CircuitPruner, ModelDims, PairedDataset
from transformer_lens_mgp.core.hooks import mask_hooks, site_activations
from transformer_lens_mgp.core.nodes import site_masks
from transformer_lens_mgp.testing.tiny import build_dataset, build_model, count_hooks

ON, OFF = 5.0, -5.0


def circuit_with(dims, **log_alpha_overrides) -> Circuit:
    """All nodes on, except the entries set by the overrides ``{granularity: {index: value}}``."""
    log_alpha = {g: torch.full(dims.shape(g), ON) for g in dims.available()}
    for g, entries in log_alpha_overrides.items():
        for index, value in entries.items():
            log_alpha[g][index] = value
    return Circuit(dims=dims, log_alpha=log_alpha)


DIMS = ModelDims(n_layers=2, n_heads=3, d_head=4, d_mlp=5)


def test_dropped_parent_drops_its_children():
    c = circuit_with(DIMS, head={(0, 1): OFF}, block={1: OFF}, mlp={0: OFF})
    assert not c.kept("attn_neuron")[0, 1].any() and c.kept("attn_neuron")[0, 0].all()
    assert not c.kept("head")[1].any() and not c.kept("mlp_neuron")[1].any()
    assert not c.kept("mlp_neuron")[0].any() and not c.kept("mlp")[0]
    assert c.n_kept("head") == 2 and c.n_kept("block") == 1


def test_parent_without_surviving_children_is_dropped():
    c = circuit_with(DIMS, attn_neuron={(0, 2): OFF}, mlp_neuron={1: OFF})
    assert not c.kept("head")[0, 2] and c.kept("head")[0, 0]
    assert not c.kept("mlp")[1] and c.kept("mlp")[0]
    everything_off = circuit_with(DIMS, attn_neuron={(1,): OFF}, mlp_neuron={(1,): OFF})
    assert everything_off.kept("block").tolist() == [True, False]


def test_granularities_not_trained_count_as_kept():
    c = Circuit(dims=DIMS, log_alpha={"head": torch.full((2, 3), OFF)})
    assert c.granularities == ("head",)
    assert c.kept("mlp_neuron").all() and not c.kept("attn_neuron").any()
    assert c.n_kept("block") == 2  # the MLPs still carry each layer


def test_wrong_log_alpha_shape_is_rejected():
    with pytest.raises(ValueError, match="needs"):
        Circuit(dims=DIMS, log_alpha={"head": torch.zeros(3, 3)})


def test_summary_lists_every_granularity():
    text = circuit_with(DIMS, head={(0, 1): OFF}).summary()
    for g in GRANULARITIES:
        assert g in text
    assert "5" in text and "6" in text


def test_all_ones_mask_reproduces_the_model_exactly():
    model = build_model()
    ds = build_dataset(model)
    dims = ModelDims.from_cfg(model.cfg)
    ones = {g: torch.ones(dims.shape(g)) for g in GRANULARITIES}
    corrupted = site_activations(model, ds.corrupted_tokens, dims)
    hooks = mask_hooks(dims, site_masks(ones, dims), corrupted)
    assert torch.equal(
        model.run_with_hooks(ds.clean_tokens, fwd_hooks=hooks), model(ds.clean_tokens)
    )


def test_all_zeros_mask_gives_every_node_its_corrupted_output():
    """With every node ablated, the residual stream is the clean input's embedding plus every
    layer's output from the corrupted run."""
    model = build_model()
    ds = build_dataset(model)
    dims = ModelDims.from_cfg(model.cfg)
    zeros = {g: torch.zeros(dims.shape(g)) for g in GRANULARITIES}
    corrupted = site_activations(model, ds.corrupted_tokens, dims)
    hooks = mask_hooks(dims, site_masks(zeros, dims), corrupted)
    masked = model.run_with_hooks(ds.clean_tokens, fwd_hooks=hooks)

    _, clean_cache = model.run_with_cache(ds.clean_tokens)
    _, corrupted_cache = model.run_with_cache(ds.corrupted_tokens)
    final = f"blocks.{dims.n_layers - 1}.hook_resid_post"
    resid = (
        corrupted_cache[final]
        - corrupted_cache["hook_embed"]
        - corrupted_cache["hook_pos_embed"]
        + clean_cache["hook_embed"]
        + clean_cache["hook_pos_embed"]
    )
    expected = model.unembed(model.ln_final(resid))
    torch.testing.assert_close(masked, expected, atol=1e-4, rtol=1e-4)


def test_fwd_hooks_compose_with_run_with_hooks_and_hooks_context():
    model = build_model()
    ds = build_dataset(model)
    before = model_state(model)
    full = circuit_with(ModelDims.from_cfg(model.cfg))
    out = model.run_with_hooks(ds.clean_tokens, fwd_hooks=full.fwd_hooks(ds, model=model))
    assert torch.equal(out, model(ds.clean_tokens))
    sparse = circuit_with(ModelDims.from_cfg(model.cfg), block={0: OFF})
    with model.hooks(fwd_hooks=sparse.fwd_hooks(ds, model=model)):
        patched = model(ds.clean_tokens)
    with sparse.applied(model, ds):
        again = model(ds.clean_tokens)
    assert torch.equal(patched, again) and not torch.equal(patched, out)
    _, cache = model.run_with_cache(ds.corrupted_tokens)
    assert torch.equal(
        model.run_with_hooks(ds.clean_tokens, fwd_hooks=sparse.fwd_hooks(cache)), patched
    )
    assert_untouched(model, before)


def test_knockout_patches_exactly_the_circuit():
    """Knocking out layer 0 equals running the circuit that is everything but layer 0; the
    knockout of the full circuit is the fully corrupted run (clean embeddings)."""
    model = build_model()
    ds = build_dataset(model)
    dims = ModelDims.from_cfg(model.cfg)
    layer0 = circuit_with(dims, block={1: OFF})
    rest = circuit_with(dims, block={0: OFF})
    with layer0.applied(model, ds, knockout=True):
        knocked = model(ds.clean_tokens)
    with rest.applied(model, ds):
        assert torch.allclose(knocked, model(ds.clean_tokens), atol=1e-6)
    everything = circuit_with(dims)
    empty = circuit_with(dims, block={0: OFF, 1: OFF})
    hooks = everything.fwd_hooks(ds, model=model, knockout=True)
    nothing = empty.fwd_hooks(ds, model=model)
    assert torch.allclose(
        model.run_with_hooks(ds.clean_tokens, fwd_hooks=hooks),
        model.run_with_hooks(ds.clean_tokens, fwd_hooks=nothing),
        atol=1e-6,
    )
    assert count_hooks(model) == 0


def test_fwd_hooks_explain_what_is_missing():
    model = build_model()
    c = circuit_with(ModelDims.from_cfg(model.cfg))
    with pytest.raises(ValueError, match="model="):
        c.fwd_hooks(build_dataset(model))
    with pytest.raises(ValueError, match="unknown ablation"):
        c.fwd_hooks(build_dataset(model), model=model, ablation="resample")
    other = build_model(n_layers=3)
    with pytest.raises(ValueError, match="model with"):
        c.fwd_hooks(build_dataset(other), model=other)


def test_save_load_round_trip_is_exact(tmp_path):
    model = build_model()
    circuit = CircuitPruner(model, steps=5).fit(build_dataset(model), progress=False)
    path = circuit.save(tmp_path / "c.safetensors")
    loaded = Circuit.load(path, model=model)
    assert loaded.dims == circuit.dims and loaded.config == circuit.config
    assert loaded.history == circuit.history and loaded.fit_info == circuit.fit_info
    for g in circuit.granularities:
        assert torch.equal(loaded.log_alpha[g], circuit.log_alpha[g])
        assert torch.equal(loaded.kept(g), circuit.kept(g))


def test_node_names_and_graph_follow_the_kept_nodes():
    c = circuit_with(DIMS, head={(0, 1): OFF}, mlp_neuron={(1, 2): OFF})
    assert c.nodes("block") == ["L0", "L1"]
    assert c.nodes("head") == ["L0.H0", "L0.H2", "L1.H0", "L1.H1", "L1.H2"]
    assert "L0.H1.d0" not in c.nodes("attn_neuron") and "L0.H0.d3" in c.nodes("attn_neuron")
    assert c.nodes("mlp_neuron") == [
        "L0.mlp.0",
        "L0.mlp.1",
        "L0.mlp.2",
        "L0.mlp.3",
        "L0.mlp.4",
        "L1.mlp.0",
        "L1.mlp.1",
        "L1.mlp.3",
        "L1.mlp.4",
    ]
    graph = c.to_networkx()
    assert graph.number_of_nodes() == sum(c.n_kept(g) for g in c.dims.available())
    assert graph.number_of_edges() == graph.number_of_nodes() - 2  # a tree under each block
    assert set(graph.successors("L1")) == {"L1.H0", "L1.H1", "L1.H2", "L1.mlp"}
    assert set(graph.successors("L1.mlp")) == {f"L1.mlp.{n}" for n in (0, 1, 3, 4)}
    assert graph.nodes["L0.H2"] == {"granularity": "head", "index": (0, 2), "log_alpha": ON}


def test_circuit_hooks_compose_with_transformer_lens_patching():
    from transformer_lens import patching

    model = build_model()
    ds = build_dataset(model)
    dims = ModelDims.from_cfg(model.cfg)
    _, clean_cache = model.run_with_cache(ds.clean_tokens)
    rows = torch.arange(len(ds))

    def metric(logits):
        return logits[rows, -1].log_softmax(-1)[rows, ds.answer_tokens].mean()

    def sweep():
        return patching.get_act_patch_attn_head_out_all_pos(
            model, ds.corrupted_tokens, clean_cache, metric
        )

    plain = sweep()
    with circuit_with(dims).applied(model, ds):
        assert torch.allclose(sweep(), plain, atol=1e-6)  # the full circuit changes nothing
    with circuit_with(dims, block={0: OFF}).applied(model, ds):
        inside = sweep()
    assert inside.shape == plain.shape == (2, 4) and not torch.allclose(inside, plain)
    assert count_hooks(model) == 0


def half_circuit(model, **config) -> Circuit:
    """Every other attention dimension and MLP neuron kept."""
    dims = ModelDims.from_cfg(model.cfg)
    kept = {
        "attn_neuron": torch.arange(dims.n_nodes("attn_neuron")).view(dims.shape("attn_neuron")) % 2
        == 0,
        "mlp_neuron": torch.arange(dims.n_nodes("mlp_neuron")).view(dims.shape("mlp_neuron")) % 2
        == 0,
    }
    return Circuit.from_kept(dims, kept, config=config)


def padded_pairs(model):
    """Pairs whose last two positions are padding after the answer position."""
    ds = build_dataset(model, n=8, seq_len=6)
    return PairedDataset(
        ds.clean_tokens,
        ds.corrupted_tokens,
        ds.answer_tokens,
        answer_positions=torch.tensor([3, 5, 3, 5, 3, 5, 3, 5]),
    )


@pytest.mark.parametrize("ablation", ["mean", "zero"])
def test_hooks_ablate_as_the_circuit_was_trained(ablation):
    """fwd_hooks and applied use the circuit's own ablation, as evaluate does."""
    model = build_model()
    ds = padded_pairs(model)
    circuit = half_circuit(model, ablation=ablation)
    own = model.run_with_hooks(ds.clean_tokens, fwd_hooks=circuit.fwd_hooks(ds, model=model))
    named = circuit.fwd_hooks(ds, model=model, ablation=ablation)
    assert torch.equal(own, model.run_with_hooks(ds.clean_tokens, fwd_hooks=named))
    corrupted = circuit.fwd_hooks(ds, model=model, ablation="corrupted")
    assert not torch.allclose(own, model.run_with_hooks(ds.clean_tokens, fwd_hooks=corrupted))
    with circuit.applied(model, ds) as as_circuit:
        assert torch.equal(as_circuit(ds.clean_tokens), own)


def test_mean_ablation_has_one_definition_for_datasets_and_caches():
    """The mean over each corrupted prompt up to its answer position: padding never counts,
    whether the values come from the pairs or from a cache of the corrupted run."""
    model = build_model()
    ds = padded_pairs(model)
    circuit = half_circuit(model, ablation="mean")
    _, cache = model.run_with_cache(ds.corrupted_tokens)
    from_pairs = model.run_with_hooks(ds.clean_tokens, fwd_hooks=circuit.fwd_hooks(ds, model=model))
    hooks = circuit.fwd_hooks(cache, answer_positions=ds.answer_positions)
    assert torch.allclose(model.run_with_hooks(ds.clean_tokens, fwd_hooks=hooks), from_pairs)
    every_position = circuit.fwd_hooks(cache)  # no positions given: every position counts
    padded = model.run_with_hooks(ds.clean_tokens, fwd_hooks=every_position)
    assert not torch.allclose(padded, from_pairs)


def test_from_kept_builds_exactly_the_chosen_nodes():
    kept = {
        "head": torch.tensor([[True, False, True], [False, False, False]]),
        "mlp": torch.tensor([False, False]),
    }
    circuit = Circuit.from_kept(DIMS, kept)
    assert circuit.nodes("head") == ["L0.H0", "L0.H2"] and circuit.nodes("mlp") == []
    assert circuit.nodes("block") == ["L0"] and circuit.granularities == ("head", "mlp")
    assert circuit.n_kept("mlp_neuron") == 0 and circuit.n_kept("attn_neuron") == 8
