"""What role a head plays, read off measurements and labelled only where they support it.

The evidence for each head, all on the full model:

1. the standard pattern scores on repeated random tokens (a random sequence, then the same
   sequence again): previous-token (attention to the token before), duplicate-token (from the
   second copy of a token to its first copy) and induction (to the token after the first copy);
2. attention by token role, from every role the task records as the query (IOI: IO, S1,
   S1+1, S2, END), from :func:`~.heads.head_profiles`;
3. its direct effect on the logit difference, and its total effect (the circuit's metric
   drop when the head alone is removed, from :func:`~.node_effects.node_effects`), whose
   difference is the effect that runs through later nodes.

A label names the measurement that earned it; a head that fits no rule is "unclassified".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..core.model_api import attached, model_device
from ..runtime.guard import exclusive
from .heads import FIRST, OTHER, HeadProfile
from .node_effects import NodeEffects

PATTERN_SCORE = 0.4
"""A previous-token, duplicate-token or induction score at least this high names the role."""

SINK_SHARE = 0.6
"""Attention from the answer position to the first token at least this high: a sink head."""

READ_SHARE = 0.3
"""A head reads a token role at the answer position when it puts at least this share of its
attention there, and more than on any other role."""

EFFECT_SHARE = 0.05
"""A direct or through-later-nodes effect counts when it is at least this share of the
circuit's logit difference."""

TASK_NAMES = {
    ("mover", "IO"): "name mover",
    ("negative mover", "IO"): "negative name mover",
    ("reader", "S2"): "S-inhibition",
}
"""The IOI paper's names for what a head does with a role (Wang et al. 2022)."""

RANDOM_LENGTH = 20
"""Tokens in each half of a repeated random sequence."""


@dataclass(frozen=True)
class HeadRole:
    """A head's role and the measurements behind it.

    Args:
        head: plain name, ``L5.H3``.
        role: the label (``"name mover"``, ``"induction"``, ``"sink"``...) or
            ``"unclassified"``.
        evidence: the measurements that earned the label, in words.
        scores: ``previous_token``, ``duplicate_token`` and ``induction`` on repeated random
            tokens.
        direct_effect: direct effect on the logit difference (NaN without wrong answers).
        total_effect: the circuit's logit difference lost when the head alone is removed
            (NaN when not measured).
        position: the token role the head acts from (``END`` for the answer position,
            ``S2`` for an IOI induction head...); empty when the task records no roles.
    """

    head: str
    role: str
    evidence: str
    scores: dict[str, float]
    direct_effect: float
    total_effect: float
    position: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def pattern_scores(
    pattern: Float[Tensor, "batch head query key"], length: int
) -> Float[Tensor, "3 head"]:
    """Previous-token, duplicate-token and induction scores of attention patterns on sequences
    made of one token, then ``length`` random tokens repeated twice: the mean attention from
    each position to the one before it, and from each second-copy position to its first copy
    and to the token after its first copy."""
    previous = pattern.diagonal(offset=-1, dim1=-2, dim2=-1).mean((0, -1))
    second = torch.arange(1 + length, 1 + 2 * length)
    duplicate = pattern[:, :, second, second - length].mean((0, -1))
    induction = pattern[:, :, second, second - length + 1].mean((0, -1))
    return torch.stack([previous, duplicate, induction])


@torch.no_grad()
def repeated_token_scores(
    model,
    heads: Sequence[tuple[int, int]],
    first_token: int,
    *,
    n: int = 16,
    length: int = RANDOM_LENGTH,
    seed: int = 0,
) -> dict[tuple[int, int], dict[str, float]]:
    """:func:`pattern_scores` of ``heads`` (``(layer, head)``) on ``n`` sequences of
    ``first_token`` followed by random tokens repeated twice (shorter halves where the
    model's context is shorter)."""
    length = max(1, min(length, (model.cfg.n_ctx - 1) // 2))
    generator = torch.Generator().manual_seed(seed)
    low = min(1000, model.cfg.d_vocab // 4)
    half = torch.randint(low, model.cfg.d_vocab, (n, length), generator=generator)
    tokens: Int[Tensor, "n pos"] = torch.cat(
        [torch.full((n, 1), first_token), half, half], dim=1
    ).to(model_device(model))
    layers = sorted({layer for layer, _ in heads})
    kept: dict[int, Tensor] = {}

    def keep(layer):
        def hook(pattern, hook):
            kept[layer] = pattern.detach().float().cpu()

        return hook

    hooks = [(f"blocks.{layer}.attn.hook_pattern", keep(layer)) for layer in layers]
    with exclusive(model, "scoring heads"), attached(model, hooks):
        model(tokens)
    out = {}
    for layer in layers:
        scores = pattern_scores(kept[layer], length)
        for at, h in heads:
            if at == layer:
                previous, duplicate, induction = scores[:, h].tolist()
                out[(at, h)] = {
                    "previous_token": previous,
                    "duplicate_token": duplicate,
                    "induction": induction,
                }
    return out


def classify(
    profile: HeadProfile,
    scores: Mapping[str, float],
    total_effect: float,
    scale: float,
) -> tuple[str, str]:
    """``(role, evidence)`` of one head from its profile, its pattern scores and its total
    effect, with effects judged against ``scale`` (the circuit's logit difference). Rules in
    order: moves a role's token to the answer (or against it), reads a role and acts through
    later nodes, induction, duplicate-token, previous-token, sink; else unclassified."""
    at_end = {g: v for g, v in profile.attention.items() if g not in (FIRST, OTHER, "END")}
    direct = profile.direct_effect
    indirect = total_effect - direct if not math.isnan(total_effect) else float("nan")
    counts = abs(scale) * EFFECT_SHARE
    read = max(at_end, key=at_end.get) if at_end else None
    if read is not None and at_end[read] >= READ_SHARE:
        looks = f"attends to {read} from the answer position ({at_end[read]:.2f})"
        if not math.isnan(direct) and abs(direct) >= counts:
            kind = "mover" if direct > 0 else "negative mover"
            role = TASK_NAMES.get((kind, read), f"{kind} of {read}")
            return role, f"{looks}; direct effect {direct:+.2f}"
        if not math.isnan(indirect) and abs(indirect) >= counts and abs(indirect) > abs(direct):
            role = TASK_NAMES.get(("reader", read), f"reads {read}, acts through later nodes")
            effects = f"direct effect {direct:+.2f}, through later nodes {indirect:+.2f}"
            return role, f"{looks}; {effects}"
    for name, key in (
        ("induction", "induction"),
        ("duplicate-token", "duplicate_token"),
        ("previous-token", "previous_token"),
    ):
        if scores.get(key, 0.0) >= PATTERN_SCORE:
            evidence = f"{name} score {scores[key]:.2f} on repeated random tokens"
            return name, evidence + _in_task(profile)
    first = profile.attention.get(FIRST, 0.0)
    if first >= SINK_SHARE:
        evidence = f"{first:.2f} of the answer position's attention on the first token"
        if not math.isnan(total_effect) and abs(total_effect) >= counts:
            evidence += (
                f"; removing it still moves the logit difference by {-total_effect:+.2f}, so "
                "what matters is what it does not write elsewhere"
            )
        return "sink", evidence
    return "unclassified", "no rule fits: " + _strongest(profile, scores)


PATTERN_ROLES = ("induction", "duplicate-token", "previous-token")


def acts_at(profile: HeadProfile, role: str) -> str:
    """The token role a head acts from: for a pattern role (induction, duplicate-token,
    previous-token) the query role whose attention to another role is largest; for any
    other the answer position (``END`` where the task names it)."""
    rows = profile.attention_by_query
    if not rows:
        return ""
    if role not in PATTERN_ROLES:
        return "END" if "END" in rows else ""

    def reach(query: str) -> float:
        row = rows[query]
        return max((v for g, v in row.items() if g not in (FIRST, OTHER, query)), default=0.0)

    return max(rows, key=reach)


def head_roles(
    model,
    profiles: Sequence[HeadProfile],
    effects: NodeEffects,
    first_token: int,
    *,
    seed: int = 0,
) -> tuple[HeadRole, ...]:
    """The role of each profiled head, from its profile, its pattern scores on repeated
    random tokens that start with ``first_token`` (the task's first prompt token, so that a
    head parks attention as it does on the task) and its removal effect in ``effects``."""
    if not profiles:
        return ()
    scores = repeated_token_scores(
        model, [(p.layer, p.index) for p in profiles], first_token, seed=seed
    )
    total = {e.node: -e.delta_metric for e in effects.effects if e.granularity == "head"}
    roles = []
    for profile in profiles:
        score = scores[(profile.layer, profile.index)]
        effect = total.get(profile.head, float("nan"))
        role, evidence = classify(profile, score, effect, effects.metric)
        roles.append(HeadRole(profile.head, role, evidence, score, profile.direct_effect, effect))
    return tuple(roles)


def _in_task(profile: HeadProfile) -> str:
    """Where the head looks from each role on the task, the strongest group only."""
    rows = []
    for query, row in profile.attention_by_query.items():
        target = max(row, key=row.get)
        rows.append(f"{query}->{target} {row[target]:.2f}")
    return f"; on the task {', '.join(rows)}" if rows else ""


def _strongest(profile: HeadProfile, scores: Mapping[str, float]) -> str:
    group = max(profile.attention, key=profile.attention.get)
    pattern = max(scores, key=scores.get)
    return (
        f"answer position attends most to {group} ({profile.attention[group]:.2f}), "
        f"highest pattern score {pattern.replace('_', '-')} {scores[pattern]:.2f}"
    )
