"""Everything a GPU session should measure, in one run of under six minutes on one GPU.

    python -m benchmarks.gpu_check --json runs/gpu_check.json

1. The perf benchmark on GPT-2 small and medium shapes: floor, our step in float32 and bf16,
   and edge attribution patching (EAP), each in a fresh process.
2. A full IOI fit on the embedded SmolLM2 with the command line's defaults, its held-out
   numbers and wall time.
3. With more than one GPU, a fit of a GPT-2-medium shape split over two of them (a
   HookedTransformer with ``n_devices=2`` where TransformerLens has one, and a bridge around a
   Hugging Face model loaded with ``device_map``), checked against the same fit on one GPU.

Each part records its error instead of stopping the others; the JSON names the devices.
``--device cpu --models tiny --no-ioi`` runs the same code on a CPU in seconds (the tests do).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

from benchmarks import perf

ROOT = Path(__file__).resolve().parents[1]
IOI_TIMEOUT_S = 240


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--models", nargs="+", default=["gpt2-small", "gpt2-medium"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--no-ioi", action="store_true", help="skip the IOI fit")
    parser.add_argument("--json", type=Path, default=Path("runs/gpu_check.json"))
    args = parser.parse_args()

    import torch

    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        sys.exit("no CUDA device here; run with --device cpu to try the script on a CPU")
    result = {"environment": environment(cuda)}
    save = _saver(args.json, result)
    result["perf"] = guarded(lambda: perf_rows(args))
    save()
    if not args.no_ioi:
        result["ioi"] = guarded(lambda: ioi_fit(args.device))
        save()
    if cuda and torch.cuda.device_count() > 1:
        result["multi_device"] = guarded(lambda: multi_device_fits())
        save()
    print_summary(result)
    print(f"wrote {args.json}")


def environment(cuda: bool) -> dict:
    import importlib.metadata as metadata

    import torch

    devices = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if cuda
        else [f"cpu x{torch.get_num_threads()}"]
    )
    return {
        "devices": devices,
        "torch": torch.__version__,
        "transformer_lens": metadata.version("transformer-lens"),
    }


def perf_rows(args) -> list[dict]:
    """The perf benchmark's rows: floor, ours (float32 and bf16) and EAP per model shape."""
    options = SimpleNamespace(
        ours=["ours", "ours-bf16"], peers=["eap"], steps=args.steps, device=args.device
    )
    return [perf.measure_row(name, args.batch, args.seq, options) for name in args.models]


def ioi_fit(device: str) -> dict:
    """``tl-mgp discover --task ioi`` with its defaults, timed, and its held-out numbers."""
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "transformer_lens_mgp.cli", "discover", "--task", "ioi"]
        command += ["--device", device, "--out", out, "--quiet", "--no-node-effects"]
        start = time.perf_counter()
        done = subprocess.run(
            command, capture_output=True, text=True, cwd=ROOT, timeout=IOI_TIMEOUT_S
        )
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            return {"error": done.stderr.strip()[-2000:], "seconds": seconds}
        metrics = json.loads((Path(out) / "metrics.json").read_text())
    return {"seconds": seconds, "metrics": metrics}


def multi_device_fits() -> dict:
    """One fit split over two GPUs against the same fit on one, for each way of splitting."""
    from transformer_lens_mgp.core.model_api import has_hooked_transformer

    found = {"bridge_device_map": guarded(lambda: compare_split(_bridge_split))}
    if has_hooked_transformer():
        found["hooked_n_devices"] = guarded(lambda: compare_split(_hooked_split))
    return found


def compare_split(build) -> dict:
    """Fit and evaluate on one GPU, then on two; the circuits and KL must agree."""
    import torch

    from transformer_lens_mgp import CircuitPruner, evaluate
    from transformer_lens_mgp.core.model_api import model_dims
    from transformer_lens_mgp.core.placement import Placement

    runs = {}
    for n_devices in (1, 2):
        model = build(n_devices)
        data = perf.pairs(model, 16, 32)
        start = time.perf_counter()
        circuit = CircuitPruner(model, steps=30, batch_size=16, seed=0).fit(data, progress=False)
        scored = evaluate(model, circuit, data)
        runs[n_devices] = {
            "devices": [str(d) for d in Placement.of(model, model_dims(model)).devices],
            "seconds": time.perf_counter() - start,
            "kl": scored.kl,
            "kept": scored.kept,
            "mask": circuit.site_masks(),
        }
        del model
        torch.cuda.empty_cache()
    same = all(
        torch.equal(a, b)
        for a, b in zip(runs[1].pop("mask"), runs[2].pop("mask"), strict=True)
        if a is not None
    )
    return {"one": runs[1], "two": runs[2], "same_circuit": same}


def _hooked_split(n_devices: int):
    from transformer_lens_mgp.testing.tiny import build_cfg, model_from_cfg

    shape = perf.SHAPES["gpt2-medium"]
    cfg = build_cfg(**vars(shape), n_ctx=1024, act_fn="gelu_new", device="cuda", seed=0)
    cfg.n_devices = n_devices
    return model_from_cfg(cfg)


def _bridge_split(n_devices: int):
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

    from transformer_lens_mgp.models import bridge_from_hf

    shape = perf.SHAPES["gpt2-medium"]
    config = GPT2Config(
        vocab_size=shape.d_vocab,
        n_embd=shape.d_model,
        n_layer=shape.n_layers,
        n_head=shape.n_heads,
        n_inner=shape.d_mlp,
    )
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        GPT2LMHeadModel(config).save_pretrained(folder)
        if n_devices == 1:
            hf = AutoModelForCausalLM.from_pretrained(folder).to("cuda")
        else:
            # Loaded split first: the bridge then reads hf_device_map.
            memory = {i: f"{_half_of(shape)}MiB" for i in range(n_devices)}
            hf = AutoModelForCausalLM.from_pretrained(folder, device_map="auto", max_memory=memory)
    return bridge_from_hf(hf.eval(), None)


def _half_of(shape) -> int:
    """MiB that hold a bit over half of a float32 model of ``shape``: forces a split."""
    per_layer = 4 * shape.d_model**2 + 2 * shape.d_model * shape.d_mlp
    total = shape.n_layers * per_layer + 2 * shape.d_vocab * shape.d_model
    return int(total * 4 / 2**20 * 0.6) + 1


def guarded(part) -> dict | list:
    """A part's result, or its error (so one failing part does not hide the others)."""
    try:
        return part()
    except Exception as err:  # noqa: BLE001 - recorded in the JSON, not hidden
        return {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}


def _saver(path: Path, result: dict):
    def save() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2, default=str))

    return save


def print_summary(result: dict) -> None:
    print("devices:", ", ".join(result["environment"]["devices"]))
    rows = result["perf"]
    if isinstance(rows, list):
        perf.print_tables(rows)
    else:
        print("perf failed:", rows["error"])
    ioi = result.get("ioi")
    if ioi is not None:
        if "metrics" in ioi:
            print(f"\nIOI fit: {ioi['seconds']:.0f} s, {json.dumps(ioi['metrics'])[:400]}")
        else:
            print("\nIOI fit failed:", ioi.get("error", "")[-400:])
    for name, split in (result.get("multi_device") or {}).items():
        print(f"\n{name}: {json.dumps(split, default=str)[:400]}")


if __name__ == "__main__":
    main()
