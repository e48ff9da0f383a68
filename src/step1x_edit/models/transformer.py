"""The Step1X-Edit DiT + connector as one diffusers model: :class:`Step1XEditTransformer2DModel`.

The DiT is the FLUX.1 architecture without guidance embedding, assembled from diffusers' FLUX building blocks
(``FluxTransformerBlock``, ``FluxSingleTransformerBlock``, ``FluxPosEmbed``, ``CombinedTimestepTextProjEmbeddings``,
``AdaLayerNormContinuous``); the connector (:class:`~step1x_edit.models.connector.Step1XConnector`) runs inside
every forward call with the current timestep. The token sequence is ``[context ; noisy ; reference]`` and the
DiT attention has no mask (padded context positions take part, as in the released model).

Module names follow diffusers' ``FluxTransformer2DModel`` (so diffusers attention processors, LoRA targets and
hooks apply unchanged), plus ``connector.*``::

    x_embedder, context_embedder, time_text_embed.{timestep_embedder,text_embedder}.linear_{1,2}
    transformer_blocks.{i}.{norm1.linear, norm1_context.linear, attn.{to_q,to_k,to_v,to_out.0,
        add_q_proj,add_k_proj,add_v_proj,to_add_out,norm_q,norm_k,norm_added_q,norm_added_k},
        ff.net.{0.proj,2}, ff_context.net.{0.proj,2}}
    single_transformer_blocks.{i}.{norm.linear, attn.{to_q,to_k,to_v,norm_q,norm_k}, proj_mlp, proj_out}
    norm_out.linear, proj_out, connector.*

The official checkpoint layout and the key table between the two are in :mod:`step1x_edit.checkpoints.official`.
The demo model's DiT, which predicts the change to the source latents instead of the velocity, is a subclass kept
with the demo: :class:`step1x_edit.demo.delta.ReferenceDeltaTransformer2DModel`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput
from diffusers.models.attention import AttentionMixin, FeedForward
from diffusers.models.cache_utils import CacheMixin
from diffusers.models.embeddings import CombinedTimestepTextProjEmbeddings
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import AdaLayerNormContinuous
from diffusers.models.transformers.transformer_flux import (
    FluxPosEmbed,
    FluxSingleTransformerBlock,
    FluxTransformerBlock,
)
from torch import nn

from .. import validate
from ..errors import InvalidValueError
from ..versions import VERSION_NAMES, get_version
from .connector import Step1XConnector

# The class that predicts each prediction_type a config may name (by name only: the demo's is no product class).
PREDICTION_CLASSES = {
    "velocity": "step1x_edit.models.transformer.Step1XEditTransformer2DModel",
    "reference_delta": "step1x_edit.demo.delta.ReferenceDeltaTransformer2DModel",
}
# Bounds of the config's sizes, far above the released model (width 4096, 38 blocks, 32 heads), so that an absurd
# config is refused before a model is built from it.
MAX_WIDTH = 65_536
MAX_HEADS = 1_024
MAX_BLOCKS = 1_000
MAX_MLP_RATIO = 64.0
MAX_ROTARY_AXES = 8


def check_config(config: Mapping[str, Any]) -> None:
    """Raise :class:`~step1x_edit.errors.InvalidValueError` naming the field unless every field present in
    ``config`` has the type and range :class:`Step1XEditTransformer2DModel` takes (how fields combine, such as the
    head dim against ``axes_dim``, is checked when the model is built)."""
    for name in ("in_channels", "out_channels", "vec_in_dim", "context_in_dim", "hidden_size", "mllm_hidden_size"):
        if name in config:
            validate.integer(name, config[name], 1, MAX_WIDTH)
    for name in ("num_heads", "connector_num_heads"):
        if name in config:
            validate.integer(name, config[name], 1, MAX_HEADS)
    for name in ("depth", "depth_single_blocks", "connector_depth"):
        if name in config:
            validate.integer(name, config[name], 0, MAX_BLOCKS)
    if "mlp_ratio" in config:
        validate.number("mlp_ratio", config["mlp_ratio"], 0.0, MAX_MLP_RATIO, low_open=True)
    if "theta" in config:
        validate.number("theta", config["theta"], 0.0, low_open=True)
    if "axes_dim" in config:
        validate.integers("axes_dim", config["axes_dim"], MAX_ROTARY_AXES, 1, MAX_WIDTH)
    if "qkv_bias" in config and not isinstance(config["qkv_bias"], bool):
        raise InvalidValueError(f"qkv_bias must be true or false, got {config['qkv_bias']!r}")


class Step1XEditTransformer2DModel(ModelMixin, ConfigMixin, PeftAdapterMixin, AttentionMixin, CacheMixin):
    """FLUX-style DiT (no guidance embedding) with the Step1X-Edit connector in front of it.

    The config fields mirror the official ``Step1XParams`` plus the connector: ``mllm_hidden_size`` is the MLLM
    width the connector reads, ``connector_num_heads``/``connector_depth`` its refiner, and its output width is
    ``context_in_dim``. ``version`` names the model line (:mod:`step1x_edit.versions`): it selects the connector
    variant (v1.0 has ``scale_factor``) and whether a ``text_token_mapping`` (v1.2: Linear(mllm width -> context
    width) of the MLLM's input-token embeddings, added to the connector output at quoted-text positions) exists.

    ``prediction_type`` says what the output layer predicts and is the class's own (:attr:`PREDICTION_TYPE`):
    ``"velocity"``, as in the released models. Another value is refused with the class that predicts it
    (:data:`PREDICTION_CLASSES`).
    """

    PREDICTION_TYPE = "velocity"

    _supports_gradient_checkpointing = True
    _no_split_modules = ["FluxTransformerBlock", "FluxSingleTransformerBlock"]
    _skip_layerwise_casting_patterns = ["pos_embed", "norm"]
    _repeated_blocks = ["FluxTransformerBlock", "FluxSingleTransformerBlock"]
    # Context parallelism (diffusers' enable_parallelism): the connector reads the whole MLLM sequence, so the split
    # comes after it, at the outputs of the two embedders and of each rotary half (the blocks' attention has no
    # mask, so each rank's [text ; image] share is a consistent slice); proj_out gathers the image sequence.
    _cp_plan = {
        "x_embedder": {0: ContextParallelInput(split_dim=1, expected_dims=3, split_output=True)},
        "context_embedder": {0: ContextParallelInput(split_dim=1, expected_dims=3, split_output=True)},
        "pos_embed": {
            0: ContextParallelInput(split_dim=0, expected_dims=2, split_output=True),
            1: ContextParallelInput(split_dim=0, expected_dims=2, split_output=True),
        },
        "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
    }

    @register_to_config
    def __init__(
        self,
        in_channels: int = 64,
        out_channels: int = 64,
        vec_in_dim: int = 768,
        context_in_dim: int = 4096,
        hidden_size: int = 3072,
        mlp_ratio: float = 4.0,
        num_heads: int = 24,
        depth: int = 19,
        depth_single_blocks: int = 38,
        axes_dim: tuple[int, ...] = (16, 56, 56),
        theta: int = 10000,
        qkv_bias: bool = True,
        mllm_hidden_size: int = 3584,
        connector_num_heads: int = 32,
        connector_depth: int = 2,
        version: str = "v1.1",
        prediction_type: str = "velocity",
    ) -> None:
        super().__init__()
        check_config({"in_channels": in_channels, "out_channels": out_channels, "vec_in_dim": vec_in_dim,
                      "context_in_dim": context_in_dim, "hidden_size": hidden_size, "mlp_ratio": mlp_ratio,
                      "num_heads": num_heads, "depth": depth, "depth_single_blocks": depth_single_blocks,
                      "axes_dim": axes_dim, "theta": theta, "qkv_bias": qkv_bias, "mllm_hidden_size": mllm_hidden_size,
                      "connector_num_heads": connector_num_heads, "connector_depth": connector_depth})
        if version not in VERSION_NAMES:
            raise ValueError(f"version must be one of {VERSION_NAMES}, got {version!r}")
        line = get_version(version)
        if prediction_type != self.PREDICTION_TYPE:
            other = PREDICTION_CLASSES.get(prediction_type) if isinstance(prediction_type, str) else None
            where = f"; a {prediction_type} model is a {other}" if other else f" (known: {sorted(PREDICTION_CLASSES)})"
            raise InvalidValueError(f"{type(self).__name__} takes prediction_type {self.PREDICTION_TYPE!r} only, "
                                    f"got {prediction_type!r}{where}")
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        head_dim = hidden_size // num_heads
        if sum(axes_dim) != head_dim:
            raise ValueError(f"sum(axes_dim) = {sum(axes_dim)} must equal the head dim {head_dim}")
        if any(dim % 2 for dim in axes_dim):
            raise ValueError(f"every axes_dim entry must be even (rotary pairs), got {tuple(axes_dim)}")
        if not qkv_bias:
            raise ValueError("qkv_bias=False is not supported: diffusers' FLUX blocks always have q/k/v biases")

        self.pos_embed = FluxPosEmbed(theta=theta, axes_dim=list(axes_dim))
        self.time_text_embed = CombinedTimestepTextProjEmbeddings(
            embedding_dim=hidden_size, pooled_projection_dim=vec_in_dim
        )
        self.context_embedder = nn.Linear(context_in_dim, hidden_size)
        self.x_embedder = nn.Linear(in_channels, hidden_size)
        self.transformer_blocks = nn.ModuleList(
            [
                FluxTransformerBlock(dim=hidden_size, num_attention_heads=num_heads, attention_head_dim=head_dim)
                for _ in range(depth)
            ]
        )
        if mlp_ratio != 4.0:  # diffusers' FLUX double block fixes its MLP width at 4x; resize both streams
            for block in self.transformer_blocks:
                block.ff = FeedForward(hidden_size, dim_out=hidden_size, mult=mlp_ratio, activation_fn="gelu-approximate")
                block.ff_context = FeedForward(
                    hidden_size, dim_out=hidden_size, mult=mlp_ratio, activation_fn="gelu-approximate"
                )
        self.single_transformer_blocks = nn.ModuleList(
            [
                FluxSingleTransformerBlock(
                    dim=hidden_size, num_attention_heads=num_heads, attention_head_dim=head_dim, mlp_ratio=mlp_ratio
                )
                for _ in range(depth_single_blocks)
            ]
        )
        self.norm_out = AdaLayerNormContinuous(hidden_size, hidden_size, elementwise_affine=False, eps=1e-6)
        self.proj_out = nn.Linear(hidden_size, out_channels)
        self.connector = Step1XConnector(
            in_channels=mllm_hidden_size,
            hidden_size=context_in_dim,
            num_heads=connector_num_heads,
            depth=connector_depth,
            pooled_dim=vec_in_dim,
            use_scale_factor=line.connector_scale_factor,
        )
        self.text_token_mapping = nn.Linear(mllm_hidden_size, context_in_dim) if line.text_token_mapping else None
        self.gradient_checkpointing = False

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor,
        img_ids: torch.Tensor,
        txt_ids: torch.Tensor,
        text_embeddings: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the velocity of every image token.

        Args:
            hidden_states: [B, 2N, in_channels] packed noisy tokens followed by the packed reference tokens.
            timestep: [B] (or a scalar) flow time t in [0, 1] (1 = pure noise); cast to the model dtype before
                embedding, so a bf16 model sees bf16-rounded times as the official code does.
            encoder_hidden_states: [B, L, mllm_hidden_size] MLLM hidden states (padded to L).
            encoder_attention_mask: [B, L], 1 for valid positions; used by the connector only.
            img_ids: [2N, 3] (or [B, 2N, 3], rows identical) rotary position ids of the image tokens.
            txt_ids: [L, 3] (or [B, L, 3]) rotary position ids of the context tokens.
            text_embeddings: [B, L, mllm_hidden_size] the MLLM's input-token embeddings (v1.2 models, which have a
                ``text_token_mapping``; required there, refused elsewhere).
            text_mask: [B, L], 1 where the token is a character of quoted text (v1.2 models).

        Returns:
            [B, 2N, out_channels]; the first N rows are the noisy tokens' velocity.
        """
        if hidden_states.ndim != 3 or encoder_hidden_states.ndim != 3:
            raise ValueError(
                "hidden_states and encoder_hidden_states must be [batch, sequence, channels], got "
                f"{tuple(hidden_states.shape)} and {tuple(encoder_hidden_states.shape)}"
            )
        if encoder_attention_mask.shape != encoder_hidden_states.shape[:2]:
            raise ValueError(
                f"encoder_attention_mask {tuple(encoder_attention_mask.shape)} does not match the MLLM states "
                f"{tuple(encoder_hidden_states.shape[:2])}"
            )
        img_ids = img_ids[0] if img_ids.ndim == 3 else img_ids
        txt_ids = txt_ids[0] if txt_ids.ndim == 3 else txt_ids
        if img_ids.shape[0] != hidden_states.shape[1] or txt_ids.shape[0] != encoder_hidden_states.shape[1]:
            raise ValueError(
                f"position ids ({img_ids.shape[0]} image, {txt_ids.shape[0]} text) do not match the sequence lengths "
                f"({hidden_states.shape[1]} image, {encoder_hidden_states.shape[1]} text)"
            )
        dtype = hidden_states.dtype
        timestep = torch.as_tensor(timestep, device=hidden_states.device).expand(hidden_states.shape[0]).to(dtype)

        context, pooled = self.connector(encoder_hidden_states.to(dtype), timestep, encoder_attention_mask)
        if self.text_token_mapping is not None:
            if text_embeddings is None or text_mask is None:
                raise ValueError("a v1.2 model needs text_embeddings and text_mask (its text-token mapping input)")
            if text_embeddings.shape[:2] != encoder_hidden_states.shape[:2] or text_mask.shape != text_embeddings.shape[:2]:
                raise ValueError(
                    f"text_embeddings {tuple(text_embeddings.shape)} and text_mask {tuple(text_mask.shape)} do not "
                    f"match the MLLM states {tuple(encoder_hidden_states.shape[:2])}"
                )
            mapped = self.text_token_mapping(text_embeddings.to(dtype))  # [B, L, context_in_dim]
            context = context + mapped * text_mask.to(dtype)[..., None]
        elif text_embeddings is not None or text_mask is not None:
            raise ValueError(f"a {self.config.version} model has no text-token mapping; pass no text_embeddings")
        temb = self.time_text_embed(timestep * 1000, pooled)
        hidden_states = self.x_embedder(hidden_states)
        encoder_hidden_states = self.context_embedder(context)
        # The rotary tables of the text and the image tokens are computed apart (each row depends on its own ids
        # only, so this equals one call on the concatenated ids bit for bit): context parallelism splits each half.
        text_rotary, image_rotary = self.pos_embed(txt_ids), self.pos_embed(img_ids)
        image_rotary_emb = tuple(torch.cat(pair, dim=0) for pair in zip(text_rotary, image_rotary, strict=True))

        for block in [*self.transformer_blocks, *self.single_transformer_blocks]:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                encoder_hidden_states, hidden_states = self._gradient_checkpointing_func(
                    block, hidden_states, encoder_hidden_states, temb, image_rotary_emb
                )
            else:
                encoder_hidden_states, hidden_states = block(
                    hidden_states=hidden_states,
                    encoder_hidden_states=encoder_hidden_states,
                    temb=temb,
                    image_rotary_emb=image_rotary_emb,
                )

        hidden_states = self.norm_out(hidden_states, temb)
        return self.proj_out(hidden_states)
