"""Time and peak memory of one training step: ours against the floor, per model and shape.

    python benchmarks/perf.py --json runs/perf.json            # SmolLM2 and GPT-2-small shape
    python benchmarks/perf.py --models gpt2-small --batch 8 --seq 16

The floor is what any method that learns from clean/corrupted pairs must spend: one no-grad
forward of the corrupted prompts, one forward and backward of the clean prompts (no masks,
frozen weights; the gradient flows back to the embeddings). Ours is one `CircuitPruner`
step with all five granularities, timed as the difference between fits of 2 and 2 + k steps
so that the once-per-fit work is excluded. Each measurement runs in a fresh process; memory
is the rise of the process's peak RSS over its value after loading the model (CPU), or
`torch.cuda.max_memory_allocated` (GPU).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

MODELS = ("smollm2", "gpt2-small")


def build(name: str, device: str):
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    if name == "smollm2":
        from transformer_lens_mgp import load_model

        return load_model(device=device, progress=False)
    shapes = {
        "gpt2-small": dict(n_layers=12, d_model=768, n_heads=12, d_mlp=3072),
        "gpt2-medium": dict(n_layers=24, d_model=1024, n_heads=16, d_mlp=4096),
        "tiny": dict(n_layers=2, d_model=64, n_heads=4, d_mlp=256),
    }
    cfg = HookedTransformerConfig(
        **shapes[name],
        d_head=64 if name != "tiny" else 16,
        d_vocab=50257 if name != "tiny" else 500,
        n_ctx=1024,
        act_fn="gelu_new",
        normalization_type="LN",
        device=device,
        seed=0,
    )
    torch.manual_seed(0)
    return HookedTransformer(cfg).eval()


def pairs(model, batch: int, seq: int):
    import torch

    from transformer_lens_mgp import PairedDataset

    g = torch.Generator().manual_seed(0)
    vocab = min(model.cfg.d_vocab, 5000)
    clean = torch.randint(0, vocab, (batch, seq), generator=g)
    corrupted = clean.clone()
    corrupted[:, seq // 2] = torch.randint(0, vocab, (batch,), generator=g)
    answers = torch.randint(0, vocab, (batch,), generator=g)
    return PairedDataset(clean, corrupted, answers, wrong_answer_tokens=(answers + 1) % vocab)


def measure(name: str, mode: str, batch: int, seq: int, steps: int, device: str) -> dict:
    """Run in a child process: seconds per step and peak memory over the loaded model."""
    import torch

    from transformer_lens_mgp import CircuitPruner

    model = build(name, device)
    data = pairs(model, batch, seq).to(device)
    cuda = device.startswith("cuda")
    base = _peak_mib(cuda)

    if mode == "floor":
        rows = torch.arange(batch, device=device)

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
        step()
        _sync(cuda)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(cuda)
        seconds = (time.perf_counter() - start) / steps
    else:

        def fit(n: int) -> float:
            _sync(cuda)
            start = time.perf_counter()
            CircuitPruner(model).fit(data, steps=n, batch_size=batch, progress=False)
            _sync(cuda)
            return time.perf_counter() - start

        fit(1)  # warm-up
        seconds = (fit(2 + steps) - fit(2)) / steps
    return {
        "model": name,
        "mode": mode,
        "batch": batch,
        "seq": seq,
        "seconds_per_step": seconds,
        "peak_mib": _peak_mib(cuda) - base,
        "device": torch.cuda.get_device_name() if cuda else f"cpu x{torch.get_num_threads()}",
    }


def _peak_mib(cuda: bool) -> float:
    import torch

    if cuda:
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(cuda: bool) -> None:
    import torch

    if cuda:
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--batch", nargs="+", type=int, default=[8, 16])
    parser.add_argument("--seq", nargs="+", type=int, default=[16, 32])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--device", default="cpu")
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

    print("| model | batch | seq | floor step | our step | ratio | floor mem | our mem | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for name in args.models:
        for batch in args.batch:
            for seq in args.seq:
                pair = {}
                for mode in ("floor", "ours"):
                    cmd = [sys.executable, __file__, "--one", name, mode, str(batch), str(seq)]
                    cmd += ["--steps", str(args.steps), "--device", args.device]
                    done = subprocess.run(cmd, capture_output=True, text=True)
                    if done.returncode != 0:
                        pair[mode] = {"error": done.stderr[-1500:]}
                        continue
                    pair[mode] = json.loads(done.stdout.strip().splitlines()[-1])
                rows.append({"model": name, "batch": batch, "seq": seq, **pair})
                _print_row(rows[-1])
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"rows": rows}, indent=2))
    print(f"wrote {args.json}")


def _print_row(row: dict) -> None:
    floor, ours = row.get("floor", {}), row.get("ours", {})
    if "error" in floor or "error" in ours:
        print(f"| {row['model']} | {row['batch']} | {row['seq']} | error: see JSON |")
        return
    t = ours["seconds_per_step"] / floor["seconds_per_step"]
    m = ours["peak_mib"] / max(floor["peak_mib"], 1e-9)
    print(
        f"| {row['model']} | {row['batch']} | {row['seq']} | {floor['seconds_per_step']:.3f} s | "
        f"{ours['seconds_per_step']:.3f} s | {t:.2f} | {floor['peak_mib']:.0f} MiB | "
        f"{ours['peak_mib']:.0f} MiB | {m:.2f} |"
    )


if __name__ == "__main__":
    main()
