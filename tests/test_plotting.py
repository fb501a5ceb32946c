import plotly.graph_objects as go
import torch
from test_evaluation import full_circuit

from transformer_lens_mgp import Circuit, Discovery, FaithfulnessCurve, ModelDims
from transformer_lens_mgp.analysis import plotting
from transformer_lens_mgp.analysis.report import write_report
from transformer_lens_mgp.testing.tiny import build_model


def big_circuit():
    """SmolLM2-sized: 30 layers x 1536 MLP neurons, 9 heads of 64 dims."""
    dims = ModelDims(n_layers=30, n_heads=9, d_head=64, d_mlp=1536)
    g = torch.Generator().manual_seed(0)
    log_alpha = {k: torch.randn(dims.shape(k), generator=g) for k in dims.available()}
    return Circuit(
        dims=dims,
        log_alpha=log_alpha,
        history={"loss": [1.0, 0.5], "kl": [0.2, 0.1], "l0/head": [1.0, 0.3]},
    )


def test_figures_have_one_cell_per_node():
    circuit = big_circuit()
    neuron_map = plotting.plot_neuron_map(circuit)
    assert isinstance(neuron_map, go.Figure) and len(neuron_map.data) == 1
    assert neuron_map.data[0].z.shape == (30, 1536)
    assert neuron_map.data[0].z.sum() == circuit.n_kept("mlp_neuron")
    assert plotting.plot_head_map(circuit).data[0].z.shape == (30, 9)
    assert plotting.plot_neuron_map(circuit, "attn_neuron").data[0].z.shape == (30, 9 * 64)
    assert len(plotting.plot_kept_per_layer(circuit).data) == 5
    assert len(plotting.plot_training_curves(circuit).data) == 3


def test_report_is_one_self_contained_html_file(tmp_path):
    circuit = big_circuit()
    circuit.metrics = {"kl": 0.1}
    path = write_report(circuit, tmp_path / "r.html", title="test <report>")
    text = path.read_text()
    assert text.count("<script") >= 4 and "test &lt;report&gt;" in text
    assert "<script src=" not in text, "plotly.js must be inlined, not fetched"
    assert "mlp_neuron" in text


def test_attention_only_circuit_plots_without_neuron_map(tmp_path):
    model = build_model(attn_only=True, d_mlp=None)
    circuit = full_circuit(model)
    assert "head" in write_report(circuit, tmp_path / "r.html").read_text()


def test_faithfulness_curve_figure_and_report(tmp_path):
    curve = {
        "fractions": [0.1, 1.0],
        "faithfulness": [0.4, 1.0],
        "kl": [1.0, 0.0],
        "kept": [{}, {}],
        "cpr": 0.63,
        "cmd": 0.27,
    }
    fig = plotting.plot_faithfulness_curve(curve)
    assert len(fig.data) == 2 and "CPR 0.630" in fig.layout.title.text
    run = Discovery(big_circuit(), curve=FaithfulnessCurve(**curve))
    assert "CPR 0.630" in write_report(run, tmp_path / "r.html").read_text()


def test_training_curves_with_targets_and_negative_loss():
    circuit = big_circuit()
    circuit.history.update({"loss": [-0.1, 0.2], "target/head": [1.0, 0.5]})
    fig = plotting.plot_training_curves(circuit)
    assert len(fig.data) == 4 and fig.layout.yaxis.type != "log"


def test_gpt2_xl_sized_neuron_map_is_one_trace(tmp_path):
    dims = ModelDims(n_layers=48, n_heads=25, d_head=64, d_mlp=6400)
    g = torch.Generator().manual_seed(0)
    circuit = Circuit(dims=dims, log_alpha={"mlp_neuron": torch.randn(48, 6400, generator=g)})
    fig = plotting.plot_neuron_map(circuit)
    assert len(fig.data) == 1 and fig.data[0].z.shape == (48, 6400)
    size = write_report(circuit, tmp_path / "r.html").stat().st_size
    assert size < 30e6, f"report of {size / 1e6:.1f} MB"


def test_training_curves_show_the_extracted_size_against_its_target():
    circuit = big_circuit()
    circuit.history.update({"size/head": [1.0, 0.6], "target/head": [1.0, 0.5]})
    fig = plotting.plot_training_curves(circuit)
    right = [trace.name for trace in fig.data if trace.xaxis == "x2"]
    assert right == ["head", "target/head"]  # the size replaces the expected fraction
    assert list(fig.data[-2].y) == [1.0, 0.6]
    assert fig.layout.annotations[1].text == "kept fraction"
