"""Clean / corrupted prompt pairs with the positions and tokens the objective reads.

Pairs are stored right-padded in one ``[N, T]`` tensor per stream. In a causal model the
tokens after an answer position cannot change the prediction there, so padding is inert
and each batch is cut at its last answer position.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import torch
from jaxtyping import Int
from torch import Tensor

from .errors import UsageError, UsageTypeError
from .pairs_file import ROLE_PREFIX, PairRow, raise_if, read_pair_rows

METRICS = ("logit_diff", "prob_diff")
PAD_ANSWER = -1
"""Fills the unused slots of ``[N, K]`` answer sets."""


@dataclass(frozen=True)
class PairedDataset:
    """Pairs of clean and corrupted token sequences with the answer to predict.

    Args:
        clean_tokens: ``[N, T]`` token ids of the prompts whose behaviour we explain.
        corrupted_tokens: ``[N, T]`` token ids of the counterfactual prompts, pair by pair the
            same length as the clean ones (their activations replace pruned nodes).
        answer_tokens: ``[N]`` the correct next token of each clean prompt, or ``[N, K]`` a set
            of correct tokens padded with -1 (e.g. every digit above a threshold).
        wrong_answer_tokens: optional ``[N]`` or ``[N, K]`` competing tokens (-1 pads sets).
        answer_positions: optional ``[N]`` position whose prediction is scored; default the last
            position, ``T - 1``.
        metric: the task metric: ``"logit_diff"`` (first correct answer's logit minus the mean
            wrong answer logit) or ``"prob_diff"`` (probability of the correct set minus that of
            the wrong set).
        name: a label for reports.
        meta: free-form facts about how the data was made (e.g. pairs dropped by a builder).
        roles: names of token roles the prompts share (IOI: ``("IO", "S1", "S1+1", "S2",
            "END")``), for reading what an attention head looks at.
        role_positions: ``[N, len(roles)]`` the position of each role in each clean prompt.
    """

    clean_tokens: Int[Tensor, "n pos"]
    corrupted_tokens: Int[Tensor, "n pos"]
    answer_tokens: Int[Tensor, "n ..."]
    wrong_answer_tokens: Int[Tensor, "n ..."] | None = None
    answer_positions: Int[Tensor, " n"] | None = None
    metric: str = "logit_diff"
    name: str = "custom"
    meta: dict = field(default_factory=dict, compare=False)
    roles: tuple[str, ...] = ()
    role_positions: Int[Tensor, "n roles"] | None = None

    def __post_init__(self):
        # Ids of any integer dtype (uint16 files, int32, ...) are stored as int64, what
        # embeddings and gathers index with.
        for name in ("clean_tokens", "corrupted_tokens"):
            object.__setattr__(self, name, _as_ids(name, getattr(self, name)))
        clean, corrupted = self.clean_tokens, self.corrupted_tokens
        for label, t in (("clean_tokens", clean), ("corrupted_tokens", corrupted)):
            if t.ndim != 2:
                raise UsageError(
                    f"{label} must be a [n_pairs, seq_len] tensor, got shape {tuple(t.shape)}; "
                    "stack the prompts (right-padded) into one 2-D tensor"
                )
        if clean.shape != corrupted.shape:
            raise UsageError(
                f"clean_tokens {tuple(clean.shape)} and corrupted_tokens {tuple(corrupted.shape)} "
                "differ in shape; every corrupted prompt must have exactly as many tokens as its "
                "clean prompt (choose corruptions of the same token length)"
            )
        n, seq_len = clean.shape
        if n == 0 or seq_len == 0:
            raise UsageError(f"the dataset is empty (shape {tuple(clean.shape)}); add some pairs")
        object.__setattr__(
            self, "answer_tokens", _as_answers("answer_tokens", self.answer_tokens, n)
        )
        if self.wrong_answer_tokens is not None:
            wrong = _as_answers("wrong_answer_tokens", self.wrong_answer_tokens, n)
            object.__setattr__(self, "wrong_answer_tokens", wrong)
        if self.metric not in METRICS:
            raise UsageError(f"unknown metric {self.metric!r}; choose from {METRICS}")
        if self.answer_positions is None:
            object.__setattr__(self, "answer_positions", torch.full((n,), seq_len - 1))
        positions = _as_ids("answer_positions", self.answer_positions)
        object.__setattr__(self, "answer_positions", positions)
        if tuple(positions.shape) != (n,):
            raise UsageError(
                f"answer_positions must have shape [{n}], got {tuple(positions.shape)}"
            )
        if positions.max() >= seq_len:
            bad = int((positions >= seq_len).nonzero()[0])
            raise UsageError(
                f"answer position {int(positions[bad])} of pair {bad} is out of range for "
                f"sequences of length {seq_len}; positions index the prompt, 0..{seq_len - 1}"
            )
        self._check_roles(n, seq_len)

    def _check_roles(self, n: int, seq_len: int) -> None:
        object.__setattr__(self, "roles", tuple(self.roles))
        if self.role_positions is None:
            if self.roles:
                raise UsageError(f"roles {self.roles} were named without role_positions")
            return
        positions = _as_ids("role_positions", self.role_positions)
        object.__setattr__(self, "role_positions", positions)
        if tuple(positions.shape) != (n, len(self.roles)):
            raise UsageError(
                f"role_positions must have shape [{n}, {len(self.roles)}] (a position per pair "
                f"and role {self.roles}), got {tuple(positions.shape)}"
            )
        late = positions > self.answer_positions[:, None]
        if late.any():
            pair, role = late.nonzero()[0].tolist()
            raise UsageError(
                f"role {self.roles[role]!r} of pair {pair} is at position "
                f"{int(positions[pair, role])}, after the answer position "
                f"{int(self.answer_positions[pair])}; the answer cannot attend to it"
            )

    @classmethod
    def from_prompts(
        cls,
        model,
        clean: Sequence[str],
        corrupted: Sequence[str],
        answers: Sequence[str] | Sequence[Sequence[str]],
        wrong_answers: Sequence[str] | Sequence[Sequence[str]] | None = None,
        *,
        metric: str = "logit_diff",
        name: str = "custom",
        drop_invalid: bool = False,
        prepend_bos: bool | None = None,
    ) -> PairedDataset:
        """Tokenize prompt pairs with ``model``'s tokenizer.

        An answer is a string (or a list of strings, a set of correct tokens) that must be one
        token. Pairs whose clean and corrupted prompts differ in token count, or whose answers
        are not single tokens, raise a ValueError; with ``drop_invalid=True`` they are dropped
        and counted in ``meta["n_dropped"]``.
        """
        for label, prompts in (("clean", clean), ("corrupted", corrupted), ("answers", answers)):
            if isinstance(prompts, str):
                raise UsageTypeError(
                    f"{label} must be a list with one entry per pair, got the single string "
                    f"{prompts[:40]!r}; wrap it in a list: [{prompts[:20]!r}...]"
                )
        if not (len(clean) == len(corrupted) == len(answers)):
            raise UsageError(
                f"got {len(clean)} clean prompts, {len(corrupted)} corrupted prompts and "
                f"{len(answers)} answers; give one of each per pair"
            )
        if wrong_answers is not None and len(wrong_answers) != len(clean):
            raise UsageError(f"got {len(wrong_answers)} wrong answers for {len(clean)} pairs")
        rows, problems = [], []
        for i in range(len(clean)):
            try:
                rows.append(
                    tokenize_pair(
                        model,
                        clean[i],
                        corrupted[i],
                        answers[i],
                        None if wrong_answers is None else wrong_answers[i],
                        prepend_bos,
                    )
                )
            except ValueError as err:
                if not drop_invalid:
                    raise UsageError(f"pair {i}: {err}") from None
                problems.append(f"pair {i}: {err}")
        if not rows:
            raise UsageError(
                "no valid pairs: " + "; ".join(problems[:3]) if problems else "no prompts given"
            )
        pad = getattr(getattr(model, "tokenizer", None), "pad_token_id", None) or 0
        seq_len = max(len(r[0]) for r in rows)
        k = max(len(r[2]) for r in rows)
        k_wrong = max((len(r[3]) for r in rows if r[3] is not None), default=0)

        def padded(seqs, length, value):
            return torch.tensor([list(x) + [value] * (length - len(x)) for x in seqs])

        answer_tokens = padded([r[2] for r in rows], k, PAD_ANSWER)
        wrong = None
        if wrong_answers is not None:
            wrong = padded([r[3] for r in rows], k_wrong, PAD_ANSWER)
            wrong = wrong[:, 0] if k_wrong == 1 else wrong
        return cls(
            clean_tokens=padded([r[0] for r in rows], seq_len, pad),
            corrupted_tokens=padded([r[1] for r in rows], seq_len, pad),
            answer_tokens=answer_tokens[:, 0] if k == 1 else answer_tokens,
            wrong_answer_tokens=wrong,
            answer_positions=torch.tensor([len(r[0]) - 1 for r in rows]),
            metric=metric,
            name=name,
            meta={"n_dropped": len(problems), "dropped": problems[:20]},
        )

    @classmethod
    def from_file(cls, model, path) -> PairedDataset:
        """Pairs from a ``.jsonl`` or ``.csv`` file with fields ``clean``, ``corrupted``,
        ``answer``, optional ``wrong`` and ``role_<NAME>`` (see :mod:`.pairs_file`). The whole
        file is checked first; errors name the line and the field."""
        return cls.from_rows(model, read_pair_rows(path), name=Path(path).stem)

    @classmethod
    def from_rows(cls, model, rows: Sequence[PairRow], name: str) -> PairedDataset:
        """Pairs of a file's rows (:func:`.pairs_file.read_pair_rows`), every row tokenised
        and checked (equal lengths, single-token answers, within the model's context, roles
        inside the prompt) before any is used."""
        problems = [p for row in rows for p in _row_problems(model, row)]
        raise_if(name, problems)
        data = cls.from_prompts(
            model,
            [r.clean for r in rows],
            [r.corrupted for r in rows],
            [r.answer for r in rows],
            None if rows[0].wrong is None else [r.wrong for r in rows],
            name=name,
        )
        roles = tuple(rows[0].roles)
        if not roles:
            return data
        return data.with_roles(roles, torch.tensor([[r.roles[x] for x in roles] for r in rows]))

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

    def with_roles(self, roles: Sequence[str], positions: Int[Tensor, "n roles"]) -> PairedDataset:
        """The same pairs with named token roles (see ``roles``)."""
        return replace(self, roles=tuple(roles), role_positions=positions)

    def role_slots(self) -> Int[Tensor, "n pos"]:
        """Each clean token's role as an index into ``roles``, and ``len(roles)`` ("other")
        at every position without one: the slot of a mask per role position."""
        if self.role_positions is None:
            raise UsageError(
                "these pairs record no token roles; build them with a task builder or give "
                "role_positions (see with_roles)"
            )
        n, n_roles = self.role_positions.shape
        slots = torch.full(self.clean_tokens.shape, n_roles, device=self.clean_tokens.device)
        rows = torch.arange(n, device=slots.device)[:, None].expand(n, n_roles)
        roles = torch.arange(n_roles, device=slots.device).expand(n, n_roles)
        slots[rows, self.role_positions.to(slots.device)] = roles
        return slots

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
            raise UsageError(f"test_fraction must be in (0, 1), got {test_fraction}")
        if len(self) < 2:
            raise UsageError("a split needs at least two pairs")
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        n_test = min(max(1, round(test_fraction * len(self))), len(self) - 1)
        train, test = self[order[n_test:]], self[order[:n_test]]
        return replace(train, meta=dict(self.meta)), replace(test, meta=dict(self.meta))

    def batches(
        self, batch_size: int, generator: torch.Generator | None = None, shuffle: bool = False
    ) -> Iterator[PairedDataset]:
        """One pass over the pairs (in order unless ``shuffle``), each batch cut after its last
        answer position."""
        if batch_size < 1:
            raise UsageError(f"batch_size must be at least 1, got {batch_size}")
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


def tokenize_pair(model, clean, corrupted, answer, wrong, prepend_bos):
    """Token ids of one pair; ValueError when lengths differ or an answer is not one token."""
    if not clean or not corrupted:
        raise UsageError("a prompt is empty; every clean and corrupted prompt needs tokens")
    clean_ids = prompt_ids(model, clean, prepend_bos)
    corrupted_ids = prompt_ids(model, corrupted, prepend_bos)
    if len(clean_ids) != len(corrupted_ids):
        raise UsageError(
            f"{clean!r} is {len(clean_ids)} tokens but its corruption {corrupted!r} is "
            f"{len(corrupted_ids)}; corrupted prompts must have the same token length"
        )
    return (
        clean_ids,
        corrupted_ids,
        single_tokens(model, answer),
        (None if wrong is None else single_tokens(model, wrong)),
    )


def _row_problems(model, row: PairRow) -> list[str]:
    where, problems = f"line {row.line}", []
    clean, corrupted = prompt_ids(model, row.clean), prompt_ids(model, row.corrupted)
    if len(corrupted) != len(clean):
        problems.append(
            f"{where}: 'corrupted' is {len(corrupted)} tokens, 'clean' is "
            f"{len(clean)}; a pair's prompts must have the same token length"
        )
    n_ctx = getattr(model.cfg, "n_ctx", None)
    if n_ctx is not None and len(clean) > n_ctx:
        problems.append(
            f"{where}: 'clean' is {len(clean)} tokens, over the model's context of {n_ctx}"
        )
    for key, value in (("answer", row.answer), ("wrong", row.wrong)):
        try:
            if value is not None:
                single_tokens(model, value)
        except UsageError as err:
            problems.append(f"{where}: {key!r}: {err}")
    for role, position in row.roles.items():
        if not 0 <= position < len(clean):
            problems.append(
                f"{where}: '{ROLE_PREFIX}{role}' is {position}, outside the clean "
                f"prompt's {len(clean)} tokens"
            )
    return problems


def prompt_ids(model, text: str, prepend_bos: bool | None = None) -> list[int]:
    """A prompt's token ids, BOS as the model does it. Not truncated (where the tokenizer can
    be told): a prompt longer than the model's context is refused where it is used, instead
    of being cut and scored mid-prompt."""
    options = {"prepend_bos": prepend_bos}
    if "truncate" in inspect.signature(model.to_tokens).parameters:
        options["truncate"] = False
    return model.to_tokens(text, **options)[0].tolist()


def single_tokens(model, answers) -> list[int]:
    """The ids of one answer (a string) or an answer set (strings), each one token."""
    ids = []
    for answer in [answers] if isinstance(answers, str) else answers:
        tokens = model.to_tokens(answer, prepend_bos=False)[0].tolist()
        if len(tokens) != 1:
            raise UsageError(
                f"answer {answer!r} is {len(tokens)} tokens {tokens}, not one; use a single-token "
                "answer (often with a leading space, e.g. ' Mary') or score its first token"
            )
        ids.extend(tokens)
    return ids


def _as_answers(label: str, t, n: int) -> Tensor:
    """Answer ids as int64, checked: ``[n]`` or ``[n, K]`` with -1 padding sets."""
    if not isinstance(t, Tensor):
        raise UsageTypeError(f"{label} must be a torch.Tensor of token ids, got {type(t).__name__}")
    if t.ndim not in (1, 2) or t.shape[0] != n or (t.ndim == 2 and t.shape[1] == 0):
        raise UsageError(
            f"{label} must have shape [{n}] (one single token per pair) or [{n}, K] (a set per "
            f"pair, padded with -1), got {tuple(t.shape)}; multi-token answers are not "
            "supported: score their first token"
        )
    t = _integers(label, t)
    _as_ids(label, t[:, 0] if t.ndim == 2 else t)
    if t.ndim == 2 and t.numel() and t.min() < PAD_ANSWER:
        raise UsageError(f"{label} holds {int(t.min())}; ids must be >= 0 (-1 pads sets)")
    return t


def _integers(label: str, t) -> Tensor:
    """``t`` as int64, for a tensor of any integer dtype; a clear error otherwise."""
    if not isinstance(t, Tensor):
        raise UsageTypeError(f"{label} must be a torch.Tensor of token ids, got {type(t).__name__}")
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise UsageTypeError(
            f"{label} must hold integer token ids, got dtype {t.dtype}; use .long()"
        )
    return t.to(torch.int64)


def _as_ids(label: str, t) -> Tensor:
    """Non-negative ids as int64."""
    t = _integers(label, t)
    if t.numel() and t.min() < 0:
        raise UsageError(f"{label} holds negative values ({int(t.min())}); ids must be >= 0")
    return t
