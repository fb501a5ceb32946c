"""Gendered Pronouns: a sentence about a named person whose next token is " he" or " she".

"So John is a really great friend, isn't" -> " he". The corruption swaps the name for one
of the other gender, which flips the expected pronoun while keeping the prompt's length.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from ..core.data import PairedDataset
from ..core.errors import UsageError
from ._common import (
    Candidate,
    check_n,
    check_templates,
    collect,
    first_difference,
    single_token_words,
)

ROLES = ("NAME", "END")
"""Token roles recorded per pair: the person's name and the answer position."""

TEMPLATES: tuple[str, ...] = (
    "So {name} is a really great friend, isn't",
    "I heard that {name} has finished the project already, hasn't",
    "It seems {name} has already left the office, hasn't",
    "Surely {name} can fix the car by tomorrow, can't",
    "So {name} really is a wonderful neighbour, isn't",
    "After dinner, {name} said that",
    "Then {name} said hello and waved, because",
    "When {name} got home,",
    "Everyone knows {name} works very hard, doesn't",
    "Clearly {name} was right about the weather, wasn't",
    "Yesterday {name} called me, and then",
    "I think {name} will come to the party, won't",
)
"""Prompts that end where a pronoun for the named person comes next (mostly tag questions)."""

MALE_NAMES: tuple[str, ...] = (
    "John", "James", "Michael", "David", "Robert", "William", "Richard", "Thomas", "Charles",
    "Daniel", "Matthew", "Mark", "Paul", "Steven", "Andrew", "Peter", "George", "Edward",
    "Brian", "Kevin", "Jason", "Ryan", "Jack", "Henry", "Frank", "Eric", "Adam", "Tom", "Scott",
    "Joseph",
)  # fmt: skip

FEMALE_NAMES: tuple[str, ...] = (
    "Mary", "Sarah", "Emma", "Anna", "Lisa", "Susan", "Karen", "Nancy", "Laura", "Rachel",
    "Jessica", "Emily", "Alice", "Helen", "Linda", "Elizabeth", "Jennifer", "Rebecca", "Amy",
    "Julia", "Kate", "Maria", "Sophie", "Grace", "Olivia", "Hannah", "Lucy", "Claire", "Jane",
    "Victoria",
)  # fmt: skip


VOCABULARY = {
    "templates": (TEMPLATES, str),
    "male_names": (MALE_NAMES, str),
    "female_names": (FEMALE_NAMES, str),
}
"""What a split by template holds out: templates and names of either gender."""


def gendered_pronouns(
    model,
    n: int = 256,
    seed: int = 0,
    templates: Sequence[str] | None = None,
    male_names: Sequence[str] | None = None,
    female_names: Sequence[str] | None = None,
) -> PairedDataset:
    """``n`` pairs scored by the pronoun's logit difference (" he" vs " she" or the reverse).

    Half the clean prompts, in expectation, name a man. Only names that are one token after
    a space are used, so the swapped name never changes the prompt's length. ``templates``
    each hold one ``{name}`` field and end where the pronoun comes next.
    """
    check_n(n)
    templates = check_templates(
        "Gendered Pronouns", TEMPLATES if templates is None else templates, {"name"}
    )
    male = single_token_words(model, MALE_NAMES if male_names is None else male_names)
    female = single_token_words(model, FEMALE_NAMES if female_names is None else female_names)
    if not male or not female:
        raise UsageError(
            f"this tokenizer leaves {len(male)} male and {len(female)} female single-token "
            "names; Gendered Pronouns needs at least one of each"
        )
    rng = random.Random(seed)

    def make() -> Candidate:
        template = rng.choice(templates)
        is_male = rng.random() < 0.5
        name = rng.choice(male if is_male else female)
        other = rng.choice(female if is_male else male)
        right, wrong = (" he", " she") if is_male else (" she", " he")
        return Candidate(template.format(name=name), template.format(name=other), right, wrong)

    data = collect(
        model,
        make,
        n,
        metric="logit_diff",
        name="gp",
        meta={
            "seed": seed,
            "n_male_names": len(male),
            "n_female_names": len(female),
            "n_templates": len(templates),
        },
    )
    return data.with_roles(ROLES, torch.stack([first_difference(data), data.answer_positions], -1))
