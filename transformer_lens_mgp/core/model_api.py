"""What the package relies on of a TransformerLens model, in one place.

Everything else touches a model only through HookPoint names, :func:`attached` (hooks for
the length of a block) and its forward pass, so one code path serves ``HookedTransformer``
(TransformerLens 3.9) and ``TransformerBridge`` (3.9 and 4.x).
"""

from __future__ import annotations

import functools
import hashlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from .errors import UsageError, UsageTypeError
from .nodes import ModelDims
from .placement import input_device

FwdHooks = list[tuple[str, Callable]]
"""TransformerLens ``fwd_hooks``: ``(hook name, fn(tensor, *, hook) -> tensor | None)``."""


class _Reached(Exception):
    """Ends a forward pass once the activation asked for is known."""


def run_until(model, tokens, hook_name: str, fwd_hooks: FwdHooks = ()):
    """The activation at ``hook_name`` of ``model`` on ``tokens`` (with ``fwd_hooks`` on),
    and nothing after it: the pass ends there, its graph kept for a backward pass. A
    TransformerBridge's ``stop_at_layer`` cannot stop inside or after its last block."""
    reached = []

    def stop(activation, hook) -> None:
        reached.append(activation)
        raise _Reached

    try:
        with attached(model, [*fwd_hooks, (hook_name, stop)]):
            model(tokens)
    except _Reached:
        return reached[0]
    raise UsageError(f"the forward pass never reached {hook_name!r}")


@contextmanager
def attached(model, fwd_hooks: FwdHooks) -> Iterator[None]:
    """``model.hooks(fwd_hooks=...)``: the hooks are on inside the block, and only those are
    taken off after it, however it ends.

    The names are looked up once per block: a TransformerBridge rebuilds its table of hook
    aliases on every ``hook_dict`` access, which ``hooks()`` makes twice per hook (for
    SmolLM2, 15 ms each: more than its forward pass in a training step with 60 hooks).
    """
    points = model.hook_dict
    added = []
    owner = threading.get_ident()
    try:
        for name, fn in fwd_hooks:
            point = points.get(name)
            if point is None:
                raise UsageError(f"the model has no hook point {name!r}")
            point.add_hook(functools.partial(_in_thread, fn, owner), dir="fwd")
            added.append((point, point.fwd_hooks[-1]))
        yield
    finally:
        for point, handle in reversed(added):
            handle.hook.remove()
            point.fwd_hooks.remove(handle)


def _in_thread(fn, owner: int, tensor, *, hook):
    """Run ``fn`` for passes of the thread that attached it; a pass of another thread while
    the hooks are on gets a clear error instead of the masks of a fit it knows nothing of."""
    if threading.get_ident() != owner:
        raise UsageError(
            "this model is being fitted or evaluated in another thread, and its hooks are on "
            "until that call returns; run your own passes after it, or on copy.deepcopy(model)"
        )
    return fn(tensor, hook=hook)


def has_hooked_transformer() -> bool:
    """Whether this TransformerLens still has ``HookedTransformer`` (3.x does, 4.x does not)."""
    try:
        from transformer_lens import HookedTransformer  # noqa: F401
    except ImportError:
        return False
    return True


def hooked_transformer_classes(feature: str):
    """``(HookedTransformer, HookedTransformerConfig)``, or a clear error on TransformerLens
    4.x, which removed them."""
    try:
        from transformer_lens import HookedTransformer, HookedTransformerConfig
    except ImportError:
        raise UsageError(
            f"{feature}: this needs HookedTransformer, which TransformerLens 4.x removed; "
            "use a TransformerBridge, or install transformer-lens 3.9"
        ) from None
    return HookedTransformer, HookedTransformerConfig


def is_hooked_transformer(model) -> bool:
    """True for a HookedTransformer (which can stop before the unembedding); False for a
    TransformerBridge, and always on TransformerLens 4.x, which has only the bridge."""
    try:
        from transformer_lens import HookedTransformer
    except ImportError:
        return False
    return isinstance(model, HookedTransformer)


def model_device(model) -> torch.device:
    """Where ``model`` reads its tokens (see :func:`~.placement.input_device`). Per-site
    devices: :class:`~.placement.Placement`."""
    return input_device(model)


def model_dims(model) -> ModelDims:
    """The mask sizes of ``model``, or a clear error for something that is not a TL model."""
    cfg = getattr(model, "cfg", None)
    if cfg is None or not hasattr(cfg, "n_layers"):
        raise UsageTypeError(
            f"expected a TransformerLens model with a .cfg, got {type(model).__name__}"
        )
    return ModelDims.from_cfg(cfg)


def check_hook_points(model, dims: ModelDims) -> None:
    """Fail early, with the missing names, for models without the sites we mask."""
    hook_dict = getattr(model, "hook_dict", None)
    if hook_dict is None or not hasattr(model, "hooks"):
        raise UsageTypeError(
            f"expected a TransformerLens model (HookedTransformer or TransformerBridge), got "
            f"{type(model).__name__}; wrap your model with transformer_lens first"
        )
    missing = [name for name in dims.hook_names() if name not in hook_dict]
    if missing:
        raise UsageError(
            f"the model has no hook points {missing[:3]}{' ...' if len(missing) > 3 else ''}; "
            "masks need blocks.{l}.attn.hook_z and blocks.{l}.mlp.hook_post (for MLP "
            "granularities). For a TransformerBridge call model.enable_compatibility_mode() first"
        )


def check_pairs(model, dataset, label: str = "dataset") -> None:
    """Pairs the model cannot run fail here, not deep inside its forward pass: token ids it
    cannot embed, answers it cannot predict, prompts longer than its context."""
    cfg = model.cfg
    prompts = max(int(dataset.clean_tokens.max()), int(dataset.corrupted_tokens.max()))
    if prompts >= cfg.d_vocab:
        raise UsageError(
            f"token id {prompts} in the {label} is outside the model's vocabulary of "
            f"{cfg.d_vocab} tokens; tokenize the prompts with this model's tokenizer"
        )
    answer_sets = [dataset.answer_tokens, dataset.wrong_answer_tokens]
    answers = max(int(t.max()) for t in answer_sets if t is not None)
    d_vocab_out = getattr(cfg, "d_vocab_out", None) or cfg.d_vocab
    if d_vocab_out < 0:  # TransformerLens' "same as d_vocab"
        d_vocab_out = cfg.d_vocab
    if answers >= d_vocab_out:
        raise UsageError(
            f"answer token {answers} in the {label} is outside the model's output vocabulary "
            f"of {d_vocab_out} tokens; tokenize the answers with this model's tokenizer"
        )
    n_ctx = getattr(cfg, "n_ctx", None)
    used = int(dataset.answer_positions.max()) + 1
    if n_ctx is not None and used > n_ctx:
        raise UsageError(
            f"prompts in the {label} are {used} tokens long up to their answer, longer than "
            f"the model's context of {n_ctx} tokens; shorten them"
        )


def check_runnable(model) -> None:
    """Weights the package cannot run with, said before any work: on the meta device (no
    values) or inference tensors (made under ``torch.inference_mode()``, which autograd and
    the weight layout cannot use)."""
    params = list(model.parameters())
    if any(p.device.type == "meta" for p in params):
        raise UsageError(
            "the model's weights are on the meta device (no values); load them first, "
            "e.g. model.to_empty(device='cpu') and a state dict, or build it without meta"
        )
    if any(p.is_inference() for p in params):
        raise UsageError(
            "the model's weights are inference tensors (it was built or loaded under "
            "torch.inference_mode()), which autograd cannot use; build or load it outside "
            "inference_mode"
        )


def check_model_and_pairs(model, dims: ModelDims, **datasets) -> None:
    """What every entry point checks before any work: the model's hook points and weights,
    and each ``label=dataset`` given (None is skipped)."""
    check_hook_points(model, dims)
    check_runnable(model)
    for label, dataset in datasets.items():
        if dataset is not None:
            check_pairs(model, dataset, label.replace("_", " "))


@torch.no_grad()
def model_fingerprint(model) -> str:
    """A digest of the model's weights byte for byte (with their names, shapes and dtypes):
    any changed weight, or two weights swapped, gives another digest."""
    digest = hashlib.blake2b(digest_size=8)
    for name, p in model.named_parameters():
        digest.update(f"{name}{tuple(p.shape)}{p.dtype}".encode())
        if p.numel():
            digest.update(p.detach().contiguous().view(torch.uint8).cpu().numpy().data)
    return digest.hexdigest()
