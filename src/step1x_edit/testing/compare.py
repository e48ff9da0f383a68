"""How far a tensor is from its reference, as the parity checks measure it."""

from __future__ import annotations

import torch


def relative_error(actual: torch.Tensor, reference: torch.Tensor) -> float:
    """max |actual - reference| / max |reference| (0.0 when both are all zero)."""
    if actual.shape != reference.shape:
        raise ValueError(f"shape {tuple(actual.shape)} differs from the reference {tuple(reference.shape)}")
    actual, reference = actual.double(), reference.double()
    scale = reference.abs().max().item()
    error = (actual - reference).abs().max().item()
    return error / scale if scale else error
