"""Store a HookedTransformer's block weights in the memory layout its forward pass reads.

TransformerLens keeps ``W_in`` as ``[d_model, d_mlp]`` and ``W_Q`` as
``[head, d_model, d_head]``, but its forward calls ``F.linear`` on the transposed, contiguous
weight (``W.T.contiguous()``, or a rearrange to ``[(head d_head), d_model]``), which copies
every weight matrix on every call: a third of a SmolLM2 training step on CPU. Within
``forward_layout`` each such weight holds the same values in the same storage, laid out so
that those calls are views and copy nothing. Outputs are bitwise identical on the default
paths (with options such as ``use_split_qkv_input``, whose einsums read the weights in
another order, equal to float rounding); on exit every weight gets its original layout and
autograd version back, so a graph built before still backpropagates.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ..core.model_api import is_hooked_transformer

LAYOUTS = {
    "W_Q": (0, 2, 1),
    "W_K": (0, 2, 1),
    "W_V": (0, 2, 1),
    "_W_K": (0, 2, 1),
    "_W_V": (0, 2, 1),
    "W_O": (2, 0, 1),
    "W_in": (1, 0),
    "W_gate": (1, 0),
    "W_out": (1, 0),
}
"""Per block weight: the dimension order that is contiguous in memory when the forward reads
it (``W_in``: ``[d_mlp, d_model]``; ``W_Q``: ``[head, d_head, d_model]``; ``W_O``:
``[d_model, head, d_head]``)."""


def _strides_for(shape: torch.Size, order: tuple[int, ...]) -> tuple[int, ...]:
    """Strides of a dense tensor of ``shape`` whose dimensions, slowest first, are ``order``."""
    strides = [0] * len(shape)
    step = 1
    for dim in reversed(order):
        strides[dim] = step
        step *= shape[dim]
    return tuple(strides)


def _relayout(weight: torch.nn.Parameter, strides: tuple[int, ...]) -> None:
    """Rewrite ``weight`` in place (same storage, same values) with the given strides; if
    that fails half-way, the weight gets its old strides and values back before the error
    propagates."""
    values = weight.detach().clone()
    old = weight.stride()
    storage, offset = weight.untyped_storage(), weight.storage_offset()
    with torch.no_grad():
        try:
            weight.set_(storage, offset, weight.shape, strides)
            weight.copy_(values)
        except BaseException:
            weight.set_(storage, offset, weight.shape, old)
            weight.copy_(values)
            raise


def _set_version(tensor: torch.Tensor, version: int) -> None:
    """Put back the autograd version counter that the in-place re-layout bumped, so that a
    graph the caller built before still backpropagates (the values are the same again)."""
    setter = torch._C._autograd._unsafe_set_version_counter
    try:
        setter((tensor,), (version,))
    except TypeError:  # the single-tensor form of older torch releases
        setter(tensor, version)


def _movable(model, include_shared: bool) -> list[tuple[torch.nn.Parameter, tuple[int, ...]]]:
    """Block weights that can be re-laid safely: dense, sharing storage with no other
    parameter (re-laying one of two tied weights would scramble the other), and not in CPU
    shared memory unless asked (another process may be reading them with the old strides)."""
    params = list(model.parameters())
    owners: dict[int, int] = {}
    for p in params:
        key = p.untyped_storage().data_ptr()
        owners[key] = owners.get(key, 0) + 1
    movable = []
    for name, p in model.named_parameters():
        if not name.startswith("blocks."):
            continue
        order = LAYOUTS.get(name.rsplit(".", 1)[-1])
        if order is None or p.ndim != len(order) or not p.is_contiguous() or p.is_inference():
            continue
        if p.device.type == "cpu" and p.is_shared() and not include_shared:
            continue
        if owners[p.untyped_storage().data_ptr()] == 1:
            movable.append((p, _strides_for(p.shape, order)))
    return movable


@contextmanager
def forward_layout(model, include_shared: bool = False) -> Iterator[None]:
    """Within the context, ``model``'s block weights need no copy in the forward pass.

    For a model other than a HookedTransformer (e.g. a TransformerBridge) it does nothing.
    The weights must not be trained within the context (``fit`` freezes them). Weights in
    CPU shared memory are left alone unless ``include_shared``: the process that shares
    them lays them out once, before other processes receive them (see ``sweeps``).
    """
    moved: list[tuple[torch.nn.Parameter, tuple[int, ...], int]] = []
    try:
        if is_hooked_transformer(model):
            for weight, strides in _movable(model, include_shared):
                original = (weight, weight.stride(), weight._version)
                _relayout(weight, strides)
                moved.append(original)
        yield
    finally:
        failures = []
        for weight, strides, version in reversed(moved):  # every weight, even after a failure
            try:
                _relayout(weight, strides)
                _set_version(weight, version)
            except Exception as err:
                failures.append(err)
        if failures:
            raise failures[0]
