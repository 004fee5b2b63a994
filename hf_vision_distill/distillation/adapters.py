"""Learned adapters between student and teacher features, and the shape helpers they rest on.

Every feature is handled as a map `(batch, channels, height, width)`: a CNN's hidden state already is one, and a
ViT's `(batch, tokens, width)` hidden state becomes one once its prefix tokens ([CLS], ...) are dropped and its patch
tokens laid back on their grid. A 1x1 convolution on such a map is the same as a linear layer on the tokens.

The adapters train with the student and are saved in its checkpoints (so a resumed run continues with them), but not
in the exported student: see `DistillationTrainer.save_model`.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import TimmWrapperPreTrainedModel

ADAPTERS_ATTRIBUTE = "distillation_adapters"
# Checkpoints keep the adapters in their own file beside the student's weights.
ADAPTERS_WEIGHTS_NAME = "distillation_adapters.safetensors"


# Transformers' ViTs declare no prefix-token count; these stand in (keyed by `model_type`, foreign models only: ours
# and timm's declare `num_prefix_tokens`). Others have the one [CLS] token of transformers' ViT; its CNNs return maps,
# where the count is never used.
_TRANSFORMERS_PREFIX_TOKENS = {"vit": 1, "deit": 2}  # deit: [CLS] and the distillation token


def num_prefix_tokens(model: nn.Module) -> int:
    """Tokens before the patch tokens in the model's hidden states ([CLS], distillation and register tokens), as the
    model declares them in timm's `num_prefix_tokens`: ours and timm's (inside transformers' `TimmWrapper`; timm's
    CNNs, which return maps, declare none and have none)."""
    if isinstance(model, TimmWrapperPreTrainedModel):
        return int(getattr(model.timm_model, "num_prefix_tokens", 0))
    declared = getattr(model, "num_prefix_tokens", None)
    if declared is not None:
        return int(declared)
    return _TRANSFORMERS_PREFIX_TOKENS.get(getattr(getattr(model, "config", None), "model_type", None), 1)


def as_feature_map(hidden_state: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """A hidden state as a map `(batch, channels, height, width)`.

    Args:
        hidden_state (`torch.Tensor`): `(batch, channels, height, width)` (returned as is) or `(batch, tokens, width)`
            with `num_prefix_tokens` tokens first and a square grid of patch tokens after them.
        num_prefix_tokens (`int`): tokens to drop before the patches.
    """
    if hidden_state.ndim == 4:
        return hidden_state
    if hidden_state.ndim != 3:
        raise ValueError(
            f"expected a (batch, channels, h, w) or (batch, tokens, width) feature, got {tuple(hidden_state.shape)}."
        )
    patches = hidden_state[:, num_prefix_tokens:]
    side = math.isqrt(patches.shape[1])
    if side * side != patches.shape[1]:
        raise ValueError(
            f"{patches.shape[1]} patch tokens (after {num_prefix_tokens} prefix tokens) do not form a square grid; "
            "feature and attention distillation need square patch grids."
        )
    return patches.transpose(1, 2).reshape(patches.shape[0], patches.shape[2], side, side)


def resize_feature_map(feature_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Average-pools down (adaptive bins) or bilinearly resamples up to `size` (height, width), as
    `F.adaptive_avg_pool2d` and `F.interpolate(..., "bilinear", align_corners=False)` do, with deterministic kernels.

    The adapters train through this resize, and the backward passes of `adaptive_avg_pool2d` and bilinear
    `interpolate` on CUDA use atomic adds, which `--full_determinism` refuses. An integer pooling kernel
    (`avg_pool2d`) or a product with fixed interpolation matrices gives the same values with deterministic backwards.
    """
    height, width = feature_map.shape[-2:]
    if (height, width) == tuple(size):
        return feature_map
    if height >= size[0] and width >= size[1]:
        if height % size[0] == 0 and width % size[1] == 0:
            return F.avg_pool2d(feature_map, kernel_size=(height // size[0], width // size[1]))
        mode = "area"
    else:
        mode = "bilinear"
    rows = _resize_matrix(height, size[0], mode, feature_map.device, feature_map.dtype)
    columns = _resize_matrix(width, size[1], mode, feature_map.device, feature_map.dtype)
    return rows @ feature_map @ columns.T


@functools.lru_cache(maxsize=64)
def _resize_matrix(source: int, target: int, mode: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """`(target, source)` weights of a 1-D resize: adaptive-average bins ("area") or PyTorch's bilinear sampling with
    `align_corners=False` ("bilinear"). Built once per size, device and dtype, not at every step."""
    with torch.inference_mode(False):  # a cached inference tensor could not be saved for a later backward
        matrix = torch.zeros(target, source, dtype=torch.float64)
        for index in range(target):
            if mode == "area":
                start, end = (index * source) // target, -(-(index + 1) * source // target)
                matrix[index, start:end] = 1.0 / (end - start)
            else:
                position = max((index + 0.5) * source / target - 0.5, 0.0)
                low = min(int(position), source - 1)
                high = min(low + 1, source - 1)
                matrix[index, low] += 1.0 - (position - low)
                matrix[index, high] += position - low
        return matrix.to(device=device, dtype=dtype)


class FeatureAdapter(nn.Module):
    """Maps a student feature map onto the teacher's: 1x1 convolution for the width, then resize to its grid."""

    def __init__(self, student_channels: int, teacher_channels: int, teacher_size: tuple[int, int]):
        super().__init__()
        self.teacher_size = tuple(teacher_size)
        self.projection = (
            nn.Identity()
            if student_channels == teacher_channels
            else nn.Conv2d(student_channels, teacher_channels, kernel_size=1)
        )

    def forward(self, student_map: torch.Tensor) -> torch.Tensor:
        return resize_feature_map(self.projection(student_map), self.teacher_size)


class AttentionProjection(nn.Module):
    """A learned spatial attention for a CNN student: a 1x1 convolution scores every location, the scores are
    resized to the teacher's token grid, and a softmax over the grid makes them a distribution like the teacher's
    [CLS] attention."""

    def __init__(self, student_channels: int, teacher_size: tuple[int, int]):
        super().__init__()
        self.teacher_size = tuple(teacher_size)
        self.score = nn.Conv2d(student_channels, 1, kernel_size=1)

    def forward(self, student_map: torch.Tensor) -> torch.Tensor:
        scores = resize_feature_map(self.score(student_map), self.teacher_size)[:, 0]
        return scores.flatten(1).softmax(dim=-1).reshape(scores.shape)


__all__ = [
    "ADAPTERS_ATTRIBUTE",
    "ADAPTERS_WEIGHTS_NAME",
    "AttentionProjection",
    "FeatureAdapter",
    "as_feature_map",
    "num_prefix_tokens",
    "resize_feature_map",
]
