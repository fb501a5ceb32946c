"""Find the IOI circuit of the embedded SmolLM2-135M, evaluate it, patch with it, plot it.

python examples/ioi_quickstart.py              # the defaults: a few minutes on a laptop CPU
python examples/ioi_quickstart.py --steps 20   # a quick look
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from transformer_lens_mgp import CircuitPruner, evaluate, load_model, random_circuit, tasks
from transformer_lens_mgp.analysis.report import write_report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000, help="IOI pairs (a tenth held out)")
    parser.add_argument("--steps", type=int, default=None, help="default: PruningConfig's")
    parser.add_argument("--out", type=Path, default=Path("runs/quickstart"))
    args = parser.parse_args()

    model = load_model()
    pairs = tasks.split_pairs("ioi", model, n=args.n, seed=0)  # a quarter of frames held out
    train, test = pairs.train, pairs.test
    quick = {} if args.steps is None else {"steps": args.steps}
    circuit = CircuitPruner(model, **quick).fit(train)  # the defaults: a small circuit
    print(circuit.summary())

    ours = evaluate(model, circuit, test)
    baseline = evaluate(model, random_circuit(circuit), test)
    print(f"held-out KL {ours.kl:.3f} (random circuit of the same size: {baseline.kl:.3f})")
    print(f"logit difference recovered {ours.recovered:.2f} ({baseline.recovered:.2f})")
    unseen = evaluate(model, circuit, pairs.unseen)
    print(f"on frames and names it never saw: KL {unseen.kl:.3f}, recovered {unseen.recovered:.2f}")

    # The circuit as TransformerLens hooks: everything outside it takes its corrupted value.
    hooks = circuit.fwd_hooks(test, model=model)
    with torch.no_grad():
        logits = model.run_with_hooks(test.clean_tokens, fwd_hooks=hooks)
    rows = torch.arange(len(test))
    top = logits[rows, test.answer_positions].argmax(-1)
    share = (top == test.answer_tokens).float().mean()
    print(f"the circuit's top answer is the indirect object in {share:.0%} of held-out prompts")

    args.out.mkdir(parents=True, exist_ok=True)
    circuit.save(args.out / "circuit.safetensors")
    write_report(circuit, args.out / "report.html", title="IOI circuit of SmolLM2-135M")
    print(f"wrote {args.out}/circuit.safetensors and report.html")


if __name__ == "__main__":
    main()
