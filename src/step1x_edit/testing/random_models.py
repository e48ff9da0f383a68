"""Step1X-Edit pipelines of any preset size, up to the released one, with random weights, ready in seconds on the
device they run on: for speed and memory measurements, which do not depend on the weights' values.

* :func:`qwen2_5_vl_7b_config`: the Qwen2.5-VL-7B-Instruct architecture (the released MLLM) with the special-token
  ids of a given tokenizer;
* :func:`materialize`: build a module with its parameters on the meta device (buffers computed as usual), then
  allocate them on the target device and fill them from a fixed pool of normal values: no CPU initialisation of
  billions of numbers, and the same weights on every device;
* :func:`random_pipeline`: a whole :class:`~step1x_edit.pipeline.Step1XEditPipeline` of preset ``full`` (the
  released DiT, FLUX VAE and Qwen2.5-VL-7B), ``mid`` or ``tiny``, with the tiny tokenizer of
  :mod:`step1x_edit.testing.tiny` (timing depends on sequence lengths, not on the vocabulary's words).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from ..demo.components import QWEN_SPECIAL_TOKENS, build_text_encoder

# Standard deviation of every weight matrix, embedding and convolution kernel (Qwen2.5-VL's initializer_range).
WEIGHT_STD = 0.02
# Values in the shared pool the weights are cut from: a prime, so that consecutive tensors start at unrelated offsets.
POOL_SIZE = 16_777_259
# Text layers and vision width of the MLLM of the smaller presets (the DiT presets fix the MLLM's hidden size).
SMALL_MLLM = {"mid": {"num_layers": 4, "vision_hidden_size": 64}, "tiny": {"num_layers": 2, "vision_hidden_size": 16}}


def qwen2_5_vl_7b_config(tokenizer) -> Qwen2_5_VLConfig:
    """The Qwen2.5-VL-7B-Instruct architecture (28 text layers of width 3584, 28 heads, 4 KV heads, MLP 18944,
    vocabulary 152064, untied LM head; a 32-block vision tower of width 1280 with full attention in blocks 7, 15,
    23 and 31) whose special-token ids are ``tokenizer``'s (every id must be below the vocabulary size)."""
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIAL_TOKENS}
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
            "num_attention_heads": 28, "num_key_value_heads": 4, "max_position_embeddings": 128000,
            "rms_norm_eps": 1e-6, "rope_theta": 1_000_000.0, "hidden_act": "silu", "tie_word_embeddings": False,
            "use_sliding_window": False, "sliding_window": 32768, "max_window_layers": 28,
            "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
            "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
        },
        vision_config={
            "depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "out_hidden_size": 3584,
            "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
            "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2, "hidden_act": "silu",
        },
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    config._attn_implementation = "sdpa"
    return config


def _weight_pool(seed: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """:data:`POOL_SIZE` normal values of standard deviation :data:`WEIGHT_STD`, drawn on the CPU from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(POOL_SIZE, generator=generator) * WEIGHT_STD).to(device=device, dtype=dtype)


def _fill_from_pool(flat: torch.Tensor, pool: torch.Tensor, offset: int) -> None:
    """Copy ``pool`` into the 1-D ``flat`` starting at ``offset``, wrapping around as often as needed."""
    done = 0
    while done < flat.numel():
        take = min(flat.numel() - done, pool.numel() - offset)
        flat[done : done + take].copy_(pool[offset : offset + take])
        done, offset = done + take, 0


@torch.no_grad()
def materialize(build: Callable[[], torch.nn.Module], device: str | torch.device, dtype: torch.dtype,
                seed: int = 0) -> torch.nn.Module:
    """``build()`` with its parameters allocated on ``device`` in ``dtype`` and filled deterministically: the
    weights of normalisation layers 1, every bias 0, every other parameter cut from a pool of normal values
    (std :data:`WEIGHT_STD`) drawn from ``seed``. Buffers (rotary frequencies and the like) are computed by the
    module's own constructor on the CPU, in the dtype it gives them, and moved to ``device``. Eval mode, no
    gradients; the same ``seed`` gives the same weights on every device."""
    from accelerate import init_empty_weights

    device = torch.device(device)
    with init_empty_weights(include_buffers=False):
        module = build()
    pool = _weight_pool(seed, device, dtype)
    made: dict[int, torch.nn.Parameter] = {}  # tied parameters stay tied
    for submodule in module.modules():
        is_norm = "norm" in type(submodule).__name__.lower()
        for name, parameter in submodule._parameters.items():
            if parameter is None:
                continue
            if id(parameter) not in made:
                tensor = torch.empty(parameter.shape, device=device,
                                     dtype=dtype if parameter.is_floating_point() else parameter.dtype)
                if name == "bias":
                    tensor.zero_()
                elif is_norm and name == "weight":
                    tensor.fill_(1.0)
                else:
                    _fill_from_pool(tensor.view(-1), pool, (len(made) * 1_000_003) % POOL_SIZE)
                made[id(parameter)] = torch.nn.Parameter(tensor, requires_grad=False)
            submodule._parameters[name] = made[id(parameter)]
        for name, buffer in submodule._buffers.items():
            if buffer is not None:
                submodule._buffers[name] = buffer.to(device)
    return module.eval()


def random_text_encoder(preset: str, tokenizer, device: str | torch.device, dtype: torch.dtype,
                        seed: int = 0) -> Qwen2_5_VLForConditionalGeneration:
    """The MLLM of ``preset``: Qwen2.5-VL-7B for ``full``; for ``mid`` and ``tiny`` a small Qwen2.5-VL whose width
    is the DiT preset's ``mllm_hidden_size`` (:data:`SMALL_MLLM`). Special-token ids are ``tokenizer``'s."""
    from ..models.presets import transformer_config

    if preset == "full":
        config = qwen2_5_vl_7b_config(tokenizer)
        return materialize(lambda: Qwen2_5_VLForConditionalGeneration(config), device, dtype, seed)
    if preset not in SMALL_MLLM:
        raise ValueError(f"unknown preset {preset!r}; choose one of {['full', *sorted(SMALL_MLLM)]}")
    hidden = transformer_config(preset)["mllm_hidden_size"]
    return materialize(lambda: build_text_encoder(tokenizer, hidden_size=hidden, **SMALL_MLLM[preset]),
                       device, dtype, seed)


def random_pipeline(preset: str = "full", device: str | torch.device = "cpu",
                    torch_dtype: torch.dtype = torch.bfloat16, seed: int = 0, version: str = "v1.1"):
    """A :class:`~step1x_edit.pipeline.Step1XEditPipeline` of preset ``preset`` (``full``: the released DiT, the
    FLUX VAE and Qwen2.5-VL-7B, about 20 billion parameters) with random weights, built directly on ``device``:
    the DiT and the MLLM in ``torch_dtype``, the VAE in float32 (as :meth:`Step1XEditPipeline.place` keeps it).
    The processor is the tiny tokenizer's, with the official image limits (256-324 visual tokens)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from ..models.presets import build_transformer, build_vae
    from ..pipeline import SCHEDULER_CONFIG, Step1XEditPipeline
    from .tiny import tiny_processor

    processor = tiny_processor()
    text_encoder = random_text_encoder(preset, processor.tokenizer, device, torch_dtype, seed)
    transformer = materialize(lambda: build_transformer(preset, version=version), device, torch_dtype, seed + 1)
    vae = materialize(lambda: build_vae(preset), device, torch.float32, seed + 2)
    scheduler = FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG)
    return Step1XEditPipeline(transformer, vae, text_encoder, processor, scheduler)
