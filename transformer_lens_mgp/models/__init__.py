"""Models to prune, offline whenever the weights are local: the embedded default
(SmolLM2-135M-Instruct), Gemma 3 270M (an extra), any ``.gguf`` file or Hugging Face folder,
or a loaded Hugging Face model, as a HookedTransformer or a TransformerBridge."""

from .convert import bridge_from_hf, hooked_from_hf, prepends_bos
from .loading import (
    DEFAULT_MODEL_NAME,
    default_cache_dir,
    default_model_path,
    is_default_model_available,
    load_model,
)
from .sources import SHIPPED

__all__ = [
    "DEFAULT_MODEL_NAME",
    "SHIPPED",
    "bridge_from_hf",
    "default_cache_dir",
    "default_model_path",
    "hooked_from_hf",
    "is_default_model_available",
    "load_model",
    "prepends_bos",
]
