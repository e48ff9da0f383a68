"""Image quality metrics of uint8 RGB arrays [H, W, 3], used by the evaluation and by training's validation.

- :func:`psnr`: peak signal-to-noise ratio in dB over every pixel and channel, capped at :data:`PSNR_CAP`
  (identical images).
- :func:`ssim`: the structural similarity of Wang et al. (2004) with an 11x11 Gaussian window (sigma 1.5),
  K1 = 0.01, K2 = 0.03, data range 255, population (co)variances, computed per RGB channel over the positions where
  the window fits inside the image, averaged over positions and channels. This is the same number as
  ``skimage.metrics.structural_similarity(a, b, channel_axis=-1, gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=255)``; :func:`structural_similarity` is the same number for torch
  tensors, differentiable.
- :func:`edit_region_accuracy` (edits with a mask): the fraction of the edited pixels (mask 255, where target and
  source differ) whose output colour is strictly closer to the target's than to the source's.
- :func:`outside_mask_psnr` (edits with a mask): PSNR to the target outside the mask, i.e. how well the rest is
  kept.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import InvalidImageError

PSNR_CAP = 100.0
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    for name, image in (("a", a), ("b", b)):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise InvalidImageError(f"{name} must be a uint8 RGB array [H, W, 3], got {image.dtype} {image.shape}")
    if a.shape != b.shape:
        raise InvalidImageError(f"images differ in size: {a.shape} vs {b.shape}")


def _psnr_of_errors(errors: np.ndarray) -> float:
    """PSNR in dB of an array of differences (any shape), capped at :data:`PSNR_CAP`."""
    mse = float(np.mean(np.square(errors, dtype=np.float64)))
    if mse == 0.0:
        return PSNR_CAP
    return min(PSNR_CAP, 10.0 * math.log10(255.0**2 / mse))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 RGB arrays [H, W, 3] over all pixels and channels; :data:`PSNR_CAP` if identical."""
    _check_pair(a, b)
    return _psnr_of_errors(a.astype(np.float64) - b.astype(np.float64))


def ssim_window() -> np.ndarray:
    """The normalised 1-D Gaussian weights of the SSIM window (:data:`SSIM_WINDOW` taps, sigma :data:`SSIM_SIGMA`)."""
    offsets = np.arange(SSIM_WINDOW) - (SSIM_WINDOW - 1) / 2
    weights = np.exp(-(offsets**2) / (2 * SSIM_SIGMA**2))
    return weights / weights.sum()


def _filter_valid(image: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Separable filter of [H, W, C] by ``window`` where it fits: [H - k + 1, W - k + 1, C]."""
    k = len(window)
    rows = np.lib.stride_tricks.sliding_window_view(image, k, axis=0)  # [H-k+1, W, C, k]
    image = rows @ window  # [H-k+1, W, C]
    columns = np.lib.stride_tricks.sliding_window_view(image, k, axis=1)  # [H-k+1, W-k+1, C, k]
    return columns @ window  # [H-k+1, W-k+1, C]


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Gaussian-window SSIM of two uint8 RGB arrays [H, W, 3], mean over channels (definition in the module
    docstring); 1 for identical images. Both sides must be at least 11 pixels."""
    _check_pair(a, b)
    if min(a.shape[:2]) < SSIM_WINDOW:
        raise InvalidImageError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {a.shape}")
    x = a.astype(np.float64)
    y = b.astype(np.float64)
    window = ssim_window()
    mean_x, mean_y = _filter_valid(x, window), _filter_valid(y, window)
    var_x = _filter_valid(x * x, window) - mean_x**2
    var_y = _filter_valid(y * y, window) - mean_y**2
    cov_xy = _filter_valid(x * y, window) - mean_x * mean_y
    c1, c2 = (SSIM_K1 * 255.0) ** 2, (SSIM_K2 * 255.0) ** 2
    numerator = (2 * mean_x * mean_y + c1) * (2 * cov_xy + c2)
    denominator = (mean_x**2 + mean_y**2 + c1) * (var_x + var_y + c2)
    return float(np.mean(numerator / denominator))


def _mask_array(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if mask.shape != shape[:2]:
        raise InvalidImageError(f"mask of shape {mask.shape} does not match images of shape {shape}")
    return mask > 127


def edit_region_accuracy(source: np.ndarray, output: np.ndarray, target: np.ndarray, mask: np.ndarray) -> float | None:
    """Fraction of the mask's pixels (``mask`` [H, W], 255 = edited) whose output is strictly closer (Euclidean RGB
    distance) to the target than to the source. Pixels where target equals source are left out; ``None`` when no
    pixel is left."""
    _check_pair(source, output)
    _check_pair(source, target)
    edited = _mask_array(mask, source.shape) & np.any(source != target, axis=2)
    if not edited.any():
        return None
    out, src, tgt = (image[edited].astype(np.int64) for image in (output, source, target))  # [N, 3] each
    to_target = np.sum((out - tgt) ** 2, axis=1)
    to_source = np.sum((out - src) ** 2, axis=1)
    return float(np.mean(to_target < to_source))


def outside_mask_psnr(output: np.ndarray, target: np.ndarray, mask: np.ndarray) -> float | None:
    """PSNR of ``output`` to ``target`` over the pixels outside the mask (preservation); ``None`` if there are none."""
    _check_pair(output, target)
    kept = ~_mask_array(mask, output.shape)
    if not kept.any():
        return None
    return _psnr_of_errors(output[kept].astype(np.float64) - target[kept].astype(np.float64))


def structural_similarity(a, b):
    """SSIM per image [B] of torch pixels ``a``, ``b`` [B, C, H, W] in [-1, 1]: the definition of :func:`ssim` (its
    Gaussian window and constants, positions where the window fits, mean over positions and channels),
    differentiable, for training objectives and experiments that optimise it."""
    import torch.nn.functional as F
    from torch import from_numpy

    window = from_numpy(ssim_window()).to(device=a.device, dtype=a.dtype)
    a, b = (a + 1) / 2, (b + 1) / 2  # [0, 1]: the luminance term depends on the absolute level
    channels = a.shape[1]
    rows = window.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    columns = window.view(1, 1, 1, -1).expand(channels, 1, 1, -1)

    def blur(x):
        return F.conv2d(F.conv2d(x, rows, groups=channels), columns, groups=channels)

    mean_a, mean_b = blur(a), blur(b)
    var_a = blur(a * a) - mean_a.square()
    var_b = blur(b * b) - mean_b.square()
    cov = blur(a * b) - mean_a * mean_b
    c1, c2 = SSIM_K1**2, SSIM_K2**2  # data range 1
    index = ((2 * mean_a * mean_b + c1) * (2 * cov + c2)) / ((mean_a.square() + mean_b.square() + c1) * (var_a + var_b + c2))
    return index.mean(dim=(1, 2, 3))
