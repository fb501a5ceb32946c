"""Models to prune: the embedded default (SmolLM2-135M-Instruct, offline) and hub names,
as a HookedTransformer or a TransformerBridge, and both views of one Hugging Face model."""

from .bridge import bridge_from_hf, hooked_from_hf
from .convert import DEFAULT_MODEL_NAME, llama_cfg_fields
from .loading import default_cache_dir, default_model_path, is_default_model_available, load_model

__all__ = [
    "DEFAULT_MODEL_NAME",
    "bridge_from_hf",
    "default_cache_dir",
    "default_model_path",
    "hooked_from_hf",
    "is_default_model_available",
    "llama_cfg_fields",
    "load_model",
]
