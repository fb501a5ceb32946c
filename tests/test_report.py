"""The report reads from the top down: faithfulness, the ranked nodes and what the top heads
and neurons do come before the maps; plotly.js once; the raw neuron map only when asked for."""

from __future__ import annotations

import dataclasses
import html
import json
import re

import pytest
import torch

from transformer_lens_mgp import Circuit, ModelDims
from transformer_lens_mgp.analysis.anatomy import CircuitAnatomy
from transformer_lens_mgp.analysis.curves import SweepPoint
from transformer_lens_mgp.analysis.discovery import measure
from transformer_lens_mgp.analysis.node_figures import plot_node_entry
from transformer_lens_mgp.analysis.report import write_sweep_report
from transformer_lens_mgp.analysis.run_folder import NODES_FILE, sweep_summary, write_run_folder
from transformer_lens_mgp.testing.planted import planted_circuit

PLOTLY_BANNER = "plotly.js v"


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    planted = planted_circuit("standard", seed=1, n=40)
    dims = ModelDims.from_cfg(planted.model.cfg)
    kept = {g: planted.live[g] | planted.dead[g] for g in ("attn_neuron", "mlp_neuron")}
    circuit = Circuit.from_kept(dims, kept, history={"loss": [1.0, 0.5], "kl": [0.3, 0.2]})
    data = planted.dataset.with_roles(("END",), planted.dataset.answer_positions[:, None])
    run = measure(planted.model, circuit, data, node_effects=True, facts={"task": "planted"})
    out = tmp_path_factory.mktemp("run")
    write_run_folder(out, run, title="planted <circuit>")
    return out, run


def test_sections_come_in_reading_order(run_folder):
    out, _ = run_folder
    text = (out / "report.html").read_text()
    headings = re.findall(r"<h2>(.*?)</h2>", text)
    assert headings[:6] == [
        "Faithfulness on held-out pairs",
        "The circuit as a graph",
        "Roles of the top heads",
        "The nodes that matter most",
        "What the top heads attend to",
        "What the top MLP neurons do",
    ]
    assert headings.index("Where the circuit sits") > 5 and headings[-2:] == ["Training", "Run"]
    # the page says what its numbers measure before it shows them
    assert text.index("How to read this page") < text.index("Faithfulness on held-out pairs")
    assert "logit difference between the right and the wrong answer" in text
    assert "planted &lt;circuit&gt;" in text
    assert text.count(PLOTLY_BANNER) == 1, "plotly.js must be inlined exactly once"
    assert "<script src=" not in text
    # the raw neuron map is drawn only when asked for (the page says how); the table sorts
    circuit = run_folder[1].circuit
    assert "plot_neuron_map(" in text
    assert f"mlp_neuron: {circuit.n_kept('mlp_neuron')} of" not in text
    assert "<table class='sortable'>" in text
    # metrics are a table, not a JSON dump
    assert "random circuit, same size" in text and '"kl":' not in text


def test_the_node_table_lists_every_measured_node(run_folder):
    out, run = run_folder
    text = (out / "report.html").read_text()
    table = text[text.index("measured nodes, a table") :]
    table = table[: table.index("</table>")]
    assert table.count("<tr>") == 1 + len(run.anatomy.effects.effects)
    for effect in run.anatomy.effects.effects:
        assert f"<td class='text'>{effect.node}</td>" in table


def test_nodes_json_round_trips(run_folder):
    out, run = run_folder
    again = CircuitAnatomy.from_dict(json.loads((out / NODES_FILE).read_text()))
    assert again == run.anatomy
    assert again.heads.groups == ("first", "END", "other")
    # the heads that matter most, leaving out those whose removal changes nothing
    top = run.anatomy.effects.top(10, "head")
    assert [h.head for h in again.heads.heads] == [e.node for e in top if e.delta_kl != 0]
    assert 0 < len(again.heads.heads) < len(top)


def test_every_profiled_head_has_a_role_row_and_every_neuron_its_output_tokens(run_folder):
    out, run = run_folder
    text = (out / "report.html").read_text()
    roles = text[text.index("<h2>Roles of the top heads</h2>") :]
    roles = roles[: roles.index("</table>")]
    assert roles.count("<tr>") == 1 + len(run.anatomy.roles) > 1
    for role in run.anatomy.roles:
        assert f"<td class='text'>{role.role}</td>" in roles
    neurons = text[text.index("<h2>What the top MLP neurons do</h2>") :]
    for neuron in run.anatomy.neurons.neurons:
        assert "raises " + html.escape(" ".join(repr(t) for t in neuron.promotes)) in neurons


def test_a_circuit_that_overshoots_the_model_is_called_so(run_folder, tmp_path):
    _, run = run_folder
    over = run.replace(evaluation=dataclasses.replace(run.evaluation, recovered=1.3))
    write_run_folder(tmp_path, over)
    assert "1.3000 (overshoots the model)" in (tmp_path / "report.html").read_text()


def growing_circuits() -> list[Circuit]:
    dims = ModelDims(n_layers=2, n_heads=3, d_head=4, d_mlp=8)
    circuits = []
    for heads in ([(1, 2)], [(1, 2), (0, 0)], [(1, 2), (0, 0), (0, 1)]):
        kept = torch.zeros(2, 3, dtype=torch.bool)
        for index in heads:
            kept[index] = True
        circuits.append(Circuit.from_kept(dims, {"head": kept}))
    return circuits[::-1]  # largest first: the figure orders them itself


def measured(kl: float, recovered: float):
    """An evaluation with the given KL and recovered metric (the rest does not matter here)."""
    from transformer_lens_mgp import Evaluation

    return Evaluation(kl, 1.0, recovered, 0.0, recovered, 1.0, 1.0, {}, {}, 10)


def test_node_entry_orders_nodes_by_the_smallest_circuit_keeping_them():
    fig = plot_node_entry(growing_circuits(), "head")
    assert list(fig.data[0].x) == ["L1.H2", "L0.H0", "L0.H1"]
    assert [list(row) for row in fig.data[0].z] == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]


def test_sweep_report_shows_points_pareto_and_entry(tmp_path):
    points = [
        SweepPoint({"head": c.size()}, c, measured(kl=1 - c.size(), recovered=c.size()))
        for c in growing_circuits()
    ]
    summary = sweep_summary(points, {})
    assert [p["recovered"] for p in summary["points"]] == [p.circuit.size() for p in points]
    text = write_sweep_report(points, summary, tmp_path / "sweep.html").read_text()
    assert "How nodes enter as the circuit grows" in text and "CPR" in text
    assert text.count(PLOTLY_BANNER) == 1


def test_the_size_table_shows_each_target_and_how_much_the_size_still_moved(tmp_path):
    from transformer_lens_mgp.analysis.report import write_report

    dims = ModelDims(n_layers=2, n_heads=2, d_head=2, d_mlp=4)
    kept = {"head": torch.tensor([[True, False], [False, False]])}
    history = {"size/head": [1.0] * 8 + [0.5, 0.25]}
    circuit = Circuit.from_kept(dims, kept, history=history, config={"target": {"head": 0.2}})
    page = write_report(circuit, tmp_path / "r.html").read_text()
    assert "size moved over the last fifth of the fit" in page
    row = re.search(r"<td class='text'>head</td>(.*?)</tr>", page).group(1)
    assert re.findall(r"<td[^>]*>([^<]*)</td>", row) == ["1", "4", "25.00%", "20.00%", "300.0%"]
    untargeted = Circuit.from_kept(dims, kept)
    assert "size moved" not in write_report(untargeted, tmp_path / "u.html").read_text()


def test_a_sized_circuit_shows_the_rungs_of_its_search(tmp_path):
    from transformer_lens_mgp import CircuitPruner
    from transformer_lens_mgp.analysis.report import write_report
    from transformer_lens_mgp.analysis.text import sizing_line
    from transformer_lens_mgp.testing.tiny import build_dataset, build_model

    model = build_model()
    level = {"recovered": (-1e6, 1e6), "kl": 1.0}  # every rung meets it: the search goes down
    circuit = CircuitPruner(model, steps=10, faithfulness=level).fit(
        build_dataset(model, n=40), progress=False
    )
    page = write_report(circuit, tmp_path / "r.html").read_text()
    assert "The size follows the task" in page and "smallest circuit that met it" in page
    rows = re.findall(r"<td class='text'>(x[\d.]+[^<]*)</td>", page)
    chosen = circuit.fit_info["target_scale"]
    assert rows == [
        f"x{r['scale']:g}" + (" (this circuit)" if r["scale"] == chosen else "")
        for r in circuit.fit_info["sizing"]
    ]
    line = sizing_line(circuit)
    assert line.startswith(f"size chosen: targets x{chosen:g}") and line.count("(met)") == 3
    # the size table's target is the chosen rung's
    assert f"{100 * 0.09 * chosen:.2f}%" in page
