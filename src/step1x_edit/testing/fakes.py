"""Stand-ins for the DiT in tests of the training objectives."""

from __future__ import annotations

import torch

from .. import sampling


class TargetPredictor(torch.nn.Module):
    """Knows the target ``x0`` and answers the velocity ``(x_t - x0) / t`` that points straight at it; ``seen``
    holds the noisy tokens and times of its last call."""

    def __init__(self, x0: torch.Tensor):
        super().__init__()
        self.x0 = sampling.pack_latents(x0)
        self.seen = {}

    def forward(self, hidden_states, timestep, encoder_hidden_states=None, encoder_attention_mask=None, img_ids=None,
                txt_ids=None):
        count = self.x0.shape[1]
        self.seen = {"tokens": hidden_states[:, :count], "t": timestep}
        velocity = (hidden_states[:, :count] - self.x0) / timestep[:, None, None]
        return torch.cat([velocity, torch.zeros_like(velocity)], dim=1)
