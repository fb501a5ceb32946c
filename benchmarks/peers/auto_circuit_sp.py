"""One training step of auto-circuit's subnetwork probing: learned Hard Concrete edge masks.

    .peer-venv/bin/python -m benchmarks.peers.auto_circuit_sp gpt2-small 8 16 --steps 3

Runs in the venv that ``perf.py`` creates (auto-circuit needs TransformerLens 2.x) on the same
random-weight model and prompts as ``perf.py``. The model is made patchable as in
auto-circuit's own experiments: factorized edges, separate q/k/v inputs, the last position
scored; one batch per epoch, so an epoch is a step. Seconds per step is the difference
between runs of 2 and 2 + k epochs (excluding the clean logits and the ablation activations
computed once per run); memory is the peak over the loaded model, measured as in ``perf.py``,
so making the model patchable counts. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from importlib.metadata import version

from benchmarks import perf


def patchable(model, device: str):
    """Edge-level patching as auto-circuit's experiments set it up: per-head q/k/v inputs."""
    import torch
    from auto_circuit.utils.graph_utils import patchable_model

    model.set_use_attn_result(True)
    model.set_use_split_qkv_input(True)
    model.set_use_hook_mlp_in(True)
    for p in model.parameters():
        p.requires_grad_(False)
    return patchable_model(
        model,
        factorized=True,
        slice_output="last_seq",
        separate_qkv=True,
        device=torch.device(device),
    )


def loader(d_vocab: int, batch: int, seq: int):
    """perf.py's prompts as one auto-circuit batch."""
    from auto_circuit.data import PromptDataLoader, PromptDataset

    clean, corrupted, answers, wrong = perf.tokens(d_vocab, batch, seq)
    dataset = PromptDataset(clean, corrupted, list(answers[:, None]), list(wrong[:, None]))
    return PromptDataLoader(dataset, seq_len=None, diverge_idx=0, batch_size=batch)


def expose_adam_module() -> None:
    """auto-circuit 1.0.1 calls ``torch.optim.adam.Adam``; torch 2.13 removed the attribute
    ``torch.optim.adam`` (the module is still imported), so put it back."""
    import torch.optim

    torch.optim.adam = sys.modules["torch.optim.adam"]


def measure(name: str, batch: int, seq: int, steps: int, device: str) -> dict:
    import torch
    from auto_circuit.prune_algos.subnetwork_probing import subnetwork_probing_prune_scores

    expose_adam_module()
    cuda = device.startswith("cuda")
    model = perf.build(name, device)
    base = perf.start_peak(cuda)
    wrapped = patchable(model, device)
    data = loader(model.cfg.d_vocab, batch, seq)

    def fit(epochs: int) -> float:
        perf.sync(cuda)
        start = time.perf_counter()
        subnetwork_probing_prune_scores(wrapped, data, None, epochs=epochs)
        perf.sync(cuda)
        return time.perf_counter() - start

    fit(1)  # warm-up
    seconds = (fit(2 + steps) - fit(2)) / steps
    return {
        "model": name,
        "mode": "auto-circuit",
        "batch": batch,
        "seq": seq,
        "seconds_per_step": seconds,
        "peak_mib": perf.peak_mib(cuda) - base,
        "edges": wrapped.n_edges,
        "device": torch.cuda.get_device_name() if cuda else f"cpu x{torch.get_num_threads()}",
        "versions": {pkg: version(pkg) for pkg in ("auto-circuit", "transformer-lens", "torch")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("batch", type=int)
    parser.add_argument("seq", type=int)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.model == "smollm2":
        raise SystemExit("SmolLM2 is built by transformer_lens_mgp, not in auto-circuit's venv")
    print(json.dumps(measure(args.model, args.batch, args.seq, args.steps, args.device)))


if __name__ == "__main__":
    main()
