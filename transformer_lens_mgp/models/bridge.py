"""Offline TransformerBridge and HookedTransformer views of one Hugging Face causal LM.

``TransformerBridge.boot_transformers`` wants a hub name to read the architecture from;
given a folder holding the model's ``config.json`` and an already-loaded ``hf_model`` and
``tokenizer``, it works without network access. Both views expose the hook points the masks
use (``blocks.{l}.attn.hook_z``, ``blocks.{l}.mlp.hook_post``), so CircuitPruner, Circuit
and evaluate work on either.
"""

from __future__ import annotations

import tempfile
import warnings
from typing import TYPE_CHECKING, Any

import torch

from ..core.model_api import hooked_transformer_classes
from .convert import llama_cfg_fields

if TYPE_CHECKING:  # not in TransformerLens 4.x, which has only the bridge
    from transformer_lens import HookedTransformer


def bridge_from_hf(hf_model: Any, tokenizer: Any):
    """A ``TransformerBridge`` around ``hf_model`` (weights shared, not copied), offline."""
    from transformer_lens.model_bridge import TransformerBridge

    with tempfile.TemporaryDirectory() as folder:
        hf_model.config.save_pretrained(folder)
        bridge = TransformerBridge.boot_transformers(folder, hf_model=hf_model, tokenizer=tokenizer)
    return bridge.eval()


def hooked_from_hf(hf_model: Any, tokenizer: Any, name: str = "hf-llama") -> HookedTransformer:
    """A ``HookedTransformer`` with ``hf_model``'s weights (Llama architecture, tied
    embeddings), converted by TransformerLens' own Llama conversion."""
    HookedTransformer, HookedTransformerConfig = hooked_transformer_classes("hooked_from_hf")
    from transformer_lens.pretrained.weight_conversions import convert_llama_weights

    fields = llama_cfg_fields(hf_model.config, model_name=name)
    cfg = HookedTransformerConfig.from_dict({**fields, "device": "cpu", "dtype": torch.float32})
    with torch.no_grad():
        state_dict = convert_llama_weights(hf_model, cfg)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*HookedTransformer is deprecated.*")
        model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    model.load_state_dict(model.fill_missing_keys(state_dict), strict=True)
    return model.eval()
