"""Shared machinery of the task builders: validate ``n``, filter words, collect valid pairs."""

from __future__ import annotations

import random
import string
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from jaxtyping import Int
from torch import Tensor

from ..core.data import PairedDataset, tokenize_pair
from ..core.errors import UsageError

MAX_ATTEMPTS_PER_PAIR = 20
"""Candidates tried per requested pair before a builder gives up."""


class Candidate(NamedTuple):
    """One prompt pair as text, before tokenization."""

    clean: str
    corrupted: str
    answers: str | list[str]
    wrong_answers: str | list[str]


def check_n(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UsageError(f"n must be a positive integer (the number of pairs), got {n!r}")


def check_templates(
    task: str, templates: Sequence[str], required: set[str], allowed: set[str] | None = None
) -> tuple[str, ...]:
    """``templates`` as a tuple, each with the ``required`` fields (and only ``allowed`` ones,
    default the required), ending on a word: the answer token carries its own space."""
    templates = tuple(templates)
    if not templates:
        raise UsageError(f"templates is empty; give at least one {task} template")
    allowed = required if allowed is None else allowed
    for template in templates:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
        if not required <= fields or not fields <= allowed:
            extra = sorted(allowed - required)
            raise UsageError(
                f"{task} template {template!r} has fields {sorted(fields)}; it needs "
                f"{sorted(required)}" + (f" and may also use {extra}" if extra else "")
            )
        if template != template.rstrip():
            raise UsageError(
                f"{task} template {template!r} ends with whitespace; end it on the word before "
                "the answer (the answer token carries its own leading space)"
            )
    return templates


def held_out_split(
    items: Sequence[str], fraction: float, seed: int, group: Callable[[str], str] = str
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``items`` split at random into (kept, held out), about ``fraction`` of their groups
    held out, at least one group on each side; items of one ``group`` stay together."""
    groups = list(dict.fromkeys(group(item) for item in items))
    if len(groups) < 2:
        raise UsageError(f"cannot hold out part of {len(groups)} group(s): {list(items)[:3]}")
    if not 0 < fraction < 1:
        raise UsageError(f"the held-out fraction must be in (0, 1), got {fraction}")
    random.Random(seed).shuffle(groups)
    n_held = min(len(groups) - 1, max(1, round(fraction * len(groups))))
    held = set(groups[:n_held])
    return (
        tuple(i for i in items if group(i) not in held),
        tuple(i for i in items if group(i) in held),
    )


def n_tokens(model, text: str) -> int:
    return int(model.to_tokens(text, prepend_bos=False).shape[-1])


def single_token_words(model, words: Sequence[str]) -> list[str]:
    """The words that are one token after a space, in their original order, without repeats.

    A name that splits into several tokens would change the prompt's length when swapped
    for another, and could not be an answer.
    """
    seen, kept = set(), []
    for word in words:
        word = word.strip()
        if word and word not in seen and n_tokens(model, " " + word) == 1:
            seen.add(word)
            kept.append(word)
    return kept


def collect(
    model,
    make: Callable[[], Candidate],
    n: int,
    *,
    metric: str,
    name: str,
    meta: dict | None = None,
) -> PairedDataset:
    """Draw candidates from ``make`` until ``n`` of them tokenize into a valid pair.

    Invalid candidates (lengths differ, an answer is not one token) are counted and
    reported in ``meta["n_dropped"]`` rather than silently missing from the dataset.
    """
    check_n(n)
    kept: list[Candidate] = []
    problems: list[str] = []
    attempts = 0
    max_attempts = MAX_ATTEMPTS_PER_PAIR * n + 100
    while len(kept) < n:
        if attempts >= max_attempts:
            raise UsageError(
                f"{name}: only {len(kept)} of {n} pairs were valid after {attempts} candidates "
                f"for this model's tokenizer; first problems: {problems[:3]}"
            )
        attempts += 1
        candidate = make()
        try:
            tokenize_pair(model, *candidate, None)
        except ValueError as err:
            problems.append(str(err))
            continue
        kept.append(candidate)
    data = PairedDataset.from_prompts(
        model,
        [c.clean for c in kept],
        [c.corrupted for c in kept],
        [c.answers for c in kept],
        [c.wrong_answers for c in kept],
        metric=metric,
        name=name,
        drop_invalid=True,
    )
    data.meta.update(meta or {})
    data.meta["n_candidates"] = attempts
    data.meta["n_dropped"] = len(problems) + data.meta["n_dropped"]
    data.meta["dropped"] = (problems + data.meta["dropped"])[:20]
    return data


def first_difference(data: PairedDataset) -> Int[Tensor, " n"]:
    """Per pair, the first position where the clean and corrupted prompts differ (the token the
    corruption changed)."""
    differs = data.clean_tokens != data.corrupted_tokens
    return differs.int().argmax(-1)


def token_positions(data: PairedDataset, token_ids: Int[Tensor, " n"], last: bool = False):
    """Per pair, the first (or last) position of ``token_ids[i]`` in clean prompt ``i``, before
    the answer position."""
    seq = torch.arange(data.seq_len)
    found = (data.clean_tokens == token_ids[:, None]) & (seq <= data.answer_positions[:, None])
    if last:
        return data.seq_len - 1 - found.flip(-1).int().argmax(-1)
    return found.int().argmax(-1)
