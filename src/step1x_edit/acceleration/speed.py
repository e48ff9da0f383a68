"""Speed modes for the DiT, on diffusers' machinery: regional compilation, the attention backend and step caching.

- **Regional compilation** (diffusers' ``compile_repeated_blocks``): ``torch.compile`` compiles one double and one
  single block and reuses the code for all 57, so compiling takes seconds rather than minutes. The timestep and
  the rotary tables are tensors, so the steps of an edit and the images of one working size reuse the compiled
  code; a new working size compiles once more (``dynamic=None``: torch marks the changing length dynamic then).
- **Attention backend** (diffusers' attention dispatcher, ``set_attention_backend``): ``native`` (PyTorch SDPA,
  the default), ``flash`` / ``_flash_3`` (flash-attn 2 / 3), ``sage`` (SageAttention), ... Each needs its package;
  a missing one is refused when the mode is applied.
- **Step caching** (diffusers' cache hooks, off by default): ``first-block`` (FirstBlockCache: when the first
  block's output changed less than ``threshold`` since the last full step, the other blocks' residual is reused;
  the dynamic, TeaCache-style criterion of the official code's TeaCache) and ``taylorseer`` (TaylorSeer: the
  blocks' outputs are extrapolated between full steps every ``cache_interval`` steps). Both trade quality for
  speed: see ``docs/performance.md`` for the measured costs.
"""

from __future__ import annotations

from ..errors import UnsupportedModeError

FIRST_BLOCK_CACHE_THRESHOLD = 0.05  # diffusers' default
TAYLORSEER_INTERVAL = 5  # diffusers' default: one full step in five once the cache is on


def compile_transformer(transformer, **compile_options) -> None:
    """Compile the DiT's repeated blocks with ``torch.compile`` (regional compilation); ``compile_options`` go to
    ``torch.compile`` (``backend``, ``mode``, ``fullgraph``, ...)."""
    import torch

    if not hasattr(torch, "compile"):
        raise UnsupportedModeError("--compile needs torch.compile (PyTorch 2)")
    transformer.compile_repeated_blocks(**compile_options)


def attention_backends() -> list[str]:
    """The attention backend names diffusers knows (each may still need its package)."""
    from diffusers.models.attention_dispatch import AttentionBackendName

    return sorted(item.value for item in AttentionBackendName)


def check_attention_backend(name: str) -> None:
    """Raise :class:`UnsupportedModeError` when diffusers does not know attention backend ``name`` or its package
    is missing (checked before any model loads)."""
    from diffusers.models.attention_dispatch import (
        AttentionBackendName,
        _check_attention_backend_requirements,
    )

    known = attention_backends()
    if name not in known:
        raise UnsupportedModeError(f"unknown attention backend {name!r}; diffusers knows: {', '.join(known)}")
    try:
        _check_attention_backend_requirements(AttentionBackendName(name))
    except (RuntimeError, ValueError, ImportError) as error:
        raise UnsupportedModeError(f"attention backend {name} cannot run here: "
                                   f"{' '.join(str(error).split())[:300]}") from error


def set_attention_backend(transformer, name: str) -> None:
    """Run the DiT's attention with diffusers' backend ``name`` (checked first, see
    :func:`check_attention_backend`)."""
    check_attention_backend(name)
    try:
        transformer.set_attention_backend(name)
    except (RuntimeError, ValueError, ImportError) as error:
        raise UnsupportedModeError(f"attention backend {name} cannot run here: "
                                   f"{' '.join(str(error).split())[:300]}") from error


def cache_config(name: str, threshold: float | None = None):
    """The diffusers cache config for cache ``name`` (``first-block`` with ``threshold``, or ``taylorseer``)."""
    from diffusers.hooks import FirstBlockCacheConfig, TaylorSeerCacheConfig

    if name == "first-block":
        return FirstBlockCacheConfig(threshold=FIRST_BLOCK_CACHE_THRESHOLD if threshold is None else threshold)
    if name == "taylorseer":
        if threshold is not None:
            raise UnsupportedModeError("--cache-threshold applies to --cache first-block only (TaylorSeer caches on "
                                       "a fixed interval)")
        return TaylorSeerCacheConfig(cache_interval=TAYLORSEER_INTERVAL)
    raise UnsupportedModeError(f"unknown cache {name!r}")


def enable_cache(transformer, name: str, threshold: float | None = None) -> None:
    """Turn on step caching ``name`` for the DiT (diffusers' ``CacheMixin.enable_cache``)."""
    transformer.enable_cache(cache_config(name, threshold))
