"""Learned adapters between student and teacher features, and the shape helpers they rest on.

Every feature is handled as a map `(batch, channels, height, width)`: a CNN's hidden state already is one, and a
ViT's `(batch, tokens, width)` hidden state becomes one once its prefix tokens ([CLS], ...) are dropped and its patch
tokens laid back on their grid. A 1x1 convolution on such a map is the same as a linear layer on the tokens.

During training the student and its adapters are one module (`StudentWithAdapters`), so the optimizer, DDP and the
checkpoints take both; what it saves is the student alone, and a checkpoint keeps the adapters beside it in their own
file (`save_adapters`), so a resumed run continues with them.
"""

from __future__ import annotations

import copy
import functools
import math
import os
import tempfile

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel, TimmWrapperPreTrainedModel

# Checkpoints keep the adapters in their own file beside the student's weights.
ADAPTERS_WEIGHTS_NAME = "distillation_adapters.safetensors"


class StudentWithAdapters(PreTrainedModel):
    """The student and the adapters that train with it (`adapters`, an `nn.ModuleDict`), as the one model a `Trainer`
    trains: the optimizer, DDP and `torch.compile` see both. Its forward is the student's; the distillation trainer
    applies the adapters to the student's outputs.

    What it saves is the student alone (`save_pretrained` is the student's: its config, weights and code), so every
    checkpoint and the export load with `from_pretrained` with or without this package, and the Hub push needs no
    filter. `load_state_dict` takes the student's own keys (a checkpoint's `model.safetensors`, as the Trainer loads it
    when resuming or restoring the best model) or this module's (`student.*`, `adapters.*`). The adapters' weights
    travel in `distillation_adapters.safetensors` beside a checkpoint's (`save_adapters`, `load_adapters`).
    """

    main_input_name = "pixel_values"

    def __init__(self, student: PreTrainedModel, adapters: nn.ModuleDict):
        # A copy without an attention implementation: PreTrainedModel.__init__ settles one on the config it gets
        # (this module runs none itself), and the student's stays the student's.
        config = copy.deepcopy(student.config)
        config._attn_implementation_internal = None
        super().__init__(config)
        self.student = student
        self.adapters = adapters

    def forward(self, pixel_values: torch.Tensor | None = None, labels: torch.Tensor | None = None, **kwargs):
        # `labels` is in the signature so the Trainer gathers them for evaluation; the loss is the trainer's.
        return self.student(pixel_values=pixel_values, **kwargs)

    @property
    def supports_gradient_checkpointing(self) -> bool:
        # PreTrainedModel's switch then walks the student's modules.
        return self.student.supports_gradient_checkpointing

    def save_pretrained(self, save_directory: str | os.PathLike, state_dict: dict | None = None, **kwargs) -> None:
        if state_dict is not None:  # a gathered state (DeepSpeed): this module's keys, of which the student's
            state_dict = {key.removeprefix("student."): value for key, value in state_dict.items()
                          if not key.startswith("adapters.")}  # fmt: skip
        self.student.save_pretrained(save_directory, state_dict=state_dict, **kwargs)

    def load_state_dict(self, state_dict: dict, strict: bool = True, assign: bool = False):
        student_state, adapter_state = {}, {}
        for key, value in state_dict.items():
            if key.startswith("adapters."):
                adapter_state[key.removeprefix("adapters.")] = value
            else:
                student_state[key.removeprefix("student.")] = value
        result = self.student.load_state_dict(student_state, strict=strict, assign=assign)
        if adapter_state:  # a state of this module; a student's checkpoint leaves the adapters as they are
            adapter_result = self.adapters.load_state_dict(adapter_state, strict=strict, assign=assign)
            result.missing_keys.extend(f"adapters.{key}" for key in adapter_result.missing_keys)
            result.unexpected_keys.extend(f"adapters.{key}" for key in adapter_result.unexpected_keys)
        return result


def save_adapters(adapters: nn.Module, folder: str | os.PathLike) -> None:
    """Writes the adapters' weights into `folder` (a checkpoint) as `distillation_adapters.safetensors`, through a
    temporary file renamed into place: a run killed while writing leaves no half-written file to resume from."""
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in adapters.state_dict().items()}
    handle, temporary = tempfile.mkstemp(dir=folder, suffix=".tmp")
    os.close(handle)
    try:
        save_file(state, temporary)
        os.replace(temporary, os.path.join(folder, ADAPTERS_WEIGHTS_NAME))
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def load_adapters(adapters: nn.Module, folder: str | os.PathLike) -> None:
    """Loads the adapters' weights a checkpoint `folder` keeps (`save_adapters`); fails with the reason when it has
    none."""
    path = os.path.join(folder, ADAPTERS_WEIGHTS_NAME)
    if not os.path.isfile(path):
        raise ValueError(
            f"{folder} has no {ADAPTERS_WEIGHTS_NAME}, but this run trains adapters: it was saved by a run with other "
            "distillation losses. Resume with the same settings, or start afresh."
        )
    device = next(adapters.parameters()).device
    adapters.load_state_dict(load_file(path, device=str(device)))


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
    "ADAPTERS_WEIGHTS_NAME",
    "AttentionProjection",
    "FeatureAdapter",
    "StudentWithAdapters",
    "as_feature_map",
    "load_adapters",
    "num_prefix_tokens",
    "resize_feature_map",
    "save_adapters",
]
