"""Memory modes: where the DiT and the MLLM live and how the DiT's weights are stored, on diffusers' machinery.

- **Group offloading** (diffusers' ``apply_group_offloading``): weights stay on the CPU and each group is copied to
  the GPU just before it runs, on a CUDA side stream that fetches the next group while the current one computes.
  The DiT is grouped by block (its 19 double and 38 single blocks); the MLLM by leaf layer, because the v1.2 code
  path calls some of its layers (the token embedding, the vision tower) directly rather than through the
  model's ``forward``, and a leaf-level hook follows every such call.
- **Whole-model offloading** (diffusers' ``enable_model_cpu_offload``): each model moves to the GPU while it runs.
  It needs the largest model's full size on the GPU (24.9 GB for the released DiT in bfloat16), so it is no
  longer any memory mode's choice; it stays available as ``offload="model"``.
- **fp8 storage** (diffusers' layerwise casting): the DiT's linear layers keep float8_e4m3fn weights and are cast
  to the compute dtype one layer at a time. diffusers keeps the adaLN modulation layers (``norm*.linear``, a
  quarter of the weights), the final projection and the rotary embedding in the compute dtype, so the released
  DiT takes 15.6 GB instead of 24.9 GB in bfloat16.
- **VAE tiling** (``AutoencoderKL.enable_tiling``): large outputs decode in overlapping tiles.

A memory mode names the card it serves (:data:`MEMORY_PLANS`). ``auto`` picks the first mode whose estimated
footprint (:func:`estimated_peak_bytes`, from this model's parameter sizes and the working size) fits the free GPU
memory, and says which it picked and why.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UnsupportedModeError

FP8_STORAGE_DTYPE = torch.float8_e4m3fn
# Share of the free memory a mode's estimate may take (allocator fragmentation, CUDA context, other buffers).
AUTO_HEADROOM = 0.85


@dataclass(frozen=True)
class MemoryPlan:
    """The choices a memory mode stands for: offloading of the DiT and of the MLLM (``none``, ``model`` or
    ``group``), the DiT's weight storage (``auto`` or ``fp8``) and VAE tiling."""

    dit_offload: str
    mllm_offload: str
    dit_storage: str
    vae_tiling: bool
    card: str


MEMORY_PLANS = {
    "full": MemoryPlan("none", "none", "auto", False, "80 GB cards (A100, H100, H200): everything resident"),
    "24gb": MemoryPlan("none", "group", "fp8", True, "24 GB cards (RTX 3090, 4090, A5000): the DiT resident with "
                       "fp8 weights, the MLLM streamed by layer"),
    "16gb": MemoryPlan("group", "group", "auto", True, "16 GB cards (RTX 4080, 4060 Ti 16 GB, T4): the DiT streamed "
                       "by block in the compute dtype (lossless), the MLLM by layer"),
    "12gb": MemoryPlan("group", "group", "fp8", True, "12 GB cards (RTX 3060, 4070): the DiT streamed by block with "
                       "fp8 weights (half the bytes moved), the MLLM by layer"),
}
# The order ``auto`` tries them in: fastest first, as listed above.
AUTO_ORDER = tuple(MEMORY_PLANS)


def parameter_bytes(module: torch.nn.Module, device: torch.device | None = None) -> int:
    """Bytes of ``module``'s parameters and buffers (on ``device`` only, when given), quantized ones counted as
    :func:`tensor_bytes` counts them."""
    return sum(tensor_bytes(tensor) for tensor in [*module.parameters(), *module.buffers()]
               if device is None or tensor.device == device)


def tensor_bytes(tensor: torch.Tensor) -> int:
    """The bytes ``tensor`` really takes: a torchao quantized tensor its data and scales, a bitsandbytes 4-bit
    parameter its packed weights and quantization state, any other its ``nbytes``."""
    if hasattr(tensor, "tensor_data_names"):  # a torchao quantized tensor: its data and scales
        names = [*tensor.tensor_data_names, *getattr(tensor, "optional_tensor_data_names", [])]
        return sum(getattr(tensor, part).nbytes for part in names if getattr(tensor, part) is not None)
    state = getattr(tensor, "quant_state", None)  # a bitsandbytes Params4bit: the packed weights, then its state
    if state is not None:
        return tensor.data.nbytes + sum(
            value.nbytes for value in state.as_dict(packed=True).values() if isinstance(value, torch.Tensor)
        )
    return tensor.nbytes


def fp8_storage_bytes(transformer) -> int:
    """Bytes of the DiT's parameters once stored in fp8 by :func:`enable_fp8_storage`: the layers diffusers'
    layerwise casting casts (linear and convolution layers, but not those whose names match its skip patterns:
    the adaLN modulations ``norm*.linear``, the final ``proj_out``, the rotary embedding) take one byte per
    weight, the others keep theirs. For the released DiT that is 15.6 GB of its 24.9 GB in bfloat16."""
    import re

    from diffusers.hooks._common import _GO_LC_SUPPORTED_PYTORCH_LAYERS
    from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN

    if uses_fp8_storage(transformer):
        return parameter_bytes(transformer)
    patterns = (*DEFAULT_SKIP_MODULES_PATTERN, *(transformer._skip_layerwise_casting_patterns or ()))
    saved = 0
    for name, layer in transformer.named_modules():
        if isinstance(layer, _GO_LC_SUPPORTED_PYTORCH_LAYERS) and not any(re.search(p, name) for p in patterns):
            saved += sum(param.numel() * (param.element_size() - FP8_STORAGE_DTYPE.itemsize)
                         for param in layer.parameters(recurse=False))
    return parameter_bytes(transformer) - saved


def estimated_peak_bytes(pipe, mode: str, size_level: int | None = None) -> int:
    """A rough estimate of the GPU memory ``pipe`` needs under memory ``mode`` for one edit at ``size_level``
    (default: the pipeline's): the weights the mode keeps resident, the largest group in flight (two, with
    prefetch) and the working memory of the call (:meth:`~step1x_edit.pipeline.Step1XEditPipeline.
    working_bytes_per_pixel`)."""
    plan = MEMORY_PLANS[mode]
    size_level = size_level or pipe.config.default_size_level
    dit = parameter_bytes(pipe.transformer)
    if plan.dit_offload == "group":  # two blocks in flight, plus what lies outside the blocks
        blocks = [parameter_bytes(block) for block in
                  [*pipe.transformer.transformer_blocks, *pipe.transformer.single_transformer_blocks]]
        dit = 2 * max(blocks) + dit - sum(blocks)
    if plan.dit_storage == "fp8":
        dit = dit * fp8_storage_bytes(pipe.transformer) // max(parameter_bytes(pipe.transformer), 1)
    mllm = parameter_bytes(pipe.text_encoder)
    if plan.mllm_offload == "group":
        mllm = 2 * max(parameter_bytes(leaf) for leaf in pipe.text_encoder.modules() if not list(leaf.children()))
        resident_with_dit = 0
    else:
        resident_with_dit = mllm
    working = pipe.working_bytes_per_pixel() * size_level**2
    if plan.vae_tiling:
        working = working // 2  # the VAE's share, the larger one at high resolution, is bounded by the tile
    vae = parameter_bytes(pipe.vae)
    return max(mllm, resident_with_dit + dit) + vae + working


def choose_memory_mode(pipe, device: torch.device, size_level: int | None = None) -> tuple[str, str]:
    """The memory mode ``auto`` stands for on ``device``, and why (one line)."""
    if device.type != "cuda":
        return "full", f"memory mode full: running on {device.type}, nothing to offload to"
    free, total = torch.cuda.mem_get_info(device)
    gib = 2**30
    for mode in AUTO_ORDER:
        need = estimated_peak_bytes(pipe, mode, size_level)
        if need <= AUTO_HEADROOM * free:
            return mode, (f"memory mode {mode} (auto): {free / gib:.1f} GiB free of {total / gib:.1f} GiB, this "
                          f"mode needs about {need / gib:.1f} GiB")
    need = estimated_peak_bytes(pipe, AUTO_ORDER[-1], size_level)
    raise UnsupportedModeError(f"not enough GPU memory for this model in any mode: {free / gib:.1f} GiB free, the "
                               f"smallest mode ({AUTO_ORDER[-1]}) needs about {need / gib:.1f} GiB; free the GPU, "
                               "use a smaller --size-level, or quantize (--quantize-dit/--quantize-mllm)")


def check_fp8_storage(device: torch.device) -> None:
    """Raise :class:`UnsupportedModeError` unless ``device`` can store and cast float8 weights."""
    try:
        torch.ones(2, device=device).to(FP8_STORAGE_DTYPE).to(torch.float32)
    except (RuntimeError, TypeError) as error:
        raise UnsupportedModeError(f"fp8 weight storage is not supported on {device} ({' '.join(str(error).split())[:200]}); "
                                   "use --dit-storage auto, or --quantize-dit int8") from error


def enable_fp8_storage(transformer) -> int:
    """Store the DiT's layer weights in float8_e4m3fn, computed in its current dtype (diffusers' layerwise
    casting; the model's ``_skip_layerwise_casting_patterns`` stay as they are). Returns the bytes saved."""
    before = parameter_bytes(transformer)
    transformer.enable_layerwise_casting(storage_dtype=FP8_STORAGE_DTYPE, compute_dtype=transformer.dtype)
    return before - parameter_bytes(transformer)


def uses_fp8_storage(transformer) -> bool:
    """Whether the DiT's weights are stored in float8 with layerwise casting."""
    return any(param.dtype == FP8_STORAGE_DTYPE for param in transformer.parameters())


def enable_group_offload(module: torch.nn.Module, onload_device: torch.device, part: str) -> None:
    """Stream ``module`` (``part``: ``"dit"`` by block, ``"mllm"`` by leaf layer) from the CPU to
    ``onload_device`` as it runs; on CUDA through a side stream that prefetches the next group."""
    from diffusers.hooks import apply_group_offloading

    stream = onload_device.type == "cuda"
    module.to("cpu")
    apply_group_offloading(
        module, onload_device=onload_device, offload_device=torch.device("cpu"),
        offload_type="block_level" if part == "dit" else "leaf_level",
        num_blocks_per_group=1 if part == "dit" else None, use_stream=stream, record_stream=stream,
        non_blocking=stream,
    )


def is_group_offloaded(module: torch.nn.Module) -> bool:
    """Whether diffusers' group offloading hooks are on ``module`` or its layers."""
    return any(getattr(layer, "_diffusers_hook", None) is not None
               and layer._diffusers_hook.get_hook("group_offloading") is not None for layer in module.modules())


def execution_device(module: torch.nn.Module) -> torch.device:
    """Where ``module`` computes: the onload device of its group offloading, else its parameters' device."""
    if is_group_offloaded(module):
        from diffusers.hooks.group_offloading import _get_group_onload_device

        return _get_group_onload_device(module)
    return next(module.parameters()).device


def enable_vae_tiling(vae) -> bool:
    """Decode and encode in tiles when the VAE can (``AutoencoderKL``); False when it has no tiling (the demo
    model's linear patch autoencoder, whose memory does not grow beyond the image itself)."""
    if not hasattr(vae, "enable_tiling"):
        return False
    vae.enable_tiling()
    return True
