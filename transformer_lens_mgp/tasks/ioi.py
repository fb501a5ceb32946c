"""Indirect Object Identification (Wang et al. 2022), with the ABC corruption by default.

"When Mary and John went to the store, John gave a drink to" -> " Mary". The corrupted
prompt keeps the template, place and object. Its names depend on the corruption:

- ``"abc"``: three fresh, distinct names, so it carries no information about which name is
  the indirect object;
- ``"abb"``: the subject's second mention becomes the indirect object (the S2 swap), which
  flips the answer to the subject;
- ``"random"``: each of the three mentions an independent random name, which may repeat
  a clean name or another mention.
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
    single_token_words,
    token_positions,
)

ROLES = ("IO", "S1", "S1+1", "S2", "END")
"""Token roles recorded per pair: the indirect object, the subject's first mention and the
token after it, the subject repeated, and the answer position."""

_FRAMES = (
    "When {A} and {B} went to the {PLACE}, {S2} gave a {OBJECT} to",
    "Then, {A} and {B} went to the {PLACE}. {S2} gave a {OBJECT} to",
    "After {A} and {B} arrived at the {PLACE}, {S2} handed a {OBJECT} to",
    "While {A} and {B} were waiting at the {PLACE}, {S2} handed a {OBJECT} to",
    "Yesterday {A} and {B} went to the {PLACE}, and {S2} gave a {OBJECT} to",
    "Later, {A} and {B} had a long argument at the {PLACE}. Afterwards {S2} said to",
    "On Monday, {A} and {B} met at the {PLACE}, where {S2} gave a {OBJECT} to",
    "When {A} and {B} found a {OBJECT} at the {PLACE}, {S2} gave it to",
    "At the {PLACE}, {A} and {B} talked for hours, and then {S2} sent a {OBJECT} to",
    "Because {A} and {B} were at the {PLACE} together, {S2} brought a {OBJECT} to",
    "It was raining when {A} and {B} left the {PLACE}, so {S2} lent a {OBJECT} to",
    "During a visit to the {PLACE}, {A} and {B} got hungry, and {S2} passed a {OBJECT} to",
    "Once {A} and {B} had reached the {PLACE}, {S2} showed the {OBJECT} to",
    "The friends {A} and {B} cleaned up the {PLACE}. Afterwards {S2} threw the {OBJECT} to",
    "As {A} and {B} walked into the {PLACE}, {S2} whispered a secret to",
    "Last week {A} and {B} visited the {PLACE}, where {S2} offered a {OBJECT} to",
)
"""Sentence frames, varied in clause order, verb and punctuation, so that a split by frame
leaves the fit several and tests it on wording it never saw."""


def frame_of(template: str) -> str:
    """The frame a template comes from: its ABBA and BABA orders are one frame, so a split by
    template never trains on one order of a sentence and tests on the other."""
    return template.replace("{IO}", "{A}").replace("{S1}", "{A}")


TEMPLATES: tuple[str, ...] = tuple(
    frame.format(A=first, B=second, S2="{S2}", PLACE="{PLACE}", OBJECT="{OBJECT}")
    for frame in _FRAMES
    for first, second in (("{IO}", "{S1}"), ("{S1}", "{IO}"))  # ABBA, then BABA
)
"""Prompts ending right before the indirect object. ``{IO}`` and ``{S1}`` name the two people
in the first clause (either order), ``{S2}`` is the subject repeated; ``{PLACE}`` and
``{OBJECT}`` are optional."""

NAMES: tuple[str, ...] = (
    "Mary", "John", "Michael", "Sarah", "David", "Emma", "James", "Anna", "Robert", "Lisa",
    "William", "Laura", "Thomas", "Rachel", "Daniel", "Emily", "Paul", "Kate", "Mark", "Susan",
    "Peter", "Helen", "George", "Alice", "Edward", "Grace", "Richard", "Julia", "Steven", "Amy",
    "Andrew", "Claire", "Kevin", "Jessica", "Brian", "Hannah", "Eric", "Lucy", "Frank", "Jane",
    "Adam", "Sophie", "Henry", "Olivia", "Jack", "Linda", "Tom", "Karen", "Ryan", "Nancy",
    "Scott", "Maria", "Jason", "Rebecca", "Charles",
)  # fmt: skip

PLACES: tuple[str, ...] = (
    "store", "park", "school", "hospital", "restaurant", "office", "station", "garden",
    "library", "beach", "market", "museum", "cafe", "kitchen",
)  # fmt: skip

OBJECTS: tuple[str, ...] = (
    "drink", "book", "ring", "gift", "letter", "key", "pen", "bag", "ball", "snack", "flower",
    "card", "cake", "hat",
)  # fmt: skip

VOCABULARY = {"templates": (TEMPLATES, frame_of), "names": (NAMES, str)}
"""What a split by template holds out: whole frames (both name orders) and names."""

CORRUPTIONS = ("abc", "abb", "random")
"""The corrupted prompts :func:`ioi` can build (see the module's docstring)."""

_REQUIRED = {"IO", "S1", "S2"}
_ALLOWED = _REQUIRED | {"PLACE", "OBJECT"}


def ioi(
    model,
    n: int = 256,
    seed: int = 0,
    templates: Sequence[str] | None = None,
    names: Sequence[str] | None = None,
    corruption: str = "abc",
) -> PairedDataset:
    """``n`` IOI pairs: answer the indirect object (" IO"), against the subject (" S").

    Names that are not a single token after a space in ``model``'s tokenizer are skipped,
    so every swap of names keeps the prompt length. ``corruption`` is one of
    :data:`CORRUPTIONS`. Deterministic for a given ``seed``.
    """
    check_n(n)
    if corruption not in CORRUPTIONS:
        raise UsageError(f"unknown IOI corruption {corruption!r}; choose from {CORRUPTIONS}")
    templates = check_templates(
        "IOI", TEMPLATES if templates is None else templates, _REQUIRED, _ALLOWED
    )
    pool = single_token_words(model, NAMES if names is None else names)
    if len(pool) < 5:
        raise UsageError(
            f"only {len(pool)} distinct names are a single token after a space in this "
            f"tokenizer ({pool}); IOI with the ABC corruption needs at least 5"
        )
    rng = random.Random(seed)
    noise = random.Random(f"{seed}-corruption")  # the clean prompts match across corruptions

    def make() -> Candidate:
        template = rng.choice(templates)
        place, obj = rng.choice(PLACES), rng.choice(OBJECTS)
        io, s, a, b, c = rng.sample(pool, 5)
        if corruption == "abb":
            a, b, c = io, s, io
        elif corruption == "random":
            a, b, c = (noise.choice(pool) for _ in range(3))
        clean = template.format(IO=io, S1=s, S2=s, PLACE=place, OBJECT=obj)
        corrupted = template.format(IO=a, S1=b, S2=c, PLACE=place, OBJECT=obj)
        return Candidate(clean, corrupted, " " + io, " " + s)

    data = collect(
        model,
        make,
        n,
        metric="logit_diff",
        name="ioi",
        meta={
            "seed": seed,
            "n_names": len(pool),
            "n_templates": len(templates),
            "corruption": corruption,
        },
    )
    return data.with_roles(ROLES, _role_positions(data))


def _role_positions(data: PairedDataset):
    """IO is the answer's token in the prompt, S1 and S2 the first and last mention of the
    subject (the wrong answer's token)."""
    io = token_positions(data, data.answer_tokens)
    s1 = token_positions(data, data.wrong_answer_tokens)
    s2 = token_positions(data, data.wrong_answer_tokens, last=True)
    return torch.stack([io, s1, s1 + 1, s2, data.answer_positions], dim=-1)
