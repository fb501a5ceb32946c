"""Time and peak memory of one training step: ours against the floor and edge-level peers.

    python -m benchmarks.perf --json runs/perf.json            # SmolLM2 and GPT-2-small shape
    python -m benchmarks.perf --models gpt2-small --batch 8 --seq 16
    python -m benchmarks.perf --models smollm2 smollm2-bridge --peers --ours ours
    python -m benchmarks.perf --models gpt2-small --peers eap  # no auto-circuit venv
    python -m benchmarks.perf --device cuda --models gpt2-small gpt2-medium \
        --ours ours ours-recompute ours-bf16

The floor is what any method that learns from clean/corrupted pairs must spend: one no-grad
forward of the corrupted prompts, one forward and backward of the clean prompts (no masks,
frozen weights; the gradient flows back to the embeddings). Ours is one `CircuitPruner`
step with all five granularities, timed around the steps of a prepared run (the
once-per-fit work excluded); ``ours-recompute`` is the same with
``gradient_checkpointing=True`` and ``ours-bf16`` with ``bf16=True`` (for GPUs).

Peers, on the same model and batch:

* ``eap``: edge attribution patching (``peers/eap.py``), one scoring pass per step.
* ``auto-circuit``: auto-circuit's subnetwork probing (edge-level Hard Concrete masks), one
  training step, timed like ours. auto-circuit needs TransformerLens 2.x, so it runs in its
  own venv (``.peer-venv``, created on first use; ``--no-install`` only uses an existing one)
  through ``peers/auto_circuit_sp.py``. When it cannot be installed or run, the row records
  why instead.

Each measurement runs in a fresh process; memory is the peak over what the process holds
once the model is loaded and the peak counter reset: resident set (``VmHWM`` after
``/proc/self/clear_refs``) on CPU, `torch.cuda.max_memory_allocated` on GPU.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.side_venv import ensure_venv
from benchmarks.side_venv import python as venv_python

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODELS = ("smollm2", "gpt2-small")
OURS = {
    "ours": {},
    "ours-recompute": {"gradient_checkpointing": True},
    "ours-bf16": {"bf16": True},
}
"""Our step under each set of CircuitPruner options benchmarked."""
LOCAL_MODES = ("floor", *OURS, "eap")
PEERS = ("eap", "auto-circuit")
PEER_VENV = ROOT / ".peer-venv"
PEER_MODULE = "benchmarks.peers.auto_circuit_sp"
PEER_REQUIREMENTS = ("auto-circuit==1.0.1", "transformer-lens>=2,<3", "numpy<2", "pyarrow<20")
"""auto-circuit 1.0.1 uses TransformerLens 2.x APIs; TL 2.x needs numpy 1.x and so an older
pyarrow (pulled in by datasets)."""
PEER_TIMEOUT_S = 1800


@dataclass(frozen=True)
class Shape:
    """A random-weight model of GPT-2's architecture, or with ``llama=True`` Llama's (gated
    SiLU MLP, RMS norm, rotary positions, ``n_key_value_heads`` grouped key/value heads);
    enough to reproduce a model's cost, not its skill."""

    n_layers: int
    d_model: int
    n_heads: int
    d_mlp: int
    d_head: int = 64
    d_vocab: int = 50257
    n_key_value_heads: int | None = None
    llama: bool = False

    @property
    def n_params(self) -> int:
        """Weights of the model (untied embedding and unembedding; norms and biases left out)."""
        kv = self.n_key_value_heads or self.n_heads
        attn = 2 * self.d_model * self.n_heads * self.d_head + 2 * self.d_model * kv * self.d_head
        mlp = (3 if self.llama else 2) * self.d_model * self.d_mlp
        return self.n_layers * (attn + mlp) + 2 * self.d_vocab * self.d_model


SHAPES = {
    "gpt2-small": Shape(12, 768, 12, 3072),
    "gpt2-medium": Shape(24, 1024, 16, 4096),
    "tiny": Shape(2, 64, 4, 256, d_head=16, d_vocab=500),
}


def shape_name(shape: Shape) -> str:
    """A model name that `build` reads back, so any shape can cross a process boundary."""
    return json.dumps(asdict(shape), separators=(",", ":"))


def build(name: str, device: str):
    """The embedded SmolLM2 (``smollm2-bridge``: as a TransformerBridge) or a random model of
    a shape: a HookedTransformer on TransformerLens 3.x, a native bridge on 4.x."""
    from transformer_lens_mgp.testing.tiny import LLAMA_LIKE, build_cfg, model_from_cfg

    if name in ("smollm2", "smollm2-bridge"):
        from transformer_lens_mgp import load_model

        bridge = True if name == "smollm2-bridge" else None
        return load_model(device=device, progress=False, bridge=bridge)
    shape = Shape(**json.loads(name)) if name.startswith("{") else SHAPES[name]
    fields = asdict(shape)
    if fields.pop("llama"):
        kv = shape.n_key_value_heads
        fields.update(LLAMA_LIKE, n_key_value_heads=kv, rotary_dim=shape.d_head)
    else:
        fields.update(act_fn="gelu_new")
    cfg = build_cfg(**fields, n_ctx=1024, device=device, seed=0)
    return model_from_cfg(cfg)


def tokens(d_vocab: int, batch: int, seq: int):
    """Random prompts corrupted at the middle position; the same in every venv and process."""
    import torch

    g = torch.Generator().manual_seed(0)
    vocab = min(d_vocab, 5000)
    clean = torch.randint(0, vocab, (batch, seq), generator=g)
    corrupted = clean.clone()
    corrupted[:, seq // 2] = torch.randint(0, vocab, (batch,), generator=g)
    answers = torch.randint(0, vocab, (batch,), generator=g)
    return clean, corrupted, answers, (answers + 1) % vocab


def pairs(model, batch: int, seq: int):
    from transformer_lens_mgp import PairedDataset

    clean, corrupted, answers, wrong = tokens(model.cfg.d_vocab, batch, seq)
    return PairedDataset(clean, corrupted, answers, wrong_answer_tokens=wrong)


def measure(name: str, mode: str, batch: int, seq: int, steps: int, device: str) -> dict:
    """Run in a child process: seconds per step and peak memory over the loaded model."""
    import torch

    model = build(name, device)
    data = pairs(model, batch, seq).to(device)
    cuda = device.startswith("cuda")
    base = start_peak(cuda)
    extra = {}
    if mode in OURS:
        seconds = _ours_seconds(model, data, batch, steps, cuda, OURS[mode])
    elif mode == "floor":
        seconds = time_steps(_floor_step(model, data), steps, cuda)
    elif mode == "eap":
        step, extra = _eap_step(model, data)
        seconds = time_steps(step, steps, cuda)
    else:
        raise ValueError(f"unknown mode {mode!r}; choose from {LOCAL_MODES}")
    return {
        "model": name,
        "mode": mode,
        "batch": batch,
        "seq": seq,
        "seconds_per_step": seconds,
        "peak_mib": peak_mib(cuda) - base,
        "device": torch.cuda.get_device_name() if cuda else f"cpu x{torch.get_num_threads()}",
        **extra,
    }


def time_steps(step, steps: int, cuda: bool) -> float:
    """Seconds per call of ``step`` after one warm-up call."""
    step()
    sync(cuda)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(cuda)
    return (time.perf_counter() - start) / steps


def _floor_step(model, data):
    import torch

    rows = torch.arange(len(data.answer_tokens), device=data.clean_tokens.device)

    def start_graph(embedding, *, hook):
        return embedding.detach().requires_grad_(True)

    def step():
        with torch.no_grad():
            model(data.corrupted_tokens)
        with model.hooks(fwd_hooks=[("hook_embed", start_graph)]):
            logits = model(data.clean_tokens)[rows, -1]
            logits.log_softmax(-1)[rows, data.answer_tokens].sum().backward()

    for p in model.parameters():
        p.requires_grad_(False)
    return step


def _ours_seconds(model, data, batch: int, steps: int, cuda: bool, options: dict) -> float:
    """Seconds per training step, timed around the steps themselves (the once-per-fit work,
    the full model's answers and the empty circuit's KL, happens before the clock starts)."""
    from transformer_lens_mgp import CircuitPruner
    from transformer_lens_mgp.core.model_api import model_dims
    from transformer_lens_mgp.training.run import PruningRun

    pruner = CircuitPruner(model, **options, steps=1 + steps, batch_size=batch)
    dims = model_dims(model)
    run = PruningRun(model, pruner.config.resolved(dims), dims, data)
    with pruner.execution():
        run.prepare()
        return time_steps(run.step, steps, cuda)


def _eap_step(model, data):
    from benchmarks.peers import eap

    graph = eap.prepare(model)

    def step():
        eap.edge_scores(model, graph, data.clean_tokens, data.corrupted_tokens, data.answer_tokens)

    return step, {"edges": graph.n_edges}


def start_peak(cuda: bool) -> float:
    """Start measuring the peak from now (MiB in use now is returned as the base): loading a
    model can peak far above what it then holds, and that peak is not the step's."""
    import torch

    if cuda:
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets VmHWM to VmRSS
        return _proc_status_mib("VmRSS")
    except OSError:  # no procfs: the process's peak so far is the best base there is
        return peak_mib(cuda)


def peak_mib(cuda: bool) -> float:
    """Peak memory since `start_peak`: allocated tensors on a GPU, resident set on a CPU."""
    import torch

    if cuda:
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        return _proc_status_mib("VmHWM")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _proc_status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise OSError(f"no {field} in /proc/self/status")


def sync(cuda: bool) -> None:
    import torch

    if cuda:
        torch.cuda.synchronize()


# --- the parent process: one child per measurement -------------------------------------------


def run_one(name: str, mode: str, batch: int, seq: int, steps: int, device: str) -> dict:
    """Measure in a fresh process, so that its peak memory is this measurement's alone."""
    cmd = [sys.executable, "-m", "benchmarks.perf", "--one", name, mode, str(batch), str(seq)]
    return _run_json([*cmd, "--steps", str(steps), "--device", device])


def run_auto_circuit(
    name: str, batch: int, seq: int, steps: int, device: str, install: bool = True
) -> dict:
    """auto-circuit's subnetwork probing in its venv, or why it could not be measured."""
    reason = ensure_peer_venv(install)
    if reason:
        return {"reason": reason}
    cmd = [str(venv_python(PEER_VENV)), "-m", PEER_MODULE, name, str(batch), str(seq)]
    return _run_json([*cmd, "--steps", str(steps), "--device", device])


def ensure_peer_venv(install: bool) -> str | None:
    """Create the auto-circuit venv unless it is there; returns why not, or None."""
    reason = ensure_venv(PEER_VENV, [["torch==2.13.0"], list(PEER_REQUIREMENTS)], install)
    return reason and reason.replace("side environment", "auto-circuit venv")


def _run_json(cmd: list[str]) -> dict:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=PEER_TIMEOUT_S, cwd=ROOT)
    except (OSError, subprocess.TimeoutExpired) as err:
        return {"reason": str(err)}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return {"reason": _tail(done.stderr) or f"exit status {done.returncode}"}
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError:
        return {"reason": f"no JSON result; last output: {_tail(lines[-1], 300)}"}


def _tail(text: str, chars: int = 1500) -> str:
    return text.strip()[-chars:]


def measure_row(name: str, batch: int, seq: int, args) -> dict:
    """Floor, ours and each requested peer on one (model, batch, seq), with their ratios."""
    row = {"model": name, "batch": batch, "seq": seq}
    for mode in ("floor", *args.ours, *[p for p in args.peers if p in LOCAL_MODES]):
        row[mode] = run_one(name, mode, batch, seq, args.steps, args.device)
    if "auto-circuit" in args.peers:
        install = not args.no_install
        row["auto-circuit"] = run_auto_circuit(name, batch, seq, args.steps, args.device, install)
    row["ratios"] = ratios(row)
    return row


def ratios(row: dict) -> dict:
    """ours/floor for each of our variants, and peer/ours for each peer and variant measured,
    for time and memory."""
    ours = [mode for mode in OURS if mode in row]
    pairs = [(o, "floor") for o in ours] + [(p, o) for p in PEERS if p in row for o in ours]
    found = {
        f"{top}/{bottom}": ratio(row.get(top, {}), row.get(bottom, {})) for top, bottom in pairs
    }
    return {key: value for key, value in found.items() if value}


def ratio(result: dict, other: dict) -> dict:
    """Time and memory of one measurement over another; empty if either is missing."""
    if "seconds_per_step" not in result or "seconds_per_step" not in other:
        return {}
    return {
        "time": result["seconds_per_step"] / other["seconds_per_step"],
        "memory": result["peak_mib"] / max(other["peak_mib"], 1e-9),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--batch", nargs="+", type=int, default=[8, 16])
    parser.add_argument("--seq", nargs="+", type=int, default=[16, 32])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--peers", nargs="*", choices=PEERS, default=list(PEERS))
    parser.add_argument(
        "--ours",
        nargs="+",
        choices=list(OURS),
        default=["ours", "ours-recompute"],
        help="which of our variants to measure (ours-bf16 is meant for GPUs)",
    )
    parser.add_argument("--no-install", action="store_true", help="never create the peer venv")
    parser.add_argument("--json", type=Path, default=Path("runs/perf.json"))
    parser.add_argument(
        "--one", nargs=4, metavar=("MODEL", "MODE", "BATCH", "SEQ"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.one:
        name, mode, batch, seq = args.one
        result = measure(name, mode, int(batch), int(seq), args.steps, args.device)
        print(json.dumps(result))
        return

    rows = []
    for name in args.models:
        for batch in args.batch:
            for seq in args.seq:
                rows.append(measure_row(name, batch, seq, args))
                print(f"measured {name} batch {batch} seq {seq}", file=sys.stderr, flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"rows": rows}, indent=2))
    print_tables(rows)
    print(f"wrote {args.json}")


def print_tables(rows: list[dict]) -> None:
    """Each method against the floor, each peer against each of our variants (Markdown), then
    why any measurement is missing."""
    print("\n| model | batch | seq | method | s / step | × floor | peak MiB | × floor |")
    print("|---" * 8 + "|")
    for row in rows:
        for mode in ("floor", *OURS, *PEERS):
            result = row.get(mode, {})
            if "seconds_per_step" not in result:
                continue
            vs_floor = ratio(result, row.get("floor", {}))
            cells = [row["model"], str(row["batch"]), str(row["seq"]), mode]
            cells += [f"{result['seconds_per_step']:.3f}", _cell(vs_floor.get("time"), "{:.2f}")]
            cells += [f"{result['peak_mib']:.0f}", _cell(vs_floor.get("memory"), "{:.2f}")]
            print("| " + " | ".join(cells) + " |")
    peer_rows = [(row, key) for row in rows for key in row["ratios"] if key.split("/")[0] in PEERS]
    if peer_rows:
        print("\n| model | batch | seq | peer / ours | time | memory |")
        print("|---" * 6 + "|")
        for row, key in peer_rows:
            r = row["ratios"][key]
            cells = [row["model"], str(row["batch"]), str(row["seq"]), key]
            print("| " + " | ".join(cells + [f"{r['time']:.2f}", f"{r['memory']:.2f}"]) + " |")
    print_bridge_table(rows)
    for row in rows:
        for mode in ("floor", *OURS, *PEERS):
            if "reason" in row.get(mode, {}):
                last = row[mode]["reason"].strip().splitlines()[-1][:300]
                print(f"\n{mode} on {row['model']} {row['batch']}x{row['seq']}: {last}")


def print_bridge_table(rows: list[dict]) -> None:
    """Each ``<model>-bridge`` row's step over the same model's HookedTransformer step."""
    by_key = {(row["model"], row["batch"], row["seq"]): row for row in rows}
    pairs = [
        (row, by_key[(row["model"].removesuffix("-bridge"), row["batch"], row["seq"])])
        for row in rows
        if row["model"].endswith("-bridge")
        and (row["model"].removesuffix("-bridge"), row["batch"], row["seq"]) in by_key
    ]
    if not pairs:
        return
    print("\n| model | batch | seq | method | bridge / HookedTransformer time | memory |")
    print("|---" * 6 + "|")
    for bridge, hooked in pairs:
        for mode in ("floor", *OURS):
            r = ratio(bridge.get(mode, {}), hooked.get(mode, {}))
            if r:
                cells = [hooked["model"], str(bridge["batch"]), str(bridge["seq"]), mode]
                print("| " + " | ".join(cells + [f"{r['time']:.2f}", f"{r['memory']:.2f}"]) + " |")


def _cell(value, unit: str) -> str:
    return "–" if value is None else unit.format(value)


if __name__ == "__main__":
    main()
