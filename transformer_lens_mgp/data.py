"""Clean / corrupted prompt pairs with the positions and tokens the objective reads.

Pairs are stored right-padded in one ``[N, T]`` tensor per stream. In a causal model the
tokens after an answer position cannot change the prediction there, so padding is inert
and each batch is cut at its last answer position.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields, replace

import torch
from jaxtyping import Int
from torch import Tensor


@dataclass(frozen=True)
class PairedDataset:
    """Pairs of clean and corrupted token sequences with the answer to predict.

    Args:
        clean_tokens: ``[N, T]`` token ids of the prompts whose behaviour we explain.
        corrupted_tokens: ``[N, T]`` token ids of the counterfactual prompts, pair by pair the
            same length as the clean ones (their activations replace pruned nodes).
        answer_tokens: ``[N]`` the correct next token of each clean prompt.
        wrong_answer_tokens: optional ``[N]`` or ``[N, K]`` competing tokens (logit difference).
        answer_positions: optional ``[N]`` position whose prediction is scored; default the last
            position, ``T - 1``.
        name: a label for reports.
    """

    clean_tokens: Int[Tensor, "n pos"]
    corrupted_tokens: Int[Tensor, "n pos"]
    answer_tokens: Int[Tensor, " n"]
    wrong_answer_tokens: Int[Tensor, "n ..."] | None = None
    answer_positions: Int[Tensor, " n"] | None = None
    name: str = "custom"

    def __post_init__(self):
        clean, corrupted = self.clean_tokens, self.corrupted_tokens
        for label, t in (("clean_tokens", clean), ("corrupted_tokens", corrupted)):
            _check_ids(label, t)
            if t.ndim != 2:
                raise ValueError(
                    f"{label} must be a [n_pairs, seq_len] tensor, got shape {tuple(t.shape)}; "
                    "stack the prompts (right-padded) into one 2-D tensor"
                )
        if clean.shape != corrupted.shape:
            raise ValueError(
                f"clean_tokens {tuple(clean.shape)} and corrupted_tokens {tuple(corrupted.shape)} "
                "differ in shape; every corrupted prompt must have exactly as many tokens as its "
                "clean prompt (choose corruptions of the same token length)"
            )
        n, seq_len = clean.shape
        if n == 0 or seq_len == 0:
            raise ValueError(f"the dataset is empty (shape {tuple(clean.shape)}); add some pairs")
        _check_ids("answer_tokens", self.answer_tokens)
        if tuple(self.answer_tokens.shape) != (n,):
            raise ValueError(
                f"answer_tokens must have shape [{n}] (one single token per pair), got "
                f"{tuple(self.answer_tokens.shape)}; multi-token answers are not supported: "
                "score their first token"
            )
        if self.wrong_answer_tokens is not None:
            _check_ids("wrong_answer_tokens", self.wrong_answer_tokens)
            if (
                self.wrong_answer_tokens.ndim not in (1, 2)
                or self.wrong_answer_tokens.shape[0] != n
            ):
                raise ValueError(
                    f"wrong_answer_tokens must have shape [{n}] or [{n}, K], got "
                    f"{tuple(self.wrong_answer_tokens.shape)}"
                )
        if self.answer_positions is None:
            object.__setattr__(self, "answer_positions", torch.full((n,), seq_len - 1))
        _check_ids("answer_positions", self.answer_positions)
        positions = self.answer_positions
        if tuple(positions.shape) != (n,):
            raise ValueError(
                f"answer_positions must have shape [{n}], got {tuple(positions.shape)}"
            )
        if positions.max() >= seq_len:
            bad = int((positions >= seq_len).nonzero()[0])
            raise ValueError(
                f"answer position {int(positions[bad])} of pair {bad} is out of range for "
                f"sequences of length {seq_len}; positions index the prompt, 0..{seq_len - 1}"
            )

    def __len__(self) -> int:
        return self.clean_tokens.shape[0]

    def __getitem__(self, index) -> PairedDataset:
        """A sub-dataset (index with a slice, a list or a tensor of pair indices)."""
        if isinstance(index, int):
            index = [index]
        return replace(self, **{f: t[index] for f, t in self._tensors().items()})

    def _tensors(self) -> dict[str, Tensor]:
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if isinstance(getattr(self, f.name), Tensor)
        }

    def to(self, device) -> PairedDataset:
        return replace(self, **{f: t.to(device) for f, t in self._tensors().items()})

    @property
    def seq_len(self) -> int:
        return self.clean_tokens.shape[1]

    def max_token_id(self) -> int:
        ids = [self.clean_tokens, self.corrupted_tokens, self.answer_tokens]
        if self.wrong_answer_tokens is not None:
            ids.append(self.wrong_answer_tokens)
        return int(max(t.max() for t in ids))

    def split(
        self, test_fraction: float = 0.2, seed: int = 0
    ) -> tuple[PairedDataset, PairedDataset]:
        """A shuffled (train, held-out) split; both parts have at least one pair."""
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        if len(self) < 2:
            raise ValueError("a split needs at least two pairs")
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        n_test = min(max(1, round(test_fraction * len(self))), len(self) - 1)
        return self[order[n_test:]], self[order[:n_test]]

    def batches(
        self, batch_size: int, generator: torch.Generator | None = None, shuffle: bool = True
    ) -> Iterator[PairedDataset]:
        """One pass over the pairs, each batch cut after its last answer position."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        order = (
            torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        )
        for start in range(0, len(self), batch_size):
            yield self[order[start : start + batch_size]].trimmed()

    def trimmed(self) -> PairedDataset:
        """Drop the trailing positions no answer reads."""
        end = int(self.answer_positions.max()) + 1
        if end == self.seq_len:
            return self
        return replace(
            self,
            clean_tokens=self.clean_tokens[:, :end],
            corrupted_tokens=self.corrupted_tokens[:, :end],
        )

    @classmethod
    def concat(cls, parts: Sequence[PairedDataset], pad_token_id: int = 0) -> PairedDataset:
        """Join datasets, right-padding shorter sequences."""
        seq_len = max(p.seq_len for p in parts)

        def pad(t: Tensor) -> Tensor:
            return torch.nn.functional.pad(t, (0, seq_len - t.shape[1]), value=pad_token_id)

        wrong = [p.wrong_answer_tokens for p in parts]
        return cls(
            clean_tokens=torch.cat([pad(p.clean_tokens) for p in parts]),
            corrupted_tokens=torch.cat([pad(p.corrupted_tokens) for p in parts]),
            answer_tokens=torch.cat([p.answer_tokens for p in parts]),
            wrong_answer_tokens=None if any(w is None for w in wrong) else torch.cat(wrong),
            answer_positions=torch.cat([p.answer_positions for p in parts]),
            name=parts[0].name,
        )


def _check_ids(label: str, t) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{label} must be a torch.Tensor of token ids, got {type(t).__name__}")
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"{label} must hold integer token ids, got dtype {t.dtype}; use .long()")
    if t.numel() and t.min() < 0:
        raise ValueError(f"{label} holds negative values ({int(t.min())}); ids must be >= 0")
