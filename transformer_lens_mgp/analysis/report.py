"""The HTML report: one self-contained offline file that reads from the top down.

First what the numbers mean, how faithful and how large the circuit is, then the circuit as
a graph and the roles of its top heads, then which nodes matter most and what the top heads
and neurons do, then where the circuit sits in the model, and last how it was trained.
plotly.js is inlined once; the raw MLP neuron map is drawn only when asked for, in a notebook.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path

import plotly.graph_objects as go

from ..core.circuit import Circuit
from .anatomy import CircuitAnatomy
from .convergence import settling
from .curves import SweepPoint
from .discovery import EDGE_PAIRS, Discovery
from .graph import circuit_graph
from .node_figures import (
    plot_example_patterns,
    plot_head_attention,
    plot_node_effects,
    plot_node_entry,
)
from .plotting import (
    plot_edge_graph,
    plot_faithfulness_curve,
    plot_head_map,
    plot_kept_per_layer,
    plot_pareto,
    plot_role_positions,
    plot_training_curves,
)

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
th,td{border-bottom:1px solid #ddd;padding:.25em .8em;text-align:right}
th:first-child,td:first-child,td.text{text-align:left}
table.sortable th{cursor:pointer;background:#f5f5f5}
details{margin:1em 0}summary{cursor:pointer;font-weight:600}
.lead{color:#555}
"""

FIRST_TOKEN_FLAG = "<br><b>first-token artefact?</b>"

OVERSHOOT = 1.05
"""Recovered above this is labelled an overshoot: the circuit pushes harder than the model."""

SORT_SCRIPT = """
document.querySelectorAll('table.sortable th').forEach(th => th.addEventListener('click', () => {
  const body = th.closest('table').tBodies[0], col = th.cellIndex;
  const down = th.dataset.down !== '1'; th.dataset.down = down ? '1' : '0';
  const key = r => { const c = r.cells[col], x = parseFloat(c.dataset.v ?? c.textContent);
                     return isNaN(x) ? c.textContent : x; };
  [...body.rows].sort((a, b) => (key(a) > key(b) ? 1 : key(a) < key(b) ? -1 : 0) * (down ? -1 : 1))
    .forEach(r => body.appendChild(r));
}));
document.querySelectorAll('details').forEach(d => d.addEventListener('toggle', () =>
  d.querySelectorAll('.plotly-graph-div').forEach(g => Plotly.Plots.resize(g))));
"""


def write_report(run: Discovery | Circuit, path: str | Path, title: str = "Circuit") -> Path:
    """Write the report of a circuit to ``path``: for a measured one
    (:func:`~.discovery.measure`) its held-out numbers, the ranked nodes and head and neuron
    profiles, edges and curve when measured; for any, its maps and training curves."""
    if isinstance(run, Circuit):
        run = Discovery(run, settling=tuple(settling(run)))
    circuit = run.circuit
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    page = _Page()
    page.raw(f"<h1>{html.escape(title)}</h1>")
    lead = _lead(run)
    if lead:
        page.raw(f"<p class='lead'>{html.escape(lead)}</p>")
    page.raw(_how_to_read(run))
    page.section("Faithfulness on held-out pairs")
    page.raw(_faithfulness_table(run))
    page.raw(_size_table(circuit))
    if circuit.fit_info.get("sizing"):
        page.raw(_sizing_table(circuit))
    _graph_section(page, run)
    if run.anatomy is not None and run.anatomy.roles:
        _roles_section(page, run.anatomy)
    if run.anatomy is not None:
        _anatomy_sections(page, run.anatomy)
    page.section("Where the circuit sits")
    if circuit.slots:
        page.raw(
            "<p class='lead'>One mask per node and token role: a head or MLP neuron is kept at "
            "the roles' tokens (rows) where it is needed, and ablated at the others; counts "
            "are (node, role) pairs.</p>"
        )
        page.figure(plot_role_positions(circuit))
    else:
        page.figure(plot_kept_per_layer(circuit))
        page.figure(plot_head_map(circuit))
        if circuit.dims.has_mlp:
            page.raw(
                f"<p class='lead'>The layer x neuron map of all {circuit.n_total('mlp_neuron')} "
                "MLP neurons is left out of the page (it would weigh more than the rest of the "
                "figures); draw it when you need it: <code>plot_neuron_map(Circuit.load("
                "'circuit.safetensors')).show()</code>.</p>"
            )
    if run.curve is not None:
        page.section("Faithfulness against size")
        page.figure(plot_faithfulness_curve(run.curve))
    if run.learned_summary:
        _learned_edges_section(page, run.learned_summary)
    if circuit.history:
        page.section("Training")
        page.figure(plot_training_curves(circuit))
    facts = _facts(run)
    if facts:
        page.section("Run")
        page.raw(_table(["fact", "value"], facts))
    path.write_text(page.html(title), encoding="utf-8")
    return path


def write_edge_report(summary: dict, path: str | Path, title: str = "Learned edges") -> Path:
    """A page of its own for an edge circuit (``tl-mgp edges``): its faithfulness against
    attribution-ranked and random edges at equal count, and its graph."""
    path = Path(path)
    page = _Page()
    page.raw(f"<h1>{html.escape(title)}</h1>")
    _learned_edges_section(page, summary)
    path.write_text(page.html(title), encoding="utf-8")
    return path


def _learned_edges_section(page: _Page, summary: dict) -> None:
    page.section("Learned edges among the kept nodes")
    page.raw(
        f"<p class='lead'>{summary['n_kept']} of {summary['n_total']} possible edges kept; "
        f"every other edge carries its corrupted write. Held-out faithfulness on "
        f"{summary['n_test']} pairs, against as many edges chosen by other rules:</p>"
    )
    rows = [
        [rule, str(r["kept"]["edge"]), _num(r["kl"]), _num(r["recovered"]),
         _num(r["accuracy_circuit"])]
        for rule, r in summary["evaluation"].items()
    ]  # fmt: skip
    page.raw(_table(["edges chosen by", "edges", "KL(full || ·)", "recovered", "accuracy"], rows))
    width = "attribution score" if summary["score"] == "attribution" else "learned log_alpha"
    edges = [{**e, "label": f" ({e['inputs']})" if e["inputs"] else ""} for e in summary["edges"]]
    page.figure(
        plot_edge_graph(edges, title=f"learned edges (width: {width}; q/k/v inputs on hover)")
    )


def write_sweep_report(
    points: Sequence[SweepPoint], summary: dict, path: str | Path, title: str = "Sweep"
) -> Path:
    """The sweep's report: its points as a table, faithfulness against size, and the order in
    which heads (and MLP layers) enter the circuit as it grows."""
    path = Path(path)
    page = _Page()
    page.raw(f"<h1>{html.escape(title)}</h1>")
    circuits = [p.circuit for p in points]
    page.raw(
        f"<p class='lead'>{len(circuits)} circuits; faithfulness against size: "
        f"CPR {summary['cpr']:.3f}, CMD {summary['cmd']:.3f}</p>"
    )
    rows = [
        [p["folder"], _num(p["size"]), _num(p.get("kl")), _num(p.get("recovered"))]
        + [str(p["kept"].get(g, "")) for g in ("head", "mlp_neuron")]
        for p in sorted(summary["points"], key=lambda p: p["size"])
    ]
    headers = ["point", "size", "KL", "recovered", "heads", "MLP neurons"]
    page.raw(_table(headers, rows, sortable=True))
    page.section("Faithfulness against size")
    page.figure(plot_pareto(list(points)))
    page.section("How nodes enter as the circuit grows")
    page.figure(plot_node_entry(circuits, "head"))
    if circuits[0].dims.has_mlp:
        page.figure(plot_node_entry(circuits, "mlp"))
    path.write_text(page.html(title), encoding="utf-8")
    return path


class _Page:
    """HTML parts in order; the first figure carries plotly.js."""

    def __init__(self):
        self.parts: list[str] = []
        self.n_figures = 0

    def raw(self, text: str) -> None:
        self.parts.append(text)

    def section(self, heading: str) -> None:
        self.parts.append(f"<h2>{html.escape(heading)}</h2>")

    def figure(self, fig: go.Figure, toggle: str | None = None) -> None:
        js = "inline" if self.n_figures == 0 else False
        div = fig.to_html(full_html=False, include_plotlyjs=js, config={"responsive": True})
        self.n_figures += 1
        if toggle is not None:
            div = f"<details><summary>{html.escape(toggle)}</summary>{div}</details>"
        self.parts.append(div)

    def html(self, title: str) -> str:
        return (
            f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{STYLE}</style></head><body>{''.join(self.parts)}"
            f"<script>{SORT_SCRIPT}</script></body></html>"
        )


def _anatomy_sections(page: _Page, anatomy: CircuitAnatomy) -> None:
    effects = anatomy.effects
    direct = {}
    if anatomy.heads is not None:
        direct.update({h.head: h.direct_effect for h in anatomy.heads.heads})
    if anatomy.neurons is not None:
        direct.update({n.neuron: n.direct_effect for n in anatomy.neurons.neurons})
    page.section("The nodes that matter most")
    page.raw(
        "<p class='lead'>Each kept head and MLP, and the most promising MLP neurons, removed "
        f"alone (given its ablated value) on {effects.n_pairs} held-out pairs; the table of all "
        "of them sorts by any column on a click.</p>"
    )
    page.figure(plot_node_effects(effects))
    rows = [
        [e.node, e.granularity, _num(e.delta_kl), _num(e.delta_metric), _num(direct.get(e.node))]
        for e in effects.effects
    ]
    headers = ["node", "kind", "KL increase", "logit diff change", "direct effect"]
    table = _table(headers, rows, sortable=True)
    page.raw(
        f"<details><summary>all {len(rows)} measured nodes, a table</summary>{table}</details>"
    )
    if anatomy.heads is not None:
        page.section("What the top heads attend to")
        page.figure(plot_head_attention(anatomy.heads))
        page.figure(plot_example_patterns(anatomy.heads))
    if anatomy.neurons is not None:
        page.section("What the top MLP neurons do")
        page.raw(
            "<p class='lead'>The neurons whose removal costs the circuit most (the KL "
            "increase without it: why it was chosen). <i>Writes</i>: the tokens its output "
            "direction raises and lowers most through the unembedding. <i>Fires on</i>: where "
            "it is most active on the task's prompts and on other text, the token in brackets. "
            "A neuron that fires hardest on the first token is flagged: models write large "
            "constant vectors there, an artefact more often than a feature.</p>"
        )
        removal = {e.node: e.delta_kl for e in effects.effects}
        rows = [
            [
                html.escape(n.neuron) + (FIRST_TOKEN_FLAG if n.first_token else ""),
                _num(removal.get(n.neuron)),
                _num(n.direct_effect),
                _num(n.mean_activation),
                "raises " + html.escape(" ".join(repr(t) for t in n.promotes))
                + "<br>lowers " + html.escape(" ".join(repr(t) for t in n.suppresses)),
                _activations(n.top_activations),
                _activations(n.on_text),
            ]
            for n in anatomy.neurons.neurons
        ]  # fmt: skip
        headers = ["neuron", "KL increase when removed", "direct effect",
                   "mean activation at answer", "writes", "fires on (task)",
                   "fires on (other text)"]  # fmt: skip
        page.raw(_table(headers, rows, escape=False))


def _activations(found) -> str:
    return "<br>".join(f"{html.escape(t.context)} ({t.activation:.2f})" for t in found)


def _how_to_read(run: Discovery) -> str:
    """What the page's numbers measure, in the run's own terms."""
    circuit = run.circuit
    ablation = {
        "corrupted": "takes its value on the paired corrupted prompt",
        "mean": "takes its mean value over the corrupted prompts",
        "zero": "is set to zero",
    }.get(circuit.ablation, f"is ablated ({circuit.ablation})")
    return (
        "<details open><summary>How to read this page</summary><p>"
        "The <b>circuit</b> is the model with every node outside it ablated: a dropped node "
        f"{ablation}. <b>KL(full || ·)</b> is the KL divergence of the circuit's next-token "
        "distribution at the answer from the full model's (0 is perfect). The <b>task "
        "metric</b> is the logit difference between the right and the wrong answer. "
        "<b>Recovered</b> = (metric of the circuit − metric of the empty circuit) / (metric of "
        "the full model − metric of the empty circuit): 1 means the circuit does what the "
        "model does, above 1 it <i>overshoots</i> the model, near 0 it does no better than "
        "nothing. <b>Accuracy</b>: share of pairs where the right answer beats the wrong one. "
        "Every number is measured on held-out pairs the fit never saw: <i>in-frame</i> pairs "
        "use the sentence frames and words of training, <i>unseen frames</i> pairs (when "
        "measured) frames and words the fit never used, the harder test. A section that uses "
        "fewer pairs says how many.</p></details>"
    )


def _graph_section(page: _Page, run: Discovery) -> None:
    page.section("The circuit as a graph")
    graph = circuit_graph(run)
    if not run.circuit.slots:
        lead = (
            "The kept heads (circles) and MLPs (squares) by layer, from the embeddings (input) "
            "to the logits. A head with a role is coloured and labelled with the token role it "
            "acts from (L17.H4@S2); hover a node for its role, evidence and effects. "
            "<code>graph.json</code> holds the same graph for networkx. "
        )
    else:
        lead = (
            "The kept heads (circles) and MLPs (squares) by layer, from the embeddings (input) "
            "to the logits; hover a node for the token roles it is kept at (<i>Where the "
            "circuit sits</i> counts them per role). <code>graph.json</code> holds the same "
            "graph for networkx (<code>kept_at</code>). "
        )
    if run.edges is None:
        why = run.facts.get("edges", "edges were not scored (--edges none)")
        lead += f"No edges: {html.escape(str(why))}."
    else:
        lead += (
            "An edge's width is its attribution score: how much the clean information from "
            "one node to another moves the task metric (blue up, red down), averaged over "
            f"{min(EDGE_PAIRS, run.n_test or EDGE_PAIRS)} held-out pairs; the slider sets how "
            "many of the strongest edges are drawn."
        )
    page.raw(f"<p class='lead'>{lead}</p>")
    page.figure(plot_edge_graph(graph, title="the circuit"))


def _roles_section(page: _Page, anatomy: CircuitAnatomy) -> None:
    page.section("Roles of the top heads")
    page.raw(
        "<p class='lead'>A role is named only when a measurement supports it; the evidence "
        "is beside it. Pattern scores are mean attention on repeated random tokens: to the "
        "previous token, to the earlier copy of the same token (duplicate), to the token after "
        "that copy (induction). <i>Total effect</i> is the logit difference the circuit loses "
        "without the head; what is not direct runs through later nodes.</p>"
    )
    rows = [
        [
            r.head,
            r.role,
            r.position,
            r.evidence,
            _num(r.scores["previous_token"]),
            _num(r.scores["duplicate_token"]),
            _num(r.scores["induction"]),
            _num(r.direct_effect),
            _num(r.total_effect),
        ]
        for r in anatomy.roles
    ]
    headers = ["head", "role", "acts at", "evidence", "previous-token", "duplicate", "induction",
               "direct effect", "total effect"]  # fmt: skip
    page.raw(_table(headers, rows, sortable=True))


def _lead(run: Discovery) -> str:
    facts = run.facts
    bits = [f"{key} {facts[key]}" for key in ("task", "model") if facts.get(key)]
    if facts.get("n_train"):
        bits.append(f"{facts['n_train']} training pairs")
    if run.n_test:
        bits.append(f"{run.n_test} held-out pairs")
    if run.unseen is not None:
        bits.append(f"{run.unseen.n_pairs} from unseen frames")
    return ", ".join(bits)


def _faithfulness_table(run: Discovery) -> str:
    if run.evaluation is None:
        return "<p>not measured</p>"
    headers = ["pairs", "", "KL(full || ·)", "task metric", "recovered", "accuracy"]
    splits = run.test_sets()
    rows = []
    for name, own, rand in splits:
        rows += [
            [name, label, _num(e.kl), _num(e.metric_circuit), _recovered(e.recovered),
             _num(e.accuracy_circuit)]
            for label, e in (("circuit", own), ("random circuit, same size", rand))
        ]  # fmt: skip
        rows.append([name, "full model", "0", _num(own.metric_full), "1", _num(own.accuracy_full)])
        rows.append([name, "empty circuit (all ablated)", "", _num(own.metric_empty), "0", ""])
    return _table(headers, rows)


def _recovered(value: float) -> str:
    if value is None or math.isnan(value) or value <= OVERSHOOT:
        return _num(value)
    return f"{_num(value)} (overshoots the model)"


def _size_table(circuit: Circuit) -> str:
    """Kept nodes per granularity; for a fit that recorded its size, the target and how much
    the size still moved over the last fifth of the steps."""
    ends = {row.granularity: row for row in settling(circuit)}
    rows = []
    for g in circuit.dims.available():
        row = [
            g + ("" if g in circuit.granularities else " (not pruned)"),
            str(circuit.n_kept(g)),
            str(circuit.n_total(g)),
            f"{100 * circuit.fraction_kept(g):.2f}%",
        ]
        if ends:
            end = ends.get(g)
            target = None if end is None else end.target
            row.append("" if target is None else f"{100 * target:.2f}%")
            row.append("" if end is None else f"{100 * end.change:.1f}%")
        rows.append(row)
    headers = ["granularity", "kept", "total", "kept %"]
    if ends:
        headers += ["target", "size moved over the last fifth of the fit"]
    return _table(headers, rows)


def _sizing_table(circuit: Circuit) -> str:
    """The fits of the size search, each measured on the validation pairs against the level."""
    level = circuit.config.get("faithfulness") or {}
    low, high = level.get("recovered", ("?", "?"))
    rungs = circuit.fit_info["sizing"]
    outcome = (
        "the smallest circuit that met it is this page's"
        if any(r["met"] for r in rungs)
        else "none met it, and this page's is the most faithful one"
    )
    lead = (
        "<p class='lead'>The size follows the task: the fit at the default targets was "
        f"measured on {circuit.fit_info.get('n_validation')} validation pairs against the "
        f"faithfulness level (KL at most {level.get('kl', '?')} of the empty circuit's, "
        f"recovered in [{low}, {high}]); shorter fits continued from it at half and a quarter "
        f"of the targets if it met the level, at twice and four times if not; {outcome}.</p>"
    )
    chosen = circuit.fit_info.get("target_scale")
    rows = [
        [
            f"x{r['scale']:g}" + (" (this circuit)" if r["scale"] == chosen else ""),
            f"{100 * r['size']:.2f}%",
            _num(r["kl_share"]),
            _num(r["recovered"]),
            "yes" if r["met"] else "no",
        ]
        for r in rungs
    ]
    headers = ["targets", "nodes kept", "KL / empty circuit's", "recovered", "met the level"]
    return lead + _table(headers, rows)


def _facts(run: Discovery) -> list[list[str]]:
    metrics = run.to_dict()
    skip = {"circuit", "random_circuit_same_size", "faithfulness_curve", "edges"}
    skip |= {"circuit_unseen_frames", "random_circuit_unseen_frames"}
    return [
        [key, _num(value) if isinstance(value, float) else html.escape(str(value))]
        for key, value in metrics.items()
        if key not in skip and not isinstance(value, dict | list)
    ]


def _num(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}" if value == 0 or abs(value) >= 1000 else f"{value:.4f}"


def _table(
    headers: list[str], rows: list[list[str]], sortable: bool = False, escape: bool = True
) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td class='text'>{html.escape(c) if escape else c}</td>"
            if not _is_number(c)
            else f"<td>{c}</td>"
            for c in row
        )
        + "</tr>"
        for row in rows
    )
    cls = " class='sortable'" if sortable else ""
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
