"""The Step1X-Edit connector: Qwen2.5-VL hidden states -> DiT context tokens and pooled vector.

It is diffusers' :class:`~diffusers.models.transformers.transformer_hunyuan_video.HunyuanVideoTokenRefiner`
(masked-mean conditioning, timestep + text projection embedding, self-attention refiner blocks whose attention
mask keeps column 0 open for padded rows) plus two Step1X-specific pieces:

* ``global_proj_out``: Linear(mllm width -> pooled width) applied to the masked mean of the MLLM states;
* ``scale_factor`` (v1.0 checkpoints only): the pooled input is ``mean * (1 + scale_factor)``; the refiner's
  own conditioning uses the un-scaled mean.

The connector receives the flow time t in [0, 1] and feeds ``1000 * t`` to the refiner's timestep embedding.

Module names (stable; LoRA and checkpoint key tables rely on them)::

    refiner.proj_in                                     official S.input_embedder
    refiner.time_text_embed.timestep_embedder.linear_{1,2}  official S.t_embedder.mlp.{0,2}
    refiner.time_text_embed.text_embedder.linear_{1,2}      official S.c_embedder.linear_{1,2}
    refiner.token_refiner.refiner_blocks.{i}.{norm1, attn.to_q|to_k|to_v, attn.to_out.0, norm2,
                                             ff.net.0.proj, ff.net.2, norm_out.linear}
    global_proj_out, scale_factor
"""

from __future__ import annotations

import torch
from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoTokenRefiner
from torch import nn

# Initial value of the v1.0 ``scale_factor`` (multiplier 1 + s = 0.09); trained values come from the checkpoint.
SCALE_FACTOR_INIT = -0.91


class Step1XConnector(nn.Module):
    """Token refiner + pooled projection over the MLLM hidden states, re-run at every denoising step."""

    def __init__(
        self,
        in_channels: int,
        hidden_size: int,
        num_heads: int,
        depth: int,
        pooled_dim: int,
        use_scale_factor: bool,
    ) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"connector hidden size {hidden_size} is not divisible by its {num_heads} heads")
        self.refiner = HunyuanVideoTokenRefiner(
            in_channels=in_channels,
            num_attention_heads=num_heads,
            attention_head_dim=hidden_size // num_heads,
            num_layers=depth,
            mlp_ratio=4.0,
            attention_bias=True,
        )
        self.global_proj_out = nn.Linear(in_channels, pooled_dim)
        if use_scale_factor:
            self.scale_factor = nn.Parameter(torch.full((1,), SCALE_FACTOR_INIT))
        else:
            self.register_parameter("scale_factor", None)

    def forward(
        self, hidden_states: torch.Tensor, timestep: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Refine ``hidden_states`` [B, L, C] at flow time ``timestep`` [B] under ``attention_mask`` [B, L] (1 = valid).

        Returns the context tokens [B, L, hidden_size] and the pooled vector [B, pooled_dim].
        """
        mask = attention_mask.to(hidden_states.dtype).unsqueeze(-1)  # [B, L, 1]
        counts = mask.sum(dim=1)  # [B, 1]
        if not torch.compiler.is_compiling() and bool((counts == 0).any()):
            raise ValueError("every row of the MLLM attention mask needs at least one valid position")
        mean = (hidden_states * mask).sum(dim=1) / counts  # [B, C]
        pooled_input = mean if self.scale_factor is None else mean * (1 + self.scale_factor)
        pooled = self.global_proj_out(pooled_input)
        tokens = self.refiner(hidden_states, timestep.to(hidden_states.dtype) * 1000, attention_mask)
        return tokens, pooled
