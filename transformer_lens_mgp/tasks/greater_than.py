"""Greater-Than (Hanna et al. 2023): is the end year after the start year?

"The war lasted from the year 1732 to the year 17" -> a year after 32. The corruption sets
the start year's last two digits to "01", which removes the lower bound. The metric is
P(later) - P(earlier) at the next token. Tokenizers that split numbers into digits (SmolLM2,
Llama) make that token the tens digit: digits above the start year's tens digit are surely
later, digits below surely earlier, and the equal digit is ambiguous, so it is in neither
set. Tokenizers with two-digit tokens after the century (GPT-2) score the two-digit year.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from ..core.data import PairedDataset
from ..core.errors import UsageError
from ._common import Candidate, check_n, check_templates, collect, first_difference, n_tokens

ROLES = ("YY", "END")
"""Token roles recorded per pair: the start year's first token after the century (the tens
digit, or the two-digit year) and the answer position."""

NOUNS: tuple[str, ...] = (
    "war", "expedition", "project", "journey", "reign", "siege", "voyage", "campaign",
    "treaty", "dynasty", "marriage", "conflict", "study", "trial", "tour", "rebellion",
    "investigation", "construction", "occupation", "partnership", "drought", "famine",
    "plague", "strike", "negotiation", "alliance", "friendship", "program", "crisis",
    "rivalry",
)  # fmt: skip

CENTURIES = range(11, 18)
"""The two leading digits, CC, of both years."""

CORRUPTED_YY = "01"

TEMPLATES: tuple[str, ...] = (
    "The {noun} lasted from the year {cc}{yy} to the year {cc}",
    "The {noun} started in the year {cc}{yy} and ended in the year {cc}",
    "The {noun} ran from {cc}{yy} to {cc}",
    "The {noun} began in {cc}{yy} and was over by {cc}",
    "The {noun} went on from {cc}{yy} until {cc}",
    "Records of the {noun} run from the year {cc}{yy} to the year {cc}",
)
"""Prompts that end on the end year's century. The first is Hanna et al.'s, and the only one
used unless others are asked for; the rest give a split by template something to hold out."""


VOCABULARY = {"templates": (TEMPLATES, str), "nouns": (NOUNS, str)}
"""What a split by template holds out: templates and the events' nouns."""


def greater_than(
    model,
    n: int = 256,
    seed: int = 0,
    templates: Sequence[str] | None = None,
    nouns: Sequence[str] | None = None,
) -> PairedDataset:
    """``n`` pairs with answer sets (later years) and wrong sets (earlier years); prob_diff.

    ``templates`` (default: Hanna et al.'s alone) hold the fields ``{noun}``, ``{cc}`` and
    ``{yy}`` and end on the end year's ``{cc}``."""
    check_n(n)
    templates = check_templates(
        "Greater-Than", TEMPLATES[:1] if templates is None else templates, {"noun", "cc", "yy"}
    )
    nouns = tuple(NOUNS if nouns is None else nouns)
    if not nouns:
        raise UsageError("nouns is empty; give at least one noun for Greater-Than's events")
    mode = _year_tokenization(model)
    if mode == "digit":
        starts = list(range(10, 90))  # tens digit 1..8: both sets of digits are non-empty
        later = {yy: [str(d) for d in range(yy // 10 + 1, 10)] for yy in starts}
        earlier = {yy: [str(d) for d in range(yy // 10)] for yy in starts}
    else:
        pairs = [f"{y:02d}" for y in range(100)]
        single = {y for y, text in enumerate(pairs) if n_tokens(model, text) == 1}
        later = {yy: [pairs[y] for y in range(yy + 1, 100) if y in single] for yy in range(100)}
        earlier = {yy: [pairs[y] for y in range(yy) if y in single] for yy in range(100)}
        starts = [yy for yy in range(2, 99) if yy in single and later[yy] and earlier[yy]]
        if not starts:
            raise UsageError("no two-digit year is a single token in this tokenizer")
    rng = random.Random(seed)

    def make() -> Candidate:
        # One template draws nothing, so the default pairs stay those of earlier versions.
        template = templates[0] if len(templates) == 1 else rng.choice(templates)
        noun, cc, yy = rng.choice(nouns), rng.choice(CENTURIES), rng.choice(starts)
        clean = template.format(noun=noun, cc=cc, yy=f"{yy:02d}")
        corrupted = template.format(noun=noun, cc=cc, yy=CORRUPTED_YY)
        return Candidate(clean, corrupted, later[yy], earlier[yy])

    data = collect(
        model,
        make,
        n,
        metric="prob_diff",
        name="gt",
        meta={"seed": seed, "year_tokens": mode, "n_templates": len(templates)},
    )
    return data.with_roles(ROLES, torch.stack([first_difference(data), data.answer_positions], -1))


def _year_tokenization(model) -> str:
    """``"digit"`` when numbers split into single digits, ``"pair"`` when a year is CC + YY."""
    whole = model.to_tokens("1732", prepend_bos=False)[0].tolist()
    if len(whole) == 4:
        return "digit"
    halves = [model.to_tokens(h, prepend_bos=False)[0].tolist() for h in ("17", "32")]
    if len(halves[0]) == len(halves[1]) == 1 and whole == halves[0] + halves[1]:
        return "pair"
    raise UsageError(
        f"this tokenizer splits the year '1732' into {whole}, neither single digits nor two "
        "two-digit tokens; Greater-Than cannot score the end year with one next token"
    )
