"""`Teacher`: a frozen model run beside the student, and everything about running it.

A teacher owns its loading, freezing (eval mode, no gradients), weight precision, placement, the switch to eager
attention when its attention maps are supervised, its input (`TeacherInputTransform`: the student's batch at the
teacher's size and normalisation) and the check that it predicts the student's classes. The distillation trainers,
the teacher caches and the recipes ask it rather than handling a bare model.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from accelerate.utils import convert_to_fp32
from torch import nn
from transformers import PreTrainedConfig
from transformers.utils import logging

from ..models import InputSpecification, LoadedClassifier, is_convolutional, load_image_classifier
from .adapters import num_prefix_tokens

logger = logging.get_logger(__name__)


@dataclass
class TeacherInputTransform:
    """Turns the student's normalised batch into the teacher's input: same images, the teacher's size and statistics.

    The teacher sees exactly the augmented (and mixed) images the student sees: the batch is un-normalised with the
    student's mean/std, resized to the teacher's size with the teacher's interpolation, and normalised with the
    teacher's mean/std, on the device. Upsampling a 32-pixel image to 224 adds no detail, so this is exact for data
    stored at the student's size (CIFAR); for larger source images the teacher sees them at the student's resolution.

    Args:
        student (`InputSpecification`): the input the batches are prepared for.
        teacher (`InputSpecification`): the teacher's.
    """

    student: InputSpecification
    teacher: InputSpecification
    # (student std, student mean, teacher mean, teacher std) as (1, C, 1, 1) columns, per (device, dtype).
    _columns: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def between(cls, student: InputSpecification, teacher: InputSpecification) -> TeacherInputTransform | None:
        """The transform from `student`'s inputs to `teacher`'s, or `None` when they take the same input."""
        if not teacher.mismatches(student):
            return None
        return cls(student, teacher)

    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        student_std, student_mean, teacher_mean, teacher_std = self._statistics(
            pixel_values.device, pixel_values.dtype
        )
        images = pixel_values * student_std + student_mean
        size = self.teacher.image_size
        if tuple(images.shape[-2:]) != size:
            downsampling = images.shape[-1] > size[1] or images.shape[-2] > size[0]
            mode = self.teacher.interpolation
            images = F.interpolate(
                images, size=size, mode=mode, antialias=downsampling and mode != "nearest",
                **({} if mode == "nearest" else {"align_corners": False}),
            )  # fmt: skip
            if mode == "bicubic":  # bicubic overshoots; PIL and the tensor pipeline clamp too
                images = images.clamp(0, 1)
        return (images - teacher_mean) / teacher_std

    def _statistics(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        # Built once per device: a host-to-device copy at every step would make each step wait on the host.
        key = (device, dtype)
        if key not in self._columns:
            self._columns[key] = tuple(
                torch.tensor(values, device=device, dtype=dtype)[None, :, None, None]
                for values in (
                    self.student.image_std,
                    self.student.image_mean,
                    self.teacher.image_mean,
                    self.teacher.image_std,
                )
            )
        return self._columns[key]


class Teacher:
    """A frozen teacher: its model, its input transform and weight precision, and how it runs beside the student.

    The model is put in eval mode with gradients off at once. `place` puts its weights on the run's device in `dtype`
    (float32 by default; bfloat16 halves its memory; float16 is refused: weights cast wholesale to fp16 run norms and
    residual adds in pure fp16 and overflow, and mixed precision is the run's autocast, which `place` takes). Calling
    it runs the forward under `torch.no_grad()` and that autocast on its view of the student's batch, and returns
    what the caller selects (the logits by default) in float32; the rest of its outputs is dropped as the call
    returns.

    Args:
        model (`nn.Module`): the teacher's classifier.
        input_transform (`TeacherInputTransform` or `Callable`, *optional*): maps the student's batch to the
            teacher's input when their sizes or normalisations differ.
        dtype (`torch.dtype` or `str`, *optional*, defaults to float32): the weights' dtype once placed.
        image_size (`tuple[int, int]`, *optional*): the teacher's input size; defaults to its config's.
    """

    def __init__(
        self,
        model: nn.Module,
        input_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        dtype: torch.dtype | str = torch.float32,
        image_size: tuple[int, int] | None = None,
    ):
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        if dtype == torch.float16:
            raise ValueError(
                "a teacher in float16 runs its norms and residual adds in pure fp16 and overflows; keep it in "
                "float32 (the run's --fp16 autocast still applies) or use bfloat16."
            )
        self.model = model.eval().requires_grad_(False)
        self.input_transform = input_transform
        self.dtype = dtype
        self.image_size = tuple(image_size) if image_size is not None else _configured_size(model)
        self._autocast: Callable[[], AbstractContextManager] = contextlib.nullcontext

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        student: LoadedClassifier | None = None,
        dtype: torch.dtype | str = torch.float32,
        student_input: InputSpecification | None = None,
        **loading_kwargs: Any,
    ) -> Teacher:
        """Loads a classifier (`models.load_image_classifier`: a Hub id or folder of ours, transformers' or timm's)
        as a teacher; with `student`, also checks that it predicts the student's classes and sets the transform from
        the student's input to its own (from `student_input` alone, e.g. read off the student's image processor,
        when there is no `student`). `loading_kwargs`: `trust_remote_code`, `revision`, `token`, `cache_dir`."""
        loaded = load_image_classifier(name_or_path, id2label=None, **loading_kwargs)
        if student is not None:
            check_label_spaces(student.model.config, loaded.model.config)
            student_input = student.input_specification
        transform = None
        if student_input is not None:
            transform = TeacherInputTransform.between(student_input, loaded.input_specification)
        return cls(loaded.model, transform, dtype=dtype, image_size=loaded.input_specification.image_size)

    @property
    def name(self) -> str:
        name = getattr(getattr(self.model, "config", None), "_name_or_path", "")
        return f"{name}, {type(self.model).__name__}" if name else type(self.model).__name__

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patch tokens in its hidden states and attention maps (the model declares them)."""
        return num_prefix_tokens(self.model)

    @property
    def num_parameters(self) -> int:
        return sum(parameter.numel() for parameter in self.model.parameters())

    def check_labels(self, student_config: PreTrainedConfig) -> None:
        """Fails before any work when the teacher predicts other classes than the student (`check_label_spaces`)."""
        if hasattr(self.model, "config"):
            check_label_spaces(student_config, self.model.config)

    def supervise_attention(self) -> None:
        """Readies it for attention distillation: the eager attention path, the one that computes the maps."""
        use_eager_attention(self.model, "teacher")

    def gives_attention_maps(self) -> bool:
        """Whether it returns attention maps over a square patch grid (a ViT): what attention distillation needs."""
        return gives_attention_maps(self.model, self.image_size)

    def place(
        self, device: str | torch.device, autocast: Callable[[], AbstractContextManager] | None = None
    ) -> Teacher:
        """Its weights on `device` in its dtype (a CNN's in channels-last memory format, as the recipes lay out a
        convolutional student: oneDNN's and cuDNN's fastest convolutions), and the run's autocast (e.g.
        `Accelerator.autocast`) to run under. Not `accelerator.prepare_model`: a prepared second model counts as the
        prepared model, and a Trainer then evaluates its own model before training without preparing it."""
        self.model.to(device=device, dtype=self.dtype)
        if is_convolutional(self.model):
            self.model.to(memory_format=torch.channels_last)
        if autocast is not None:
            self._autocast = autocast
        return self

    @property
    def device(self) -> torch.device:
        parameter = next(self.model.parameters(), None)
        return parameter.device if parameter is not None else torch.device("cpu")

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype its forward computes in: its autocast's (from `place`) when that is on for its device, else its
        weights' dtype. Part of what its outputs depend on (a cache of them is keyed by it)."""
        device_type = self.device.type
        with self._autocast():
            if torch.is_autocast_enabled(device_type):
                return torch.get_autocast_dtype(device_type)
        return self.dtype

    def inputs(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The student's batch as its input: on its device, through the input transform, in its weights' dtype."""
        parameter = next(self.model.parameters(), None)
        if parameter is None:
            return pixel_values if self.input_transform is None else self.input_transform(pixel_values)
        pixel_values = pixel_values.to(parameter.device)
        if self.input_transform is not None:
            pixel_values = self.input_transform(pixel_values)
        return pixel_values.to(parameter.dtype)

    @torch.no_grad()
    def __call__(
        self,
        pixel_values: torch.Tensor,
        select: Callable[[Any], Any] | None = None,
        hidden_states: bool = False,
        attentions: bool = False,
    ) -> Any:
        """Its forward on its view of the student's batch (`pixel_values`), asked for its hidden states and attention
        maps when the caller uses them.

        Args:
            select (`Callable`, *optional*): picks what the caller uses from the outputs (tensors, or tuples, lists
                or dicts of them); defaults to the logits. Only that is converted to float32 and returned.
        """
        kwargs = forward_kwargs(self.model, hidden_states=hidden_states, attentions=attentions)
        with self._autocast():
            outputs = self.model(pixel_values=self.inputs(pixel_values), **kwargs)
        return convert_to_fp32(select(outputs) if select is not None else outputs.logits)


def _configured_size(model: nn.Module) -> tuple[int, int] | None:
    size = getattr(getattr(model, "config", None), "image_size", None)
    if size is None:
        return None
    return (size, size) if isinstance(size, int) else tuple(size)


def check_label_spaces(student_config: PreTrainedConfig, teacher_config: PreTrainedConfig) -> None:
    """Fails when teacher and student predict different classes (count, or names where both have real names)."""
    student_labels = {int(index): name for index, name in (student_config.id2label or {}).items()}
    teacher_labels = {int(index): name for index, name in (teacher_config.id2label or {}).items()}
    if len(student_labels) != len(teacher_labels):
        raise ValueError(
            f"the teacher predicts {len(teacher_labels)} classes but the student {len(student_labels)}; distillation "
            "needs the same label space. Fine-tune the teacher on the student's dataset first (examples/train.py)."
        )

    def is_generic(labels: dict[int, str]) -> bool:
        return all(name == f"LABEL_{index}" for index, name in labels.items())

    if is_generic(student_labels) or is_generic(teacher_labels):
        return
    differences = [(index, student_labels[index], teacher_labels.get(index)) for index in sorted(student_labels)
                   if student_labels[index] != teacher_labels.get(index)]  # fmt: skip
    if differences:
        shown = ", ".join(
            f"{index}: student {student!r} vs teacher {teacher!r}" for index, student, teacher in differences[:5]
        )
        raise ValueError(
            f"teacher and student name their classes differently ({len(differences)} of {len(student_labels)}: "
            f"{shown}). Train the teacher on the same dataset, or give both the same id2label."
        )


def use_eager_attention(model: nn.Module, role: str) -> None:
    """Puts a transformers model on the eager attention implementation, the one that computes the attention
    probabilities, when it runs another (SDPA by default): attention distillation supervises them. Models that cannot
    switch (not written on transformers' attention interface) keep theirs; the probe then says what to do."""
    implementation = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if implementation in (None, "eager") or not getattr(model, "_can_set_attn_implementation", lambda: False)():
        return
    logger.info("The %s's attention: %s -> eager (attention distillation needs its maps).", role, implementation)
    model.set_attn_implementation("eager")


@torch.no_grad()
def gives_attention_maps(model: nn.Module, image_size: tuple[int, int]) -> bool:
    """Whether `model` returns attention maps over a square patch grid (a ViT), tried on one blank image of
    `image_size` on the model's device: what attention distillation needs of a teacher."""
    parameter = next(model.parameters(), None)
    image = torch.zeros(1, 3, *image_size, device=parameter.device if parameter is not None else None)
    was_training = model.training
    try:
        outputs = model.eval()(pixel_values=image, **forward_kwargs(model, hidden_states=False, attentions=True))
        attention_grid(require_attentions(outputs)[0], num_prefix_tokens(model))
        return True
    except (ValueError, TypeError):
        return False
    finally:
        model.train(was_training)


def forward_kwargs(model: nn.Module, hidden_states: bool, attentions: bool) -> dict[str, bool]:
    """The output flags for a forward that returns hidden states and/or attention maps; fails with what to do for
    a model whose forward cannot return attention maps."""
    kwargs = {}
    if hidden_states:
        kwargs["output_hidden_states"] = True
    if attentions:
        if not _forward_takes_attentions(type(model)):
            raise ValueError(NO_ATTENTIONS_MESSAGE)
        kwargs["output_attentions"] = True
    return kwargs


@functools.cache
def _forward_takes_attentions(model_class: type) -> bool:
    # Once per class: the teacher runs at every step, and reading a signature costs more than a dict lookup.
    parameters = inspect.signature(model_class.forward).parameters
    return "output_attentions" in parameters or any(
        parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters.values()
    )


def require_attentions(outputs) -> tuple[torch.Tensor, ...]:
    attentions = getattr(outputs, "attentions", None)
    if not attentions or any(attention is None for attention in attentions):
        raise ValueError(NO_ATTENTIONS_MESSAGE)
    return attentions


def attention_grid(attentions: torch.Tensor, num_prefix_tokens: int) -> tuple[int, int]:
    """The (rows, columns) patch grid of attention maps over `num_prefix_tokens` + patch tokens."""
    num_patches = attentions.shape[-1] - num_prefix_tokens
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(f"{num_patches} patch tokens do not form a square grid; attention maps need one.")
    return side, side


NO_ATTENTIONS_MESSAGE = (
    "attention distillation needs the teacher's attention maps, and the teacher gives none. The teacher must be a ViT "
    "on the eager attention path: load it with attn_implementation='eager' (the trainer switches models written on "
    "transformers' attention interface by itself)."
)


__all__ = [
    "Teacher",
    "TeacherInputTransform",
    "check_label_spaces",
    "gives_attention_maps",
    "use_eager_attention",
]
