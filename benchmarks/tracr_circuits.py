"""Pruning on tracr-compiled models, scored against the compiled program's components.

    python -m benchmarks.tracr_circuits --json runs/tracr.json

tracr (Lindner et al. 2023) compiles a RASP program into transformer weights, so which heads,
MLPs and MLP hidden units the program uses is known: those whose weights are not all zero
(the node-level ground truth the ACDC paper uses for its tracr tasks). tracr needs JAX, so
the programs are compiled in a separate virtual environment (created here on first use,
``pip install tracr-pypi``) and exported as plain arrays; the weights are then loaded into
a bidirectional, norm-free HookedTransformer whose outputs are checked against tracr's.

Pruned nodes are zero-ablated, as in the ACDC paper's tracr experiments: with interchange
ablation, components that compute something every input shares (the sequence length, for
inputs of equal length) would rightly look unneeded.

Programs: ``reverse`` (categorical output, scored at a random position per pair) and
``frac_prevs`` (a numeric output, the running fraction of "x" tokens; its value v is scored
through a logistic link as the logits (10 v, -10 v), since pruning compares distributions).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import numpy as np

from benchmarks.side_venv import ensure_venv
from benchmarks.side_venv import python as venv_python

ROOT = Path(__file__).resolve().parents[1]
TRACR_VENV = ROOT / ".tracr-venv"
PROGRAMS = ("reverse", "frac_prevs")
MAX_SEQ_LEN = 5
LOGIT_SCALE = 10.0
"""tracr reads its output off residual dimensions holding 0/1 (or the value); scaled up, the
readout is a confident distribution, as a trained model's would be, with the same argmax."""


# --- run inside the tracr environment -------------------------------------------------------


def export(folder: Path) -> None:
    """Compile the programs and write weights (npz) and metadata (json) per program."""
    from tracr.compiler import compiling, lib
    from tracr.rasp import rasp

    programs = {
        "reverse": (lib.make_reverse(rasp.tokens), {"a", "b", "c"}),
        "frac_prevs": (
            lib.make_frac_prevs((rasp.tokens == "x").named("is_x")),
            {"w", "x", "y", "z"},
        ),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, (program, vocab) in programs.items():
        model = compiling.compile_rasp_to_model(
            program, vocab=vocab, max_seq_len=MAX_SEQ_LEN, compiler_bos="BOS"
        )
        arrays = {
            f"{module}/{key}": np.asarray(value)
            for module, params in model.params.items()
            for key, value in params.items()
        }
        labels = list(model.residual_labels)
        output = model.output_encoder
        out_map = getattr(output, "encoding_map", None)
        rng = np.random.default_rng(0)
        inputs = [["BOS", *rng.choice(sorted(vocab), size=MAX_SEQ_LEN).tolist()] for _ in range(32)]
        decoded = [model.apply(x).decoded for x in inputs]
        meta = {
            "config": {
                "n_layers": model.model_config.num_layers,
                "n_heads": model.model_config.num_heads,
                "d_head": model.model_config.key_size,
                "d_mlp": model.model_config.mlp_hidden_size,
            },
            "residual_labels": labels,
            "input_map": model.input_encoder.encoding_map,
            "output_map": out_map,
            "output_label": program.label,
            "samples": {"inputs": inputs, "decoded": decoded},
        }
        np.savez(folder / f"{name}.npz", **arrays)
        (folder / f"{name}.json").write_text(json.dumps(meta, default=float))


def ensure_exported(folder: Path) -> str | None:
    """Compile the programs in the tracr venv; returns why not, or None on success."""
    if all((folder / f"{p}.npz").is_file() for p in PROGRAMS):
        return None
    reason = ensure_venv(TRACR_VENV, [["tracr-pypi"]])
    if reason:
        return reason
    done = subprocess.run(
        [str(venv_python(TRACR_VENV)), "-m", "benchmarks.tracr_circuits", "--export", str(folder)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if done.returncode != 0:
        return f"exporting the tracr programs failed: {done.stderr[-2000:]}"
    return None


# --- run in the project's environment -------------------------------------------------------


def hooked_model(folder: Path, name: str):
    """The compiled program as a HookedTransformer, plus its metadata."""
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    meta = json.loads((folder / f"{name}.json").read_text())
    arrays = dict(np.load(folder / f"{name}.npz"))
    c = meta["config"]
    labels = meta["residual_labels"]
    d_model = len(labels)
    out_label = meta["output_label"]
    if meta["output_map"]:  # categorical: one residual dimension per output value
        order = sorted(meta["output_map"], key=meta["output_map"].get)
        columns = [labels.index(f"{out_label}:{value}") for value in order]
        w_u = np.zeros((d_model, len(columns)), dtype=np.float32)
        w_u[columns, range(len(columns))] = LOGIT_SCALE
    else:  # numeric: the value v as the logits (v, -v)
        column = labels.index(out_label)
        w_u = np.zeros((d_model, 2), dtype=np.float32)
        w_u[column] = [LOGIT_SCALE, -LOGIT_SCALE]
    cfg = HookedTransformerConfig(
        n_layers=c["n_layers"],
        d_model=d_model,
        n_ctx=MAX_SEQ_LEN + 1,
        d_head=c["d_head"],
        n_heads=c["n_heads"],
        d_mlp=c["d_mlp"],
        d_vocab=len(meta["input_map"]),
        d_vocab_out=w_u.shape[1],
        act_fn="relu",
        normalization_type=None,
        attention_dir="bidirectional",
    )
    model = HookedTransformer(cfg)
    n, h = c["n_heads"], c["d_head"]

    def t(x):
        return torch.tensor(np.asarray(x), dtype=torch.float32)

    state = {"embed.W_E": t(arrays["token_embed/embeddings"]), "unembed.W_U": t(w_u)}
    state["pos_embed.W_pos"] = t(arrays["pos_embed/embeddings"])
    state["unembed.b_U"] = torch.zeros(w_u.shape[1])
    for layer in range(c["n_layers"]):
        p = f"transformer/layer_{layer}"
        for ours, theirs in (("Q", "query"), ("K", "key"), ("V", "value")):
            w = arrays[f"{p}/attn/{theirs}/w"].reshape(d_model, n, h).transpose(1, 0, 2)
            state[f"blocks.{layer}.attn.W_{ours}"] = t(w)
            state[f"blocks.{layer}.attn.b_{ours}"] = t(arrays[f"{p}/attn/{theirs}/b"].reshape(n, h))
        state[f"blocks.{layer}.attn.W_O"] = t(arrays[f"{p}/attn/linear/w"].reshape(n, h, d_model))
        state[f"blocks.{layer}.attn.b_O"] = t(arrays[f"{p}/attn/linear/b"])
        state[f"blocks.{layer}.mlp.W_in"] = t(arrays[f"{p}/mlp/linear_1/w"])
        state[f"blocks.{layer}.mlp.b_in"] = t(arrays[f"{p}/mlp/linear_1/b"])
        state[f"blocks.{layer}.mlp.W_out"] = t(arrays[f"{p}/mlp/linear_2/w"])
        state[f"blocks.{layer}.mlp.b_out"] = t(arrays[f"{p}/mlp/linear_2/b"])
    model.load_state_dict(model.fill_missing_keys(state), strict=True)
    return model.eval(), meta


def ground_truth(model) -> dict:
    """Components the program uses: heads and hidden units that read and write something."""
    import torch

    heads = torch.stack(
        [
            (b.attn.W_O.abs().sum((-1, -2)) > 0) & (b.attn.W_V.abs().sum((-1, -2)) > 0)
            for b in model.blocks
        ]
    )
    neurons = torch.stack(
        [(b.mlp.W_out.abs().sum(-1) > 0) & (b.mlp.W_in.abs().sum(0) > 0) for b in model.blocks]
    )
    dims = torch.stack(
        [(b.attn.W_O.abs().sum(-1) > 0) & (b.attn.W_V.abs().sum(-2) > 0) for b in model.blocks]
    )
    return {
        "block": heads.any(-1) | neurons.any(-1),
        "head": heads,
        "attn_neuron": dims & heads[..., None],
        "mlp": neurons.any(-1),
        "mlp_neuron": neurons,
    }


def dataset(model, meta, name: str, n: int = 256, seed: int = 0):
    import torch

    from transformer_lens_mgp import PairedDataset

    g = torch.Generator().manual_seed(seed)
    vocab = [v for k, v in meta["input_map"].items() if k not in ("BOS", "compiler_pad")]
    bos = meta["input_map"]["BOS"]
    pick = torch.tensor(vocab)
    clean = torch.cat(
        [torch.full((n, 1), bos), pick[torch.randint(len(vocab), (n, MAX_SEQ_LEN), generator=g)]], 1
    )
    corrupted = torch.cat(
        [torch.full((n, 1), bos), pick[torch.randint(len(vocab), (n, MAX_SEQ_LEN), generator=g)]], 1
    )
    positions = torch.randint(1, MAX_SEQ_LEN + 1, (n,), generator=g)
    with torch.no_grad():
        logits = model(clean)[torch.arange(n), positions]
    top2 = logits.topk(2, -1).indices
    return PairedDataset(
        clean_tokens=clean,
        corrupted_tokens=corrupted,
        answer_tokens=top2[:, 0],
        wrong_answer_tokens=top2[:, 1],
        answer_positions=positions,
        name=f"tracr-{name}",
    )


def check_against_tracr(model, meta) -> float:
    """Share of tracr's decoded sample outputs the converted model reproduces."""
    import torch

    tokens = torch.tensor(
        [[meta["input_map"][x] for x in row] for row in meta["samples"]["inputs"]]
    )
    with torch.no_grad():
        logits = model(tokens)[:, 1:]
    decoded = [row[1:] for row in meta["samples"]["decoded"]]
    if meta["output_map"]:
        inverse = {v: k for k, v in meta["output_map"].items()}
        ours = [[inverse[int(i)] for i in row] for row in logits.argmax(-1)]
        hits = [
            a == b
            for r1, r2 in zip(ours, decoded, strict=True)
            for a, b in zip(r1, r2, strict=True)
        ]
    else:
        ours = logits[..., 0].numpy() / LOGIT_SCALE
        hits = [
            abs(a - b) < 1e-3
            for r1, r2 in zip(ours, decoded, strict=True)
            for a, b in zip(r1, r2, strict=True)
        ]
    return float(np.mean(hits))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, default=Path("runs/tracr"))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--json", type=Path, default=Path("runs/tracr.json"))
    args = parser.parse_args()
    if args.export is not None:
        export(args.export)
        return

    from benchmarks.ground_truth import confusion
    from transformer_lens_mgp import CircuitPruner, evaluate

    problem = ensure_exported(args.folder)
    if problem is not None:
        print(f"tracr models unavailable: {problem}")
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"error": problem}, indent=2))
        return
    rows = []
    for name in PROGRAMS:
        model, meta = hooked_model(args.folder, name)
        agreement = check_against_tracr(model, meta)
        truth = ground_truth(model)
        for seed in args.seeds:
            data = dataset(model, meta, name, seed=seed)
            start = time.perf_counter()
            circuit = CircuitPruner(model, seed=seed, ablation="zero").fit(data, progress=False)
            seconds = time.perf_counter() - start
            kl = evaluate(model, circuit, data).kl
            for g, live in truth.items():
                row = {"program": name, "seed": seed, "granularity": g, "agreement": agreement}
                row.update(confusion(circuit.kept(g), live, ~live))
                row.update(n_live=int(live.sum()), n_total=live.numel(), kl=kl, seconds=seconds)
                rows.append(row)
    print("| program | granularity | components used | precision | recall | F1 | KL |")
    print("|---|---|---|---|---|---|---|")
    for name in PROGRAMS:
        for g in ("block", "head", "attn_neuron", "mlp", "mlp_neuron"):
            group = [r for r in rows if r["program"] == name and r["granularity"] == g]
            mean = {
                k: float(np.mean([r[k] for r in group]))
                for k in ("precision", "recall", "f1", "kl")
            }
            scores = " | ".join(f"{mean[k]:.2f}" for k in ("precision", "recall", "f1"))
            used = f"{group[0]['n_live']} / {group[0]['n_total']}"
            print(f"| {name} | {g} | {used} | {scores} | {mean['kl']:.3f} |")
    print(
        "converted models reproduce tracr's outputs on:",
        {r["program"]: r["agreement"] for r in rows},
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"rows": rows}, indent=2))


if __name__ == "__main__":
    main()
