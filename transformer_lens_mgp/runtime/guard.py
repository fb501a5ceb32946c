"""The user's model stays theirs: what a call changes on it comes back, however it ends,
and two calls never change it at once."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ..core.errors import UsageError
from ..core.model_api import model_device
from .layout import forward_layout

_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


@contextmanager
def frozen(model) -> Iterator[None]:
    """Turn off gradients of the model's weights; put back every flag on exit, whatever
    happens (a flag that fails to come back does not stop the others)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, flag in flags:
            if flag:
                p.requires_grad_(False)
        yield
    finally:
        failures = []
        for p, flag in flags:
            try:
                p.requires_grad_(flag)
            except RuntimeError as err:
                failures.append(err)
        if failures:
            raise failures[0]


@contextmanager
def exclusive(model, what: str) -> Iterator[None]:
    """One call at a time on a model, in eval mode. A fit or evaluation attaches hooks to the
    model and re-lays its weights, so a second one from another thread would see the first
    one's hooks: it gets this error at once instead; the same thread may nest calls (a
    sweep's fits). Dropout left on by ``model.train()`` would make every pass random, so the
    model runs in eval mode and each module's own mode is put back on exit."""
    with _LOCKS_GUARD:
        lock = _LOCKS.setdefault(model, threading.RLock())
    if not lock.acquire(blocking=False):
        raise UsageError(
            f"this model is busy with a fit or an evaluation in another thread, so {what} "
            "cannot run on it now; run them one after another, or give each thread its own "
            "copy (copy.deepcopy(model))"
        )
    modules = model.modules() if isinstance(model, torch.nn.Module) else ()
    modes = [(module, module.training) for module in modules]
    try:
        for module, _ in modes:
            module.training = False
        yield
    finally:
        for module, mode in modes:
            module.training = mode
        lock.release()


@contextmanager
def fitting(model, what: str, bf16: bool = False) -> Iterator[None]:
    """How the model runs while masks are learned on it: one call at a time, weights frozen
    and laid out for the forward pass (see ``layout``), gradients on even inside a caller's
    ``no_grad`` or ``inference_mode``, and bf16 autocast if asked. Everything is undone on
    exit."""
    with (
        exclusive(model, what),
        frozen(model),
        torch.inference_mode(False),
        torch.enable_grad(),
        forward_layout(model),
    ):
        if not bf16:
            yield
            return
        with torch.autocast(model_device(model).type, dtype=torch.bfloat16):
            yield
