"""Builders of clean / corrupted prompt pairs for the paper's three tasks."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.data import PairedDataset
from ..core.errors import UsageError
from . import gendered_pronouns as _gp
from . import greater_than as _gt
from . import ioi as _ioi
from ._common import held_out_split
from .gendered_pronouns import gendered_pronouns
from .greater_than import greater_than
from .ioi import ioi

TASKS = {"ioi": ioi, "gp": gendered_pronouns, "gt": greater_than}
"""Short task names (as used by the command line) to their builders."""


def build(task: str, model, n: int, seed: int = 0, corruption: str | None = None, **vocabulary):
    """The pairs of the task named ``task`` (a key of :data:`TASKS`); ``corruption`` chooses
    IOI's corrupted prompts (the other tasks have one corruption); ``vocabulary`` restricts
    its templates and words (see :func:`vocabulary_split`)."""
    check_task(task, corruption)
    if corruption is not None:
        vocabulary["corruption"] = corruption
    return TASKS[task](model, n=n, seed=seed, **vocabulary)


def check_task(task: str, corruption: str | None = None) -> None:
    """Say before any work if :func:`build` would refuse ``task`` or ``corruption``."""
    if task not in TASKS:
        raise UsageError(f"unknown task {task!r}; choose from {sorted(TASKS)}")
    if corruption is not None and task != "ioi":
        raise UsageError(
            f"--corruption chooses IOI's corrupted prompts; task {task!r} has one corruption "
            "only: drop --corruption or use --task ioi"
        )


_VOCABULARY = {"ioi": _ioi.VOCABULARY, "gp": _gp.VOCABULARY, "gt": _gt.VOCABULARY}


@dataclass(frozen=True)
class VocabularySplit:
    """Builder arguments that keep part of a task's templates and words out of training.

    Args:
        train: keyword arguments for the task's builder, for the pairs to fit on.
        held_out: the same for pairs whose templates and words the fit never saw.
    """

    train: dict[str, tuple[str, ...]]
    held_out: dict[str, tuple[str, ...]]


def vocabulary_split(task: str, fraction: float = 0.25, seed: int = 0) -> VocabularySplit:
    """Hold out about ``fraction`` of ``task``'s templates and of each of its word lists
    (IOI: whole frames and names; Gendered Pronouns: templates and names of both genders;
    Greater-Than: templates and nouns)::

        split = tasks.vocabulary_split("ioi")
        train = tasks.ioi(model, n=512, **split.train)
        unseen = tasks.ioi(model, n=128, seed=1, **split.held_out)
    """
    if task not in _VOCABULARY:
        raise UsageError(f"unknown task {task!r}; choose from {sorted(_VOCABULARY)}")
    train, held_out = {}, {}
    for offset, (name, (items, group)) in enumerate(_VOCABULARY[task].items()):
        train[name], held_out[name] = held_out_split(items, fraction, seed + offset, group)
    return VocabularySplit(train, held_out)


@dataclass(frozen=True)
class TaskPairs:
    """A task's pairs for one fit.

    Args:
        train: the pairs to fit on.
        test: held-out pairs from the training frames and words ("in-frame").
        unseen: as many pairs from frames and words the fit never saw.
        vocabulary: which frames and words each side was built from.
    """

    train: PairedDataset
    test: PairedDataset
    unseen: PairedDataset
    vocabulary: VocabularySplit


HOLDOUT = 0.25
"""Share of a task's frames and of each word list that :func:`split_pairs` keeps from training."""


def split_pairs(
    task: str,
    model,
    n: int,
    seed: int = 0,
    corruption: str | None = None,
    test_fraction: float = 0.1,
) -> TaskPairs:
    """``n`` pairs from three quarters of ``task``'s frames and words, ``test_fraction`` of
    them held out, and as many test pairs again from the rest: the circuit is judged on
    wording it never saw as well as on its own."""
    split = vocabulary_split(task, HOLDOUT, seed)
    data = build(task, model, n, seed, corruption, **split.train)
    train, test = data.split(test_fraction, seed=seed)
    unseen = build(task, model, len(test), seed + 1, corruption, **split.held_out)
    return TaskPairs(train, test, unseen, split)


__all__ = [
    "HOLDOUT",
    "TaskPairs",
    "TASKS",
    "VocabularySplit",
    "build",
    "check_task",
    "gendered_pronouns",
    "greater_than",
    "ioi",
    "split_pairs",
    "vocabulary_split",
]
