"""What the package relies on of a TransformerLens model, in one place.

Everything else touches a model only through HookPoint names, ``model.hooks(...)`` and its
forward pass, so one code path serves ``HookedTransformer`` (TransformerLens 3.9) and
``TransformerBridge`` (3.9 and 4.x).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .errors import UsageError, UsageTypeError
from .nodes import ModelDims

FwdHooks = list[tuple[str, Callable]]
"""TransformerLens ``fwd_hooks``: ``(hook name, fn(tensor, *, hook) -> tensor | None)``."""


def is_hooked_transformer(model) -> bool:
    """True for a HookedTransformer (which can stop before the unembedding); False for a
    TransformerBridge, and always on TransformerLens 4.x, which has only the bridge."""
    try:
        from transformer_lens import HookedTransformer
    except ImportError:
        return False
    return isinstance(model, HookedTransformer)


def model_device(model) -> torch.device:
    return next(model.parameters()).device


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


def check_vocabulary(model, dataset, label: str = "dataset") -> None:
    """Token ids the model cannot embed fail here, not deep inside its forward pass."""
    if dataset.max_token_id() >= model.cfg.d_vocab:
        raise UsageError(
            f"the {label} holds token id {dataset.max_token_id()} but the model's vocabulary "
            f"has {model.cfg.d_vocab} tokens; tokenize the prompts with this model's tokenizer"
        )
