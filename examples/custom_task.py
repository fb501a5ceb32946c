"""A circuit for your own behaviour, from plain strings: capital cities.

python examples/custom_task.py --steps 50
"""

from __future__ import annotations

import argparse

from transformer_lens_mgp import CircuitPruner, PairedDataset, evaluate, load_model

FACTS = [
    ("France", " Paris"), ("Germany", " Berlin"), ("Italy", " Rome"), ("Spain", " Madrid"),
    ("Japan", " Tokyo"), ("Russia", " Moscow"), ("Egypt", " Cairo"), ("Greece", " Athens"),
    ("Austria", " Vienna"), ("Poland", " Warsaw"), ("Ireland", " Dublin"), ("Norway", " Oslo"),
]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()

    model = load_model()
    template = "The capital of {} is the city of"
    clean, corrupted, answers, wrong = [], [], [], []
    for i, (country, capital) in enumerate(FACTS):
        other_country, other_capital = FACTS[(i + 1) % len(FACTS)]
        clean.append(template.format(country))
        corrupted.append(template.format(other_country))
        answers.append(capital)
        wrong.append(other_capital)
    # Pairs whose corruption has another token length, or whose answer is not one token,
    # are dropped (and counted) instead of raising.
    data = PairedDataset.from_prompts(
        model, clean, corrupted, answers, wrong, name="capitals", drop_invalid=True
    )
    print(f"{len(data)} pairs ({data.meta.get('n_dropped', 0)} dropped)")
    circuit = CircuitPruner(
        model, granularities=["head", "mlp_neuron"], steps=args.steps, batch_size=8
    ).fit(data)
    print(circuit.summary())
    print(evaluate(model, circuit, data))


if __name__ == "__main__":
    main()
