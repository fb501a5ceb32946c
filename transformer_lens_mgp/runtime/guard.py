"""The user's model stays theirs: what a call changes on it comes back, however it ends."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def frozen(model) -> Iterator[None]:
    """Turn off gradients of the model's weights; put back each flag on exit, whatever happens."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
