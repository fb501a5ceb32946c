"""Gradient checkpointing per transformer block: keep each block's input, not its insides.

A masked forward + backward keeps every intermediate activation of every block (attention
scores, MLP pre- and post-activations, norms) until the backward pass reaches it. With
``recomputed_blocks`` only the residual stream entering each block is kept, and a block runs
a second time when its gradient is needed: less memory, one more forward of time. During a
step the masks and the ablated activations are fixed tensors, so the rerun is exact.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import torch
from torch.utils.checkpoint import checkpoint

from ..core.errors import UsageError


def checkpointable_blocks(model) -> list[torch.nn.Module]:
    """The model's transformer blocks, or a clear error when it has none we can wrap."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, torch.nn.ModuleList) or len(blocks) == 0:
        raise UsageError(
            f"gradient_checkpointing needs the model's transformer blocks as model.blocks "
            f"(a ModuleList), which {type(model).__name__} does not have; "
            "use gradient_checkpointing=False"
        )
    return list(blocks)


@contextmanager
def recomputed_blocks(model) -> Iterator[None]:
    """Within the context, every block of ``model`` is recomputed in the backward pass.

    Each block's ``forward`` is shadowed by a checkpointed call of itself and the shadow is
    removed on exit, whatever happens, so the model is left as it was. The shadow is written
    into the block's own ``__dict__``: a TransformerBridge block hands plain attribute
    assignments on to the module it wraps.
    """
    blocks = checkpointable_blocks(model)
    own = [vars(block).get("forward") for block in blocks]
    try:
        for block in blocks:
            vars(block)["forward"] = partial(checkpoint, block.forward, use_reentrant=False)
        yield
    finally:
        for block, forward in zip(blocks, own, strict=True):
            if forward is None:
                vars(block).pop("forward", None)
            else:
                vars(block)["forward"] = forward
