"""Training objectives by name: what the trainer minimises at each step.

An objective is built from its options (``training.objective_options``) by a factory and then maps the transformer
and one step's tensors (:class:`FlowBatch`) to a scalar loss. The registry :data:`OBJECTIVES` holds the official
one, ``"flow_matching"`` (:func:`~step1x_edit.train.flow.flow_matching_loss`, no options), which is the default of
``training.objective``. A caller of :func:`~step1x_edit.train.trainer.train` may add entries of its own
(``objectives={"name": factory}``), as the demo model's recipe does with its experimental objectives.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .config import TrainingConfigError
from .flow import flow_matching_loss


@dataclass(frozen=True)
class FlowBatch:
    """One step's tensors: ``target``, ``reference`` (after condition dropout), ``noise`` [B, C, h, w] normalised
    latents; ``embeds`` / ``mask`` the MLLM condition [B, L, C'] / [B, L]; ``t`` flow times [B]; ``version`` the
    model line (position ids); ``start_times`` [B] image-to-image path starts (``None``: all from pure noise);
    ``source`` the source latents before dropout; ``decode`` the frozen VAE's decoder (latents -> pixels in
    [-1, 1]), for objectives measured in pixels."""

    target: torch.Tensor
    reference: torch.Tensor
    embeds: torch.Tensor
    mask: torch.Tensor
    t: torch.Tensor
    noise: torch.Tensor
    version: str
    start_times: torch.Tensor | None
    source: torch.Tensor
    decode: Callable[[torch.Tensor], torch.Tensor]


Objective = Callable[[torch.nn.Module, FlowBatch], torch.Tensor]
ObjectiveFactory = Callable[[Mapping[str, Any]], Objective]


def _flow_matching(options: Mapping[str, Any]) -> Objective:
    if options:
        raise TrainingConfigError(f"training.objective_options: 'flow_matching' takes no options, got {sorted(options)}")

    def loss(transformer: torch.nn.Module, batch: FlowBatch) -> torch.Tensor:
        return flow_matching_loss(transformer, batch.target, batch.reference, batch.embeds, batch.mask, batch.t,
                                  batch.noise, batch.version, batch.start_times, batch.source)

    return loss


OBJECTIVES: dict[str, ObjectiveFactory] = {"flow_matching": _flow_matching}
"""The product's objectives by name."""


def build_objective(name: str, options: Mapping[str, Any],
                    extra: Mapping[str, ObjectiveFactory] | None = None) -> Objective:
    """The objective ``name`` of :data:`OBJECTIVES` and ``extra``, built with ``options``; a one-line
    :class:`~step1x_edit.train.config.TrainingConfigError` for an unknown name or a bad option."""
    registry = {**OBJECTIVES, **(extra or {})}
    if name not in registry:
        raise TrainingConfigError(f"training.objective must be one of {', '.join(map(repr, registry))}, got {name!r}")
    return registry[name](options)
