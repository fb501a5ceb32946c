"""The report as a reader sees it: rendered in headless Chromium, no JavaScript error, every
figure drawn, and a screenshot written. Chromium is installed with apt when missing."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import networkx
import pytest

from transformer_lens_mgp import Circuit, ModelDims
from transformer_lens_mgp.analysis.discovery import measure
from transformer_lens_mgp.analysis.run_folder import write_run_folder
from transformer_lens_mgp.core.model_api import has_hooked_transformer
from transformer_lens_mgp.testing.planted import planted_circuit

pytestmark = pytest.mark.slow

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
EDGES = has_hooked_transformer()
"""Edge scores need a HookedTransformer (TransformerLens 3.9); on 4.x the report has no graph."""

PROBE = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message)));
const __consoleError = console.error;
console.error = (...args) => { window.__errors.push(args.join(' ')); __consoleError(...args); };
window.addEventListener('load', () => setTimeout(() => {
  const figures = [...document.querySelectorAll('.plotly-graph-div')];
  const drawn = figures.filter(f => f._fullLayout && f.querySelector('svg.main-svg'));
  const graph = figures.find(f => f._fullLayout && f._fullLayout.title.text === 'the circuit');
  const heading = [...document.querySelectorAll('h2')]
    .find(h => h.textContent === 'Roles of the top heads');
  let table = heading;
  while (table && table.tagName !== 'TABLE') table = table.nextElementSibling;
  const out = document.createElement('pre');
  out.id = 'probe';
  out.textContent = JSON.stringify({
    figures: figures.length, drawn: drawn.length, errors: window.__errors,
    graph_points: graph ? graph.querySelectorAll('.scatterlayer .point').length : 0,
    graph_edges: graph ? graph.querySelectorAll('.scatterlayer .js-line').length : 0,
    graph_slider: graph ? graph.querySelectorAll('.slider-container').length : 0,
    role_rows: table ? [...table.tBodies[0].rows].filter(r => r.offsetHeight > 0).length : 0,
  });
  document.body.appendChild(out);
}, 1000));
</script>"""


def chromium() -> str:
    """A headless-capable Chromium, installed from Debian's archive when missing (as root)."""
    found = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if found:
        return found
    if os.name != "posix" or os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("no Chromium here and no apt-get as root to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "install", "-y", "-q", "chromium"], ["apt-get", "update", "-q"]):
        subprocess.run(command, env=env, capture_output=True, timeout=900, check=False)
        if shutil.which("chromium"):
            return shutil.which("chromium")
    result = subprocess.run(
        ["apt-get", "install", "-y", "-q", "chromium"],
        env=env, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    if not shutil.which("chromium"):
        pytest.skip(f"Chromium could not be installed: {result.stderr.strip()[-300:]}")
    return shutil.which("chromium")


def headless(browser: str, tmp_path, *args: str) -> subprocess.CompletedProcess:
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=15000",
    ]  # fmt: skip
    return subprocess.run(
        [browser, *flags, *args], capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A report with every section: node effects, head and neuron profiles, faithfulness
    curve, edge graph, training curves."""
    planted = planted_circuit("standard", seed=2, n=40)
    dims = ModelDims.from_cfg(planted.model.cfg)
    kept = {g: planted.live[g] | planted.dead[g] for g in ("attn_neuron", "mlp_neuron")}
    circuit = Circuit.from_kept(dims, kept, history={"loss": [1.0, 0.4], "kl": [0.5, 0.2]})
    data = planted.dataset.with_roles(("END",), planted.dataset.answer_positions[:, None])
    run = measure(planted.model, circuit, data, curve=True, edges=EDGES, node_effects=True)
    out = tmp_path_factory.mktemp("browser")
    write_run_folder(out, run, title="planted circuit")
    return out / "report.html"


def test_report_renders_without_errors_and_draws_every_figure(report, tmp_path):
    browser = chromium()
    text = report.read_text()
    n_figures = text.count('class="plotly-graph-div"')
    assert n_figures >= 8
    probed = tmp_path / "probed.html"
    probed.write_text(text.replace("<head>", "<head>" + PROBE, 1))
    result = headless(browser, tmp_path, "--dump-dom", probed.as_uri())
    found = re.search(r'<pre id="probe">(.*?)</pre>', result.stdout, re.S)
    assert found, f"the page never finished loading: {result.stderr[-2000:]}"
    probe = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert probe["errors"] == []
    assert probe["figures"] == n_figures and probe["drawn"] == n_figures, probe
    # the circuit graph shows its nodes and, where edges were scored, its edges; the role
    # table shows a row per profiled head
    graph = networkx.node_link_graph(
        json.loads((report.parent / "graph.json").read_text()), edges="links"
    )
    assert probe["graph_points"] == graph.number_of_nodes()
    if EDGES:  # edge scores need a HookedTransformer; without them the graph has nodes only
        assert probe["graph_edges"] > 0 and probe["graph_slider"] == 1
    roles = json.loads((report.parent / "nodes.json").read_text())["roles"]
    assert probe["role_rows"] == len(roles) > 0
    shot = tmp_path / "report.png"
    headless(browser, tmp_path, f"--screenshot={shot}", "--window-size=1280,3000", report.as_uri())
    assert shot.is_file() and shot.stat().st_size > 20_000
    print(f"screenshot: {shot}")
