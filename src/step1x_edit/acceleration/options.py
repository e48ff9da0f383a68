"""One choice of memory, speed and multi-GPU modes (:class:`Acceleration`) and the one function that applies it to
a loaded pipeline (:func:`apply_acceleration`).

A memory mode is named for the card it serves (``full``, ``24gb``, ``16gb``, ``12gb``; ``auto`` picks one from the
free GPU memory and says which) and stands for a set of the underlying choices, each of which can also be given on
its own (``offload``, ``dit_storage``, ``quantize_dit``, ``quantize_mllm``, ``vae_tiling``); an explicit choice
overrides the mode's. Speed modes (``compile``, ``attention_backend``, ``cache``) and ``parallel`` compose with
every memory mode the libraries allow; a combination they do not allow is refused with one clear line
(:class:`~step1x_edit.errors.UnsupportedModeError`), never silently replaced.
"""

from __future__ import annotations

from dataclasses import dataclass

MEMORY_MODES = ("auto", "full", "24gb", "16gb", "12gb")
# Where the big models live: "none" (all resident on the GPU), "model" (each whole model moved to the GPU while it
# runs: diffusers' enable_model_cpu_offload), "group" (blocks streamed to the GPU as they run, with CUDA streams and
# prefetch: diffusers' group offloading, on the DiT and the MLLM).
OFFLOADS = ("none", "model", "group")
# How the DiT's weights are stored: "auto" (the compute dtype) or "fp8" (float8_e4m3fn storage, computed in the
# compute dtype: diffusers' layerwise casting).
DIT_STORAGES = ("auto", "fp8")
# Weight quantization through the libraries: torchao int8 or float8 weight-only, bitsandbytes NF4.
QUANTIZATIONS = ("none", "int8", "fp8", "nf4")
# Step caching through diffusers' cache hooks (off by default).
CACHES = ("none", "first-block", "taylorseer", "magcache")
PARALLELS = ("none", "cfg", "context")


@dataclass(frozen=True)
class Acceleration:
    """How a pipeline runs. ``None`` fields take the memory mode's choice (see :data:`MEMORY_PLANS`).

    - ``memory``: one of :data:`MEMORY_MODES`;
    - ``offload``: one of :data:`OFFLOADS`; ``dit_storage``: one of :data:`DIT_STORAGES`;
    - ``quantize_dit`` / ``quantize_mllm``: one of :data:`QUANTIZATIONS`; ``vae_tiling``: decode in tiles;
    - ``compile``: regional compilation of the DiT's repeated blocks (``torch.compile``);
    - ``attention_backend``: the DiT's attention backend (diffusers' ``set_attention_backend`` names: ``native``,
      ``flash``, ``_flash_3``, ``sage``, ...; None: the default);
    - ``cache``: one of :data:`CACHES`, with ``cache_threshold`` (None: the cache's default);
    - ``parallel``: one of :data:`PARALLELS` (``cfg`` and ``context`` run under ``torchrun``).
    """

    memory: str = "full"
    offload: str | None = None
    dit_storage: str | None = None
    quantize_dit: str | None = None
    quantize_mllm: str | None = None
    vae_tiling: bool | None = None
    compile: bool = False
    attention_backend: str | None = None
    cache: str = "none"
    cache_threshold: float | None = None
    parallel: str = "none"
