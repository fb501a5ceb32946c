"""Where each part of a model lives, looked up per masked site.

A model split over devices (a HookedTransformer with ``n_devices > 1``, or a bridge around a
Hugging Face model loaded with ``device_map="auto"``) keeps each block on its own device. What a
fit makes for a site (its ablated values, and so its mask, which follows them) belongs on that
site's device; what it makes from the answers (reference logits, KL, the loss) belongs on the
unembedding's. The model's first parameter says neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain

import torch

from .nodes import ModelDims


@dataclass(frozen=True)
class Placement:
    """Devices of one model's parts.

    Args:
        inputs: where the model reads its tokens (its embedding).
        answers: where its logits come out (its unembedding).
        sites: the device of each masked hook point, by hook name.
    """

    inputs: torch.device
    answers: torch.device
    sites: dict[str, torch.device]

    @classmethod
    def of(cls, model, dims: ModelDims) -> Placement:
        inputs = input_device(model)
        sites = {
            name: module_device(site_module(model, name), inputs) for name in dims.hook_names()
        }
        answers = module_device(getattr(model, "unembed", None), inputs)
        return cls(inputs=inputs, answers=answers, sites=sites)

    @property
    def devices(self) -> tuple[torch.device, ...]:
        """Every device the model uses, inputs first."""
        found = [self.inputs, *self.sites.values(), self.answers]
        return tuple(dict.fromkeys(found))


def input_device(model) -> torch.device:
    """Where ``model`` reads its tokens: its embedding's device (the first parameter's for a
    model without ``embed``)."""
    return module_device(getattr(model, "embed", None), first_device(model))


def first_device(model) -> torch.device:
    """The device of the model's first parameter (CPU for a model without any)."""
    return module_device(model, torch.device("cpu"))


def module_device(module, default: torch.device) -> torch.device:
    """The device of ``module``'s first parameter or buffer, else ``default``."""
    if module is None:
        return default
    tensor = next(chain(module.parameters(), module.buffers()), None)
    return default if tensor is None else tensor.device


def site_module(model, hook_name: str):
    """The module a hook point belongs to (``blocks.3.mlp`` for ``blocks.3.mlp.hook_post``),
    or None when the model has no such submodule."""
    try:
        return model.get_submodule(hook_name.rsplit(".", 1)[0])
    except AttributeError:
        return None
