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

import torch

from ..core.data import PairedDataset
from ..core.errors import UsageError
from ._common import Candidate, check_n, collect, first_difference, n_tokens

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

_TEMPLATE = "The {noun} lasted from the year {cc}{yy} to the year {cc}"


def greater_than(model, n: int = 256, seed: int = 0) -> PairedDataset:
    """``n`` pairs with answer sets (later years) and wrong sets (earlier years); prob_diff."""
    check_n(n)
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
        noun, cc, yy = rng.choice(NOUNS), rng.choice(CENTURIES), rng.choice(starts)
        clean = _TEMPLATE.format(noun=noun, cc=cc, yy=f"{yy:02d}")
        corrupted = _TEMPLATE.format(noun=noun, cc=cc, yy=CORRUPTED_YY)
        return Candidate(clean, corrupted, later[yy], earlier[yy])

    data = collect(
        model,
        make,
        n,
        metric="prob_diff",
        name="gt",
        meta={"seed": seed, "year_tokens": mode},
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
