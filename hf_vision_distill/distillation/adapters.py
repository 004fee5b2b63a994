"""Learned adapters between student and teacher features, and the shape helpers they rest on.

Every feature is handled as a map `(batch, channels, height, width)`: a CNN's hidden state already is one, and a
ViT's `(batch, tokens, width)` hidden state becomes one once its prefix tokens ([CLS], ...) are dropped and its patch
tokens laid back on their grid. A 1x1 convolution on such a map is the same as a linear layer on the tokens.

The adapters train with the student and are saved in its checkpoints (so a resumed run continues with them), but not
in the exported student: see `DistillationTrainer.save_model`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ADAPTERS_ATTRIBUTE = "distillation_adapters"
# Checkpoints keep the adapters in their own file beside the student's weights.
ADAPTERS_WEIGHTS_NAME = "distillation_adapters.safetensors"


def count_prefix_tokens(model: nn.Module) -> int:
    """Tokens before the patch tokens in a ViT's hidden states: timm models say so, ours and transformers' have one."""
    timm_model = getattr(model, "timm_model", None)
    if timm_model is not None:
        return int(getattr(timm_model, "num_prefix_tokens", 0))
    return int(getattr(getattr(model, "config", None), "num_prefix_tokens", 1) or 0)


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
    """Average-pools down or bilinearly resamples up to `size` (height, width)."""
    if tuple(feature_map.shape[-2:]) == tuple(size):
        return feature_map
    if feature_map.shape[-2] >= size[0] and feature_map.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(feature_map, size)
    return F.interpolate(feature_map, size=size, mode="bilinear", align_corners=False)


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
    "count_prefix_tokens",
    "resize_feature_map",
]
