"""The demo model's DiT: :class:`ReferenceDeltaTransformer2DModel`, a Step1X-Edit transformer whose output layer
predicts the change from the source latents to the edited ones instead of the velocity.

The shipped demo model names it in ``model_index.json`` (``["step1x_edit.demo.delta",
"ReferenceDeltaTransformer2DModel"]``), so diffusers imports this module when it loads that model; the library
itself never imports it.

    model = build_transformer("tiny", model_class=ReferenceDeltaTransformer2DModel)  # step1x_edit.models.presets
    velocity = model(tokens, t, states, mask, img_ids, txt_ids)[:, : tokens.shape[1] // 2]
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from diffusers import ModelMixin  # noqa: F401 (diffusers finds how to load a class from the base classes beside it)
from torch import nn

from ..errors import InvalidValueError
from ..models.transformer import Step1XEditTransformer2DModel


class ReferenceDeltaTransformer2DModel(Step1XEditTransformer2DModel):
    """A :class:`~step1x_edit.models.transformer.Step1XEditTransformer2DModel` (same config fields, same tensors)
    whose output layer predicts the change from the reference (source) latents to the clean target,
    ``x0 = reference + output``. :meth:`forward` turns it into the velocity ``(x_t - x0) / t``, so samplers, losses
    and guidance are those of a velocity model.

    It starts as the identity edit (its output layer is zero-initialised) and leaves a token exactly as it was in
    the source where it outputs zero; it needs as many input as output channels, and noisy and reference tokens of
    one size, position by position, as the pipeline and the trainer give them.
    """

    PREDICTION_TYPE = "reference_delta"

    @functools.wraps(Step1XEditTransformer2DModel.__init__)  # diffusers reads the config fields from the signature
    def __init__(self, **config: Any) -> None:
        config.setdefault("prediction_type", self.PREDICTION_TYPE)
        super().__init__(**config)
        if self.config.in_channels != self.config.out_channels:
            raise InvalidValueError(
                f"a {self.PREDICTION_TYPE} model adds its output to the reference tokens, so out_channels "
                f"({self.config.out_channels}) must equal in_channels ({self.config.in_channels})"
            )
        nn.init.zeros_(self.proj_out.weight)  # the identity edit: x0 = reference
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The arguments and the result of :meth:`Step1XEditTransformer2DModel.forward`, whose first N rows (the
        noisy tokens') are here ``(x_t - reference - output) / t`` (t floored at 1e-6, in float32: the sampler's
        time, not its rounding to the model dtype); the reference rows are the raw output."""
        if hidden_states.ndim == 3 and hidden_states.shape[1] % 2:
            raise ValueError(
                f"a {self.PREDICTION_TYPE} model needs as many reference tokens as noisy ones, got an odd image "
                f"sequence of {hidden_states.shape[1]} tokens"
            )
        output = super().forward(hidden_states, timestep, *args, **kwargs)
        count = hidden_states.shape[1] // 2
        noisy, reference, delta = hidden_states[:, :count], hidden_states[:, count:], output[:, :count]
        t = torch.as_tensor(timestep, device=hidden_states.device).expand(hidden_states.shape[0]).float()
        velocity = (noisy.float() - reference.float() - delta.float()) / t.clamp_min(1e-6)[:, None, None]
        return torch.cat([velocity.to(output.dtype), output[:, count:]], dim=1)
