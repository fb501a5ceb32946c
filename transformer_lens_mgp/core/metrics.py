"""Losses and faithfulness metrics computed from answer-position logits.

Metrics follow TransformerLens' patching contract: functions of logits that return a
number per pair (or a scalar after averaging), so they compose with its utilities.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from .data import PAD_ANSWER, PairedDataset
from .errors import UsageError


def kl_divergence(
    reference_logits: Float[Tensor, "batch d_vocab"], logits: Float[Tensor, "batch d_vocab"]
) -> Float[Tensor, ""]:
    """Mean over the batch of KL(reference || model), in nats."""
    ref = torch.log_softmax(reference_logits.float(), dim=-1)
    out = torch.log_softmax(logits.float(), dim=-1)
    return torch.sum(ref.exp() * (ref - out), dim=-1).mean()


def _as_sets(
    ids: Int[Tensor, "batch ..."],
) -> tuple[Int[Tensor, "batch k"], Bool[Tensor, "batch k"]]:
    ids = ids if ids.ndim == 2 else ids[:, None]
    valid = ids != PAD_ANSWER
    return ids.clamp(min=0), valid


def _gather(values: Float[Tensor, "batch d_vocab"], ids: Int[Tensor, "batch ..."]):
    sets, valid = _as_sets(ids.to(values.device))
    return values.gather(-1, sets), valid


def logit_difference(
    logits: Float[Tensor, "batch d_vocab"],
    answer_tokens: Int[Tensor, "batch ..."],
    wrong_answer_tokens: Int[Tensor, "batch ..."],
) -> Float[Tensor, " batch"]:
    """First correct answer's logit minus the mean logit of the wrong answers, per pair."""
    correct, _ = _gather(logits, answer_tokens)
    wrong, valid = _gather(logits, wrong_answer_tokens)
    return correct[:, 0] - (wrong * valid).sum(-1) / valid.sum(-1).clamp(min=1)


def probability_difference(
    logits: Float[Tensor, "batch d_vocab"],
    answer_tokens: Int[Tensor, "batch ..."],
    wrong_answer_tokens: Int[Tensor, "batch ..."],
) -> Float[Tensor, " batch"]:
    """Probability of the correct set minus probability of the wrong set, per pair."""
    probs = torch.softmax(logits.float(), dim=-1)
    correct, valid_correct = _gather(probs, answer_tokens)
    wrong, valid_wrong = _gather(probs, wrong_answer_tokens)
    return (correct * valid_correct).sum(-1) - (wrong * valid_wrong).sum(-1)


def accuracy(
    logits: Float[Tensor, "batch d_vocab"], answer_tokens: Int[Tensor, "batch ..."]
) -> Float[Tensor, ""]:
    """Fraction of pairs whose top prediction is a correct answer."""
    sets, valid = _as_sets(answer_tokens.to(logits.device))
    top = logits.argmax(-1, keepdim=True)
    return ((sets == top) & valid).any(-1).float().mean()


def task_metric(
    logits: Float[Tensor, "batch d_vocab"], batch: PairedDataset
) -> Float[Tensor, " batch"]:
    """The dataset's own metric (logit or probability difference), per pair."""
    if batch.wrong_answer_tokens is None:
        raise UsageError(
            "this dataset has no wrong_answer_tokens, so it has no logit/probability difference; "
            "add wrong answers or compare with KL only"
        )
    fn = logit_difference if batch.metric == "logit_diff" else probability_difference
    return fn(logits, batch.answer_tokens, batch.wrong_answer_tokens)


def recovered(circuit: float, full: float, empty: float) -> float:
    """Fraction of the full model's metric the circuit keeps, relative to the ablated model."""
    denom = full - empty
    return float("nan") if denom == 0 else (circuit - empty) / denom
