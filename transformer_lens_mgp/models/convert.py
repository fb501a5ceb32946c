"""TransformerLens views of a loaded Hugging Face causal LM, offline: a ``HookedTransformer``
through TransformerLens's own conversion for the architecture, or a ``TransformerBridge``
around the model itself. Both expose the hook points the masks use
(``blocks.{l}.attn.hook_z``, ``blocks.{l}.mlp.hook_post``).

TransformerLens builds most configs from the Hugging Face config (Llama, Qwen, Mistral,
GPT-2, Pythia, ...), which a folder holding ``config.json`` gives it without the hub. Gemma
configs it knows only by name: the name whose built-in config has the model's shape is used.
"""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..core.errors import UsageError
from ..core.model_api import hooked_transformer_classes
from .sources import plain_floats

if TYPE_CHECKING:  # not in TransformerLens 4.x, which has only the bridge
    from transformer_lens import HookedTransformer

logger = logging.getLogger(__name__)

# Architectures whose TransformerLens config exists only under official names (no fields
# are read from the Hugging Face config), with the name fragment that marks each family.
_CONFIGS_BY_NAME = {
    "GemmaForCausalLM": "google/gemma-",
    "Gemma2ForCausalLM": "google/gemma-2-",
    "Gemma3ForCausalLM": "google/gemma-3-",
}
_SHAPE = ("d_model", "n_layers", "n_heads", "d_head", "d_mlp")
_LOGIT_TOLERANCE = 1e-2


def prepends_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts a BOS token in front of text, as the model was trained
    (Gemma does, SmolLM2 does not): the TransformerLens view follows it."""
    bos = getattr(tokenizer, "bos_token_id", None)
    ids = tokenizer("a")["input_ids"] if tokenizer is not None else []
    return bos is not None and len(ids) > 0 and ids[0] == bos


def bridge_from_hf(hf_model: Any, tokenizer: Any):
    """A ``TransformerBridge`` around ``hf_model`` (weights shared, not copied), offline."""
    from transformer_lens.model_bridge import TransformerBridge

    hf_model = plain_floats(hf_model)
    check_supported(hf_model.config)
    with tempfile.TemporaryDirectory(prefix="tl-mgp-config-") as folder:
        hf_model.config.save_pretrained(folder)
        bridge = TransformerBridge.boot_transformers(folder, hf_model=hf_model, tokenizer=tokenizer)
    if tokenizer is not None:
        bridge.cfg.default_prepend_bos = prepends_bos(tokenizer)
    return bridge.eval()


def hooked_from_hf(hf_model: Any, tokenizer: Any, name: str | None = None) -> HookedTransformer:
    """A ``HookedTransformer`` with ``hf_model``'s weights, converted by TransformerLens's own
    conversion for its architecture, and checked against ``hf_model``'s logits.

    Raises ``UsageError`` when the installed TransformerLens has no conversion for it (a
    bridge may still work: see :func:`bridge_from_hf`).
    """
    HookedTransformer, _ = hooked_transformer_classes("hooked_from_hf")
    from transformer_lens import loading_from_pretrained as loading

    hf_model = plain_floats(hf_model)
    config = hf_model.config
    architecture = config.architectures[0]
    with tempfile.TemporaryDirectory(prefix="tl-mgp-config-") as folder:
        _save_config(config, Path(folder))
        tl_name = _official_name(config, architecture) or folder
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cfg = loading.get_pretrained_model_config(
                    tl_name,
                    hf_cfg=config.to_dict(),
                    device="cpu",
                    dtype=torch.float32,
                    default_prepend_bos=prepends_bos(tokenizer),
                )
                with torch.no_grad():
                    state_dict = loading.get_pretrained_state_dict(tl_name, cfg, hf_model)
        except (NotImplementedError, ValueError, KeyError, AttributeError, TypeError) as err:
            raise UsageError(
                f"TransformerLens has no HookedTransformer conversion for {architecture} "
                f"({type(err).__name__}: {str(err)[:120]}); load it as a bridge (bridge=True)"
            ) from None
    cfg.model_name = name or getattr(config, "_name_or_path", "") or architecture
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*HookedTransformer is deprecated.*")
        model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    # One strict load_state_dict call: load_and_process_state_dict loads key by key and
    # walks every module for each key, which costs seconds.
    model.load_state_dict(model.fill_missing_keys(state_dict), strict=True)
    _check_logits(model.eval(), hf_model, architecture)
    return model


def _save_config(config: Any, folder: Path) -> None:
    """``config.json`` for TransformerLens to read, with the GPT-2 field it still reads under
    its old name (``n_ctx``, now ``n_positions`` in transformers)."""
    config.save_pretrained(str(folder))
    if hasattr(config, "n_positions") and not hasattr(config, "n_ctx"):
        path = folder / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "n_ctx": config.n_positions}))


def _official_name(config: Any, architecture: str) -> str | None:
    """The TransformerLens name whose built-in config has this model's shape, for the
    architectures TransformerLens configures by name only."""
    family = _CONFIGS_BY_NAME.get(architecture)
    if family is None:
        return None
    from transformer_lens import loading_from_pretrained as loading

    shape = _hf_shape(config)
    for name in loading.OFFICIAL_MODEL_NAMES:
        if not name.lower().startswith(family):
            continue
        try:
            cfg = loading.convert_hf_model_config(name)
        except Exception:  # a name needing the hub to configure is not one of ours
            continue
        if (
            cfg.get("original_architecture") == architecture
            and tuple(cfg.get(k) for k in _SHAPE) == shape
        ):
            return name
    sizes = dict(zip(_SHAPE, shape, strict=True))
    raise UsageError(
        f"TransformerLens knows {architecture} configs only by name, and none of its "
        f"{family}* configs has this model's shape {sizes}; load it as a bridge (bridge=True)"
    )


def _hf_shape(config: Any) -> tuple:
    text = getattr(config, "text_config", None) or config
    d_head = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return (
        text.hidden_size,
        text.num_hidden_layers,
        text.num_attention_heads,
        d_head,
        text.intermediate_size,
    )


def _check_logits(model: Any, hf_model: Any, architecture: str) -> None:
    """Refuse a conversion whose log-probabilities differ from the Hugging Face model's: a
    silently wrong conversion would make every circuit wrong."""
    tokens = torch.arange(1, 9)[None] % model.cfg.d_vocab
    with torch.no_grad():
        ours = model(tokens).float().log_softmax(-1)
        theirs = hf_model(tokens).logits.float().log_softmax(-1)
    gap = (ours - theirs).abs().max().item()
    if not gap <= _LOGIT_TOLERANCE:
        raise UsageError(
            f"TransformerLens's conversion of {architecture} disagrees with the Hugging Face "
            f"model (log-probabilities differ by {gap:.3g}); load it as a bridge (bridge=True)"
        )


def check_supported(config: Any) -> None:
    """Refuse, in one line, an architecture no TransformerLens view can run."""
    try:
        from transformer_lens.factories.architecture_adapter_factory import (
            SUPPORTED_ARCHITECTURES,
        )
    except ImportError:  # an older layout: let TransformerLens speak for itself
        return
    architecture = (getattr(config, "architectures", None) or ["unknown"])[0]
    if architecture not in SUPPORTED_ARCHITECTURES:
        causal = sorted(
            a for a in SUPPORTED_ARCHITECTURES if a.endswith(("ForCausalLM", "LMHeadModel"))
        )
        raise UsageError(
            f"TransformerLens cannot run {architecture}; the causal language models it "
            f"supports are: {', '.join(causal)}"
        )
