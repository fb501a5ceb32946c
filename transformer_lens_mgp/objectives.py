"""Losses and faithfulness metrics computed from answer-position logits."""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor


def kl_divergence(
    reference_logits: Float[Tensor, "batch d_vocab"], logits: Float[Tensor, "batch d_vocab"]
) -> Float[Tensor, ""]:
    """Mean over the batch of KL(reference || model), in nats."""
    ref = torch.log_softmax(reference_logits.float(), dim=-1)
    out = torch.log_softmax(logits.float(), dim=-1)
    return torch.sum(ref.exp() * (ref - out), dim=-1).mean()


def logit_difference(
    logits: Float[Tensor, "batch d_vocab"],
    answer_tokens: Int[Tensor, " batch"],
    wrong_answer_tokens: Int[Tensor, "batch ..."],
) -> Float[Tensor, " batch"]:
    """Correct answer logit minus the (mean) wrong answer logit, per pair."""
    correct = logits.gather(-1, answer_tokens[:, None].to(logits.device))[:, 0]
    wrong = wrong_answer_tokens.to(logits.device)
    if wrong.ndim == 1:
        wrong = wrong[:, None]
    return correct - logits.gather(-1, wrong).mean(-1)


def accuracy(
    logits: Float[Tensor, "batch d_vocab"], answer_tokens: Int[Tensor, " batch"]
) -> Float[Tensor, ""]:
    """Fraction of pairs whose top prediction is the correct answer."""
    return (logits.argmax(-1) == answer_tokens.to(logits.device)).float().mean()


def recovered(circuit: float, full: float, empty: float) -> float:
    """Fraction of the full model's metric the circuit keeps, relative to the ablated model."""
    denom = full - empty
    return float("nan") if denom == 0 else (circuit - empty) / denom
