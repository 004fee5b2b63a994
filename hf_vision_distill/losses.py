"""Distillation losses as pure functions: tensors in, a scalar (or maps and weights) out.

- `soft_distillation_loss`: Hinton et al. (2015), KL(teacher || student) at temperature T, times T^2.
- `hard_distillation_loss`: DeiT's hard distillation (Touvron et al., 2021), cross-entropy on the teacher's argmax.
- `feature_distillation_loss`: MSE or cosine distance between aligned features (FitNets, Romero et al., 2015).
- `cls_attention_map`, `feature_energy_map`, `attention_alignment_loss`: a ViT's [CLS]-to-patch attention against a
  CNN's spatial energy (attention transfer, Zagoruyko & Komodakis, 2017), as distributions on a common grid.
- `attention_entropy`, `entropy_layer_weights`: a weight per teacher layer, larger for more focused (lower entropy)
  attention.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def soft_distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """KL(softmax(teacher / T) || softmax(student / T)) * T^2, averaged over the batch.

    The T^2 factor keeps the gradient scale independent of T (Hinton et al., 2015), so the weight between this and
    the cross-entropy on labels means the same at any temperature.

    Args:
        student_logits (`torch.Tensor` of shape `(batch, num_labels)`): the student's logits.
        teacher_logits (`torch.Tensor` of shape `(batch, num_labels)`): the teacher's logits (no gradient needed).
        temperature (`float`, *optional*, defaults to 1.0): softens both distributions; must be positive.

    Returns:
        `torch.Tensor`: a scalar.
    """
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be positive (e.g. 1.0 to 4.0).")
    _check_same_shape(student_logits, teacher_logits, "student_logits", "teacher_logits")
    student_log_probabilities = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher_log_probabilities = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = F.kl_div(student_log_probabilities, teacher_log_probabilities, reduction="batchmean", log_target=True)
    return kl * temperature**2


def hard_distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the student against the teacher's predicted class (DeiT's hard distillation).

    Args:
        student_logits (`torch.Tensor` of shape `(batch, num_labels)`): the student's logits.
        teacher_logits (`torch.Tensor` of shape `(batch, num_labels)`): the teacher's logits.

    Returns:
        `torch.Tensor`: a scalar.
    """
    _check_same_shape(student_logits, teacher_logits, "student_logits", "teacher_logits")
    return F.cross_entropy(student_logits.float(), teacher_logits.argmax(dim=-1))


def feature_distillation_loss(
    student_features: torch.Tensor, teacher_features: torch.Tensor, distance: str = "mse"
) -> torch.Tensor:
    """Distance between student and teacher features of the same shape (adapt the student's first).

    Args:
        student_features (`torch.Tensor` of shape `(batch, ...)`): e.g. `(batch, tokens, dim)` or
            `(batch, channels, height, width)`.
        teacher_features (`torch.Tensor`): the same shape.
        distance (`str`, *optional*, defaults to `"mse"`): `"mse"` (mean squared error over all elements) or
            `"cosine"` (1 - cosine similarity of each example's flattened features, averaged over the batch).

    Returns:
        `torch.Tensor`: a scalar.
    """
    _check_same_shape(student_features, teacher_features, "student_features", "teacher_features")
    student_features, teacher_features = student_features.float(), teacher_features.float()
    if distance == "mse":
        return F.mse_loss(student_features, teacher_features)
    if distance == "cosine":
        similarity = F.cosine_similarity(student_features.flatten(1), teacher_features.flatten(1), dim=-1)
        return (1 - similarity).mean()
    raise ValueError(f"distance={distance!r} is not supported; use 'mse' or 'cosine'.")


def cls_attention_map(
    attentions: torch.Tensor, grid_size: tuple[int, int], num_prefix_tokens: int = 1
) -> torch.Tensor:
    """Where the [CLS] token looks: its attention to the patch tokens, averaged over heads, as a distribution.

    Args:
        attentions (`torch.Tensor` of shape `(batch, heads, tokens, tokens)`): one layer's attention probabilities,
            tokens = `num_prefix_tokens` + grid height * grid width, [CLS] first.
        grid_size (`tuple[int, int]`): the patch grid (rows, columns).
        num_prefix_tokens (`int`, *optional*, defaults to 1): tokens before the patches ([CLS], registers, ...).

    Returns:
        `torch.Tensor` of shape `(batch, rows, columns)`, non-negative, each map summing to 1.
    """
    rows, columns = grid_size
    expected_tokens = num_prefix_tokens + rows * columns
    if attentions.ndim != 4 or attentions.shape[-1] != expected_tokens or attentions.shape[-2] != expected_tokens:
        raise ValueError(
            f"attentions of shape {tuple(attentions.shape)} do not fit a {rows}x{columns} grid with "
            f"{num_prefix_tokens} prefix token(s): expected (batch, heads, {expected_tokens}, {expected_tokens})."
        )
    cls_to_patches = attentions[:, :, 0, num_prefix_tokens:].float().mean(dim=1)
    cls_to_patches = cls_to_patches / cls_to_patches.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    return cls_to_patches.reshape(-1, rows, columns)


def feature_energy_map(features: torch.Tensor, power: float = 2.0) -> torch.Tensor:
    """A CNN's spatial attention: mean over channels of |feature|^power, normalised to a distribution.

    Attention transfer (Zagoruyko & Komodakis, 2017) uses this map; normalising it to sum 1 (rather than to unit L2
    norm) makes it comparable with a ViT's [CLS] attention distribution.

    Args:
        features (`torch.Tensor` of shape `(batch, channels, height, width)`): a feature map.
        power (`float`, *optional*, defaults to 2.0): the exponent p.

    Returns:
        `torch.Tensor` of shape `(batch, height, width)`, non-negative, each map summing to 1.
    """
    if features.ndim != 4:
        raise ValueError(f"features must be (batch, channels, height, width), got shape {tuple(features.shape)}.")
    energy = features.float().abs().pow(power).mean(dim=1)
    return energy / energy.flatten(1).sum(dim=-1).clamp_min(1e-12)[:, None, None]


def resize_distribution(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resamples maps `(batch, height, width)` to `size` and renormalises each to sum 1: area-averaged when shrinking
    (so no cell's mass is skipped), bilinear when growing."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    shrinking = maps.shape[-2] >= size[0] and maps.shape[-1] >= size[1]
    if shrinking:
        resized = F.adaptive_avg_pool2d(maps[:, None].float(), size)[:, 0]
    else:
        resized = F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
    return resized / resized.flatten(1).sum(dim=-1).clamp_min(1e-12)[:, None, None]


def attention_alignment_loss(student_maps: torch.Tensor, teacher_maps: torch.Tensor) -> torch.Tensor:
    """Mean squared error between two sets of spatial distributions, on the teacher's grid.

    Both are `(batch, height, width)` maps that sum to 1 (from `cls_attention_map` / `feature_energy_map`); the
    student's are resampled to the teacher's grid when the grids differ. Because the maps sum to 1, the error is scaled
    by the number of cells, so it does not shrink as the grid grows.

    Returns:
        `torch.Tensor`: a scalar.
    """
    if student_maps.ndim != 3 or teacher_maps.ndim != 3 or student_maps.shape[0] != teacher_maps.shape[0]:
        raise ValueError(
            f"expected maps (batch, height, width) with the same batch, got {tuple(student_maps.shape)} and "
            f"{tuple(teacher_maps.shape)}."
        )
    student_maps = resize_distribution(student_maps, tuple(teacher_maps.shape[-2:]))
    num_cells = teacher_maps.shape[-1] * teacher_maps.shape[-2]
    return F.mse_loss(student_maps.float() * num_cells, teacher_maps.float() * num_cells)


def attention_entropy(maps: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of each spatial distribution.

    Args:
        maps (`torch.Tensor` of shape `(batch, ...)`): distributions over the trailing dimensions.

    Returns:
        `torch.Tensor` of shape `(batch,)`: between 0 (all mass on one cell) and log(number of cells) (uniform).
    """
    probabilities = maps.float().flatten(1)
    return -(probabilities * probabilities.clamp_min(1e-12).log()).sum(dim=-1)


def entropy_layer_weights(
    entropies: torch.Tensor, temperature: float = 1.0, uniform: bool = False, max_entropy: float | None = None
) -> torch.Tensor:
    """A weight per teacher layer: softmax(-entropy / temperature), so focused layers count more.

    Args:
        entropies (`torch.Tensor` of shape `(num_layers,)`): each layer's attention entropy (e.g. a batch mean of
            `attention_entropy`).
        temperature (`float`, *optional*, defaults to 1.0): larger flattens the weights towards uniform.
        uniform (`bool`, *optional*, defaults to `False`): the ablation: every layer weighs 1 / num_layers.
        max_entropy (`float`, *optional*): when given (log of the number of cells), entropies are divided by it first,
            so the temperature means the same on any grid size.

    Returns:
        `torch.Tensor` of shape `(num_layers,)`, positive, summing to 1. Computed without gradient: the weights steer
        the loss, they are not trained through it.
    """
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be positive.")
    entropies = entropies.detach().float()
    if entropies.ndim != 1 or entropies.numel() == 0:
        raise ValueError(f"entropies must be a non-empty vector (one per layer), got shape {tuple(entropies.shape)}.")
    if uniform:
        return torch.full_like(entropies, 1.0 / entropies.numel())
    if max_entropy is not None:
        entropies = entropies / max(max_entropy, 1e-12)
    return torch.softmax(-entropies / temperature, dim=0)


def uniform_entropy(num_cells: int) -> float:
    """The entropy of a uniform distribution over `num_cells` cells, log(num_cells)."""
    return math.log(num_cells)


def _check_same_shape(first: torch.Tensor, second: torch.Tensor, first_name: str, second_name: str) -> None:
    if first.shape != second.shape:
        raise ValueError(
            f"{first_name} has shape {tuple(first.shape)} but {second_name} has {tuple(second.shape)}; they must "
            "match (for logits: the same label space; for features: adapt the student's first)."
        )


__all__ = [
    "attention_alignment_loss",
    "attention_entropy",
    "cls_attention_map",
    "entropy_layer_weights",
    "feature_distillation_loss",
    "feature_energy_map",
    "hard_distillation_loss",
    "resize_distribution",
    "soft_distillation_loss",
    "uniform_entropy",
]
