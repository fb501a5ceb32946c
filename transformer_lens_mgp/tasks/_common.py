"""Shared machinery of the task builders: validate ``n``, filter words, collect valid pairs."""

from __future__ import annotations

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
