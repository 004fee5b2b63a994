"""Distillation losses as pure functions: tensors in, a scalar (or maps and weights) out.

- `soft_distillation_loss`: Hinton et al. (2015), KL(teacher || student) at temperature T, times T^2.
- `reverse_distillation_loss`: KL(student || teacher) at temperature T, times T^2 (mode-seeking).
- `generalized_jsd_loss`: the generalised Jensen-Shannon divergence of GKD (Agarwal et al., 2024), TRL's convention:
  beta=0 is forward KL, beta=1 reverse KL.
- `decoupled_distillation_terms`, `decoupled_distillation_loss`: decoupled KD (DKD, Zhao et al., 2022), the
  target-class (TCKD) and non-target-class (NCKD) parts of KD with their own weights.
- `standardize_logits`: logit standardisation (Sun et al., 2024), z-scored logits before the temperature softmax.
- `teacher_ensemble_logits`: several teachers as one, the weighted average of their temperature-softened
  probabilities as logits, so every soft loss takes it as it takes one teacher.
- `hard_distillation_loss`: DeiT's hard distillation (Touvron et al., 2021), cross-entropy on the teacher's argmax.
- `feature_distillation_loss`: MSE or cosine distance between aligned features (FitNets, Romero et al., 2015).
- `cls_attention_map`, `feature_energy_map`, `attention_alignment_loss`: a ViT's [CLS]-to-patch attention against a
  CNN's spatial energy (attention transfer, Zagoruyko & Komodakis, 2017), as distributions on a common grid.
- `attention_entropy`, `entropy_layer_weights`: a weight per teacher layer, larger for more focused (lower entropy)
  attention.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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


def reverse_distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """KL(softmax(student / T) || softmax(teacher / T)) * T^2, averaged over the batch: the reverse KL.

    Forward KL (`soft_distillation_loss`) makes the student cover every class the teacher gives mass to; reverse KL
    is mode-seeking: the student is penalised for mass where the teacher has little, not for missing the teacher's
    small probabilities. The T^2 factor is kept so the loss weight means the same as for forward KL.

    Args:
        student_logits (`torch.Tensor` of shape `(batch, num_labels)`): the student's logits.
        teacher_logits (`torch.Tensor` of shape `(batch, num_labels)`): the teacher's logits (no gradient needed).
        temperature (`float`, *optional*, defaults to 1.0): softens both distributions; must be positive.

    Returns:
        `torch.Tensor`: a scalar.
    """
    student_log_probabilities, teacher_log_probabilities = _log_probabilities(
        student_logits, teacher_logits, temperature
    )
    kl = F.kl_div(teacher_log_probabilities, student_log_probabilities, reduction="batchmean", log_target=True)
    return kl * temperature**2


def generalized_jsd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float = 0.5, temperature: float = 1.0
) -> torch.Tensor:
    """The generalised Jensen-Shannon divergence of GKD (Agarwal et al., 2024, Eq. 1) as TRL's `GKDTrainer` defines
    it, times T^2, averaged over the batch.

    With P = softmax(teacher / T), Q = softmax(student / T) and the mixture M = beta * P + (1 - beta) * Q:

        JSD(beta) = beta * KL(P || M) + (1 - beta) * KL(Q || M)

    It is bounded (by log 2 at beta = 0.5) and vanishes at both ends, so TRL (and this function) defines the ends as
    its normalised limits: beta = 0 gives forward KL(P || Q) (JSD(beta) / beta tends to it as beta -> 0) and beta = 1
    reverse KL(Q || P) (JSD(beta) / (1 - beta) as beta -> 1). Between them the loss is much smaller than either KL
    (at most log 2 before the T^2 factor): scale `soft_loss_weight` accordingly. At T = 1 this is TRL's value.

    Args:
        student_logits (`torch.Tensor` of shape `(batch, num_labels)`): the student's logits.
        teacher_logits (`torch.Tensor` of shape `(batch, num_labels)`): the teacher's logits (no gradient needed).
        beta (`float`, *optional*, defaults to 0.5): the teacher's share of the mixture, in [0, 1].
        temperature (`float`, *optional*, defaults to 1.0): softens both distributions; must be positive.

    Returns:
        `torch.Tensor`: a scalar.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta={beta} must be in [0, 1] (0: forward KL, 1: reverse KL, 0.5: symmetric JSD).")
    if beta == 0.0:
        return soft_distillation_loss(student_logits, teacher_logits, temperature)
    if beta == 1.0:
        return reverse_distillation_loss(student_logits, teacher_logits, temperature)
    student_log_probabilities, teacher_log_probabilities = _log_probabilities(
        student_logits, teacher_logits, temperature
    )
    # log(beta * P + (1 - beta) * Q) without leaving log space: stable when either probability underflows.
    mixture_log_probabilities = torch.logsumexp(
        torch.stack([teacher_log_probabilities + math.log(beta), student_log_probabilities + math.log(1 - beta)]),
        dim=0,
    )
    teacher_to_mixture = F.kl_div(
        mixture_log_probabilities, teacher_log_probabilities, reduction="batchmean", log_target=True
    )
    student_to_mixture = F.kl_div(
        mixture_log_probabilities, student_log_probabilities, reduction="batchmean", log_target=True
    )
    return (beta * teacher_to_mixture + (1 - beta) * student_to_mixture) * temperature**2


def decoupled_distillation_terms(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 1.0,
    reduction: str = "batchmean",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two parts of KD that decoupled KD (DKD, Zhao et al., CVPR 2022) weighs separately, each times T^2.

    With p = softmax(logits / T) and t the true class of each example:

    - TCKD, target-class KD: KL between the binary distributions (p_t, 1 - p_t) of teacher and student.
    - NCKD, non-target-class KD: KL between the distributions over the other classes, p_i / (1 - p_t) for i != t.

    KD decomposes exactly as KL(teacher || student) = TCKD + (1 - teacher p_t) * NCKD, per example: in classic KD the
    non-target knowledge is damped when the teacher is confident, which DKD undoes by giving NCKD its own weight.
    Everything is computed in log space (the non-target mass 1 - p_t as a log-sum-exp over the other classes), so a
    confident teacher (p_t ~ 1) gives no NaN.

    Args:
        student_logits (`torch.Tensor` of shape `(batch, num_labels)`): the student's logits.
        teacher_logits (`torch.Tensor` of shape `(batch, num_labels)`): the teacher's logits (no gradient needed).
        labels (`torch.Tensor` of shape `(batch,)`): the true class indices (for mixed soft labels, pass their
            argmax).
        temperature (`float`, *optional*, defaults to 1.0): softens both distributions; must be positive.
        reduction (`str`, *optional*, defaults to `"batchmean"`): `"batchmean"` (scalars, the batch mean) or
            `"none"` (one value per example, `(batch,)`).

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: TCKD and NCKD, scalars or `(batch,)`.
    """
    if reduction not in ("batchmean", "none"):
        raise ValueError(f"reduction={reduction!r} is not supported; use 'batchmean' or 'none'.")
    student_log_probabilities, teacher_log_probabilities = _log_probabilities(
        student_logits, teacher_logits, temperature
    )
    num_labels = student_logits.shape[-1]
    if num_labels < 2:
        raise ValueError(f"decoupled KD needs at least 2 classes, got logits with {num_labels}.")
    if labels.ndim != 1 or labels.shape[0] != student_logits.shape[0] or labels.is_floating_point():
        raise ValueError(
            f"labels must be class indices of shape ({student_logits.shape[0]},), got {labels.dtype} of shape "
            f"{tuple(labels.shape)}; for soft (mixed) labels pass labels.argmax(dim=-1)."
        )
    labels = labels.to(student_log_probabilities.device).long()
    target_mask = F.one_hot(labels, num_labels).bool()

    def split(log_probabilities: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """log p_t, log(1 - p_t) and the log-probabilities over the non-target classes (0 at the target)."""
        log_target = log_probabilities.gather(-1, labels[:, None])[:, 0]
        log_non_target = torch.logsumexp(log_probabilities.masked_fill(target_mask, -math.inf), dim=-1)
        log_within_non_target = (log_probabilities - log_non_target[:, None]).masked_fill(target_mask, 0.0)
        return log_target, log_non_target, log_within_non_target

    student_target, student_non_target, student_within = split(student_log_probabilities)
    teacher_target, teacher_non_target, teacher_within = split(teacher_log_probabilities)
    target_class_kl = teacher_target.exp() * (teacher_target - student_target) + teacher_non_target.exp() * (
        teacher_non_target - student_non_target
    )
    teacher_within_probabilities = teacher_within.exp().masked_fill(target_mask, 0.0)
    non_target_class_kl = (teacher_within_probabilities * (teacher_within - student_within)).sum(dim=-1)
    scale = temperature**2
    if reduction == "none":
        return target_class_kl * scale, non_target_class_kl * scale
    return target_class_kl.mean() * scale, non_target_class_kl.mean() * scale


def decoupled_distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
) -> torch.Tensor:
    """Decoupled KD (Zhao et al., CVPR 2022): alpha * TCKD + beta * NCKD, each times T^2, averaged over the batch.

    The defaults are the paper's CIFAR-100 setting (alpha 1, beta 8, T 4); the paper also ramps the whole term in
    linearly over the first 20 epochs (a `soft_loss_weight` schedule in `DistillationConfig`).

    Args:
        student_logits (`torch.Tensor` of shape `(batch, num_labels)`): the student's logits.
        teacher_logits (`torch.Tensor` of shape `(batch, num_labels)`): the teacher's logits (no gradient needed).
        labels (`torch.Tensor` of shape `(batch,)`): the true class indices.
        alpha (`float`, *optional*, defaults to 1.0): weight of the target-class term (TCKD).
        beta (`float`, *optional*, defaults to 8.0): weight of the non-target-class term (NCKD).
        temperature (`float`, *optional*, defaults to 4.0): softens both distributions; must be positive.

    Returns:
        `torch.Tensor`: a scalar.
    """
    target_class_kl, non_target_class_kl = decoupled_distillation_terms(
        student_logits, teacher_logits, labels, temperature
    )
    return alpha * target_class_kl + beta * non_target_class_kl


def standardize_logits(logits: torch.Tensor, epsilon: float = 1e-7) -> torch.Tensor:
    """Logit standardisation (Sun et al., CVPR 2024): each logit vector z-scored, (z - mean(z)) / (std(z) + eps).

    Applied to teacher and student separately before the temperature softmax, it lets the student match the
    teacher's logit *relations* without matching their scale and shift: a shared temperature otherwise asks the
    student for the teacher's logit range. The standard deviation is the unbiased one, as in the authors' code; the
    temperature then acts on unit-variance logits (their CIFAR-100 recipe: T 2, KD weight 9, CE weight 0.1).

    Args:
        logits (`torch.Tensor` of shape `(batch, num_labels)`): logits of teacher or student.
        epsilon (`float`, *optional*, defaults to 1e-7): keeps a constant vector finite (it maps to zeros).

    Returns:
        `torch.Tensor` of shape `(batch, num_labels)`, in float32: each row with mean 0 and standard deviation ~1.
    """
    if logits.shape[-1] < 2:
        raise ValueError(f"standardising logits needs at least 2 classes, got shape {tuple(logits.shape)}.")
    logits = logits.float()
    mean = logits.mean(dim=-1, keepdim=True)
    standard_deviation = logits.std(dim=-1, keepdim=True)
    return (logits - mean) / (standard_deviation + epsilon)


def teacher_ensemble_logits(
    teacher_logits: Sequence[torch.Tensor], weights: Sequence[float], temperature: float = 1.0
) -> torch.Tensor:
    """Logits of several teachers as one: `T * log(sum_i w_i softmax(z_i / T))`, whose temperature softmax is the
    weighted average of the teachers' (`softmax(result / T) = sum_i w_i softmax(z_i / T)`), so KD, DKD, reverse KL
    and JSD distil the averaged probabilities as they distil one teacher's. With one teacher it gives that teacher's
    distribution.

    Args:
        teacher_logits (sequence of `torch.Tensor` of shape `(batch, num_labels)`): each teacher's logits.
        weights (sequence of `float`): one per teacher, non-negative, summing to 1.
        temperature (`float`, *optional*, defaults to 1.0): the temperature the result will be softened at.

    Returns:
        `torch.Tensor` of shape `(batch, num_labels)`, float32.
    """
    if len(weights) != len(teacher_logits):
        raise ValueError(f"{len(weights)} weights for {len(teacher_logits)} teachers: pass one weight per teacher.")
    if any(weight < 0 for weight in weights) or abs(sum(weights) - 1) > 1e-6:
        raise ValueError(f"teacher weights {list(weights)} must be non-negative and sum to 1.")
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be positive (e.g. 1.0 to 4.0).")
    for logits in teacher_logits[1:]:
        _check_same_shape(teacher_logits[0], logits, "teacher_logits[0]", "another teacher's logits")
    log_probabilities = torch.stack([F.log_softmax(logits.float() / temperature, dim=-1) for logits in teacher_logits])
    log_weights = torch.log(torch.tensor(list(weights), dtype=torch.float32, device=log_probabilities.device))
    return temperature * torch.logsumexp(log_probabilities + log_weights[:, None, None], dim=0)


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


def _log_probabilities(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Checked inputs, as float32 log-softmax at temperature T: (student, teacher)."""
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be positive (e.g. 1.0 to 4.0).")
    _check_same_shape(student_logits, teacher_logits, "student_logits", "teacher_logits")
    return (
        F.log_softmax(student_logits.float() / temperature, dim=-1),
        F.log_softmax(teacher_logits.float() / temperature, dim=-1),
    )


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
    "decoupled_distillation_loss",
    "decoupled_distillation_terms",
    "entropy_layer_weights",
    "feature_distillation_loss",
    "feature_energy_map",
    "generalized_jsd_loss",
    "hard_distillation_loss",
    "resize_distribution",
    "reverse_distillation_loss",
    "soft_distillation_loss",
    "standardize_logits",
    "teacher_ensemble_logits",
    "uniform_entropy",
]
